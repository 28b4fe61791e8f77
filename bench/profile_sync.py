"""Where the time of ``bench/sync.py``'s bridge side goes, phase by phase (creates, changed and
unchanged updates): the rate, when the last delivery was acknowledged (the intake's share of the
phase), the mean batch size, and the CPU each process spent per user, read from /proc: the sender
(a process of its own, as in ``bench/sync.py``), the bridge process, the database writer child,
the ``php -S`` workers and MariaDB. First, what WordPress spends (PHP and MariaDB
CPU) on one batch request of 1, 4, 10, 25 and 50 unchanged users, one request at a time.

    python bench/profile_sync.py [--contacts 300] [--concurrency 4] [--rounds 2] [--client lean|aiohttp]

On a 2-core machine the sum of the CPU columns times the rate, against 2,000 ms per second, says
whether the phase was CPU-bound. The intake alone at the same concurrency is measured by
``python bench/intake.py --connections 4``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync  # noqa: E402  (bench/sync.py: the same stack, settings and sender)

from bridge.app import Bridge  # noqa: E402
from bridge.cli_common import run_async  # noqa: E402
from bridge.clients.wordpress import UpsertRequest, make_wordpress  # noqa: E402
from bridge.logs import configure  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def stack_processes(env: dict[str, str]) -> dict[str, list[int]]:
    """The stack's MariaDB and PHP processes (the php -S parent and its workers), by their PID files."""
    pids = Path(env["WPSB_STACK_DIR"]) / "pids"
    php = int((pids / "php-server.pid").read_text())
    workers = [int(p) for p in Path(f"/proc/{php}/task/{php}/children").read_text().split()]
    return {"php": [php, *workers], "mariadb": [int((pids / "mariadbd.pid").read_text())]}


def batch_counters(bridge: Bridge) -> tuple[float, float]:
    """(batch requests, upserts in them) so far."""
    sample = bridge.metrics.registry.get_sample_value
    return sample("wpsb_wordpress_batches_total") or 0.0, sample("wpsb_wordpress_batch_items_total") or 0.0


async def wordpress_cost(env: dict[str, str], workdir: Path) -> None:
    """PHP + MariaDB CPU per unchanged user, by batch size, one request at a time."""
    settings = sync.Bridged(env, 1, workdir).settings("cost")
    wp = make_wordpress(settings)
    tag = uuid.uuid4().hex[:8]
    users = [UpsertRequest(email=f"cost-{tag}-{i}@example.com", first_name="Bench", last_name="Cost")
             for i in range(50)]
    procs = [p for pids in stack_processes(env).values() for p in pids]
    try:
        await wp.upsert_batch(users[:25])
        await wp.upsert_batch(users[25:])  # created: from here on every upsert is unchanged
        for size in (1, 4, 10, 25, 50):
            requests = max(4, 100 // size)
            before = sum(cpu_s(p) for p in procs)
            for r in range(requests):
                batch = users[(r * size) % 50:][:size] or users[:size]
                await (wp.upsert(batch[0]) if size == 1 else wp.upsert_batch(batch))
            used_ms = (sum(cpu_s(p) for p in procs) - before) * 1000
            print(f"WordPress CPU, batches of {size:2}: {used_ms / requests:5.1f} ms per request, "
                  f"{used_ms / requests / size:4.2f} ms per unchanged user", flush=True)
    finally:
        await wp.close()


async def profile(env: dict[str, str], n: int, concurrency: int, workdir: Path, sender: sync.Sender) -> None:
    """One bridge run through the three phases, printing a line per phase."""
    tag = uuid.uuid4().hex[:8]
    bridge = Bridge(sync.Bridged(env, concurrency, workdir).settings(tag))
    await bridge.start()
    # In-process, the bridge's column is the sender's too.
    procs = {**({"sender": [sender.pid]} if sender.pid is not None else {}), "bridge": [os.getpid()],
             "writer": [bridge.store.writer_pid], **stack_processes(env)}
    url = f"http://127.0.0.1:{bridge.port}/hooks/bench"
    params = {"wpf_action": "", "access_key": sync.KEY}

    def delivery(action: str, last: str, i: int) -> sync.Call:
        contact = {"email": f"prof-{tag}-{i}@example.com", "first_name": "Bench", "last_name": last}
        body = {"contact": contact, "delivery_id": uuid.uuid4().hex}
        return "POST", url, {**params, "wpf_action": action}, body, {}, 202

    try:
        phases = (("create", "add", lambda i: str(i)), ("changed", "update", lambda i: f"c-{i}"),
                  ("unchanged", "update", lambda i: f"c-{i}"))
        for phase, action, last in phases:
            before = {name: sum(cpu_s(p) for p in pids) for name, pids in procs.items()}
            batches0, items0 = batch_counters(bridge)
            calls = [delivery(action, last(i), i) for i in range(n)]
            recorded0 = sync.runs_recorded(bridge)
            started, acked, _ = await sender.send(calls, concurrency)
            took_s = await sync.recorded(bridge, recorded0, n) - started
            used = {name: sum(cpu_s(p) for p in pids) - before[name] for name, pids in procs.items()}
            batches, items = (a - b for a, b in zip(batch_counters(bridge), (batches0, items0)))
            cpu = "  ".join(f"{name} {used[name] / n * 1000:5.2f}" for name in procs)
            total_ms = sum(used.values()) / n * 1000
            print(f"{phase:<9} {n / took_s:7.1f} users/s  "
                  f"last ack at {(acked - started) / took_s:4.0%} of the phase  "
                  f"batch {items / batches if batches else 0:4.1f} avg  CPU ms/user: {cpu}  "
                  f"(all {total_ms:.2f}: {total_ms * n / took_s / 20:.0f}% of 2 cores)", flush=True)
    finally:
        await bridge.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sender", choices=("process", "in-process"), default="process")
    parser.add_argument("--client", choices=("lean", "aiohttp"), default="lean")
    args = parser.parse_args()
    configure("warning", "console")
    env, started_here = sync.stack_env()
    try:
        print(sync.wordpress_version(env), flush=True)
        async with sync.Sender(args.sender == "in-process", args.client) as sender:
            await sync.Direct(env, args.concurrency, sender).warm_up()
            with tempfile.TemporaryDirectory() as tmp:
                await wordpress_cost(env, Path(tmp))
                for _ in range(args.rounds):
                    await profile(env, args.contacts, args.concurrency, Path(tmp), sender)
    finally:
        if started_here:
            subprocess.run([str(sync.STACK), "down"], check=False, capture_output=True)


if __name__ == "__main__":
    run_async(main())  # as `serve` runs: on uvloop when installed
