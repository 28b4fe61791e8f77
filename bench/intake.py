"""Durable intake benchmark: the bridge's webhook intake against a bare aiohttp handler, same run.

    python bench/intake.py [--duration-s 5] [--connections 32] [--rounds 5] [--uvloop]
                           [--busy N [--busy-nice K]]

In ONE process and on the same event loop implementation, two servers on 127.0.0.1:
  bare    an aiohttp handler that reads the body and answers 202 without storing anything;
  bridge  the real ``Bridge`` (temporary SQLite file, WAL, synchronous=FULL, group commit), logging
          JSON events at info level as ``serve`` does (to /dev/null here).
The bridge's WordPress and CRM URLs point at a local socket that accepts connections and never
answers, so the worker's first job hangs and the worker stays idle: what is measured is intake.

The load comes from a separate process (``multiprocessing``, spawn), so it does not share the
server's event loop: CONNECTIONS keep-alive HTTP/1.1 connections, one request in flight each, every
body a distinct ~200-byte JSON delivery. Each run warms up, then measures for DURATION; runs
alternate bare/bridge ROUNDS times and the medians are reported. The last line is
``intake_ratio=R`` (bridge deliveries/s divided by bare requests/s).

At the end the bridge's database must hold exactly as many jobs as 202 answers were counted, so
the rate measured is durable intake, not just answers.

``--busy N`` runs N processes that only spin, at nice K (``--busy-nice``, default 0), each in a
session of its own, beside both servers for the whole run: the machine's cores taken by something
else, as a co-located WordPress and its database take them. A delivery's answer waits for four
wake-ups in turn (the load generator, the event loop, the writer process, the event loop again),
each of them for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-access-key-1"
BODY_BYTES = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="alternating bare/bridge rounds (default 5; the medians are reported: single rounds move by +-0.04 on a shared VM)")
    p.add_argument("--uvloop", action="store_true", help="serve both on uvloop instead of the standard loop")
    p.add_argument("--log-level", default="info", help="the bridge's log level (default info, as serve)")
    p.add_argument("--busy", type=int, default=0, help="spinning processes beside the servers (default 0)")
    p.add_argument("--busy-nice", type=int, default=0, help="their nice value (default 0: the servers' own)")
    return p.parse_args(argv)


def spin(nice: int) -> None:
    """A process that only takes CPU (``--busy``), at ``nice``, in a session of its own, as the
    stack's PHP and MariaDB run (with the kernel's autogroups each session shares the cores as one
    group: the nice value is set for the group too)."""
    os.setsid()
    os.nice(nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:  # no autogroups here: the process's own nice is all there is
        pass
    while True:
        pass


# --- the load generator (runs in its own process) ------------------------------------------------


def make_body(prefix: str, seq: int) -> bytes:
    """A distinct Customerly delivery of about BODY_BYTES bytes."""
    email = f"{prefix}-{seq:08d}@example.com"
    doc = {"type": "user.updated", "data": {"user": {"data": {"email": email, "name": f"Bench User {seq}",
                                                               "attributes": {"plan": "pro", "pad": ""}}}}}
    raw = json.dumps(doc, separators=(",", ":"))
    pad = max(0, BODY_BYTES - len(raw))
    doc["data"]["user"]["data"]["attributes"]["pad"] = "x" * pad
    return json.dumps(doc, separators=(",", ":")).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight; records status and latency."""

    def __init__(self, load: "_Load") -> None:
        self.load = load
        self.buf = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = load.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.load.stop_at:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.load.next_request())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(self.buf[9:12])
            self.buf = self.buf[total:]
            self.load.record(status, self.sent_at)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class _Load:
    def __init__(self, host: str, port: int, path: str, prefix: str, warmup_s: float, duration_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     "Content-Length: ").encode()
        self.prefix = prefix
        self.seq = 0
        now = time.perf_counter()
        self.measure_from = now + warmup_s
        self.measure_to = self.measure_from + duration_s
        self.stop_at = self.measure_to
        self.latencies_s: list[float] = []
        self.statuses: dict[int, int] = {}
        self.measured = 0

    def next_request(self) -> bytes:
        self.seq += 1
        body = make_body(self.prefix, self.seq)
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def record(self, status: int, sent_at: float) -> None:
        now = time.perf_counter()
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.measure_from <= sent_at and now <= self.measure_to:
            self.measured += 1
            self.latencies_s.append(now - sent_at)


async def _run_load(host: str, port: int, path: str, connections: int, prefix: str, warmup_s: float,
                    duration_s: float) -> dict[str, Any]:
    load = _Load(host, port, path, prefix, warmup_s, duration_s)
    cpu0 = time.process_time()
    conns = []
    for _ in range(connections):
        _, proto = await load.loop.create_connection(lambda: _Connection(load), host, port)
        conns.append(proto)
    # Every request sent is answered before its connection closes: the 202 count is exact.
    await asyncio.gather(*(c.closed for c in conns))
    lat = sorted(load.latencies_s)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"rate": load.measured / duration_s, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "sent": load.seq,
            "statuses": load.statuses, "loader_cpu_s": time.process_time() - cpu0}


def load_process(conn: Any, *args: Any) -> None:
    """Child process entry: run the load (on uvloop when installed: the loader must not be the limit)."""
    from bridge.cli_common import run_async  # the parent's sys.path, handed over by spawn

    conn.send(run_async(_run_load(*args)))
    conn.close()


# --- the two servers (in this process) ------------------------------------------------------------


async def start_bare(host: str) -> tuple[Any, int]:
    """An aiohttp app whose handler reads the body and answers 202, storing nothing."""
    from aiohttp import web

    answer = json.dumps({"success": True, "job_id": 1, "status": "queued"}).encode()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, backlog=1024)
    await site.start()
    return runner, runner.addresses[0][1]


def black_hole() -> socket.socket:
    """A listening socket that is never accepted from: connections open, no answer ever comes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def start_bridge(db_path: Path, hole_port: int, log_level: str, log_stream: Any) -> Any:
    """The real Bridge on a fresh database; WordPress and the CRM are the black hole."""
    from bridge.app import Bridge
    from bridge.logs import configure
    from bridge.settings import load_settings

    hole = f"http://127.0.0.1:{hole_port}"
    settings = load_settings(
        None,
        log_level=log_level,
        server={"host": "127.0.0.1", "port": 0, "access_keys": [KEY]},
        database={"path": str(db_path)},
        worker={"concurrency": 1, "http_attempts": 1, "shutdown_grace_s": 0.5},
        wordpress={"url": hole, "application_password": "abcd efgh ijkl mnop", "timeout_s": 24 * 3600},
        connections={"customerly": {"crm": "customerly", "base_url": f"{hole}/customerly/v1",
                                    "secrets": {"token": "bench-token"}}},
    )
    redactor = configure(log_level, "json", stream=log_stream)
    bridge = Bridge(settings, redactor)
    await bridge.start()
    return bridge


# --- measuring --------------------------------------------------------------------------------------


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a live process has used so far, from /proc; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, path: str, prefix: str, args: argparse.Namespace, writer_pid: int | None = None) -> dict[str, Any]:
    """One run: a loader process against ``port``; the server keeps serving in this loop meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=load_process, args=(child, "127.0.0.1", port, path, args.connections, prefix,
                                                  args.warmup_s, args.duration_s))
    before = resource.getrusage(resource.RUSAGE_SELF)
    writer_before = process_cpu_s(writer_pid)
    proc.start()
    child.close()
    try:
        result = await asyncio.to_thread(parent.recv)
    finally:
        await asyncio.to_thread(proc.join, 30)
    after = resource.getrusage(resource.RUSAGE_SELF)
    busy_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["server_cpu_s"] = busy_s
    result["writer_cpu_s"] = process_cpu_s(writer_pid) - writer_before
    return result


def show(kind: str, run: int, r: dict[str, Any], args: argparse.Namespace) -> None:
    others = {s: n for s, n in r["statuses"].items() if s != 202}
    wall_s = args.warmup_s + args.duration_s
    answered = sum(r["statuses"].values())
    print(f"  {kind:<6} run {run}: {r['rate']:>8.0f}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
          f"  server cpu {100 * r['server_cpu_s'] / wall_s:3.0f}% ({1e6 * r['server_cpu_s'] / max(answered, 1):.0f} us/request)"
          + (f"  writer process cpu {100 * r['writer_cpu_s'] / wall_s:3.0f}%" if r.get("writer_cpu_s") else "")
          + f"  loader cpu {100 * r['loader_cpu_s'] / wall_s:3.0f}%"
          + (f"  non-202: {others}" if others else ""), flush=True)


async def main(args: argparse.Namespace) -> float:
    sys.path.insert(0, str(ROOT))
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"intake benchmark: {args.connections} connections, {args.warmup_s:g} s warm-up + {args.duration_s:g} s "
          f"per run, {args.rounds} round(s), loop={loop_name}, pid {os.getpid()}"
          + (f", {args.busy} busy process(es) at nice {args.busy_nice}" if args.busy else ""), flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="wpsb-bench-")
    hole = black_hole()
    log_stream = open(os.devnull, "w")
    bare_runner, bare_port = await start_bare("127.0.0.1")
    db_path = Path(tmp.name) / "bridge.db"
    bridge = await start_bridge(db_path, hole.getsockname()[1], args.log_level, log_stream)
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "bridge": []}
    bridge_202 = 0
    ctx = multiprocessing.get_context("spawn")
    spinners = [ctx.Process(target=spin, args=(args.busy_nice,), daemon=True) for _ in range(args.busy)]
    try:
        for proc in spinners:
            proc.start()
        path = f"/?wpf_action=add&access_key={KEY}"
        for rnd in range(1, args.rounds + 1):
            for kind, port in (("bare", bare_port), ("bridge", bridge.port)):
                writer_pid = bridge.store.writer_pid if kind == "bridge" else None
                r = await measure(port, path, f"{kind}{rnd}-{os.getpid()}", args, writer_pid)
                results[kind].append(r)
                if kind == "bridge":
                    bridge_202 += r["statuses"].get(202, 0)
                show(kind, rnd, r, args)
        writer = bridge.store._writer
        batches, calls = writer.batches, writer.calls
    finally:
        for proc in spinners:
            proc.terminate()
            proc.join(5)
        await bridge.stop()
        await bare_runner.cleanup()
        hole.close()
        log_stream.close()
    with sqlite3.connect(db_path) as conn:
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    tmp.cleanup()

    med = {kind: {k: statistics.median(r[k] for r in runs) for k in ("rate", "p50_ms", "p99_ms")}
           for kind, runs in results.items()}
    for kind in ("bare", "bridge"):
        m = med[kind]
        print(f"{kind:<6} median: {m['rate']:8.0f} deliveries/s  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms")
    print(f"bridge database: {jobs} jobs for {bridge_202} answers 202 "
          f"({'exact' if jobs == bridge_202 else 'MISMATCH'}); {calls} writer calls in {batches} commits "
          f"({calls / max(batches, 1):.1f} per commit)")
    pairs = [b["rate"] / a["rate"] for a, b in zip(results["bare"], results["bridge"])]
    print("ratio per round (bare and bridge measured back to back): " + ", ".join(f"{p:.2f}" for p in pairs))
    ratio = med["bridge"]["rate"] / med["bare"]["rate"]
    print(f"intake_ratio={ratio:.2f}")
    if jobs != bridge_202:
        raise SystemExit(1)
    return ratio


def run() -> None:
    args = parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    run()
