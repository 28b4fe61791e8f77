"""A TCP proxy that a test or benchmark takes down and brings back: the peer behind it looks
unreachable (every connection, open or new, is cut at once) without stopping the real service."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class Switch:
    """Proxies to ``target_url``'s host and port; ``down()``/``back()``; counts connections tried
    while down (``tried_while_down``). ``url`` is the target URL through the proxy, once started."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.host, self.port_to = parts.hostname, parts.port or 80
        self.path = parts.path
        self.up = True
        self.tried_while_down = 0
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

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                self._open.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
