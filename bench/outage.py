"""WordPress outage benchmark: the bridge with its default worker settings while WordPress is
unreachable for a long while, then back.

    scripts/wordpress-stack up            # the local WordPress (see README)
    python bench/outage.py [--outage-s 600] [--jobs 200]

A TCP proxy in front of the local WordPress (``tests/fakes/tcp.py``) cuts every connection for
OUTAGE seconds; meanwhile JOBS ``add`` deliveries for distinct Customerly contacts (the fake CRM)
are queued. Printed: how many connections the bridge tried to open to WordPress during the
outage (probes and the readiness check, not jobs), the attempts the queued jobs spent, how many
jobs are dead, and how long after WordPress came back every job was done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.app import Bridge  # noqa: E402
from bridge.logs import configure  # noqa: E402
from bridge.settings import load_settings  # noqa: E402
from tests.fakes.crm import FakeCRM  # noqa: E402
from tests.fakes.tcp import Switch  # noqa: E402

KEY = "bench-access-key-1"


def stack_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "scripts" / "wordpress-stack"), "env"], check=True, capture_output=True,
                         text=True, env=os.environ).stdout
    env = {}
    for line in out.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


async def main(outage_s: float, jobs: int) -> None:
    configure("warning", "json", stream=open(os.devnull, "w"))
    wp = stack_env()
    crm = FakeCRM()
    await crm.start()
    switch = Switch(wp["WPSB_WP_URL"])
    await switch.start()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, **{
            "log_level": "warning",
            "server": {"host": "127.0.0.1", "port": 0, "access_keys": [KEY]},
            "database": {"path": str(Path(tmp) / "bridge.db")},
            "wordpress": {"url": switch.url, "username": wp["WPSB_WP_USER"],
                          "application_password": wp["WPSB_WP_APP_PASSWORD"]},
            "connections": {"customerly": {"crm": "customerly", "base_url": crm.customerly_base,
                                           "secrets": {"token": "cly-test-token"}}},
        })
        bridge = Bridge(settings)
        await bridge.start()
        import aiohttp

        url = f"http://127.0.0.1:{bridge.port}/"
        stamp = int(time.time())
        emails = [f"outage-{stamp}-{i}@example.com" for i in range(jobs)]
        for email in emails:
            crm.add_customerly_user(email, attributes={"first_name": "Outage"})
        async with aiohttp.ClientSession() as session:
            async def send(email: str) -> int:
                body = {"type": "user.updated", "data": {"user": {"data": {"email": email}}}}
                async with session.post(url, params={"wpf_action": "add", "access_key": KEY}, json=body) as resp:
                    return (await resp.json())["job_id"]

            switch.down()
            started = time.monotonic()
            ids = [await send(e) for e in emails]
            await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - started)))
            tried = switch.tried_while_down
            rows = [await bridge.store.get_job(i) for i in ids]
            spent = sum(r["attempts"] for r in rows)
            dead = sum(r["status"] == "dead" for r in rows)
            switch.back()
            back_at = time.monotonic()
            while True:
                counts = await bridge.store.counts()
                if counts["queued"] == 0 and counts["running"] == 0:
                    break
                await asyncio.sleep(0.5)
            drained_s = time.monotonic() - back_at
            counts = await bridge.store.counts()
        await bridge.stop()
    await switch.stop()
    await crm.stop()
    print(f"outage {outage_s:.0f} s, {jobs} jobs queued during it (default worker settings)")
    print(f"connections tried to WordPress during the outage: {tried} ({tried / (outage_s / 60):.1f}/min)")
    print(f"attempts spent by the {jobs} jobs during the outage: {spent}; dead at its end: {dead}")
    print(f"after WordPress came back: all done in {drained_s:.1f} s; done={counts['done']} dead={counts['dead']}")
    print(f"outage_dead={counts['dead']} outage_connections_per_min={tried / (outage_s / 60):.1f} drain_s={drained_s:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-s", type=float, default=600)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.outage_s, args.jobs))
