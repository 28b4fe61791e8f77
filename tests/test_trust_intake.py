"""Who may deliver what, at the intake, against a real in-process bridge and SQLite file: access
keys scoped to a connection, the networks a connection's CRM sends from, and replays that re-check
what the intake checked (signature, key scope)."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager, closing
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.replay import replay_rejected
from bridge.settings import load_settings
from bridge.store.db import connect
from tests.test_intake import KEY1, OTHER_SECRET, SIGNING_SECRET, Served, customerly, intake_config, new_email, signed_headers

SCOPED_KEY = "scoped-key-for-usercom-only"


def trust_config(db_path, **connection_extra: Any) -> dict[str, Any]:
    """The intake config plus a connection with its own key and one that names its CRM's network."""
    config = intake_config(db_path)
    base = config["connections"]["customerly"]
    config["connections"]["scoped"] = {**base, "access_keys": [SCOPED_KEY]}
    config["connections"]["fenced"] = {**base, "allowed_networks": ["10.0.0.0/8", "2001:db8::/32"]}
    for name, extra in connection_extra.items():
        config["connections"][name] = {**config["connections"].get(name, base), **extra}
    return config


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[Served]:
    bridge = Bridge(load_settings(None, **config))
    await bridge.start()
    session = aiohttp.ClientSession()
    try:
        yield Served(bridge, session, config["database"]["path"])
    finally:
        await session.close()
        await bridge.stop()


@pytest.fixture(scope="module")
async def served(tmp_path_factory) -> AsyncIterator[Served]:
    db_path = tmp_path_factory.mktemp("trust") / "bridge.db"
    async with serving(trust_config(db_path)) as s:
        yield s


async def test_a_connection_key_works_on_its_connection_only(served):
    """A key listed under one connection delivers there (path or query) and is a 403 anywhere else;
    the global keys keep working on every connection."""
    body = customerly(new_email())
    assert (await served.send(body, path="/hooks/scoped", key=SCOPED_KEY)).status == 202
    assert (await served.send(customerly(new_email()), query={"connection": "scoped"}, key=SCOPED_KEY)).status == 202
    for path, query in (("/hooks/customerly", {}), ("/", {}), ("/", {"connection": "customerly"}),
                        ("/hooks/nope", {})):
        answer = await served.send(customerly(new_email()), path=path, query=query, key=SCOPED_KEY)
        assert (answer.status, answer.json["error"]) == (403, "invalid_access_key"), (path, answer.text)
    assert (await served.send(customerly(new_email()), path="/hooks/scoped", key=KEY1)).status == 202


async def test_a_connection_refuses_deliveries_from_outside_its_networks(served):
    """allowed_networks: 127.0.0.1 is outside 10.0.0.0/8, so a right key still gets 403 and nothing is kept."""
    jobs, rejected = served.count("jobs"), served.count("rejected")
    answer = await served.send(customerly(new_email()), path="/hooks/fenced")
    assert (answer.status, answer.json["error"]) == (403, "network_not_allowed"), answer.text
    assert (served.count("jobs"), served.count("rejected")) == (jobs, rejected)


async def test_allowed_networks_read_the_client_behind_a_trusted_proxy(tmp_path):
    """Behind a trusted proxy the forwarded client address decides; a forged hop before it does not."""
    config = trust_config(tmp_path / "bridge.db")
    config["server"]["trusted_proxies"] = ["127.0.0.1"]
    async with serving(config) as s:
        inside = await s.send(customerly(new_email()), path="/hooks/fenced",
                              headers={"Content-Type": "application/json", "X-Forwarded-For": "10.1.2.3"})
        assert inside.status == 202, inside.text
        forged = await s.send(customerly(new_email()), path="/hooks/fenced",
                              headers={"Content-Type": "application/json", "X-Forwarded-For": "10.1.2.3, 192.0.2.7"})
        assert forged.status == 403 and forged.json["error"] == "network_not_allowed"


async def test_a_signed_connection_refuses_query_overrides(served):
    """The signature covers the body only: ?email= on a signed connection is a 400 even when signed."""
    body = json.dumps(customerly(new_email())).encode()
    answer = await served.send(body, path="/hooks/signed", headers=signed_headers(body),
                               query={"email": "admin@example.com"})
    assert (answer.status, answer.json["error"], answer.json["field"]) == (400, "override_not_allowed", "email")


async def test_an_unsigned_delivery_is_not_kept_for_replay(served):
    """A wrong signature is unauthenticated: 401 and nothing in `rejected` that a replay could queue."""
    body = json.dumps(customerly(new_email())).encode()
    rejected = served.count("rejected")
    answer = await served.send(body, path="/hooks/signed", headers=signed_headers(body, secret=OTHER_SECRET))
    assert answer.status == 401
    assert served.count("rejected") == rejected


async def test_replay_checks_the_kept_signature_against_todays_secrets(tmp_path):
    """A signed delivery refused for its mapping is replayed once the mapping is fixed, but not after
    the signing secret was rotated away (the replay re-checks what the intake checked)."""
    db_path = tmp_path / "bridge.db"
    config = trust_config(db_path)
    email = new_email("signed")
    body = json.dumps({"person": {"mail": email}}).encode()
    async with serving(config) as s:
        answer = await s.send(body, path="/hooks/signed", headers=signed_headers(body))
        assert answer.status == 422, answer.text
        [row] = s.rows("SELECT id, auth FROM rejected")
    rejected_id = row["id"]
    assert json.loads(row["auth"])["webhook"]["webhook-signature"].startswith("v1,")
    fixed = {"contact_id_paths": ["person.mail"], "email_paths": ["person.mail"]}
    rotated = trust_config(db_path, signed={"connector": fixed, "signing_secrets": [OTHER_SECRET]})
    with closing(connect(db_path)) as conn:
        ok, message = replay_rejected(conn, load_settings(None, **rotated), rejected_id, time.time())
        assert not ok and "invalid_signature" in message
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        current = trust_config(db_path, signed={"connector": fixed})
        ok, message = replay_rejected(conn, load_settings(None, **current), rejected_id, time.time())
        assert ok, message
        assert conn.execute("SELECT contact_key FROM jobs").fetchone()[0] == f"signed:email:{email}"


async def test_replay_refuses_a_delivery_kept_without_a_signature_once_the_connection_checks_them(tmp_path):
    """A delivery kept before its connection started checking signatures has none to check: refused."""
    db_path = tmp_path / "bridge.db"
    async with serving(trust_config(db_path)) as s:
        answer = await s.send({"person": {"mail": new_email()}}, path="/hooks/customerly")
        assert answer.status == 422
        [row] = s.rows("SELECT id FROM rejected")
    now_signed = trust_config(db_path, customerly={"signing_secrets": [SIGNING_SECRET], "connector": {
        "contact_id_paths": ["person.mail"], "email_paths": ["person.mail"]}})
    with closing(connect(db_path)) as conn:
        ok, message = replay_rejected(conn, load_settings(None, **now_signed), row["id"], time.time())
    assert not ok and "missing_signature" in message
