"""A TCP proxy that a test or benchmark takes down and brings back: the peer behind it looks
unreachable (every connection, open or new, is cut at once) without stopping the real service.
It can also hold the peer's answers back (``hold()``/``release()``), so that a test knows which
requests are in flight, and it counts the requests it forwards (``requests``: reads that start
with a request line; a client writes a request's head in one piece)."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/1\.[01]\r\n")


class Switch:
    """Proxies to ``target_url``'s host and port; ``down()``/``back()``; counts connections tried
    while down (``tried_while_down``). ``url`` is the target URL through the proxy, once started."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.host, self.port_to = parts.hostname, parts.port or 80
        self.path = parts.path
        self.up = True
        self.tried_while_down = 0
        self.requests = 0
        self._answers = asyncio.Event()
        self._answers.set()
        self.url = ""
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.path}"
        return self.url

    def down(self) -> None:
        self.up = False
        for writer in list(self._open):
            writer.close()

    def back(self) -> None:
        self.up = True

    def hold(self) -> None:
        """Keep the peer's answers until ``release()`` (requests still reach it)."""
        self._answers.clear()

    def release(self) -> None:
        self._answers.set()

    async def stop(self) -> None:
        self.down()
        self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.tried_while_down += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port_to)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await src.read(65536):
                    if answers:
                        await self._answers.wait()
                    elif REQUEST_LINE.match(data):
                        self.requests += 1
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                self._open.discard(dst)

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
