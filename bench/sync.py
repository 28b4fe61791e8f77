"""End-to-end sync benchmark: N distinct contacts from webhook to WordPress user, against the same
number of direct REST creates at the same concurrency, in the same run, on the same WordPress.

    python bench/sync.py [--contacts 300] [--concurrency 4] [--rounds 4]

Starts the local WordPress stack (scripts/wordpress-stack) when none is running and stops it
again afterwards. Prints both rates and, last, ``sync_ratio=R`` (bridge rate / direct rate).
The bridge's connection takes the contact from the delivery (no CRM fetch), so both sides do the
same WordPress work: what is measured is the bridge's own overhead (intake, durable queue,
worker, plugin upsert with its per-email lock) against WordPress's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.app import Bridge  # noqa: E402
from bridge.clients.http import basic_auth  # noqa: E402
from bridge.logs import configure  # noqa: E402
from bridge.settings import load_settings  # noqa: E402

STACK = ROOT / "scripts" / "wordpress-stack"
KEY = "bench-access-key-1"


def stack_env() -> tuple[dict[str, str], bool]:
    """The running stack's environment, starting it if needed: (env, started_here)."""
    started = subprocess.run([str(STACK), "status"], capture_output=True).returncode != 0
    if started:
        print("starting the local WordPress stack ...", flush=True)
        subprocess.run([str(STACK), "up"], check=True, capture_output=True)
    out = subprocess.run([str(STACK), "env"], check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env, started


async def gather_limited(n: int, concurrency: int, make) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def runner() -> None:
        while not queue.empty():
            await make(queue.get_nowait())

    await asyncio.gather(*(runner() for _ in range(concurrency)))


async def direct(env: dict[str, str], n: int, concurrency: int) -> float:
    """Core REST creates (POST /wp/v2/users) with the same fields: users per second."""
    tag = uuid.uuid4().hex[:8]
    headers = {"Authorization": basic_auth(env["WPSB_WP_USER"], env["WPSB_WP_APP_PASSWORD"])}
    url = env["WPSB_WP_URL"] + "/?rest_route=/wp/v2/users"
    async with aiohttp.ClientSession(headers=headers) as session:
        async def create(i: int) -> None:
            email = f"direct-{tag}-{i}@example.com"
            body = {"username": email, "email": email, "password": uuid.uuid4().hex, "first_name": "Bench",
                    "last_name": str(i), "roles": ["subscriber"]}
            async with session.post(url, json=body) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"direct create answered {resp.status}: {await resp.text()}")

        started = time.perf_counter()
        await gather_limited(n, concurrency, create)
        return n / (time.perf_counter() - started)


async def bridged(env: dict[str, str], n: int, concurrency: int, workdir: Path) -> float:
    """Webhooks through the bridge until every user exists in WordPress: users per second."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(None, **{
        "log_level": "warning",
        "server": {"port": 0, "access_keys": [KEY]},
        "database": {"path": str(workdir / f"bench-{tag}.db")},
        "worker": {"concurrency": concurrency, "poll_interval_s": 0.5},
        "wordpress": {"url": env["WPSB_WP_URL"], "username": env["WPSB_WP_USER"],
                      "application_password": env["WPSB_WP_APP_PASSWORD"], "max_connections": concurrency},
        "connections": {"bench": {"crm": "generic", "fetch_contact": False, "connector": {
            "contact_id_paths": ["contact.email"], "email_paths": ["contact.email"], "record_path": "contact",
            "fields": {"email": "user_email", "first_name": "first_name", "last_name": "last_name"},
            "meta_prefix": "bench"}}},
    })
    bridge = Bridge(settings)
    await bridge.start()
    url = f"http://127.0.0.1:{bridge.port}/hooks/bench"
    try:
        async with aiohttp.ClientSession() as session:
            job_ids: list[int] = []

            async def send(i: int) -> None:
                body = {"contact": {"email": f"bridge-{tag}-{i}@example.com", "first_name": "Bench", "last_name": str(i)}}
                async with session.post(url, params={"wpf_action": "add", "access_key": KEY}, json=body) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"bridge answered {resp.status}: {await resp.text()}")
                    job_ids.append((await resp.json())["job_id"])

            started = time.perf_counter()
            await gather_limited(n, concurrency, send)
            while True:
                counts = await bridge.store.counts()
                if counts["queued"] == 0 and counts["running"] == 0:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            if counts["dead"]:
                raise RuntimeError(f"{counts['dead']} jobs died: see `wp-sync-bridge jobs list --status dead`")
            outcomes = [(await bridge.store.get_job(j))["outcome"]["outcome"] for j in job_ids]
            if outcomes.count("created") != n:
                raise RuntimeError(f"expected {n} created users, got {json.dumps(outcomes[:5])}...")
            return n / elapsed
    finally:
        await bridge.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # WordPress's own rate swings by +-15 % from run to run on a small VM: 4 alternating rounds of
    # 300 users each (about a minute in all) give a median that holds still.
    parser.add_argument("--contacts", type=int, default=300, help="users per run (default 300)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, both sides (default 4)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/bridge rounds (default 4)")
    args = parser.parse_args()
    configure("warning", "console")
    env, started_here = stack_env()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            await direct(env, 20, args.concurrency)  # warm-up: PHP opcache, MariaDB buffers
            direct_rates, bridge_rates = [], []
            for rnd in range(args.rounds):
                # Alternate the order so neither side always runs on a warmer (or fuller) site.
                order = ("direct", "bridge") if rnd % 2 == 0 else ("bridge", "direct")
                for side in order:
                    if side == "direct":
                        rate = await direct(env, args.contacts, args.concurrency)
                        direct_rates.append(rate)
                    else:
                        rate = await bridged(env, args.contacts, args.concurrency, Path(tmp))
                        bridge_rates.append(rate)
                    print(f"round {rnd + 1} {side:<6} {args.contacts} users at concurrency {args.concurrency}: {rate:7.1f} users/s", flush=True)
    finally:
        if started_here:
            subprocess.run([str(STACK), "down"], check=False, capture_output=True)
    d, b = statistics.median(direct_rates), statistics.median(bridge_rates)
    print(f"direct REST creates: {d:.1f} users/s (median of {len(direct_rates)})")
    print(f"bridge end to end:   {b:.1f} users/s (median of {len(bridge_rates)})")
    print(f"sync_ratio={b / d:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
