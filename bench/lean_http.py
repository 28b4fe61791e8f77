"""A lean HTTP/1.1 load generator for the benchmarks' sender process: keep-alive connections on
asyncio streams, requests written as one buffer, responses parsed by httptools (the C parser of
llhttp that uvicorn uses).

Why not aiohttp's client here: the sender stands for a CRM, which runs on a machine of its own,
but in ``bench/sync.py`` it shares this machine's two cores with the bridge and WordPress. aiohttp's
client costs ~0.18 ms of CPU per request here; this one ~0.07 ms, so less of the measured
machine goes to the stand-in for a remote sender. Both sides of a comparison use the same one
(``--client aiohttp`` keeps aiohttp's for both).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools
import orjson


class _Response:
    """Collects one response from httptools' callbacks."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # llhttp's answer is only right until the message completes (it resets then).
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class Connection:
    """One keep-alive connection to ``host:port``, reopened when the server closes it (php -S
    answers every request with ``Connection: close``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answered = 0  # requests answered on the open connection

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one request. Sent again, once, on a new connection only when a kept-alive
        connection that had answered before closes without a byte of answer (a server may close
        an idle connection at any time); on a new connection that is an error, as a request
        that may have been taken must not be sent twice."""
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                self._answered = 0
            reused = self._answered > 0
            self._writer.write(head + body)
            response = _Response()
            parser = response.parser = httptools.HttpResponseParser(response)
            assert self._reader is not None
            try:
                while not response.done:
                    data = await self._reader.read(65536)
                    if not data:
                        if response.headers or response.body:  # a body delimited by the close
                            parser.feed_data(b"")
                            break
                        raise ConnectionResetError("the server closed the connection before answering")
                    parser.feed_data(data)
            except (ConnectionError, httptools.HttpParserError):
                self.close()
                if attempt == 2 or not reused or response.headers:
                    raise
                continue
            self._answered += 1
            if not response.keep_alive:
                self.close()
            return parser.get_status_code(), bytes(response.body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def encode(method: str, url: str, params: dict[str, str], body: Any,
           headers: dict[str, str]) -> tuple[bytes, bytes]:
    """(request line and headers, JSON body) of one call."""
    parts = urlsplit(url)
    data = orjson.dumps(body)
    target = (parts.path or "/") + ("?" + urlencode(params) if params else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), data


async def send_all(calls: list[tuple], concurrency: int) -> list[Any]:
    """Every call (method, url, query, JSON body, headers, expected status), at most ``concurrency``
    in flight, each in-flight slot on its own connection: their JSON answers, in order. Raises on
    the first answer with another status."""
    answers: list[Any] = [None] * len(calls)
    next_index = iter(range(len(calls)))

    async def runner() -> None:
        conn: Connection | None = None
        try:
            for i in next_index:
                url, want = calls[i][1], calls[i][5]
                if conn is None:
                    parts = urlsplit(url)
                    conn = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
                status, text = await conn.request(*encode(*calls[i][:5]))
                if status != want:
                    raise RuntimeError(f"{url} answered {status}, not {want}: {text[:300]!r}")
                answers[i] = orjson.loads(text)
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return answers
