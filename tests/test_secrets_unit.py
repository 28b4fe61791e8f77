"""Secrets and bounds, piece by piece: the redactor and the stdlib loggers it covers, errors scrubbed
by the clients that sent the secrets, payload masking, the writer child's environment, metric labels
only for configured connections, and the retention caps of dead jobs and rejected deliveries."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import time
import warnings

import aiohttp
import pytest
import structlog

from bridge.clients.crm import CrmClient
from bridge.clients.http import read_response, redacting
from bridge.errors import Permanent, Transient
from bridge.logs import MASK, Redactor, configure, mask_secret_fields, scrub_text
from bridge.metrics import Metrics
from bridge.settings import ConnectionSettings, WorkerSettings
from bridge.store import queue as q
from bridge.store.jobs import JobStore
from bridge.store.writer import child_env

PASSWORD = "Gen3rated-Pa55word-xyz"
TOKEN = "cly-test-token"


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure("debug", "json", secrets=[TOKEN], stream=stream)
    yield stream
    structlog.reset_defaults()
    configure("info", "console")


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- the redactor and the stdlib loggers ------------------------------------------------------------


def test_redactor_masks_secret_keys_at_any_depth_and_scrubs_known_values_and_keys_in_urls():
    """Secret-named keys are masked (flags are not), known values and any access_key=... in a URL scrubbed."""
    r = Redactor(["known-secret-1"])
    event = {"event": "x", "nested": {"user_pass": "p1", "list": [{"api_key": "k"}]}, "has_secret": True,
             "msg": "got known-secret-1 from GET /?wpf_action=add&access_key=not-configured-key&x=1"}
    out = r.scrub(event)
    assert out["nested"] == {"user_pass": MASK, "list": [{"api_key": MASK}]}
    assert out["has_secret"] is True
    assert out["msg"] == f"got {MASK} from GET /?wpf_action=add&access_key={MASK}&x=1"


def test_scrub_text_replaces_longest_first_and_ignores_short_values():
    """A secret containing another is masked whole; values under 4 characters are left (they would
    mangle ordinary text)."""
    assert scrub_text("a abcdef b abcd", ["abcd", "abcdef", "ab", None]) == f"a {MASK} b {MASK}"


def test_mask_secret_fields_masks_every_secret_looking_field_at_any_depth():
    """password, user_pass, token, secret, api_key... are masked in payloads shown by the CLI."""
    payload = {"body": {"data": {"user": {"email": "a@x", "password": "p", "attributes": [
        {"name": "wp_password", "value": "v"}, {"api_key": "k", "client_secret": {"deep": "s"}}]}}},
        "query": {"token": "t", "role": "customer"}, "empty_password": ""}
    out = mask_secret_fields(payload)
    text = json.dumps(out)
    for value in ('"p"', '"k"', '"s"', '"t"'):
        assert value not in text, value
    assert out["body"]["data"]["user"]["email"] == "a@x" and out["query"]["role"] == "customer"
    # A name/value pair hides its secret in "value": the CLI also scrubs known secrets from text.
    assert out["body"]["data"]["user"]["attributes"][0] == {"name": "wp_password", "value": "v"}


def test_stdlib_loggers_are_json_lines_through_the_redactor(log_stream):
    """aiohttp.server, aiohttp.access, asyncio and warnings come out as one redacted JSON event each."""
    logging.getLogger("aiohttp.server").error("Error handling request from %s: %s", "10.0.0.1",
                                              f"GET /?access_key={TOKEN} HTTP/1.1")
    try:
        raise ValueError(f"boom {TOKEN}")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("aiohttp.access").warning("10.0.0.1 GET /?access_key=some-other-key HTTP/1.1 200")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"careful with {TOKEN}")
    events = lines(log_stream)  # every line parses as JSON
    assert [e["logger"] for e in events] == ["aiohttp.server", "asyncio", "aiohttp.access", "py.warnings"]
    assert TOKEN not in log_stream.getvalue() and "some-other-key" not in log_stream.getvalue()
    assert "ValueError: boom ***" in events[1]["exception"]


# --- errors scrubbed where the secret was sent ------------------------------------------------------


def test_an_error_body_echoing_the_request_is_scrubbed_by_redacting():
    """Customerly answering 400 with the posted attributes: the typed error keeps the message, minus the values sent."""
    raw = json.dumps({"error": {"message": f'Invalid attributes {{"wp_password": "{PASSWORD}"}}', "code": 400}}).encode()
    with pytest.raises(Permanent) as info:
        with redacting([PASSWORD, None]):
            read_response("crm:customerly", 400, {}, raw)
    assert PASSWORD not in str(info.value) and PASSWORD not in info.value.message
    assert "Invalid attributes" in str(info.value) and MASK in str(info.value)
    # the control: without the guard, the error carries the password
    with pytest.raises(Permanent) as bare:
        read_response("crm:customerly", 400, {}, raw)
    assert PASSWORD in str(bare.value)


async def test_crm_write_back_errors_and_retry_lines_never_carry_the_written_values(fake_crm, log_stream):
    """A CRM that echoes the request (password, login, token) in 503s then a 400: neither the tenacity
    http.retry lines nor the final error hold a written value or the token, though the CRM got them."""
    email = f"echo-{time.time_ns()}@example.com"
    fake_crm.add_customerly_user(email)
    fake_crm.fail("/customerly/v1/users", status=503, times=2, method="POST", echo=True)
    fake_crm.fail("/customerly/v1/users", status=400, times=1, method="POST", echo=True)
    conn = ConnectionSettings(crm="customerly", base_url=fake_crm.customerly_base, secrets={"token": TOKEN},
                              return_password_field="wp_password")
    retry = WorkerSettings(http_attempts=3, http_backoff_s=0.01, http_max_wait_s=0.05)
    async with aiohttp.ClientSession() as session:
        crm = CrmClient("customerly", conn, session, retry, timeout_s=5)
        with pytest.raises(Permanent) as info:
            await crm.write_back(None, email, {"wp_password": PASSWORD, "wp_login": "login-of-echo-user"})
    posts = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and email in r.body.decode()]
    assert len(posts) == 3 and all(PASSWORD in r.body.decode() for r in posts)  # the CRM did get the password
    retries = [e for e in lines(log_stream) if e["event"] == "http.retry"]
    assert len(retries) == 2
    for text in (str(info.value), info.value.message, log_stream.getvalue()):
        for secret in (PASSWORD, "login-of-echo-user", TOKEN):
            assert secret not in text
    assert "Invalid attributes" in str(info.value)
    fake_crm.clear()


async def test_crm_fetch_errors_never_carry_the_token(fake_crm):
    """A fetch answered with the request echoed (the Authorization header): the error has no token."""
    fake_crm.fail("/customerly/v1/users", status=502, times=5, method="GET", echo=True)
    conn = ConnectionSettings(crm="customerly", base_url=fake_crm.customerly_base, secrets={"token": TOKEN})
    async with aiohttp.ClientSession() as session:
        crm = CrmClient("customerly", conn, session, WorkerSettings(http_attempts=1), timeout_s=5)
        with pytest.raises(Transient) as info:
            await crm.fetch_contact(None, "nobody@example.com")
    assert "Bearer" in str(info.value) and TOKEN not in str(info.value)
    fake_crm.clear()


# --- the writer child's environment -----------------------------------------------------------------


def test_child_env_keeps_only_what_the_writer_needs():
    """WPSB_* settings and other variables stay behind; the locale, PATH and PYTHONPATH go along."""
    env = child_env({"PATH": "/bin", "LC_ALL": "C.UTF-8", "WPSB_WORDPRESS__APPLICATION_PASSWORD": "x",
                     "AWS_SECRET_ACCESS_KEY": "y", "HOME": "/root", "PYTHONPATH": "/extra"}, "/pkg")
    assert env == {"PATH": "/bin", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/pkg" + os.pathsep + "/extra"}


async def test_the_running_writer_child_has_no_wpsb_variables(tmp_path, monkeypatch):
    """The real child process's environment (/proc/PID/environ) holds no WPSB_* variable."""
    monkeypatch.setenv("WPSB_WORDPRESS__APPLICATION_PASSWORD", "child-must-not-see-this")
    store = JobStore.open(tmp_path / "env.db")
    try:
        await store.counts()  # the child runs
        pid = store.writer_pid
        assert pid is not None
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    finally:
        store.close()
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert "PYTHONPATH" in names
    assert not any(n.startswith("WPSB_") for n in names) and b"child-must-not-see-this" not in b"".join(environ)


# --- bounded metric labels ---------------------------------------------------------------------------


def test_metric_labels_are_only_configured_connections():
    """A thousand random connection names count under one 'unknown' series; configured names keep theirs."""
    m = Metrics(["customerly"])
    for i in range(1000):
        m.delivery(f"random-{i}", "unknown_connection")
        m.job_dead(f"gone-{i}")
    m.delivery("customerly", "accepted")
    m.delivery(None, "forbidden")
    text = m.render({"queued": 0}).decode()
    assert "random-" not in text and "gone-" not in text
    assert 'wpsb_deliveries_total{connection="unknown",result="unknown_connection"} 1000.0' in text
    assert 'wpsb_deliveries_total{connection="customerly",result="accepted"} 1.0' in text
    assert 'wpsb_deliveries_total{connection="-",result="forbidden"} 1.0' in text
    assert 'wpsb_jobs_total{connection="unknown",outcome="dead"} 1000.0' in text
    assert len(m._delivery_children) == 3


# --- retention and caps ------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _dead_jobs(store: JobStore, n: int, prefix: str) -> list[int]:
    for i in range(n):
        await store.enqueue(f"{prefix}-{i}", 3600, "c", "add", f"{prefix}-{i}", json.dumps({"i": i}))
    jobs = await store.claim(n, 60)
    for job in jobs:
        await store.bury(job, "Permanent: x")
    return [j.id for j in jobs]


async def test_dead_jobs_and_rejected_deliveries_have_a_retention_and_a_cap(tmp_path):
    """Past the retention they go; beyond the cap the oldest go and the newest stay; queued jobs stay."""
    clock = Clock()
    store = JobStore.open(tmp_path / "prune.db", clock=clock)
    try:
        old_dead = await _dead_jobs(store, 3, "old")
        for i in range(3):
            await store.reject(connection="c", status=422, reason="x", method="POST", query={}, content_type=None, body=b"o")
        clock.t += 1000
        new_dead = await _dead_jobs(store, 5, "new")
        for i in range(5):
            await store.reject(connection="c", status=422, reason="x", method="POST", query={}, content_type=None, body=b"n")
        queued, _ = await store.enqueue("waiting", 3600, "c", "add", "waiting", "{}")
        removed = await store.call(q.prune_untrusted, clock.t, 500, 3, 500, 2)
        assert removed == (3 + 2, 3 + 3)
        with sqlite3.connect(tmp_path / "prune.db") as raw:
            dead = [r[0] for r in raw.execute("SELECT id FROM jobs WHERE status = 'dead' ORDER BY id")]
            rejected = [r[0] for r in raw.execute("SELECT body FROM rejected")]
            assert dead == new_dead[-3:] and rejected == [b"n", b"n"]
            assert raw.execute("SELECT status FROM jobs WHERE id = ?", (queued,)).fetchone() == ("queued",)
        assert old_dead[0] not in dead
        assert await store.call(q.prune_untrusted, clock.t, 500, 3, 500, 2) == (0, 0)
    finally:
        store.close()


def test_retention_defaults_are_the_documented_ones():
    """Rejected: 14 days, 10,000 rows; dead: 30 days, 100,000 jobs."""
    w = WorkerSettings()
    assert (w.rejected_retention_s, w.rejected_max_rows) == (14 * 86400, 10_000)
    assert (w.dead_retention_s, w.dead_max_jobs) == (30 * 86400, 100_000)


# --- the worker's second guard -----------------------------------------------------------------------


async def test_the_worker_scrubs_configured_secrets_and_the_jobs_password_from_last_error(tmp_path, log_stream):
    """An error that reaches the worker unscrubbed (a crash quoting the token and the job's generated
    password) is stored in last_error and logged without them."""
    from bridge.settings import load_settings
    from bridge.sync import SyncContext
    from bridge.worker import Worker

    settings = load_settings(None, database={"path": str(tmp_path / "w.db")}, worker={"max_attempts": 1},
                             connections={"customerly": {"crm": "customerly", "base_url": "http://127.0.0.1:9/v1",
                                                         "secrets": {"token": "worker-guard-token"}}})
    store = JobStore.open(settings.database.path)
    try:
        await store.enqueue("k", 60, "customerly", "add", "c", json.dumps({"connection": "customerly"}))
        [job] = await store.claim(1, 60)
        await store.save_stage(job, None, PASSWORD)
        job.secret = PASSWORD
        worker = Worker(SyncContext(settings, None, {}, store), store, Metrics(["customerly"]))
        await worker._failed(job, RuntimeError(f"crashed with worker-guard-token and {PASSWORD}"),
                             structlog.get_logger("test").bind(job_id=job.id))
        stored = (await store.get_job(job.id))["last_error"]
    finally:
        store.close()
    assert stored.startswith("gave up after 1 attempts: RuntimeError: crashed with ***"), stored
    for text in (stored, log_stream.getvalue()):
        assert "worker-guard-token" not in text and PASSWORD not in text
    assert "job.crashed" in log_stream.getvalue() and "job.dead" in log_stream.getvalue()


def test_an_uncaught_exception_ends_as_one_redacted_json_event():
    """A crash nothing catches prints a JSON event with the traceback, the secret scrubbed, not a bare traceback."""
    import subprocess
    import sys

    code = ("from bridge.logs import configure; configure('info', 'json', secrets=['uncaught-secret-1']); "
            "raise RuntimeError('failed with uncaught-secret-1')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [event] = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert event["event"] == "process.uncaught_exception" and "RuntimeError: failed with ***" in event["exception"]
    assert "uncaught-secret-1" not in result.stderr


OTHER_PASSWORD = "0ther-Batch-Pa55word"


async def batch_twice(app, transport: str) -> tuple[list, Exception]:
    """Serve ``app`` as the site, send it the same batch of two upserts with passwords twice: the
    first answer's per-item results, and the error the second raised."""
    from aiohttp.test_utils import TestServer

    from bridge.clients.wordpress import UpsertRequest, make_wordpress
    from bridge.errors import RemoteError
    from bridge.settings import load_settings

    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = load_settings(None, wordpress={"url": str(server.make_url("/")), "username": "admin",
                                               "application_password": "x y z", "transport": transport},
                             worker={"http_attempts": 1})
    wp = make_wordpress(settings)
    requests = [UpsertRequest(email="a@example.com", password=PASSWORD, set_password=True),
                UpsertRequest(email="b@example.com", password=OTHER_PASSWORD, set_password=True)]
    try:
        items = await wp.upsert_batch(requests)
        with pytest.raises(RemoteError) as whole:
            await wp.upsert_batch(requests)
    finally:
        await wp.close()
        await server.close()
    return items, whole.value


def assert_no_password(items: list, whole: Exception) -> None:
    """Per-item errors and the request's error, each without any password of the batch."""
    from bridge.errors import RemoteError

    assert len(items) == 2 and all(isinstance(e, RemoteError) for e in items)
    for error in (*items, whole):
        text = f"{error} {error.message} {error.args} {error.code}"
        assert PASSWORD not in text and OTHER_PASSWORD not in text, text
        assert MASK in str(error)


async def test_batch_upsert_errors_never_carry_the_passwords_of_the_batch():
    """A site whose batch answers echo the passwords sent (an item's refusal quoting its arguments,
    then the request refused as a whole): neither the per-item errors nor the request's error carry
    any password of the batch. The control: the site did get them."""
    from aiohttp import web

    seen: list[str] = []
    answers = ["items", "request"]

    async def batch(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(json.dumps(body))
        passwords = [u.get("password") for u in body["users"]]
        if answers.pop(0) == "items":
            results = [{"outcome": "refused", "error": {"code": "wpsb_invalid_arg",
                                                        "message": f"bad arguments {u}",
                                                        "data": {"status": 400}}} for u in body["users"]]
            return web.json_response({"results": results, "mode": "per_item"})
        return web.json_response({"code": "wpsb_item_failed", "message": f"failed with {passwords}",
                                  "data": {"status": 400}}, status=400)

    app = web.Application()
    app.router.add_post("/", batch)
    items, whole = await batch_twice(app, "rest")
    assert len(seen) == 2 and all(PASSWORD in b and OTHER_PASSWORD in b for b in seen)  # the site got them
    assert isinstance(whole, Permanent)
    assert_no_password(items, whole)


async def test_batch_upsert_errors_over_xml_rpc_never_carry_the_passwords_of_the_batch():
    """The same over XML-RPC (``wpsb.upsertUsers``): a site answering item refusals that quote the
    arguments, then a fault quoting every password: no error carries any of them."""
    import xmlrpc.client

    from aiohttp import web

    seen: list[str] = []
    answers = ["items", "fault"]

    async def xmlrpc_php(request: web.Request) -> web.Response:
        params, method = xmlrpc.client.loads(await request.read())
        if method == "mt.supportedMethods":  # python-wordpress-xmlrpc asks this first
            body = xmlrpc.client.dumps((["wpsb.upsertUsers"],), methodresponse=True)
            return web.Response(body=body.encode(), content_type="text/xml")
        users = params[-1]["users"]
        seen.append(repr(users))
        if answers.pop(0) == "items":
            results = [{"outcome": "refused", "error": {"code": "wpsb_invalid_arg",
                                                        "message": f"bad arguments {u}",
                                                        "data": {"status": 400}}} for u in users]
            body = xmlrpc.client.dumps(({"results": results, "mode": "per_item"},), methodresponse=True)
        else:
            passwords = [u.get("password") for u in users]
            body = xmlrpc.client.dumps(xmlrpc.client.Fault(400, f"failed with {passwords}"))
        return web.Response(body=body.encode(), content_type="text/xml")

    app = web.Application()
    app.router.add_post("/xmlrpc.php", xmlrpc_php)
    items, whole = await batch_twice(app, "xmlrpc")
    assert len(seen) == 2 and all(PASSWORD in b and OTHER_PASSWORD in b for b in seen)  # the site got them
    assert_no_password(items, whole)
