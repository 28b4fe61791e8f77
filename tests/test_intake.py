"""The webhook intake against a real in-process bridge (aiohttp server) and a real SQLite file.

No WordPress is needed: ``wordpress.url`` points at a closed port, so accepted jobs are simply
retried later; what is checked here is what the intake answers and what it wrote to disk.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sqlite3
import time
import uuid
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import structlog

from bridge.app import Bridge
from bridge.core.auth import sign
from bridge.logs import configure
from bridge.replay import replay_rejected
from bridge.settings import load_settings
from bridge.store.db import connect
from bridge.web.throttle import FailureThrottle

KEY1 = "test-access-key-1"
KEY2 = "test-access-key-2"
WRONG_KEY = "wrong-key-0123456789"
TOKEN = "cly-test-token"
APP_PASSWORD = "abcd efgh ijkl mnop"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"intake-test-signing-secret-0001").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-signing-secret-00002").decode()
MAX_BODY = 1024 * 1024
JSON_CT = {"Content-Type": "application/json"}


def intake_config(db_path: Path, **server: Any) -> dict[str, Any]:
    """Settings for a bridge whose WordPress and CRM are unreachable (intake only)."""
    crm_base = "http://127.0.0.1:9/customerly/v1"
    return {
        "log_format": "console",
        "server": {"host": "127.0.0.1", "port": 0, "access_keys": [KEY1, KEY2], "max_body_bytes": MAX_BODY, **server},
        "database": {"path": str(db_path)},
        # One worker, and a failed job waits an hour: the queue stays still while we look at it.
        "worker": {"concurrency": 1, "retry_base_s": 3600, "retry_max_s": 7200, "http_attempts": 1, "shutdown_grace_s": 2},
        "wordpress": {"url": "http://127.0.0.1:9", "application_password": APP_PASSWORD, "timeout_s": 2},
        "connections": {
            # This connection opts in to every query override (WP Fusion URLs with &email=...).
            "customerly": {"crm": "customerly", "base_url": crm_base, "secrets": {"token": TOKEN},
                           "query_overrides": ["email", "contact_id", "role"]},
            "strict": {"crm": "customerly", "base_url": crm_base, "secrets": {"token": TOKEN}},
            "signed": {"crm": "customerly", "base_url": crm_base, "secrets": {"token": TOKEN},
                       "signing_secrets": [SIGNING_SECRET]},
        },
    }


@dataclass
class Answer:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Served:
    """A running bridge, a client session to it and its database file."""

    bridge: Bridge
    session: aiohttp.ClientSession
    db_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.bridge.port}"

    async def send(self, body: Any = b"", *, path: str = "/", method: str = "POST", query: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None, key: str | None = KEY1, key_in: str = "query",
                   action: str | None = "add") -> Answer:
        """One request; ``key=None`` sends no key, ``key_in='header'`` sends it as X-Access-Key."""
        params: dict[str, str] = {}
        if action is not None:
            params["wpf_action"] = action
        hdrs = dict(JSON_CT if headers is None else headers)
        if key is not None:
            if key_in == "query":
                params["access_key"] = key
            else:
                hdrs["X-Access-Key"] = key
        params.update(query or {})
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        async with self.session.request(method, self.url + path, params=params, data=data, headers=hdrs) as resp:
            return Answer(resp.status, resp.headers, await resp.text())

    def rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(self.db_path)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()

    def count(self, table: str) -> int:
        return self.rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]

    def job(self, job_id: int) -> sqlite3.Row | None:
        found = self.rows("SELECT * FROM jobs WHERE id = ?", job_id)
        return found[0] if found else None


@asynccontextmanager
async def serving(db_path: Path, redactor=None, **server: Any) -> AsyncIterator[Served]:
    """Start a bridge on ``db_path`` and a client session; stop both afterwards."""
    bridge = Bridge(load_settings(None, **intake_config(db_path, **server)), redactor)
    await bridge.start()
    session = aiohttp.ClientSession()
    try:
        yield Served(bridge, session, db_path)
    finally:
        await session.close()
        await bridge.stop()


@pytest.fixture(scope="module")
async def served(tmp_path_factory) -> AsyncIterator[Served]:
    """One bridge for the module (the corpus checks that it survives every bad input in turn)."""
    async with serving(tmp_path_factory.mktemp("intake") / "bridge.db") as s:
        yield s


def customerly(email: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user.updated", "data": {"user": {"data": {"email": email, **extra}}}}


def new_email(prefix: str = "ada") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def assert_accepted(answer: Answer) -> int:
    assert answer.status == 202, answer.text
    body = answer.json
    assert body["success"] is True and body["status"] == "queued" and isinstance(body["job_id"], int)
    return body["job_id"]


# --- the happy path ---------------------------------------------------------------------------


async def test_accepted_delivery_is_in_the_database_when_answered(served):
    """A Customerly add is answered 202 with a job id whose row (connection, action, contact, payload) is on disk."""
    email = new_email()
    answer = await served.send(customerly(email), query={"role": "customer", "send_notification": "true"})
    job_id = assert_accepted(answer)
    row = served.job(job_id)
    assert row is not None
    assert (row["connection"], row["action"], row["contact_key"]) == ("customerly", "add", f"customerly:email:{email}")
    payload = json.loads(row["payload"])
    assert (payload["email"], payload["role"], payload["send_notification"]) == (email, "customer", True)
    assert payload["body"] == customerly(email)
    assert answer.headers["Content-Type"].startswith("application/json")


async def test_a_delivery_does_not_link_an_email_to_an_id_on_a_connection_that_fetches(served):
    """Customerly fetches contacts: a delivery's own contact_id and email (its key may have leaked)
    link nothing at intake, so a later email-only delivery keeps its own email key."""
    email, contact_id = new_email("link"), "X-" + uuid.uuid4().hex[:8]
    query = {"contact_id": contact_id, "email": email}
    paired = assert_accepted(await served.send(customerly(email), query=query))
    alone = assert_accepted(await served.send(customerly(email, n=2), action="update"))
    assert served.job(paired)["contact_key"] == f"customerly:id:{contact_id}"
    assert served.job(alone)["contact_key"] == f"customerly:email:{email}"
    assert served.rows("SELECT * FROM contact_aliases WHERE email = ?", email) == []


async def test_test_action_answers_success_and_queues_nothing(served):
    """wpf_action=test (the CRM's test button) answers {"success": true} and stores no job."""
    before = served.count("jobs")
    answer = await served.send(customerly(new_email()), action="test")
    assert (answer.status, answer.json) == (200, {"success": True})
    assert served.count("jobs") == before


@pytest.mark.parametrize("alias,action", [("add_user", "add"), ("update_user", "update"), ("update", "update"),
                                          ("update_tags", "update_tags")])
async def test_action_aliases_are_resolved(served, alias, action):
    """WP Fusion's add_user/update_user are stored as add/update; the other actions as themselves."""
    job_id = assert_accepted(await served.send(customerly(new_email()), action=alias))
    assert served.job(job_id)["action"] == action


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH"])
async def test_every_sending_method_is_accepted(served, method):
    """GET (query only, as WP Fusion URLs allow), POST, PUT and PATCH are all accepted."""
    email = new_email(method.lower())
    if method == "GET":
        answer = await served.send(b"", method=method, query={"email": email}, headers={})
    else:
        answer = await served.send(customerly(email), method=method)
    job_id = assert_accepted(answer)
    assert json.loads(served.job(job_id)["payload"])["email"] == email


@pytest.mark.parametrize("how", ["path", "query"])
async def test_connection_is_selected_by_path_or_query(served, how):
    """/hooks/customerly and /?connection=customerly both reach the customerly connection."""
    if how == "path":
        answer = await served.send(customerly(new_email()), path="/hooks/customerly")
    else:
        answer = await served.send(customerly(new_email()), query={"connection": "customerly"})
    assert served.job(assert_accepted(answer))["connection"] == "customerly"


async def test_key_in_the_x_access_key_header(served):
    """The access key may be sent in the X-Access-Key header instead of the query."""
    assert_accepted(await served.send(customerly(new_email()), key_in="header"))


@pytest.mark.parametrize("key", [KEY1, KEY2])
async def test_both_configured_keys_work_for_rotation(served, key):
    """Every configured access key is accepted (the old and the new one during a rotation)."""
    assert_accepted(await served.send(customerly(new_email()), key=key))


# --- the corpus of bad inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad request and what the bridge must answer."""

    status: int
    error: str
    says: str  # a piece of the message that names the problem
    body: Any = b""
    content_type: str | None = "application/json"
    query: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    method: str = "POST"
    key: str | None = KEY1
    key_in: str = "query"
    action: str | None = "add"
    chunked: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # Kept in `rejected` with its raw body: every authenticated delivery the intake read and refused.
    stored: bool = True


def _nested(depth: int, opener: str, closer: str, inner: str = "1") -> bytes:
    return ('{"a":' + opener * depth + inner + closer * depth + "}").encode()


OK_BODY = json.dumps(customerly("ok@example.com")).encode()
EMAIL_AT = "data.user.data.email"

BAD: dict[str, Bad] = {
    # bodies that are not JSON
    "truncated-object": Bad(400, "invalid_json", "not valid JSON", OK_BODY[:-1]),
    "truncated-string": Bad(400, "invalid_json", "not valid JSON", b'{"data":{"user":{"data":{"email":"ada@exa'),
    "truncated-after-colon": Bad(400, "invalid_json", "not valid JSON", b'{"data":'),
    "only-open-brace": Bad(400, "invalid_json", "not valid JSON", b"{"),
    "only-close-brace": Bad(400, "invalid_json", "not valid JSON", b"}"),
    "single-quotes": Bad(400, "invalid_json", "not valid JSON", b"{'data': {'user': 1}}"),
    "trailing-comma": Bad(400, "invalid_json", "not valid JSON", b'{"email": "ada@example.com",}'),
    "unquoted-key": Bad(400, "invalid_json", "not valid JSON", b'{email: "ada@example.com"}'),
    "bare-word": Bad(400, "invalid_json", "not valid JSON", b"hello"),
    "trailing-comment": Bad(400, "invalid_json", "not valid JSON", OK_BODY + b" // comment"),
    "two-objects": Bad(400, "invalid_json", "not valid JSON", b"{}{}"),
    "control-char-in-string": Bad(400, "invalid_json", "not valid JSON", b'{"email": "ada\x01@example.com"}'),
    "bad-escape": Bad(400, "invalid_json", "not valid JSON", b'{"email": "\\q"}'),
    "utf8-bom": Bad(400, "invalid_json", "not valid JSON", b"\xef\xbb\xbf" + OK_BODY),
    "integer-over-4300-digits": Bad(400, "invalid_json", "JSON", b'{"n": ' + b"7" * 5000 + b"}"),
    # bytes that are not UTF-8
    "invalid-utf8": Bad(400, "invalid_encoding", "UTF-8", b'{"email": "\xff\xfe@example.com"}'),
    "overlong-utf8": Bad(400, "invalid_encoding", "UTF-8", b'{"email": "\xc0\xaf@example.com"}'),
    "utf16-body": Bad(400, "invalid_encoding", "UTF-8", OK_BODY.decode().encode("utf-16")),
    "lone-surrogate-email": Bad(422, "invalid_email", "not an address",
                                b'{"data": {"user": {"data": {"email": "ada\\ud800@example.com"}}}}'),
    "lone-surrogate-contact-id": Bad(422, "invalid_contact_id", "not valid Unicode", b'{"contact_id": "\\udc80-42"}'),
    # nesting
    "nested-arrays-10000": Bad(400, "too_deep", "deeper than", _nested(10_000, "[", "]")),
    "nested-objects-10000": Bad(400, "too_deep", "deeper than", _nested(10_000, '{"a":', "}")),
    "nested-arrays-100": Bad(400, "too_deep", "deeper than", _nested(100, "[", "]")),
    # JSON that is not an object
    "json-list": Bad(400, "invalid_payload", "must be an object", b'[{"email": "ada@example.com"}]'),
    "json-string": Bad(400, "invalid_payload", "must be an object", b'"ada@example.com"'),
    "json-number": Bad(400, "invalid_payload", "must be an object", b"42"),
    "json-null": Bad(400, "invalid_payload", "must be an object", b"null"),
    "json-true": Bad(400, "invalid_payload", "must be an object", b"true"),
    # content types
    "text-plain": Bad(415, "unsupported_media_type", "text/plain", OK_BODY, "text/plain"),
    "text-xml": Bad(415, "unsupported_media_type", "text/xml", b"<user><email>ada@example.com</email></user>", "text/xml"),
    "application-xml": Bad(415, "unsupported_media_type", "application/xml", b"<user/>", "application/xml"),
    "text-html": Bad(415, "unsupported_media_type", "text/html", b"<p>hi</p>", "text/html; charset=utf-8"),
    "multipart-form-data": Bad(415, "unsupported_media_type", "multipart/form-data",
                               b'--XyZ\r\nContent-Disposition: form-data; name="email"\r\n\r\nada@example.com\r\n--XyZ--\r\n',
                               "multipart/form-data; boundary=XyZ"),
    "octet-stream": Bad(415, "unsupported_media_type", "application/octet-stream", b"\x00\x01\x02{}", "application/octet-stream"),
    # size (too large to keep: refused before the body is read, so not stored)
    "huge-body-content-length": Bad(413, "body_too_large", "over the limit", b"x" * (MAX_BODY + 1), stored=False),
    "huge-body-chunked": Bad(413, "body_too_large", "over the limit", b"x" * (2 * MAX_BODY), chunked=True, stored=False),
    # the access key (unauthenticated: never stored)
    "wrong-key": Bad(403, "invalid_access_key", "Invalid Access Key", OK_BODY, key=WRONG_KEY, stored=False),
    "wrong-key-in-header": Bad(403, "invalid_access_key", "Invalid Access Key", OK_BODY, key=WRONG_KEY, key_in="header", stored=False),
    "missing-key": Bad(403, "invalid_access_key", "access_key is missing", OK_BODY, key=None, stored=False),
    "empty-key": Bad(403, "invalid_access_key", "access_key is missing", OK_BODY, key="", stored=False),
    "key-prefix": Bad(403, "invalid_access_key", "Invalid Access Key", OK_BODY, key=KEY1[:-1], stored=False),
    "key-with-suffix": Bad(403, "invalid_access_key", "Invalid Access Key", OK_BODY, key=KEY1 + "x", stored=False),
    "key-upper-case": Bad(403, "invalid_access_key", "Invalid Access Key", OK_BODY, key=KEY1.upper(), stored=False),
    "method-delete": Bad(405, "method_not_allowed", "Method Not Allowed", OK_BODY, method="DELETE", stored=False),
    # the action
    "unknown-action": Bad(400, "unknown_action", "unknown wpf_action 'drop_tables'", OK_BODY, action="drop_tables"),
    "action-upper-case": Bad(400, "unknown_action", "unknown wpf_action 'ADD'", OK_BODY, action="ADD"),
    "missing-action": Bad(400, "missing_action", "no wpf_action", OK_BODY, action=None),
    "empty-action": Bad(400, "missing_action", "no wpf_action", OK_BODY, action=""),
    # the connection
    "unknown-connection-path": Bad(404, "unknown_connection", "'nope' is not configured", OK_BODY, path="/hooks/nope"),
    "unknown-connection-query": Bad(404, "unknown_connection", "'nope' is not configured", OK_BODY, query={"connection": "nope"}),
    # the contact
    "empty-body": Bad(422, "missing_contact", EMAIL_AT, b""),
    "empty-object": Bad(422, "missing_contact", EMAIL_AT, b"{}"),
    "no-email-in-user": Bad(422, "missing_contact", EMAIL_AT, b'{"data": {"user": {"data": {}}}}'),
    "email-null": Bad(422, "missing_contact", EMAIL_AT, b'{"data": {"user": {"data": {"email": null}}}}'),
    "email-blank": Bad(422, "missing_contact", EMAIL_AT, b'{"data": {"user": {"data": {"email": "   "}}}}'),
    "email-is-object": Bad(422, "missing_contact", EMAIL_AT, b'{"data": {"user": {"data": {"email": {"x": 1}}}}}'),
    "form-without-contact": Bad(422, "missing_contact", EMAIL_AT, b"foo=bar", "application/x-www-form-urlencoded"),
    "email-without-at": Bad(422, "invalid_email", "not an address", json.dumps(customerly("ada.example.com")).encode()),
    "email-with-space": Bad(422, "invalid_email", "not an address", json.dumps(customerly("ada @example.com")).encode()),
    "email-too-long": Bad(422, "invalid_email", "not an address", json.dumps(customerly("a" * 250 + "@example.com")).encode()),
    "email-in-query-invalid": Bad(422, "invalid_email", "'nope' is not an address", b"{}", query={"email": "nope"}),
    "contact-id-too-long": Bad(422, "invalid_contact_id", "longer than 255", b"{}", query={"contact_id": "x" * 256}),
    # contact IDs that would move a CRM request path, emails WordPress refuses
    "contact-id-dot-dot": Bad(422, "invalid_contact_id", "'..'", b'{"contact_id": ".."}'),
    "contact-id-with-slash": Bad(422, "invalid_contact_id", "slashes", b'{"contact_id": "1/../../admin"}'),
    "contact-id-in-query-dot-dot": Bad(422, "invalid_contact_id", "'..'", b"{}", query={"contact_id": ".."}),
    "email-with-nul": Bad(422, "invalid_email", "control characters", b'{"email": "ada\\u0000@example.com"}'),
    "email-non-ascii-local": Bad(422, "invalid_email", "ASCII", json.dumps(customerly("zo\u00eb@example.com")).encode()),
    "email-single-label-domain": Bad(422, "invalid_email", "two labels", json.dumps(customerly("ada@localhost")).encode()),
    # query overrides on a connection that does not take them
    "override-email-not-allowed": Bad(400, "override_not_allowed", "'email'", OK_BODY, path="/hooks/strict",
                                      query={"email": "admin@example.com"}),
    "override-contact-id-not-allowed": Bad(400, "override_not_allowed", "'contact_id'", OK_BODY, path="/hooks/strict",
                                           query={"contact_id": "evil"}),
    # content encodings: one aiohttp would not decode, and a corrupt gzip
    "content-encoding-compress": Bad(415, "unsupported_content_encoding", "'compress'", OK_BODY,
                                     headers={"Content-Encoding": "compress"}, stored=False),
    "content-encoding-two": Bad(415, "unsupported_content_encoding", "'gzip, br'", OK_BODY,
                                headers={"Content-Encoding": "gzip, br"}, stored=False),
    "corrupt-gzip": Bad(400, "invalid_content_encoding", "gzip", b"not gzip at all", headers={"Content-Encoding": "gzip"},
                        stored=False),
    # a Standard Webhooks connection without the signature headers: unauthenticated, so not kept
    "signed-without-signature": Bad(401, "missing_signature", "webhook-signature", OK_BODY, path="/hooks/signed",
                                    stored=False),
}


async def _send_bad(served: Served, case: Bad) -> Answer:
    data: Any = case.body
    if case.chunked:
        async def chunks(body: bytes = case.body) -> AsyncIterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start:start + 64 * 1024]
        data = chunks()
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    headers.update(case.headers)
    return await served.send(data, path=case.path, method=case.method, query=case.query, headers=headers,
                             key=case.key, key_in=case.key_in, action=case.action)


@pytest.mark.parametrize("name", list(BAD))
async def test_bad_input_is_refused_with_a_4xx_json_answer(served, name):
    """Each bad input: 4xx (never 5xx) JSON naming the problem, no job, kept raw in `rejected` only when authenticated."""
    case = BAD[name]
    jobs_before, rejected_before = served.count("jobs"), served.count("rejected")
    answer = await _send_bad(served, case)
    assert 400 <= answer.status < 500, (answer.status, answer.text)
    assert answer.status == case.status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json
    assert body["success"] is False and body["error"] == case.error, body
    assert case.says in body["message"], body
    assert served.count("jobs") == jobs_before
    if case.stored:
        [row] = served.rows("SELECT * FROM rejected ORDER BY id DESC LIMIT 1")
        assert served.count("rejected") == rejected_before + 1
        assert bytes(row["body"]) == case.body
        assert row["status"] == case.status and row["reason"].startswith(case.error)
        assert row["method"] == case.method
        assert KEY1 not in row["query"] and KEY2 not in row["query"]
    else:
        assert served.count("rejected") == rejected_before
    for secret in (KEY1, KEY2, WRONG_KEY):
        assert secret not in answer.text


def test_the_corpus_is_large_enough():
    """The bad-input corpus keeps at least 40 distinct cases."""
    assert len(BAD) >= 40


async def test_server_is_healthy_after_the_corpus(served):
    """After every bad input, /healthz still answers 200 and a good delivery still gets 202."""
    async with served.session.get(served.url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json()) == {"alive": True}
    assert_accepted(await served.send(customerly(new_email("after"))))


@pytest.mark.parametrize("method, path, status, error", [
    ("GET", "/nope", 404, "not_found"),
    ("POST", "/hooks/customerly/extra", 404, "not_found"),
    ("POST", "/healthz", 405, "method_not_allowed"),
    ("DELETE", "/metrics", 405, "method_not_allowed"),
    ("HEAD", "/", 405, "method_not_allowed"),
])
async def test_unknown_paths_and_methods_answer_json(served, method, path, status, error):
    """Every answer of the server is JSON with an error name, not aiohttp's plain-text pages."""
    async with served.session.request(method, served.url + path) as resp:
        assert resp.status == status
        if method != "HEAD":
            assert (await resp.json())["error"] == error
        if status == 405:
            assert resp.headers["Allow"]


async def test_health_answers_head(served):
    async with served.session.head(served.url + "/healthz") as resp:
        assert resp.status == 200


async def test_a_delivery_that_cannot_be_stored_answers_503_json_and_is_logged(tmp_path):
    """With the database closed under it, a delivery costs the sender a retry (503 JSON with
    Retry-After, nothing acknowledged), not a 500 or a crash; the error is logged."""
    stream = io.StringIO()
    configure("info", "json", stream=stream)
    try:
        async with serving(tmp_path / "bridge.db") as s:
            s.bridge.store.close()
            answer = await s.send(customerly(new_email()))
            assert (answer.status, answer.json["error"], answer.headers["Retry-After"]) == (503, "unavailable", "5")
            async with s.session.get(s.url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        structlog.reset_defaults()
    assert '"event": "http.unhandled"' in stream.getvalue() and "the database is closed" in stream.getvalue()


# --- throttling of wrong keys ----------------------------------------------------------------------


async def test_repeated_wrong_keys_are_throttled_with_retry_after(tmp_path):
    """After auth_failures_per_min wrong keys from one address the next request gets 429 JSON with Retry-After."""
    async with serving(tmp_path / "bridge.db", auth_failures_per_min=3) as s:
        for _ in range(3):
            assert (await s.send(customerly(new_email()), key=WRONG_KEY)).status == 403
        answer = await s.send(customerly(new_email()), key=WRONG_KEY)
        assert answer.status == 429
        assert answer.json["error"] == "too_many_failures" and "wrong access key" in answer.json["message"]
        assert 1 <= int(answer.headers["Retry-After"]) <= 61
        assert s.count("jobs") == 0 and s.count("rejected") == 0


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_throttle_memory_is_bounded_by_the_tracker_size():
    """A flood of distinct failing addresses never makes the throttle track more than max_addresses."""
    throttle = FailureThrottle(limit_per_min=2, max_addresses=1000, clock=FakeClock())
    for i in range(50_000):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        assert len(throttle) <= 1000
    assert len(throttle) == 1000


def test_throttle_keeps_the_most_recent_offender_and_forgets_the_oldest():
    """When full, the least recently failing address is forgotten; a repeat offender stays blocked."""
    throttle = FailureThrottle(limit_per_min=2, max_addresses=3, clock=FakeClock())
    throttle.failed("attacker")
    throttle.failed("attacker")
    assert throttle.blocked("attacker") is not None
    for address in ("a", "b", "c"):
        throttle.failed(address)
    assert throttle.blocked("attacker") is None and len(throttle) == 3


def test_throttle_window_expires_after_a_minute():
    """A blocked address may try again once its one-minute window has passed."""
    clock = FakeClock()
    throttle = FailureThrottle(limit_per_min=2, max_addresses=10, clock=clock)
    throttle.failed("x")
    throttle.failed("x")
    assert 59 <= throttle.blocked("x") <= 60
    clock.t += 60.5
    assert throttle.blocked("x") is None and len(throttle) == 0


# --- Standard Webhooks signatures ---------------------------------------------------------------


def signed_headers(body: bytes, *, secret: str = SIGNING_SECRET, msg_id: str | None = None,
                   timestamp_s: int | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp_s = int(time.time()) if timestamp_s is None else timestamp_s
    return {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(secret, msg_id, timestamp_s, body)}


async def test_valid_signature_is_accepted(served):
    """A delivery signed with the connection's Standard Webhooks secret is queued."""
    body = json.dumps(customerly(new_email())).encode()
    job_id = assert_accepted(await served.send(body, path="/hooks/signed", headers=signed_headers(body)))
    assert served.job(job_id)["connection"] == "signed"


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


SIGNATURE_FAILURES = {
    "signed-with-another-secret": (lambda b: signed_headers(b, secret=OTHER_SECRET), "invalid_signature"),
    "body-changed-after-signing": (lambda b: signed_headers(b.replace(b"example", b"examplf")), "invalid_signature"),
    "signature-garbage": (lambda b: signed_headers(b) | {"webhook-signature": "v1,AAAA"}, "invalid_signature"),
    "timestamp-not-a-number": (lambda b: signed_headers(b) | {"webhook-timestamp": "yesterday"}, "invalid_signature"),
    "stale-timestamp": (lambda b: signed_headers(b, timestamp_s=int(time.time()) - 3600), "stale_signature"),
    "future-timestamp": (lambda b: signed_headers(b, timestamp_s=int(time.time()) + 3600), "stale_signature"),
    "no-webhook-id": (lambda b: _without(signed_headers(b), "webhook-id"), "missing_signature"),
    "no-webhook-timestamp": (lambda b: _without(signed_headers(b), "webhook-timestamp"), "missing_signature"),
    "no-webhook-signature": (lambda b: _without(signed_headers(b), "webhook-signature"), "missing_signature"),
}


@pytest.mark.parametrize("name", list(SIGNATURE_FAILURES))
async def test_bad_signature_is_401_and_queues_nothing(served, name):
    """A wrong, stale or missing Standard Webhooks signature is 401 with the reason, and nothing is queued."""
    make_headers, error = SIGNATURE_FAILURES[name]
    body = json.dumps(customerly(new_email())).encode()
    jobs_before = served.count("jobs")
    answer = await served.send(body, path="/hooks/signed", headers=make_headers(body))
    assert answer.status == 401 and answer.json["error"] == error, answer.text
    assert "webhook-" in answer.json["message"]
    assert served.count("jobs") == jobs_before


# --- idempotency ------------------------------------------------------------------------------------


async def hold_the_line(served, email: str) -> None:
    """Queue a job for ``email`` first, so the next one of that contact waits (unclaimed) behind it."""
    assert_accepted(await served.send(customerly(email, ahead=True)))


async def test_the_same_delivery_twice_is_one_job(served):
    """A repeated delivery while the first job waits answers 200 duplicate with its id; one job exists."""
    email = new_email()
    await hold_the_line(served, email)
    body = customerly(email)
    first = assert_accepted(await served.send(body))
    jobs = served.count("jobs")
    again = await served.send(body)
    assert again.status == 200 and again.json == {"success": True, "job_id": first, "duplicate": True}
    assert served.count("jobs") == jobs


async def test_a_retry_with_the_other_key_is_still_a_duplicate(served):
    """The access key is not part of the dedupe key, so a retry during a key rotation is not a new job."""
    email = new_email()
    await hold_the_line(served, email)
    body = customerly(email)
    first = assert_accepted(await served.send(body, key=KEY1))
    again = await served.send(body, key=KEY2)
    assert (again.status, again.json.get("job_id"), again.json.get("duplicate")) == (200, first, True)


async def test_the_same_bytes_after_the_first_job_ran_are_new_work(served):
    """Without an event ID, a repeat of a delivery whose job was already claimed is a new job."""
    body = customerly(new_email())
    first = assert_accepted(await served.send(body))
    deadline = time.monotonic() + 20
    while served.job(first)["attempts"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert served.job(first)["attempts"] >= 1
    again = await served.send(body)
    assert again.status == 202 and again.json["job_id"] != first


async def test_same_webhook_id_with_another_body_is_a_duplicate(served):
    """The sender's webhook-id header is the idempotency key, whatever the body."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    first = assert_accepted(await served.send(customerly(new_email()), headers=JSON_CT | {"webhook-id": msg_id}))
    jobs = served.count("jobs")
    again = await served.send(customerly(new_email()), headers=JSON_CT | {"webhook-id": msg_id})
    assert again.status == 200 and again.json["job_id"] == first and again.json["duplicate"] is True
    assert served.count("jobs") == jobs


async def test_different_bodies_are_two_jobs(served):
    """Two deliveries that differ only in their body are two jobs."""
    email = new_email()
    first = assert_accepted(await served.send(customerly(email, name="One")))
    second = assert_accepted(await served.send(customerly(email, name="Two")))
    assert first != second
    assert served.job(first) is not None and served.job(second) is not None


# --- secrets stay out of answers and logs -----------------------------------------------------------


async def test_secrets_never_reach_the_log_or_the_answers(tmp_path):
    """With wrong and right keys (query and header), refusals, duplicates and job failures, no secret is logged or answered."""
    stream = io.StringIO()
    redactor = configure("debug", "json", stream=stream)
    answers: list[Answer] = []
    try:
        async with serving(tmp_path / "bridge.db", redactor) as s:
            email = new_email()
            await hold_the_line(s, email)  # so that the repeat below finds its job still waiting
            body = customerly(email)
            answers.append(await s.send(body, key=WRONG_KEY))
            answers.append(await s.send(body, key=WRONG_KEY, key_in="header"))
            answers.append(await s.send(body, key=KEY1))
            answers.append(await s.send(body, key=KEY2))  # duplicate
            answers.append(await s.send(customerly(new_email()), key=KEY2, key_in="header"))
            answers.append(await s.send(customerly("not-an-address"), key=KEY1))
            answers.append(await s.send(b"{", key=KEY1))
            # Let the worker try a job (CRM and WordPress unreachable) so failures get logged too.
            deadline = time.monotonic() + 10
            while "job.retry_scheduled" not in stream.getvalue() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert [a.status for a in answers] == [403, 403, 202, 200, 202, 422, 400]
    for event in ("delivery.forbidden", "delivery.accepted", "delivery.duplicate", "delivery.rejected", "job.retry_scheduled"):
        assert event in text, f"{event} was not logged:\n{text}"
    for secret in (KEY1, KEY2, WRONG_KEY, TOKEN, APP_PASSWORD):
        assert secret not in text
        assert all(secret not in a.text for a in answers)


# --- samples for field discovery ------------------------------------------------------------------------


async def test_each_new_delivery_shape_is_sampled_once_and_masked(tmp_path):
    """Deliveries of a known shape add no sample; a new shape adds one, with password-like values masked."""
    async with serving(tmp_path / "bridge.db") as s:
        for _ in range(3):
            assert_accepted(await s.send(customerly(new_email(), name="Ada")))
        assert s.count("samples") == 1
        assert_accepted(await s.send(customerly(new_email(), name="Ada", password="hunter2-secret")))
        assert_accepted(await s.send(customerly(new_email(), password="hunter2-secret", name="Ada")))  # same shape, keys reordered
        rows = s.rows("SELECT body FROM samples ORDER BY id")
        assert len(rows) == 2
        assert json.loads(rows[1]["body"])["data"]["user"]["data"]["password"] == "***"
        assert all("hunter2" not in row["body"] for row in rows)


# --- replay of a rejected delivery ------------------------------------------------------------------


async def test_rejected_delivery_is_queued_by_replay_once_the_mapping_is_fixed(tmp_path):
    """A delivery refused for a missing contact is kept; replayed with a mapping for its field, it becomes a job."""
    db_path = tmp_path / "bridge.db"
    email = new_email("replay")
    body = json.dumps({"event": "contact.created", "person": {"mail": email}}).encode()
    async with serving(db_path) as s:
        answer = await s.send(body, query={"role": "customer"})
        assert answer.status == 422 and answer.json["error"] == "missing_contact"
        [row] = s.rows("SELECT id, body FROM rejected")
        assert bytes(row["body"]) == body and s.count("jobs") == 0
    rejected_id = row["id"]

    config = intake_config(db_path)
    with closing(connect(db_path)) as conn:
        ok, message = replay_rejected(conn, load_settings(None, **config), rejected_id, time.time())
        assert not ok and "still refused: missing_contact" in message
        config["connections"]["customerly"]["connector"] = {"contact_id_paths": ["person.mail"], "email_paths": ["person.mail"]}
        ok, message = replay_rejected(conn, load_settings(None, **config), rejected_id, time.time())
        assert ok, message
        job = conn.execute("SELECT * FROM jobs").fetchone()
        assert (job["connection"], job["action"], job["contact_key"]) == ("customerly", "add", f"customerly:email:{email}")
        assert json.loads(job["payload"])["role"] == "customer"
        assert conn.execute("SELECT replayed_job FROM rejected WHERE id = ?", (rejected_id,)).fetchone()[0] == job["id"]
        again, message = replay_rejected(conn, load_settings(None, **config), rejected_id, time.time())
        assert not again and "already replayed" in message


# --- the writer process --------------------------------------------------------------------------------


async def test_a_killed_writer_process_costs_no_acknowledged_delivery(tmp_path):
    """The writer child is SIGKILLed while deliveries arrive: each answer is a 202 (committed) or a 503
    (retry), never a wrong 4xx; a new child takes over, and every 202's job is
    in the database."""
    import os
    import signal

    async with serving(tmp_path / "bridge.db") as s:
        assert_accepted(await s.send(customerly(new_email())))
        first = s.bridge.store._writer._proc
        sends = [asyncio.ensure_future(s.send(customerly(new_email()))) for _ in range(20)]
        os.kill(first.pid, signal.SIGKILL)
        answers = await asyncio.gather(*sends)
        assert {a.status for a in answers} <= {202, 503}, [a.text for a in answers]
        assert all(a.json["error"] == "unavailable" for a in answers if a.status == 503)
        after = [assert_accepted(await s.send(customerly(new_email()))) for _ in range(3)]
        assert s.bridge.store._writer._proc is not first
        acknowledged = [a.json["job_id"] for a in answers if a.status == 202] + after
        for job_id in acknowledged:
            assert s.job(job_id) is not None
        # Bad input is still refused with its reason (and kept) by the new child.
        bad = await s.send(customerly("not-an-address"))
        assert bad.status == 422 and bad.json["error"] == "invalid_email"
