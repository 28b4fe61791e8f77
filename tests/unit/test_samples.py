"""The pure core on recorded-shape sample payloads (tests/samples): each CRM's deliveries parse
into the right action and contact, and map to the right WordPress fields."""

import json
from pathlib import Path

import pytest

from bridge.core.connector import build_connector
from bridge.core.delivery import parse_delivery
from bridge.core.mapping import map_record, redacted_fields
from bridge.core.paths import get_path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
JSON = "application/json"


def load(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def mapped(crm: str, name: str, query: dict[str, str] | None = None):
    spec = build_connector(crm)
    delivery = parse_delivery(crm, spec, query or {}, JSON, load(name))
    record = get_path(delivery.body, spec.record_path) if spec.record_path else delivery.body
    return delivery, map_record(spec, record or {}, redacted_fields(spec, delivery.body))


@pytest.mark.parametrize("name", ["customerly/contact_tagged.json", "customerly/details_updated.json"])
def test_customerly_samples(name):
    """Customerly: the email at data.user.data.email is the contact ID; names and tags map."""
    delivery, fields = mapped("customerly", name, {"wpf_action": "update"})
    assert delivery.action == "update" and delivery.contact_id == delivery.email and "@" in delivery.email
    assert fields.user_email == delivery.email and fields.tags is not None


def test_customerly_tagged_sample_maps_names_and_tags():
    """The tagged sample's attributes become first/last name and its tags a sorted list."""
    _, fields = mapped("customerly", "customerly/contact_tagged.json", {"wpf_action": "update_tags"})
    assert (fields.first_name, fields.last_name, fields.display_name) == ("Ada", "Lovelace", "Ada Lovelace")
    assert fields.tags == ["newsletter", "vip"]


def test_usercom_new_user_sample_is_an_add_by_id():
    """User.com's automation body names no action: add, with the contact ID from user.id."""
    delivery, fields = mapped("usercom", "usercom/new_user.json")
    assert (delivery.action, delivery.contact_id, delivery.email) == ("add", "123", "una@example.com")
    assert (fields.first_name, fields.last_name) == ("Una", "Com")


@pytest.mark.parametrize("name,action", [("rownd/data_insert.json", "add"), ("rownd/data_update.json", "update"),
                                         ("rownd/visibility_update.json", "update"), ("rownd/delete.json", "delete")])
def test_rownd_samples_map_operations(name, action):
    """Rownd's seed payloads: operation → action, user_id as contact, email from lookup_values."""
    delivery, _ = mapped("rownd", name)
    assert delivery.action == action
    assert delivery.contact_id == "0e223bd4-1324-49ff-b948-122eeaaa42d1" and delivery.email == "jrose@acme.com"


def test_rownd_visibility_update_sample_skips_the_redacted_country():
    """The redacted country is not mapped even when the connection maps it."""
    spec = build_connector("rownd", extra_fields={"country": "meta.country"})
    delivery = parse_delivery("rownd", spec, {}, JSON, load("rownd/visibility_update.json"))
    fields = map_record(spec, delivery.body["data"], redacted_fields(spec, delivery.body))
    assert "country" not in fields.meta and fields.redacted == ["country"] and fields.first_name == "Juliet"
    update = parse_delivery("rownd", spec, {}, JSON, load("rownd/data_update.json"))
    assert map_record(spec, update.body["data"], redacted_fields(spec, update.body)).meta == {"country": "United States"}


def test_generic_sample_with_a_configured_connector():
    """A generic connector described in configuration reads the sample's contact, fields and tags."""
    spec = build_connector("generic", {"contact_id_paths": ["contact.id"], "email_paths": ["contact.email"],
                                       "record_path": "contact", "default_action": "update", "tags_path": "tags",
                                       "fields": {"email": "user_email", "fields.first": "first_name", "fields.plan": "meta.plan"}})
    delivery = parse_delivery("gen", spec, {}, JSON, load("generic/contact_event.json"))
    fields = map_record(spec, delivery.body["contact"])
    assert (delivery.action, delivery.contact_id) == ("update", "c-42")
    assert (fields.first_name, fields.meta, fields.tags) == ("Gene", {"plan": "gold"}, ["t1", "t2"])
    assert json.loads(load("generic/contact_event.json"))["event"] == "contact.updated"
