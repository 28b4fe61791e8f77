"""End-to-end sync benchmark: the bridge against direct REST calls at the same concurrency, in the
same run, on the same WordPress, for creates, changed updates and unchanged updates; and the
latency from acknowledgement to user visible, at idle and under load.

    python bench/sync.py [--contacts 300] [--concurrency 4] [--rounds 3] [--idle 30]
                         [--sender process|in-process] [--client lean|aiohttp]

Starts the local WordPress stack (scripts/wordpress-stack; ``WPSB_WP_LINE`` chooses the WordPress
line where the stack offers several) when none is running and stops it again afterwards.

Both sides' requests come from one sender at the same concurrency. By default the sender is a
process of its own (``--sender process``), as a CRM or a REST client is: it shares the machine's
two cores but not the event loop of the bridge under test. ``--sender in-process`` runs it on the
bridge's event loop instead, as this benchmark did until plugin 2.2 (figures in the README). The
sender's HTTP client is ``bench/lean_http.py`` by default (``--client lean``: ~0.07 ms of CPU per
request here, against ~0.18 ms for aiohttp's, which ``--client aiohttp`` keeps): a CRM sends from
a machine of its own, so the less of this one its stand-in takes, the closer the figure is to a
deployment's.

Each round runs both sides, in alternating order, through three phases on users of its own:
- creates: direct ``POST wp/v2/users``; the bridge gets ``add`` deliveries for new contacts;
- changed updates: direct ``POST wp/v2/users/ID`` with a new last name; the bridge gets ``update``
  deliveries carrying it;
- unchanged updates: the same again with the same values.
A bridge rate runs from the first delivery sent to the last job done (every user written); a
direct rate from the first request sent to the last answer. The
bridge's connection takes the contact from the delivery (no CRM fetch), so both sides do the same
WordPress work. Latency is a job's ``updated_at - created_at`` in the bridge's own database: from
the commit that acknowledged the delivery to the commit that recorded the plugin's answer (which
WordPress gives after its own COMMIT, so the user is visible by then). At idle, one delivery at a
time, in turns with the reference: a second bridge with ``worker.batch_size = 1`` (one upsert per
request, as before batching) running beside it, so both see the same machine at the same moments;
under load, every job of the create phase. Prints every figure, and ``sync_ratio=`` (creates,
bridge rate / direct rate, medians) last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import lean_http  # noqa: E402  (bench/lean_http.py)

from bridge.app import Bridge  # noqa: E402
from bridge.cli_common import run_async  # noqa: E402
from bridge.clients.http import basic_auth  # noqa: E402
from bridge.logs import configure  # noqa: E402
from bridge.settings import load_settings  # noqa: E402

STACK = ROOT / "scripts" / "wordpress-stack"
KEY = "bench-access-key-1"
PHASES = ("create", "changed", "unchanged")


def stack_env() -> tuple[dict[str, str], bool]:
    """The running stack's environment, starting it if needed: (env, started_here)."""
    started = subprocess.run([str(STACK), "status"], capture_output=True).returncode != 0
    if started:
        print("starting the local WordPress stack ...", flush=True)
        subprocess.run([str(STACK), "up"], check=True, capture_output=True)
    out = subprocess.run([str(STACK), "env"], check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env, started


async def gather_limited(n: int, concurrency: int, make: Callable[[int], Awaitable[None]]) -> None:
    """Run ``make(0..n-1)`` with at most ``concurrency`` in flight."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def runner() -> None:
        while not queue.empty():
            await make(queue.get_nowait())

    await asyncio.gather(*(runner() for _ in range(concurrency)))


# A request the sender makes: (method, url, query, JSON body, headers, the status it must get).
Call = tuple[str, str, dict[str, str], Any, dict[str, str], int]


async def send_all(session: aiohttp.ClientSession, calls: list[Call], concurrency: int) -> list[Any]:
    """Every call, at most ``concurrency`` in flight: their JSON answers, in order."""
    answers: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        method, url, params, body, headers, want = calls[i]
        async with session.request(method, url, params=params, json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != want:
                raise RuntimeError(f"{url} answered {resp.status}, not {want}: {text[:300]}")
            answers[i] = json.loads(text)

    await gather_limited(len(calls), concurrency, one)
    return answers


def send_with(client: str, session: aiohttp.ClientSession, calls: list[Call], concurrency: int
              ) -> Awaitable[list[Any]]:
    """``send_all`` through the ``client`` named: lean (``bench/lean_http.py``) or aiohttp's."""
    if client == "lean":
        return lean_http.send_all(calls, concurrency)
    return send_all(session, calls, concurrency)


def sender_main(conn: Any, client: str = "lean") -> None:
    """The sender process: runs each list of calls it is sent, answers (started, ended, answers)
    with monotonic times (one clock for every process on the machine), until it gets None.
    ``client``: lean (``bench/lean_http.py``) or aiohttp."""
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while (msg := await loop.run_in_executor(None, conn.recv)) is not None:
                calls, concurrency = msg
                started = time.monotonic()
                try:
                    answers = await send_with(client, session, calls, concurrency)
                except Exception as exc:  # handed to the parent, which raises it
                    conn.send(("error", f"{type(exc).__name__}: {exc}"))
                    continue
                conn.send(("ok", (started, time.monotonic(), answers)))

    run_async(serve())


class Sender:
    """Sends lists of calls, in a process of its own or on this event loop (``in_process``), with
    the ``client`` named (lean or aiohttp)."""

    def __init__(self, in_process: bool, client: str = "lean") -> None:
        self.in_process = in_process
        self.client = client
        self._session: aiohttp.ClientSession | None = None
        self._conn: Any = None
        self._proc: Any = None

    @property
    def pid(self) -> int | None:
        """The sender process's PID (None in-process)."""
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> "Sender":
        if self.in_process:
            self._session = aiohttp.ClientSession()
        else:
            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=sender_main, args=(child, self.client), daemon=True)
            self._proc.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            self._conn.send(None)
            self._proc.join(10)

    async def send(self, calls: list[Call], concurrency: int) -> tuple[float, float, list[Any]]:
        """(monotonic time of the first send, of the last answer, the answers in order)."""
        if self._session is not None:
            started = time.monotonic()
            answers = await send_with(self.client, self._session, calls, concurrency)
            return started, time.monotonic(), answers
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._conn.send, (calls, concurrency))
        status, value = await loop.run_in_executor(None, self._conn.recv)
        if status != "ok":
            raise RuntimeError(value)
        return value


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Direct:
    """Core REST calls with an application password: creates, then updates of the same users."""

    def __init__(self, env: dict[str, str], concurrency: int, sender: Sender) -> None:
        self.env = env
        self.concurrency = concurrency
        self.sender = sender
        self.base = env["WPSB_WP_URL"] + "/"
        self.headers = {"Authorization": basic_auth(env["WPSB_WP_USER"], env["WPSB_WP_APP_PASSWORD"])}

    def call(self, route: str, body: dict[str, Any], want: int) -> Call:
        return "POST", self.base, {"rest_route": route}, body, self.headers, want

    async def run(self, n: int) -> dict[str, float]:
        """Users per second for each phase, on ``n`` users made for this run."""
        tag = uuid.uuid4().hex[:8]
        creates = [self.call("/wp/v2/users", {
            "username": f"direct-{tag}-{i}@example.com", "email": f"direct-{tag}-{i}@example.com",
            "password": uuid.uuid4().hex, "first_name": "Bench", "last_name": str(i), "roles": ["subscriber"],
        }, 201) for i in range(n)]
        rates: dict[str, float] = {}
        started, ended, answers = await self.sender.send(creates, self.concurrency)
        rates["create"] = n / (ended - started)
        ids = [a["id"] for a in answers]
        updates = [self.call(f"/wp/v2/users/{ids[i]}", {"first_name": "Bench", "last_name": f"changed-{i}"},
                             200) for i in range(n)]
        for phase in ("changed", "unchanged"):  # the same values twice: changed, then unchanged
            started, ended, _ = await self.sender.send(updates, self.concurrency)
            rates[phase] = n / (ended - started)
        return rates

    async def warm_up(self) -> None:
        """A few creates and updates so that neither side pays for a cold opcache or buffer pool."""
        await self.run(12)


class Bridged:
    """The bridge in this process, fed webhooks at the same concurrency."""

    def __init__(self, env: dict[str, str], concurrency: int, workdir: Path, sender: Sender | None = None,
                 **worker: Any) -> None:
        self.env = env
        self.concurrency = concurrency
        self.workdir = workdir
        self.sender = sender
        self.worker = worker

    def settings(self, tag: str) -> Any:
        """The bridge's settings: WordPress as in the stack, one generic connection, no CRM fetch."""
        env = self.env
        return load_settings(None, **{
            "log_level": "warning",
            "server": {"port": 0, "access_keys": [KEY]},
            "database": {"path": str(self.workdir / f"bench-{tag}.db")},
            "worker": {"concurrency": self.concurrency, "poll_interval_s": 0.5, **self.worker},
            "wordpress": {"url": env["WPSB_WP_URL"], "username": env["WPSB_WP_USER"],
                          "application_password": env["WPSB_WP_APP_PASSWORD"],
                          "max_connections": self.concurrency},
            "connections": {"bench": {"crm": "generic", "fetch_contact": False, "connector": {
                "contact_id_paths": ["contact.email"], "email_paths": ["contact.email"], "record_path": "contact",
                "fields": {"email": "user_email", "first_name": "first_name", "last_name": "last_name"},
                "meta_prefix": "bench"}}},
        })

    async def run(self, n: int, idle: int, reference: "Bridged | None" = None
                  ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Users per second for each phase, and latencies (s): creates under load (``load``), and
        ``idle`` creates one delivery at a time (``idle``). With a ``reference`` (another
        configuration), the idle deliveries alternate between this bridge and the reference's,
        which runs beside it from then on, so both are measured on the same machine at the same
        moments (``idle_reference``): run one after the other, the second ran on a site still
        settling the load phases' writes, and the two differed by that and not by their code."""
        assert self.sender is not None
        tag = uuid.uuid4().hex[:8]
        bridge = Bridge(self.settings(tag))
        await bridge.start()
        url = hook_url(bridge)
        rates: dict[str, float] = {}

        def contact(i: int, last: str) -> dict[str, str]:
            return {"email": f"bridge-{tag}-{i}@example.com", "first_name": "Bench", "last_name": last}

        ref: Bridge | None = None
        try:
            phases = {
                "create": ("add", lambda i: contact(i, str(i)), "created"),
                "changed": ("update", lambda i: contact(i, f"changed-{i}"), "updated"),
                "unchanged": ("update", lambda i: contact(i, f"changed-{i}"), "unchanged"),
            }
            load_jobs: list[int] = []
            for phase, (action, body, expected) in phases.items():
                before = runs_recorded(bridge)
                calls = [delivery(url, action, body(i)) for i in range(n)]
                started, _, answers = await self.sender.send(calls, self.concurrency)
                rates[phase] = n / (await recorded(bridge, before, n) - started)
                job_ids = [a["job_id"] for a in answers]
                await check_outcomes(bridge, job_ids, expected)
                if phase == "create":
                    load_jobs = job_ids
            sides = {"idle": bridge}
            if reference is not None:
                ref = Bridge(reference.settings(tag + "r"))
                await ref.start()
                sides["idle_reference"] = ref
            latencies = await idle_latencies(self.sender, sides, idle, tag)
            latencies["load"] = await job_latencies(bridge, load_jobs)
            return rates, latencies
        finally:
            await bridge.stop()
            if ref is not None:
                await ref.stop()


def hook_url(bridge: Bridge) -> str:
    """The bench connection's webhook URL on ``bridge``."""
    return f"http://127.0.0.1:{bridge.port}/hooks/bench"


def delivery(url: str, action: str, contact: dict[str, str]) -> Call:
    """A delivery to the bench connection. A delivery ID of its own: the unchanged phase repeats
    the changed one's contact, which the intake would otherwise answer as a duplicate."""
    body = {"contact": contact, "delivery_id": uuid.uuid4().hex}
    return "POST", url, {"wpf_action": action, "access_key": KEY}, body, {}, 202


async def idle_latencies(sender: Sender, bridges: dict[str, Bridge], n: int, tag: str
                         ) -> dict[str, list[float]]:
    """Latencies (s) of ``n`` creates sent one at a time to each bridge, each waiting until its
    bridge has recorded the job and is idle again (so only one is ever busy); the bridges take
    turns, in alternating order."""
    jobs: dict[str, list[int]] = {name: [] for name in bridges}
    names = list(bridges)
    for i in range(n):
        for name in (names if i % 2 == 0 else names[::-1]):
            bridge = bridges[name]
            contact = {"email": f"{name.replace('_', '-')}-{tag}-{i}@example.com", "first_name": "Idle"}
            before = runs_recorded(bridge)
            _, _, answers = await sender.send([delivery(hook_url(bridge), "add", contact)], 1)
            # The metrics counter, not the queue's counts every ms: those reads share the bridge's
            # process, cost more the more jobs its database holds, and made the bridge that had run
            # the load phases 1-2.5 ms slower at idle than a fresh one, whatever its batch size.
            await recorded(bridge, before, 1)
            jobs[name].append(answers[0]["job_id"])
    out = {}
    for name, bridge in bridges.items():
        await check_outcomes(bridge, jobs[name], "created")
        out[name] = await job_latencies(bridge, jobs[name])
    return out


def runs_recorded(bridge: Bridge) -> float:
    """Job runs recorded so far (done or dead, ``wpsb_jobs_total``), from the bridge's own metrics:
    no database read."""
    return sum(sample.value for family in bridge.metrics.jobs.collect() for sample in family.samples
               if sample.name.endswith("_total"))


async def recorded(bridge: Bridge, before: float, n: int, poll_s: float = 0.001,
                   limit_s: float = 600) -> float:
    """The monotonic time at which ``n`` more job runs than ``before`` were recorded, once nothing is
    queued or running either (``drained``). It watches a counter the worker bumps right after each
    result's commit rather than counting the queue every few ms: those reads would share the
    bridge's process (a thread, the GIL) with what is measured."""
    deadline = time.monotonic() + limit_s
    while runs_recorded(bridge) - before < n and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
    at = time.monotonic()
    await drained(bridge)
    return at


async def drained(bridge: Bridge, poll_s: float = 0.005) -> None:
    """Until nothing is queued or running."""
    while True:
        counts = await bridge.store.counts()
        if counts["queued"] == 0 and counts["running"] == 0:
            if counts["dead"]:
                raise RuntimeError(f"{counts['dead']} jobs died: see `wp-sync-bridge jobs list --status dead`")
            return
        await asyncio.sleep(poll_s)


async def check_outcomes(bridge: Bridge, job_ids: list[int], expected: str) -> None:
    """Every job did what the phase is about (else the figure would measure something else)."""
    outcomes = [((await bridge.store.get_job(j))["outcome"] or {}).get("outcome") for j in job_ids]
    wrong = [o for o in outcomes if o != expected]
    if wrong:
        raise RuntimeError(f"expected {len(job_ids)} {expected}, got {len(wrong)} others: {wrong[:5]}")


async def job_latencies(bridge: Bridge, job_ids: list[int]) -> list[float]:
    """Seconds from the acknowledging commit to the commit of the job's result."""
    out = []
    for job_id in job_ids:
        job = await bridge.store.get_job(job_id)
        out.append(job["updated_at"] - job["created_at"])
    return out


def wordpress_version(env: dict[str, str]) -> str:
    """The version of WordPress the stack serves, from the plugin's status."""
    import json
    import urllib.request

    req = urllib.request.Request(env["WPSB_WP_URL"] + "/?rest_route=/wp-sync-bridge/v1/status", headers={
        "Authorization": basic_auth(env["WPSB_WP_USER"], env["WPSB_WP_APP_PASSWORD"])})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status = json.loads(resp.read())
    return f"WordPress {status['wordpress_version']}, plugin {status['plugin_version']}, " \
           f"features {status.get('features', [])}"


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:6.1f} ms  p99 {percentile(values, 99) * 1000:6.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=300, help="users per phase and side (default 300)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight, both sides (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, sides in alternating order (default 3)")
    parser.add_argument("--idle", type=int, default=30, help="deliveries one at a time per round (default 30)")
    parser.add_argument("--sender", choices=("process", "in-process"), default="process",
                        help="where the requests come from: a process of their own (default), or the "
                             "bridge's event loop (this benchmark's method until plugin 2.2)")
    parser.add_argument("--client", choices=("lean", "aiohttp"), default="lean",
                        help="the sender's HTTP client: bench/lean_http.py (default) or aiohttp's "
                             "(this benchmark's until this change)")
    args = parser.parse_args()
    configure("warning", "console")
    env, started_here = stack_env()
    direct_rates: dict[str, list[float]] = {p: [] for p in PHASES}
    bridge_rates: dict[str, list[float]] = {p: [] for p in PHASES}
    latencies: dict[str, list[float]] = {"idle": [], "load": [], "idle_reference": []}
    try:
        print(f"{wordpress_version(env)}; sender: {args.sender}, client: {args.client}", flush=True)
        async with Sender(args.sender == "in-process", args.client) as sender:
            with tempfile.TemporaryDirectory() as tmp:
                direct = Direct(env, args.concurrency, sender)
                bridged = Bridged(env, args.concurrency, Path(tmp), sender)
                # Today's path for the idle reference: one upsert per request (worker.batch_size = 1).
                single = Bridged(env, args.concurrency, Path(tmp), sender, batch_size=1)
                await direct.warm_up()
                for rnd in range(args.rounds):
                    # Alternate the order so neither side always runs on a warmer (or fuller) site.
                    for side in (("direct", "bridge") if rnd % 2 == 0 else ("bridge", "direct")):
                        if side == "direct":
                            rates = await direct.run(args.contacts)
                            into = direct_rates
                        else:
                            rates, lat = await bridged.run(args.contacts, args.idle, reference=single)
                            into = bridge_rates
                            for key, values in lat.items():
                                latencies[key] += values
                        for phase in PHASES:
                            into[phase].append(rates[phase])
                        shown = "  ".join(f"{p} {rates[p]:7.1f}/s" for p in PHASES)
                        print(f"round {rnd + 1} {side:<6} {args.contacts} users at concurrency "
                              f"{args.concurrency}: {shown}", flush=True)
    finally:
        if started_here:
            subprocess.run([str(STACK), "down"], check=False, capture_output=True)
    ratios = {}
    for phase in PHASES:
        d, b = statistics.median(direct_rates[phase]), statistics.median(bridge_rates[phase])
        ratios[phase] = b / d
        print(f"{phase:<9} direct REST {d:7.1f} users/s  bridge {b:7.1f} users/s  ratio {b / d:5.2f}"
              f"  (medians of {len(direct_rates[phase])})")
    print(f"latency at idle (one delivery at a time): {ms(latencies['idle'])}  ({len(latencies['idle'])} jobs)")
    print(f"  the same with single upserts:           {ms(latencies['idle_reference'])}  "
          f"(worker.batch_size = 1, in turns with the above, {len(latencies['idle_reference'])} jobs)")
    print(f"latency under load (the create phase):    {ms(latencies['load'])}  ({len(latencies['load'])} jobs)")
    print(f"update_ratio={ratios['changed']:.2f} unchanged_ratio={ratios['unchanged']:.2f}")
    print(f"sync_ratio={ratios['create']:.2f}")


if __name__ == "__main__":
    run_async(main())  # as `serve` runs: on uvloop when installed
