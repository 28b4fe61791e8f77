"""Three ``serve`` processes on one PostgreSQL database, as an operator runs them behind a load
balancer, against the real WordPress and the fake CRM: 2,000 deliveries over 200 contacts spread
across the three, one instance SIGKILLed mid-burst and restarted.

What is checked, and from what:
- every delivery is one job (the sender's ``webhook-id`` deduplicates the retries of a delivery cut
  off by the kill, whichever instance they reach) and every job ends done, run or coalesced;
- per-contact order, from WordPress: each delivery carries its contact's sequence number into the
  user meta ``journal_seq``, and a test-only mu-plugin (``wpsb-test-meta-journal.php``) journals
  every change of it in WordPress's commit order. Each user's journal must only go up and end at
  the last number: a job run out of order, or run again after a later one, writes a smaller one;
- no job run on two instances at once, from the instances' own records: a run that lost its job to
  another instance while still running is fenced out at its next write (``job.fenced_out``, never
  seen), only the killed process's leases are taken over (``queue.leases_expired`` names the owner,
  whose ID starts with the process ID), no job is finished twice (``job.done``), and a job ran more
  than once only when it was taken over from the killed process or retried after a failure;
- the generated passwords reach the fake CRM, one value per contact even where a write-back was
  repeated after the kill.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.plugin_actors import Site, link_journal_plugin
from tests.test_durability import Server, free_port, servers  # noqa: F401 - servers is a fixture

pytestmark = pytest.mark.wordpress

KEY = "multi-instance-access-key-1"
INSTANCES = 3
CONTACTS = 200
PER_CONTACT = 10  # seq 1 is the add (creates the user, writes its password back), 2..10 updates
SENDERS = 40
KILL_AFTER = 700  # acknowledged deliveries before instance 1 is SIGKILLed
DOWN_S = 2.0  # then restarted after this
LEASE_S = 4.0  # a dead instance's jobs are taken over after about this (renewals every lease_s / 3)
DRAIN_TIMEOUT_S = 90


def write_config(path: Path, port: int, url: str, wp_stack: dict[str, str], crm_base: str) -> Path:
    """One instance's TOML: the shared database, a generic connection whose deliveries are the
    record (no fetch: the sequence number comes from the delivery) and whose passwords go back to
    the fake CRM."""
    path.write_text(f"""
log_level = "info"
log_format = "json"
[server]
host = "127.0.0.1"
port = {port}
access_keys = ["{KEY}"]
[database]
url = "{url}"
[worker]
concurrency = 2
lease_s = {LEASE_S}
poll_interval_s = 0.5
retry_base_s = 0.2
retry_max_s = 1.0
http_backoff_s = 0.05
shutdown_grace_s = 5
[wordpress]
url = "{wp_stack['WPSB_WP_URL']}"
username = "{wp_stack['WPSB_WP_USER']}"
application_password = "{wp_stack['WPSB_WP_APP_PASSWORD']}"
timeout_s = 30
[connections.shop]
crm = "generic"
base_url = "{crm_base}"
fetch_contact = false
secrets = {{ key = "gen-key" }}
return_password_field = "wp_password"
[connections.shop.connector]
headers = {{ "X-Api-Key" = "{{{{secrets.key}}}}" }}
contact_id_paths = ["contact.id"]
email_paths = ["contact.email"]
record_path = "contact"
meta_prefix = "shop"
[connections.shop.connector.write_back]
method = "PATCH"
path = "/contacts/{{{{contact_id}}}}"
json_body = {{ fields = "{{{{attributes}}}}" }}
[connections.shop.connector.fields]
email = "user_email"
last_name = "last_name"
seq = "meta.journal_seq"
""")
    return path


def delivery(tag: str, contact: int, seq: int) -> dict:
    email = f"{tag}-{contact:03d}@example.com"
    return {"contact": {"id": f"{tag}-{contact:03d}", "email": email, "last_name": f"Seq{seq}", "seq": seq}}


class Burst:
    """Sends every contact's deliveries in order (the next once the last is acknowledged), each to
    an instance of its own in turn; a delivery that finds its instance down or is cut off goes to
    the next one with the same ``webhook-id``, as a load balancer and a retrying sender would."""

    def __init__(self, tag: str, servers: list[Server], on_ack) -> None:
        self.tag = tag
        self.servers = servers
        self.on_ack = on_ack
        self.acked: dict[tuple[int, int], tuple[int, int]] = {}  # (contact, seq) -> (status, job id)
        self.acked_by: Counter = Counter()  # Server -> deliveries it acknowledged
        self.retries = 0

    async def _send(self, session: aiohttp.ClientSession, contact: int, seq: int) -> None:
        params = {"wpf_action": "add" if seq == 1 else "update", "access_key": KEY}
        headers = {"webhook-id": f"{self.tag}-{contact}-{seq}"}
        body = delivery(self.tag, contact, seq)
        turn = contact + seq
        for _ in range(200):
            server = self.servers[turn % len(self.servers)]
            turn += 1
            try:
                async with session.post(server.url + "/hooks/shop", params=params, json=body,
                                        headers=headers) as resp:
                    answer = await resp.json()
                    if resp.status in (200, 202):
                        self.acked[(contact, seq)] = (resp.status, answer["job_id"])
                        self.acked_by[server] += 1
                        self.on_ack(len(self.acked))
                        return
                    assert resp.status == 503, (resp.status, answer)
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError):
                pass
            self.retries += 1
            await asyncio.sleep(0.02)
        raise AssertionError(f"delivery {contact}/{seq} never acknowledged")

    async def run(self) -> None:
        contacts = list(range(CONTACTS))
        random.Random(14).shuffle(contacts)
        lanes = [contacts[i::SENDERS] for i in range(SENDERS)]

        async def lane(session: aiohttp.ClientSession, mine: list[int]) -> None:
            # Interleave this lane's contacts, each one's deliveries still in order.
            for seq in range(1, PER_CONTACT + 1):
                for contact in mine:
                    await self._send(session, contact, seq)

        timeout = aiohttp.ClientTimeout(total=15)
        connector = aiohttp.TCPConnector(limit=SENDERS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(lane(session, mine) for mine in lanes))


def events(servers: list[Server]) -> list[dict]:
    """Every JSON log event of every process started (the killed one's included)."""
    out = []
    for server in servers:
        for line in server.log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


async def drained(url: str, timeout_s: float) -> dict[str, int]:
    """Wait until no job is queued or running; the counts per status."""
    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg.connect(url) as conn:
            counts = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        if not counts.get("queued") and not counts.get("running"):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained within {timeout_s} s: {counts}")
        await asyncio.sleep(0.5)


async def test_three_instances_one_killed_keep_every_delivery_once_in_order(
        tmp_path, wp_stack, fake_crm, pg_url, servers):
    """2,000 deliveries over 200 contacts across three instances, one SIGKILLed mid-burst and
    restarted: one job per delivery, all done; each user's journal of sequence numbers only goes
    up, to the last; no job ran on two instances at once; one password per contact in the CRM."""
    started_s = time.monotonic()
    site = Site(wp_stack)
    link_journal_plugin(site)
    tag = f"mi{uuid.uuid4().hex[:6]}"
    for contact in range(CONTACTS):
        fake_crm.add_generic_contact(f"{tag}-{contact:03d}", {"email": f"{tag}-{contact:03d}@example.com"})
    configs = []
    for i in range(INSTANCES):
        port = free_port()
        config = write_config(tmp_path / f"bridge{i}.toml", port, pg_url, wp_stack, fake_crm.generic_base)
        configs.append((config, port))
    instances = [Server(config, port, tmp_path / f"bridge{i}.log")
                 for i, (config, port) in enumerate(configs)]
    servers.extend(instances)
    await asyncio.gather(*(s.wait_healthy(30) for s in instances))

    victim = instances[1]
    killed_pid = victim.proc.pid
    kill = asyncio.get_running_loop().create_future()

    def on_ack(count: int) -> None:
        if count >= KILL_AFTER and not kill.done():
            victim.signal_group(signal.SIGKILL)
            kill.set_result(time.monotonic())

    burst = Burst(tag, instances, on_ack)
    sending = asyncio.ensure_future(burst.run())
    await asyncio.wait([kill, sending], return_when=asyncio.FIRST_COMPLETED, timeout=60)
    assert kill.done(), "the burst ended before the kill"
    assert victim.proc.wait(10) == -signal.SIGKILL
    await asyncio.sleep(DOWN_S)
    restarted = Server(configs[1][0], configs[1][1], tmp_path / "bridge1-restarted.log")
    servers.append(restarted)
    await restarted.wait_healthy(30)
    instances[1] = restarted  # the senders reach the new process at the same address
    await sending
    sent_s = time.monotonic() - started_s
    counts = await drained(pg_url, DRAIN_TIMEOUT_S)
    everything = [*servers]

    # One job per delivery, all done (run, or coalesced into a run).
    assert len(burst.acked) == CONTACTS * PER_CONTACT and burst.retries > 0  # some were cut off by the kill
    with psycopg.connect(pg_url) as conn:
        jobs = conn.execute("SELECT id, payload, status, attempts, merged_into FROM jobs").fetchall()
        retried = {r[0] for r in conn.execute(
            "SELECT DISTINCT job_id FROM job_history WHERE event = 'retry'")}
    assert counts == {"done": CONTACTS * PER_CONTACT}, counts
    by_delivery = Counter()
    for _, payload, _, _, _ in jobs:
        record = json.loads(payload)["body"]["contact"]
        by_delivery[(record["id"], record["seq"])] += 1
    assert len(by_delivery) == CONTACTS * PER_CONTACT and set(by_delivery.values()) == {1}
    assert {job_id for _, job_id in burst.acked.values()} == {j[0] for j in jobs}

    # Order, as WordPress committed it: each user's journal only goes up and ends at the last.
    journal: dict[str, list[int]] = defaultdict(list)
    for line in site.sql(
            "SELECT u.user_email, m.meta_value FROM wp_usermeta m JOIN wp_users u ON u.ID = m.user_id"
            f" WHERE m.meta_key = 'journal_seq_log' AND u.user_email LIKE '{tag}-%' ORDER BY m.umeta_id"):
        email, value = line.split("\t")
        journal[email].append(int(value))
    users = dict(line.split("\t") for line in site.sql(
        f"SELECT user_email, COUNT(*) FROM wp_users WHERE user_email LIKE '{tag}-%' GROUP BY user_email"))
    assert len(users) == CONTACTS and set(users.values()) == {"1"}, "a contact has no user, or two"
    assert len(journal) == CONTACTS
    out_of_order = {e: seqs for e, seqs in journal.items()
                    if seqs != sorted(set(seqs)) or seqs[-1] != PER_CONTACT}
    assert not out_of_order, list(out_of_order.items())[:5]
    last_names = set(site.sql(
        "SELECT DISTINCT u.meta_value FROM wp_usermeta u JOIN wp_users w ON w.ID = u.user_id"
        f" WHERE u.meta_key = 'last_name' AND w.user_email LIKE '{tag}-%'"))
    assert last_names == {f"Seq{PER_CONTACT}"}

    # No job ran on two instances at once.
    logged = events(everything)
    fenced = [e for e in logged if e.get("event") == "job.fenced_out"]
    assert not fenced, fenced[:5]
    expired = [e for e in logged if e.get("event") == "queue.leases_expired"]
    victim_owner = f"{killed_pid:x}-"
    assert expired, "the killed instance held no running job: nothing was taken over"
    assert all(owner.startswith(victim_owner) for e in expired for owner in e["owners"]), expired
    taken_over = {job_id for e in expired for job_id in e["jobs"]}
    done = Counter(e["job_id"] for e in logged if e.get("event") == "job.done")
    assert max(done.values()) == 1, [j for j, n in done.items() if n > 1]
    ran_again = {j[0] for j in jobs if j[3] > 1}
    assert ran_again <= taken_over | retried, sorted(ran_again - taken_over - retried)
    # The restarted instance rejoins: it runs jobs, or (when its two peers happened to claim every
    # job first, seen once in ~60 runs) at least its intake commits to the shared queue.
    assert any(e.get("event") == "job.done" for e in events([restarted])) or burst.acked_by[restarted], \
        "the restarted one did no work"

    # Every generated password went back to the CRM, one value per contact.
    patches: dict[str, set[str]] = defaultdict(set)
    for r in fake_crm.requests_to("generic"):
        if r.method == "PATCH" and tag in r.path:
            patches[r.path.rsplit("/", 1)[1]].add(json.dumps(r.json["fields"]))
    assert len(patches) == CONTACTS and all(len(values) == 1 for values in patches.values())
    for contact in range(CONTACTS):
        assert fake_crm.generic_contact(f"{tag}-{contact:03d}")["fields"].get("wp_password")
    print(f"\n{CONTACTS * PER_CONTACT} deliveries sent in {sent_s:.1f} s ({burst.retries} resent), all done"
          f" after {time.monotonic() - started_s:.1f} s; {len(taken_over)} jobs taken over from the killed"
          f" instance, {len(retried)} retried, {sum(1 for j in jobs if j[4] is not None)} coalesced")
