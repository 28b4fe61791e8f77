"""One person, one line, through the bridge and the real WordPress: a delivery naming only the email
and one naming the contact ID run one at a time in arrival order once the link is known."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import bridge_config, unique_email
from tests.test_connectors_e2e import connections
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


def rownd(operation: str, email: str, user_id: str | None, first_name: str) -> dict:
    """A Rownd delivery (the record itself: Rownd is not fetched), with or without its user_id."""
    data = {"first_name": first_name, **({"user_id": user_id} if user_id else {})}
    return {"data": data, "redacted": [],
            "meta": {"operation": operation, "lookup_values": [{"field": "email", "value": email}]}}


async def test_an_email_keyed_and_an_id_keyed_delivery_run_in_arrival_order_one_at_a_time(
        tmp_path, wp_stack, fake_crm, start_bridge):
    """The email-only insert is still in flight (its password write-back held by a slow CRM) when a
    delivery with the user_id and the email arrives: the link joins them, the second waits until the
    first is done (never running beside it), WordPress ends with the newest fields, and a later
    email-only delivery is queued under the ID."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(
        fake_crm, return_password_field="wp_password")))
    email, uid = unique_email("link"), "u-" + unique_email("x")[2:12]
    fake_crm.slow("/rownd/", 2.0, method="PATCH")  # the first write-back: the insert stays in flight
    _, first = await b.send(rownd("data_insert", email.upper(), None, "Ada"), path="/hooks/rownd")
    await b.wait_job(first["job_id"], states=("running",))
    _, second = await b.send(rownd("data_update", email, uid, "Grace"), path="/hooks/rownd")
    statuses = []
    while True:
        # The second's status is read first: if the first still runs after that read, it ran
        # during it too (read in the other order, the first could finish, and the second start,
        # between the two reads).
        later = (await b.bridge.store.get_job(second["job_id"]))["status"]
        if (a := await b.bridge.store.get_job(first["job_id"]))["status"] != "running":
            break
        statuses.append(later)
        await asyncio.sleep(0.05)
    assert statuses and set(statuses) == {"queued"}, statuses  # never beside the first
    done = await b.wait_job(second["job_id"])
    assert a["status"] == done["status"] == "done" and done["outcome"]["outcome"] == "updated", done
    assert a["contact_key"] == done["contact_key"] == f"rownd:id:{uid}"
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert user["first_name"] == "Grace" and wp.meta(user["id"], "rownd_contact_id") == uid
    _, third = await b.send(rownd("data_update", email, None, "Hopper"), path="/hooks/rownd")
    assert (await b.wait_job(third["job_id"]))["contact_key"] == f"rownd:id:{uid}"


async def test_a_fetched_record_links_its_email_to_the_id(tmp_path, wp_stack, fake_crm, start_bridge):
    """User.com is fetched: a delivery with only user.id links nothing itself, but the record the run
    fetches gives the email, so a later delivery naming only that email is queued under the ID."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(fake_crm)))
    email = unique_email("fetched")
    user = fake_crm.add_usercom_user(email=email, first_name="Una")
    _, first = await b.send({"user": {"id": user["id"]}}, path="/hooks/usercom")
    assert (await b.wait_job(first["job_id"]))["outcome"]["outcome"] == "created"
    _, later = await b.send({"user": {"email": email.upper()}}, path="/hooks/usercom", wpf_action="update")
    assert (await b.wait_job(later["job_id"]))["contact_key"] == f"usercom:id:{user['id']}"
