"""Scale benchmark: 1, 2 and 3 bridges on one PostgreSQL database against one bridge on SQLite, in
the same run: durable intake, and end to end (deliveries to users visible in WordPress).

    python bench/scale.py [--duration-s 5] [--connections 48] [--rounds 3] [--contacts 300]
                          [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--no-e2e]

Every bridge is a ``python -m bridge serve`` process (as an operator runs them), logging JSON
events at info level (to /dev/null). Each PostgreSQL set-up gets a database of its own, created
here and dropped at the end (``--pg`` names the server); the SQLite bridge a temporary file.

- intake: WordPress and the CRM point at a socket that accepts connections and never answers, so
  each worker's first jobs hang and what is measured is intake (as bench/intake.py). Each run
  starts its set-up's bridges on a fresh database (and stops them after), so no other bridge runs
  meanwhile. One load process (``multiprocessing``,
  spawn, uvloop) keeps CONNECTIONS keep-alive connections, one request in flight each, spread
  evenly over the set-up's bridges, every body a distinct ~200-byte delivery (bench/intake.py's
  load generator). Rounds alternate the order of the set-ups; medians are reported. After each
  run the database must hold exactly as many jobs as 202 answers were counted: durable intake.
  Before each run a PostgreSQL ``CHECKPOINT`` flushes the writes of the run before (it would
  otherwise land in the next run, whichever set-up that is).
- the same PostgreSQL intake with ``database.notify = false`` (bridges wake each other by polling
  only), one and three bridges: what NOTIFY per commit costs at high intake.
- CPU: each run prints the CPU the bridges, their PostgreSQL server processes, the loader (and
  end to end, WordPress's PHP and MariaDB) used, and the whole machine's.
- end to end (unless ``--no-e2e``): the local WordPress stack (started when none runs); a generic
  connection that takes the contact from the delivery (no CRM fetch, as bench/sync.py);
  CONTACTS ``add`` deliveries for new contacts, 32 senders spread over the bridges; the rate runs
  from the first delivery sent to the last job done, and WordPress must then hold every user.

The last line is ``pg_intake_ratio=R``: one PostgreSQL bridge's durable intake over SQLite's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bridge.cli_common import run_async  # noqa: E402
from intake import _Connection, _Load, make_body  # noqa: E402,F401 - the load generator, shared

KEY = "bench-access-key-1"
E2E_SENDERS = 32
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
# name, backend, bridges, NOTIFY on
E2E_SETUPS = [("sqlite", "sqlite", 1, True), ("pg1", "postgresql", 1, True), ("pg2", "postgresql", 2, True),
              ("pg3", "postgresql", 3, True)]
INTAKE_SETUPS = [*E2E_SETUPS, ("pg1-poll", "postgresql", 1, False), ("pg3-poll", "postgresql", 3, False)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per intake run")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--connections", type=int, default=48, help="concurrent keep-alive connections")
    p.add_argument("--rounds", type=int, default=3, help="intake rounds, set-ups alternating (default 3)")
    p.add_argument("--contacts", type=int, default=300, help="users created per end-to-end run (default 300)")
    p.add_argument("--e2e-rounds", type=int, default=1, help="end-to-end rounds (default 1)")
    p.add_argument("--pg", default=os.environ.get("WPSB_TEST_PG", PG_DEFAULT),
                   help="the PostgreSQL server (a database per set-up is created on it and dropped)")
    p.add_argument("--no-e2e", action="store_true", help="intake only (no WordPress needed)")
    p.add_argument("--no-poll", action="store_true",
                   help="leave out the database.notify = false set-ups (for code without that setting)")
    return p.parse_args(argv)


# --- the load generator (its own process) --------------------------------------------------------


async def _run_load(ports: list[int], connections: int, prefix: str, warmup_s: float,
                    duration_s: float) -> dict[str, Any]:
    load = _Load("127.0.0.1", ports[0], "/?wpf_action=add&access_key=" + KEY, prefix, warmup_s, duration_s)
    cpu0 = time.process_time()
    conns = []
    for i in range(connections):
        port = ports[i % len(ports)]
        _, proto = await load.loop.create_connection(lambda: _Connection(load), "127.0.0.1", port)
        conns.append(proto)
    await asyncio.gather(*(c.closed for c in conns))  # every request sent is answered: counts are exact
    lat = sorted(load.latencies_s)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"rate": load.measured / duration_s, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "statuses": load.statuses, "loader_cpu_s": time.process_time() - cpu0}


def load_process(conn: Any, *args: Any) -> None:
    """Child process entry: the load on uvloop when installed (the loader must not be the limit)."""
    conn.send(run_async(_run_load(*args)))
    conn.close()


async def measure(ports: list[int], prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=load_process, args=(child, ports, args.connections, prefix, args.warmup_s,
                                                  args.duration_s))
    proc.start()
    child.close()
    try:
        return await asyncio.to_thread(parent.recv)
    finally:
        await asyncio.to_thread(proc.join, 30)


# --- CPU accounting -------------------------------------------------------------------------------


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the live processes ``pids`` used so far (/proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far, all CPUs (/proc/stat: all but idle, iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants (the SQLite bridge's writer process, for one)."""
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    return out


def pids_with(*needles: str) -> list[int]:
    """The processes whose command line holds every one of ``needles``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                out.append(int(entry.name))
    return out


class CpuShare:
    """CPU used by groups of processes between ``start()`` and ``stop()``, as % of one CPU."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def start(self) -> "CpuShare":
        self.t0, self.busy0 = time.perf_counter(), machine_busy_s()
        self.cpu0 = {name: cpu_s(pids) for name, pids in self.groups.items()}
        return self

    def stop(self, **known_s: float) -> str:
        """The shares as one line; ``known_s`` adds CPU seconds measured elsewhere (the loader's)."""
        wall_s = time.perf_counter() - self.t0
        used = {name: cpu_s(pids) - self.cpu0[name] for name, pids in self.groups.items()} | known_s
        parts = [f"{name} {100 * cpu / wall_s:.0f}%" for name, cpu in used.items()]
        machine = 100 * (machine_busy_s() - self.busy0) / wall_s
        return f"cpu: {', '.join(parts)}; machine {machine:.0f}% of {100 * (os.cpu_count() or 1)}%"


# --- the bridges -----------------------------------------------------------------------------------


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def black_hole() -> socket.socket:
    """A listening socket never accepted from: connections open, no answer ever comes (intake:
    each worker's first jobs hang, so the workers stay idle, as in bench/intake.py)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


_HOLE: list[socket.socket] = []  # made at the first intake config (not in the load processes)


def hole_port() -> int:
    if not _HOLE:
        _HOLE.append(black_hole())
    return _HOLE[0].getsockname()[1]


def config_text(port: int, database: str, notify: bool, wordpress: dict[str, str] | None) -> str:
    """A bridge's TOML: WordPress and the CRM in the black hole for intake, else the stack with a
    generic connection whose deliveries are the record."""
    notify_line = "" if notify else "notify = false\n"
    head = f"""log_level = "info"
[server]
host = "127.0.0.1"
port = {port}
access_keys = ["{KEY}"]
[database]
{database}
{notify_line}"""
    if wordpress is None:
        return head + """[worker]
http_attempts = 1
shutdown_grace_s = 1
[wordpress]
url = "http://127.0.0.1:{hole}"
application_password = "abcd efgh ijkl mnop"
timeout_s = 86400
[connections.customerly]
crm = "customerly"
base_url = "http://127.0.0.1:{hole}/customerly/v1"
secrets = {{ token = "bench-token" }}
""".format(hole=hole_port())
    return head + f"""[worker]
shutdown_grace_s = 5
[wordpress]
url = "{wordpress['WPSB_WP_URL']}"
username = "{wordpress['WPSB_WP_USER']}"
application_password = "{wordpress['WPSB_WP_APP_PASSWORD']}"
allowed_roles = ["subscriber"]
[connections.bench]
crm = "generic"
fetch_contact = false
[connections.bench.connector]
contact_id_paths = ["contact.id"]
email_paths = ["contact.email"]
record_path = "contact"
meta_prefix = "bench"
[connections.bench.connector.fields]
email = "user_email"
first_name = "first_name"
last_name = "last_name"
"""


class Setup:
    """One set-up's bridges (``serve`` processes) on one database of its own."""

    def __init__(self, name: str, backend: str, bridges: int, notify: bool, workdir: Path, pg: str,
                 wordpress: dict[str, str] | None) -> None:
        self.name, self.backend, self.notify = name, backend, notify
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.pg_admin = pg
        if backend == "postgresql":
            self.dbname = f"wpsb_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            self.url = f"{pg.rsplit('/', 1)[0]}/{self.dbname}"
            _pg_admin(pg, f'CREATE DATABASE "{self.dbname}"')
            database = f'url = "{self.url}"'
        else:
            self.dbname, self.url = None, None
            database = f'path = "{self.workdir / "bridge.db"}"'
        self.ports = [free_port() for _ in range(bridges)]
        self.procs: list[subprocess.Popen] = []
        self._reader: Any = None
        for i, port in enumerate(self.ports):
            config = self.workdir / f"bridge{i}.toml"
            config.write_text(config_text(port, database, notify, wordpress))
            command = [sys.executable, "-m", "bridge", "serve", "--config", str(config)]
            self.procs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, start_new_session=True))

    async def healthy(self) -> None:
        await _healthy(self.ports, self.procs)

    def jobs(self, status: str | None = None) -> int:
        """Jobs in the set-up's database (with ``status``), read on a connection of this process."""
        where = f" WHERE status = '{status}'" if status else ""
        if self.url is not None:
            import psycopg

            if self._reader is None:
                self._reader = psycopg.connect(self.url, autocommit=True)
            return self._reader.execute("SELECT COUNT(*) FROM jobs" + where).fetchone()[0]
        with closing(sqlite3.connect(self.workdir / "bridge.db")) as conn:
            return conn.execute("SELECT COUNT(*) FROM jobs" + where).fetchone()[0]

    def cpu_groups(self) -> dict[str, list[int]]:
        """The bridges' processes (the SQLite writer process included) and, on PostgreSQL, the
        server processes serving this set-up's database."""
        bridges = with_children([p.pid for p in self.procs])
        if self.url is None:
            return {"bridges": bridges}
        import psycopg

        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            backends = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                   (self.dbname,))]
        return {"bridges": bridges, "postgres": backends}

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self.dbname is not None:
            _pg_admin(self.pg_admin, f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


async def _healthy(ports: list[int], procs: list[subprocess.Popen], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        for port, proc in zip(ports, procs):
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"a bridge exited with {proc.returncode} at start-up")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"a bridge on port {port} not healthy within {timeout_s} s")
                await asyncio.sleep(0.1)


# --- the phases --------------------------------------------------------------------------------------


async def intake_phase(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    """Each run on fresh bridges and a fresh database, the set-up's alone (no idle bridges of the
    other set-ups running meanwhile); rounds alternate the order of the set-ups."""
    setups = E2E_SETUPS if args.no_poll else INTAKE_SETUPS
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in setups}
    for rnd in range(1, args.rounds + 1):
        for spec in setups if rnd % 2 else setups[::-1]:
            # The writes of the run before are flushed first, so that no run pays for another's.
            _pg_admin(args.pg, "CHECKPOINT")
            s = Setup(*spec, workdir / f"intake{rnd}", args.pg, None)
            try:
                await s.healthy()
                share = CpuShare(s.cpu_groups()).start()
                r = await measure(s.ports, f"{s.name}-{rnd}-{os.getpid()}", args)
                r["cpu"] = share.stop(loader=r["loader_cpu_s"])
                r["stored"] = s.jobs()
            finally:
                s.stop()
            runs[s.name].append(r)
            answered = r["statuses"].get(202, 0)
            others = {k: v for k, v in r["statuses"].items() if k != 202}
            print(f"  intake {s.name:<8} round {rnd}: {r['rate']:8.0f}/s  p50 {r['p50_ms']:6.2f} ms"
                  f"  p99 {r['p99_ms']:6.2f} ms  {r['stored']} jobs stored for {answered} 202s"
                  + (f"  non-202: {others}" if others else "") + f"\n    {r['cpu']}", flush=True)
            if r["stored"] != answered:
                raise SystemExit(f"{s.name}: {r['stored']} jobs in the database for {answered} answers 202")
    return {name: {k: statistics.median(r[k] for r in rs) for k in ("rate", "p50_ms", "p99_ms")}
            for name, rs in runs.items()}


async def e2e_run(s: Setup, contacts: int, tag: str, wp: dict[str, str]) -> tuple[float, str]:
    """CONTACTS adds spread over the set-up's bridges: (users/s from the first send to the last
    job done, the CPU shares meanwhile)."""
    urls = [f"http://127.0.0.1:{p}/?wpf_action=add&access_key={KEY}" for p in s.ports]
    todo = list(range(contacts))

    async def sender(session: aiohttp.ClientSession, k: int) -> None:
        while todo:
            i = todo.pop()
            body = {"contact": {"id": f"{tag}-{i}", "email": f"{tag}-{i}@example.com", "first_name": "Scale",
                                "last_name": f"N{i}"}}
            async with session.post(urls[(i + k) % len(urls)], json=body) as resp:
                assert resp.status == 202, await resp.text()

    stack = wp["WPSB_STACK_DIR"]
    php = pids_with("php", f"-S 127.0.0.1:{wp['WPSB_WP_URL'].rsplit(':', 1)[1]}")
    share = CpuShare({**s.cpu_groups(), "php": php,
                      "mariadb": pids_with("mariadbd", stack) or pids_with("mysqld", stack)}).start()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=E2E_SENDERS)) as session:
        await asyncio.gather(*(sender(session, k) for k in range(E2E_SENDERS)))
    while s.jobs("done") < contacts:
        if s.jobs("dead"):
            raise SystemExit(f"{s.name}: dead jobs in the end-to-end run")
        await asyncio.sleep(0.05)
    took_s = time.perf_counter() - started
    cpu = share.stop()
    users = wordpress_users(wp, tag)
    if users != contacts:
        raise SystemExit(f"{s.name}: WordPress holds {users} users of {contacts}")
    return contacts / took_s, cpu


def wordpress_users(wp: dict[str, str], tag: str) -> int:
    out = subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={wp['WPSB_DB_SOCKET']}", "-u", wp["WPSB_DB_USER"],
         f"-p{wp['WPSB_DB_PASSWORD']}", "-N", "-B", wp["WPSB_DB_NAME"], "-e",
         f"SELECT COUNT(*) FROM wp_users WHERE user_email LIKE '{tag}-%'"],
        check=True, capture_output=True, text=True).stdout
    return int(out.strip())


async def e2e_phase(args: argparse.Namespace, workdir: Path, wp: dict[str, str]) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name, *_ in E2E_SETUPS}
    for rnd in range(1, args.e2e_rounds + 1):
        specs = E2E_SETUPS if rnd % 2 else E2E_SETUPS[::-1]
        for spec in specs:
            s = Setup(*spec, workdir / f"e2e{rnd}", args.pg, wp)
            try:
                await s.healthy()
                rate, cpu = await e2e_run(s, args.contacts, f"scale{uuid.uuid4().hex[:8]}", wp)
            finally:
                s.stop()
            rates[s.name].append(rate)
            print(f"  e2e    {s.name:<8} round {rnd}: {rate:8.1f} users/s ({args.contacts} created)"
                  f"\n    {cpu}", flush=True)
    return {name: statistics.median(r) for name, r in rates.items()}


async def main(args: argparse.Namespace) -> float:
    print(f"scale benchmark: {args.connections} connections, {args.warmup_s:g} s warm-up"
          f" + {args.duration_s:g} s per intake run, {args.rounds} round(s); {os.cpu_count()} CPUs,"
          f" load average {os.getloadavg()[0]:.1f}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="wpsb-scale-")
    workdir = Path(tmp.name)
    try:
        intake = await intake_phase(args, workdir)
        e2e: dict[str, float] = {}
        if not args.no_e2e:
            from sync import stack_env

            wp, started = stack_env()
            try:
                e2e = await e2e_phase(args, workdir, wp)
            finally:
                if started:
                    subprocess.run([str(ROOT / "scripts" / "wordpress-stack"), "down"], check=False)
    finally:
        tmp.cleanup()
    sqlite = intake["sqlite"]["rate"]
    for name, m in intake.items():
        print(f"intake {name:<8} median: {m['rate']:8.0f} deliveries/s ({m['rate'] / sqlite:.2f}x sqlite)"
              f"  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms")
    for name in () if args.no_poll else ("pg1", "pg3"):
        polled = intake[f"{name}-poll"]["rate"]
        print(f"notify cost, {name}: {intake[name]['rate']:.0f}/s with NOTIFY, {polled:.0f}/s polling only "
              f"({intake[name]['rate'] / polled:.2f}x)")
    for name, rate in e2e.items():
        print(f"e2e    {name:<8} median: {rate:8.1f} users/s ({rate / e2e['sqlite']:.2f}x sqlite)")
    ratio = intake["pg1"]["rate"] / sqlite
    print(f"pg_intake_ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
