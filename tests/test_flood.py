"""The aiohttp edge under abuse, over raw sockets: malformed requests answered with our JSON 400 and
one redacted log event (never the request line), header/body/keep-alive timeouts, the connection cap,
and 2,000 idle and slowloris connections against `wp-sync-bridge serve` held to 1,024 descriptors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from bridge.logs import configure
from tests.test_intake import KEY1, customerly, new_email, serving

ROOT = Path(__file__).resolve().parent.parent

MALFORMED = [
    f"GET /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    f"GET /?wpf_action=add&access_key={KEY1}{'A' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n",
    f"POST /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\nHost: x\r\nX-Long: {'a' * 9000}\r\n\r\n",
    f"G\x01T /?access_key={KEY1} HTTP/1.1\r\nHost: x\r\n\r\n",
    f"POST /?access_key={KEY1} HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    f"GET /?access_key={KEY1} HTTP/9.1\r\n\r\n",
    f"POST /?access_key={KEY1} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    f"GET /?access_key={KEY1}\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost: x\r\nX-Access-Key\x01: {KEY1}\r\n\r\n",
    f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x{KEY1}\r\n\r\n",
]


async def exchange(port: int, data: bytes, timeout_s: float = 10) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


async def open_abortive(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose close is a reset (SO_LINGER 0): thousands of them leave no client port in
    TIME_WAIT, where it could keep another test's server (on a port in the ephemeral range) from binding."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return reader, writer


def delivery_bytes(key: str = KEY1) -> bytes:
    body = json.dumps(customerly(new_email("flood"))).encode()
    return (f"POST /?wpf_action=add&access_key={key} HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server sent before closing; fails if it is still open after ``timeout_s``."""
    return await asyncio.wait_for(reader.read(), timeout_s)


async def metrics_text(served) -> str:
    async with served.session.get(served.url + "/metrics") as resp:
        return await resp.text()


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure("info", "json", secrets=[KEY1], stream=stream)
    yield stream
    structlog.reset_defaults()
    configure("info", "console")


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_aiohttp_alone_echoes_the_request_line_in_its_400(tmp_path):
    """The premise: a bare aiohttp server answers these with the parser's message, which quotes the
    request line or header: the key is in most of its answers."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        answers = [await exchange(runner.addresses[0][1], raw.encode()) for raw in MALFORMED]
    finally:
        await runner.cleanup()
    assert all(status_of(a) == 400 for a in answers)
    assert sum(KEY1.encode() in a for a in answers) >= 5


async def test_malformed_requests_get_json_400_and_one_log_event_without_the_key(tmp_path, log_stream):
    """Every malformed request (bad header, over-long line or header, bad method, duplicate length, bad
    version, bad chunk) is answered 400 with our JSON, logged as one http.bad_request, and the key
    appears in no answer and no log line; the server serves on."""
    async with serving(tmp_path / "bridge.db") as s:
        answers = [await exchange(s.bridge.port, raw.encode()) for raw in MALFORMED]
        ok = await exchange(s.bridge.port, delivery_bytes())
    for answer in answers:
        assert status_of(answer) == 400, answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert json.loads(body) == {"success": False, "error": "bad_request", "message": "malformed HTTP request"}
        assert KEY1.encode() not in answer and b"access_key" not in answer
    assert status_of(ok) == 202
    logged = events(log_stream)  # every line is one JSON event
    bad = [e for e in logged if e["event"] == "http.bad_request"]
    assert len(bad) == len(MALFORMED)
    assert {e["reason"] for e in bad} >= {"line_too_long", "bad_http_method", "bad_status_line"}
    assert KEY1 not in log_stream.getvalue() and "access_key" not in log_stream.getvalue()


async def test_the_metrics_listener_is_guarded_too(tmp_path, log_stream):
    """/metrics on a port of its own answers a malformed request with the same JSON 400, no request text."""
    async with serving(tmp_path / "bridge.db", metrics_port=0, metrics_token="metrics-token-12345") as s:
        answer = await exchange(s.bridge.metrics_port,
                                b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization\x01: Bearer metrics-token-12345\r\n\r\n")
    assert status_of(answer) == 400 and b'"bad_request"' in answer and b"metrics-token-12345" not in answer
    assert "metrics-token-12345" not in log_stream.getvalue()


async def test_idle_and_slowloris_connections_are_closed_after_the_headers_timeout(tmp_path, log_stream):
    """No byte, or headers trickled a line at a time: closed once headers_timeout_s has passed."""
    async with serving(tmp_path / "bridge.db", headers_timeout_s=0.5, keepalive_timeout_s=30) as s:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", s.bridge.port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", s.bridge.port)
        slow_w.write(f"POST /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\n".encode())
        started = time.monotonic()

        async def trickle() -> None:
            while not slow_r.at_eof():
                slow_w.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.1)

        trickling = asyncio.ensure_future(trickle())
        assert await closed_within(idle_r, 10) == b""
        assert await closed_within(slow_r, 10) == b""
        took_s = time.monotonic() - started
        trickling.cancel()
        idle_w.close(), slow_w.close()
        text = await metrics_text(s)
    assert took_s < 10
    assert 'wpsb_http_connections_closed_total{reason="headers_timeout"} 2.0' in text


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path):
    """After a complete request on a kept-alive connection, silence closes it after keepalive_timeout_s."""
    async with serving(tmp_path / "bridge.db", keepalive_timeout_s=0.5, headers_timeout_s=30) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.bridge.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert status_of(head) == 200
        rest = await closed_within(reader, 10)  # the body, then the close
        writer.close()
    assert b'"alive": true' in rest


async def test_a_next_request_trickled_on_a_kept_alive_connection_meets_the_headers_timeout(tmp_path):
    """After a first request, the start of a second one trickled a header at a time is closed after
    headers_timeout_s, though the keep-alive timeout is long."""
    async with serving(tmp_path / "bridge.db", keepalive_timeout_s=60, headers_timeout_s=0.5) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.bridge.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        while not reader.at_eof() and time.monotonic() - started < 10:
            writer.write(b"X-Slow: 1\r\n")
            try:
                await asyncio.wait_for(reader.read(), 0.1)
            except asyncio.TimeoutError:
                pass
        writer.close()
        text = await metrics_text(s)
    assert reader.at_eof() and time.monotonic() - started < 10
    assert 'wpsb_http_connections_closed_total{reason="headers_timeout"} 1.0' in text


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(tmp_path):
    """Headers announce 100 bytes, 10 arrive: 408 body_timeout once body_timeout_s has passed, nothing stored."""
    async with serving(tmp_path / "bridge.db", body_timeout_s=0.5) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.bridge.port)
        writer.write(f"POST /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100\r\n\r\n{{\"data\": 1".encode())
        answer = await closed_within(reader, 15)
        writer.close()
        jobs = s.count("jobs")
    assert status_of(answer) == 408 and b'"body_timeout"' in answer
    assert jobs == 0


async def test_at_the_cap_waiting_connections_make_room_and_busy_ones_refuse(tmp_path, log_stream):
    """With max_connections=20: 60 idle connections do not keep a delivery out (the oldest idle ones
    are closed); with 20 requests in progress a new connection is refused; one warning is logged."""
    async with serving(tmp_path / "bridge.db", max_connections=20, headers_timeout_s=60, body_timeout_s=60) as s:
        idle = [await open_abortive(s.bridge.port) for _ in range(60)]
        assert status_of(await exchange(s.bridge.port, delivery_bytes())) == 202
        await asyncio.sleep(0.2)
        closed = sum([await _closed_soon(r) for r, _ in idle])
        assert closed >= 40
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.2)
        # 20 connections busy in a request (headers in, body pending): nothing to evict.
        busy = []
        for _ in range(20):
            r, w = await open_abortive(s.bridge.port)
            w.write(f"POST /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{".encode())
            await w.drain()
            busy.append((r, w))
        await asyncio.sleep(0.3)
        refused = await exchange(s.bridge.port, delivery_bytes(), timeout_s=10)
        for _, w in busy:
            w.close()
        metrics = await metrics_text(s)
    assert refused == b""
    assert 'reason="refused"' in metrics and 'reason="evicted"' in metrics
    warnings = [e for e in events(log_stream) if e["event"] == "http.connection_cap"]
    assert len(warnings) == 1 and warnings[0]["max_connections"] == 20


async def _closed_soon(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 0.05) == b""
    except asyncio.TimeoutError:
        return False


# --- 2,000 connections against `serve` with 1,024 descriptors --------------------------------------

FLOOD = 2000
FD_LIMIT = 1024
DELIVERY_BOUND_S = 5.0


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


# `serve` runs on uvloop when it is installed (it is, in the test environment); "asyncio" hides it
# so the standard event loop's accept path is exercised too.
SERVE = {
    "uvloop": ["-m", "bridge", "serve", "--config"],
    "asyncio": ["-c", "import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'wp-sync-bridge'; "
                      "from bridge.cli import main; main()", "serve", "--config"],
}


async def _serve(tmp_path: Path, loop: str) -> tuple[subprocess.Popen, int, Path]:
    config = tmp_path / "bridge.toml"
    config.write_text(f"""
log_level = "info"
[server]
host = "127.0.0.1"
port = 0
access_keys = ["{KEY1}"]
[database]
path = "{tmp_path / 'bridge.db'}"
[wordpress]
url = "http://127.0.0.1:9"
application_password = "abcd efgh ijkl mnop"
[connections.customerly]
crm = "customerly"
base_url = "http://127.0.0.1:9/customerly/v1"
secrets = {{ token = "cly-flood-token" }}
""")
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WPSB_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *SERVE[loop], str(config)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_limit_fds)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if '"bridge.started"' in line:
                return proc, json.loads(line)["port"], log_path
        assert proc.poll() is None, log_path.read_text()
        await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not start:\n{log_path.read_text()}")


@pytest.mark.parametrize("loop", sorted(SERVE))
async def test_two_thousand_idle_and_slowloris_connections_do_not_stop_deliveries(tmp_path, loop):
    """`serve` limited to 1,024 descriptors, 1,000 idle and 1,000 slowloris connections held open:
    deliveries are still answered 202 within a bound, the daemon never runs out of descriptors, and
    the cap is warned about once, as JSON."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 200:  # this process holds the client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FLOOD + 500), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= FLOOD + 200, "the test needs ~2,200 descriptors"
    proc, port, log_path = await _serve(tmp_path, loop)
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    trickler = None
    try:
        assert Path(f"/proc/{proc.pid}/limits").read_text().count(f"{FD_LIMIT}") >= 1
        for i in range(FLOOD):
            reader, writer = await open_abortive(port)
            if i % 2:  # slowloris: a request line, then a header now and then
                writer.write(f"POST /?wpf_action=add&access_key={KEY1} HTTP/1.1\r\nHost: x\r\n".encode())
            flood.append((reader, writer))

        async def trickle() -> None:
            while True:
                for reader, writer in flood[1::2]:
                    if not writer.is_closing():
                        writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(1)

        trickler = asyncio.ensure_future(trickle())
        took = []
        for _ in range(5):
            started = time.monotonic()
            answer = await exchange(port, delivery_bytes(), timeout_s=30)
            took.append(time.monotonic() - started)
            assert status_of(answer) == 202, answer[:300]
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    finally:
        if trickler is not None:
            trickler.cancel()
        for _, writer in flood:
            writer.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"\nflood of {FLOOD} ({loop}): deliveries answered in {', '.join(f'{t:.3f}' for t in took)} s; daemon fds {fds}")
    assert max(took) < DELIVERY_BOUND_S, took
    assert fds < FD_LIMIT
    log_lines = log_path.read_text().splitlines()
    logged = [json.loads(line) for line in log_lines if line.strip()]  # every line is JSON
    assert [e["event"] for e in logged].count("http.connection_cap") == 1
    assert not any("out of system resource" in line or "Too many open files" in line for line in log_lines)
    assert KEY1 not in log_path.read_text()
