"""One contact, one ordering key (bridge.core.contacts): keys, links and joins, from sample payloads."""

from pathlib import Path

import pytest

from bridge.core.connector import build_connector
from bridge.core.contacts import (ActiveJob, Join, decide_link, email_key, id_key, key_for, link, own_key,
                                  plan_join)
from bridge.core.delivery import parse_delivery

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


GENERIC = {"contact_id_paths": ["contact.id"], "email_paths": ["contact.email"], "default_action": "update"}


def sample(crm: str, name: str, overrides: dict | None = None):
    body = (SAMPLES / crm / f"{name}.json").read_bytes()
    query = {} if crm in ("rownd", "generic") else {"wpf_action": "update"}  # those name their action
    return parse_delivery("c", build_connector(crm, overrides or {}), query, "application/json", body)


def test_rownd_deliveries_state_the_link_and_order_on_the_user_id():
    """Rownd's data_insert carries user_id and email; its delete the user_id and the lookup email:
    the same link, and both are keyed by the user_id."""
    insert, delete = sample("rownd", "data_insert"), sample("rownd", "delete")
    assert link(insert.contact_id, insert.email) == ("0e223bd4-1324-49ff-b948-122eeaaa42d1", "jrose@acme.com")
    assert link(delete.contact_id, delete.email) == link(insert.contact_id, insert.email)
    assert insert.contact_key == delete.contact_key == id_key("c", "0e223bd4-1324-49ff-b948-122eeaaa42d1")


@pytest.mark.parametrize("crm,name,overrides", [("usercom", "new_user", None),
                                                ("generic", "contact_event", GENERIC)])
def test_deliveries_with_an_id_and_an_email_state_a_link(crm, name, overrides):
    """User.com's and the generic CRM's deliveries name both: the link is the ID and the folded email."""
    d = sample(crm, name, overrides)
    assert d.contact_id and d.email
    assert link(d.contact_id, d.email) == (d.contact_id, d.email.casefold())


def test_a_customerly_id_that_is_the_email_states_no_link_and_orders_case_folded():
    """Customerly's contact ID is the email: no link; Bob@ and bob@ share the email key."""
    d = sample("customerly", "contact_tagged")
    assert d.contact_id and link(d.contact_id, d.email) is None
    assert link("Ada@Example.com", "ada@example.com") is None
    assert own_key("c", "Ada@Example.com", "ada@example.com") == email_key("c", "ADA@example.COM")


def test_an_email_only_delivery_takes_the_key_of_its_linked_id():
    """Unlinked: the email key; linked: the ID's key; a delivery's own ID always wins over a link."""
    assert key_for("c", None, "Una@Example.com", None) == "c:email:una@example.com"
    assert key_for("c", None, "una@example.com", "123") == "c:id:123"
    assert key_for("c", "456", "una@example.com", "123") == "c:id:456"
    assert key_for("c", "123", None, None) == "c:id:123"


@pytest.mark.parametrize("stored,stored_id,decision", [
    (False, None, "new"),         # never seen: learn it
    (True, "123", "known"),       # the same link again
    (True, "999", "conflict"),    # one email, two CRM contacts: never merged
    (True, None, "contested"),    # already refused once: stays refused
])
def test_what_a_link_does_given_what_is_stored(stored, stored_id, decision):
    """A second ID for a linked email is a conflict, and a contested email is never linked again."""
    assert decide_link(stored, stored_id, "123") == decision


def test_joining_lines_keeps_the_job_in_flight_as_the_only_head():
    """A job in flight on either key stays the head: nothing else of the joined line may run."""
    id_line = [ActiveJob(5, "queued")]
    email_line = [ActiveJob(3, "running"), ActiveJob(4, "running", merged_into=3), ActiveJob(7, "queued")]
    assert plan_join(id_line, email_line) == Join(3)
    assert plan_join([ActiveJob(8, "running")], [ActiveJob(2, "queued")]) == Join(8)


def test_joining_idle_lines_makes_the_oldest_waiting_job_the_head():
    """Without a job in flight the oldest active job of either key is the head (a retry keeps its turn)."""
    assert plan_join([ActiveJob(9, "queued"), ActiveJob(11, "queued")], [ActiveJob(6, "queued")]) == Join(6)
    assert plan_join([], []) == Join(None)


def test_two_jobs_in_flight_cannot_be_joined():
    """One in flight on each key: two runs would hold one line, so the join waits (None)."""
    assert plan_join([ActiveJob(5, "running")], [ActiveJob(3, "running")]) is None
