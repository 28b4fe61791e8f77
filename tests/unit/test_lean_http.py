"""bench/lean_http.py, the benchmarks' sender: keep-alive where the server allows it, a new
connection per request where it closes them (php -S), bodies by length, chunks or the close, and
an error naming the URL for an unexpected status. A broken sender would make bench/sync.py
measure the wrong thing, so it is tested like the product."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import lean_http  # noqa: E402


class RawServer:
    """A server answering every request with ``answer`` (bytes), closing after it when ``close``;
    counts connections and requests, keeps the request bodies."""

    def __init__(self, answer: bytes, close: bool) -> None:
        self.answer, self.close = answer, close
        self.connections = 0
        self.bodies: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> "RawServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.bodies.append(await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
                if self.close:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()


def calls(port: int, n: int, want: int = 200) -> list[tuple]:
    url = f"http://127.0.0.1:{port}/hooks/x"
    return [("POST", url, {"wpf_action": "add", "n": str(i)}, {"i": i}, {}, want) for i in range(n)]


async def test_keeps_connections_alive_and_answers_in_order() -> None:
    seen: list[tuple[str, dict]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.query["n"], body))
        return web.json_response({"n": body["i"]}, status=202)

    app = web.Application()
    app.router.add_post("/hooks/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    opened = 0
    real_open = asyncio.open_connection

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal opened
        opened += 1
        return await real_open(*args, **kwargs)  # type: ignore[arg-type]

    try:
        lean_http.asyncio.open_connection = counting  # type: ignore[assignment]
        answers = await lean_http.send_all(calls(port, 60, 202), 4)
    finally:
        lean_http.asyncio.open_connection = real_open  # type: ignore[assignment]
        await runner.cleanup()
    assert answers == [{"n": i} for i in range(60)]
    assert sorted(int(n) for n, _ in seen) == list(range(60))
    assert all(body == {"i": int(n)} for n, body in seen)
    assert opened == 4  # one per slot, kept alive


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"ok\": true}",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"ok\": true}",  # delimited by the close
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"5\r\n{\"ok\"\r\n6\r\n: true\r\n1\r\n}\r\n0\r\n\r\n",
])
async def test_a_server_that_closes_gets_a_connection_per_request(answer: bytes) -> None:
    async with RawServer(answer, close=True) as server:
        answers = await lean_http.send_all(calls(server.port, 9), 3)
    assert answers == [{"ok": True}] * 9
    assert server.connections == 9
    assert sorted(server.bodies) == sorted(b'{"i":%d}' % i for i in range(9))


async def test_an_unexpected_status_names_the_url_and_the_answer() -> None:
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 16\r\n\r\n{\"error\":\"busy\"}"
    async with RawServer(answer, close=False) as server:
        with pytest.raises(RuntimeError, match=r"/hooks/x answered 503, not 200: .*busy"):
            await lean_http.send_all(calls(server.port, 2), 1)


async def test_a_new_connection_hung_up_without_an_answer_is_an_error_not_a_resend() -> None:
    received = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionResetError, match="closed the connection before answering"):
            await lean_http.send_all(calls(port, 1), 1)
    finally:
        server.close()
        await server.wait_closed()
    assert received == 1  # the POST may have been taken: never sent twice


async def test_a_kept_alive_connection_closed_while_idle_is_reopened_once() -> None:
    """The server answers one request per connection but says keep-alive, as a server closing
    idle connections does: each later request finds its connection closed, goes again on a new
    one, and every body arrives once."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"ok\": true}"
    async with RawServer(answer, close=True) as server:
        answers = await lean_http.send_all(calls(server.port, 5), 1)
    assert answers == [{"ok": True}] * 5
    assert sorted(server.bodies) == sorted(b'{"i":%d}' % i for i in range(5))
