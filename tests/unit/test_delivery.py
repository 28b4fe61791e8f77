"""Parsing deliveries into jobs, and every way a delivery is refused with a clear 4xx."""

import json

import pytest

from bridge.core.connector import build_connector
from bridge.core.delivery import OVERRIDE_PARAMS, Delivery, dedupe_key, normalize_action, parse_delivery
from bridge.errors import BadDelivery

CUSTOMERLY = build_connector("customerly")
ALL_OVERRIDES = frozenset(OVERRIDE_PARAMS)
ROWND = build_connector("rownd")
USERCOM = build_connector("usercom")
JSON = "application/json"


def body(email="ada@example.com"):
    return json.dumps({"data": {"user": {"data": {"email": email}}}}).encode()


def test_wp_fusion_add_with_role_and_notification():
    """The WP Fusion URL contract: action, role and send_notification=true from the query."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add", "role": "customer", "send_notification": "true"}, JSON, body(),
                       ALL_OVERRIDES)
    assert (d.action, d.email, d.contact_id, d.role, d.send_notification) == ("add", "ada@example.com", "ada@example.com", "customer", True)


@pytest.mark.parametrize("word,expected", [("true", True), ("1", True), ("false", False), ("", False), ("no", False)])
def test_send_notification_false_string_is_false(word, expected):
    """Only true-words switch the welcome mail on; the string 'false' is false."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add", "send_notification": word}, JSON, body())
    assert d.send_notification is expected


def test_aliases_and_unknown_action():
    """add_user/update_user are aliases; anything else is a 400 naming the action."""
    assert normalize_action("add_user") == "add"
    assert normalize_action("update_user") == "update"
    with pytest.raises(BadDelivery) as info:
        normalize_action("destroy")
    assert info.value.status == 400 and "destroy" in info.value.message


def test_query_contact_id_overrides_the_body():
    """contact_id and email query parameters take precedence, as in WP Fusion."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "update", "contact_id": "X1", "email": "q@example.com"}, JSON, body(),
                       ALL_OVERRIDES)
    assert (d.contact_id, d.email) == ("X1", "q@example.com")
    assert d.contact_key == "c:id:X1"


def test_missing_contact_names_where_it_looked():
    """A payload with no contact is 422 and says which fields were looked at."""
    with pytest.raises(BadDelivery) as info:
        parse_delivery("c", CUSTOMERLY, {"wpf_action": "add"}, JSON, b'{"data": {}}')
    assert info.value.status == 422 and "data.user.data.email" in info.value.message


def test_form_bodies_are_accepted():
    """application/x-www-form-urlencoded bodies parse into fields."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add"}, "application/x-www-form-urlencoded", b"email=f%2Bx%40example.com")
    assert d.email == "f+x@example.com"


@pytest.mark.parametrize("ctype,raw,code", [
    (JSON, b'{"a":', "invalid_json"),
    (JSON, b"\xff\xfe{}", "invalid_encoding"),
    (JSON, b"[1,2]", "invalid_payload"),
    (JSON, b"[" * 50 + b"]" * 50, "invalid_payload"),
    (JSON, b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep"),
    (JSON, b'{"a":' * 100000 + b"1" + b"}" * 100000, "too_deep"),
    ("text/xml", b"<a/>", "unsupported_media_type"),
])
def test_bad_bodies(ctype, raw, code):
    """Each malformed body is a 4xx with its own code, never an exception escaping."""
    with pytest.raises(BadDelivery) as info:
        parse_delivery("c", CUSTOMERLY, {"wpf_action": "add"}, ctype, raw)
    assert info.value.code == code and 400 <= info.value.status < 500


def test_rownd_operations_map_to_actions():
    """Rownd's meta.operation picks the action; the email comes from lookup_values."""
    payload = {"data": {"user_id": "u1", "email": "j@acme.com"}, "redacted": [], "meta": {"operation": "data_update",
               "lookup_values": [{"field": "email", "value": "j@acme.com"}]}}
    d = parse_delivery("r", ROWND, {}, JSON, json.dumps(payload).encode())
    assert (d.action, d.contact_id, d.email, d.operation) == ("update", "u1", "j@acme.com", "data_update")
    payload["meta"]["operation"] = "explode"
    with pytest.raises(BadDelivery) as info:
        parse_delivery("r", ROWND, {}, JSON, json.dumps(payload).encode())
    assert info.value.code == "unknown_operation"


def test_usercom_default_action_is_add():
    """A User.com automation call names no action: it is a new user, i.e. add."""
    d = parse_delivery("u", USERCOM, {}, JSON, b'{"user": {"id": 123, "email": "n@u.com"}}')
    assert (d.action, d.contact_id) == ("add", "123")


def test_payload_round_trip():
    """What is stored with the job gives back the same Delivery."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add", "role": "r"}, JSON, body(), ALL_OVERRIDES)
    assert Delivery.from_payload(json.loads(json.dumps(d.to_payload()))) == d


@pytest.mark.parametrize("raw, ctype", [
    (b'{ "data" : {"user": {"data": {"email": "eleve@\\u00e9cole.example", "n": [1, 2.5e3, null, true]}}},\n "x": "\\ud800"}', JSON),
    ('{"data":{"user":{"data":{"email":"zoe@b\u00fccher.example","name":"\U0001f600 \\" quote"}}}}'.encode(), JSON),
    (b"email=a%2Bb%40example.com&first_name=Al", "application/x-www-form-urlencoded"),
    (b"", JSON),
])
def test_stored_payload_text_reads_back_as_the_same_delivery(raw, ctype):
    """payload_json() reuses a JSON body's own text instead of re-encoding it; it must read back
    exactly as to_payload() would (whitespace, escapes, lone surrogates, numbers, form bodies)."""
    query = {"wpf_action": "add", "email": "q@example.com"} if not raw or ctype != JSON else {"wpf_action": "add"}
    d = parse_delivery("c", CUSTOMERLY, query, ctype, raw, ALL_OVERRIDES)
    stored = json.loads(d.payload_json())
    assert stored == json.loads(json.dumps(d.to_payload()))
    assert Delivery.from_payload(stored) == d


def test_dedupe_key_ignores_the_access_key_and_prefers_webhook_id():
    """Rotating the key does not defeat de-duplication; webhook-id wins when given."""
    a = dedupe_key("c", {"wpf_action": "add", "access_key": "k1"}, b"{}", None)
    b = dedupe_key("c", {"wpf_action": "add", "access_key": "k2"}, b"{}", None)
    c = dedupe_key("c", {"wpf_action": "add"}, b'{"x":1}', None)
    assert a == b and a != c
    assert dedupe_key("c", {}, b"", "msg_1") == "wh:c:msg_1"


def test_dedupe_key_is_the_same_as_before_the_one_call_hash():
    """Keys stored by earlier versions still match after an upgrade (a redelivery within the
    window is still recognised): the digest is pinned."""
    query = {"wpf_action": "add", "access_key": "k", "role": "customer", "b": "é"}
    assert dedupe_key("customerly", query, b'{"x":1}', None) == "h:1ffcf229965143d17abebb627419ec061abb6679"


def test_a_contact_id_past_64_bits_is_kept_exact():
    """orjson reads integers past 64 bits as floats; the contact ID must not be rounded."""
    big = 123456789012345678901234567890
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "update"}, JSON, json.dumps({"contact_id": big}).encode())
    assert d.contact_id == str(big)
    assert json.loads(d.payload_json())["body"]["contact_id"] == big


def test_payload_json_with_a_lone_surrogate_outside_the_body():
    """orjson refuses lone surrogates; the stored text falls back to the stdlib's escape."""
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add", "role": "r\ud800"}, JSON, body(), ALL_OVERRIDES)
    assert json.loads(d.payload_json())["role"] == "r\ud800"


@pytest.mark.parametrize("raw", [
    b'{"a": NaN}', b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": 1} ', b'{"a": 1}\n',
    b'{"a": 1, "a": 2}', b'{"a": -0.0, "b": 1E2, "c": 0.1}',
])
def test_fast_json_path_accepts_what_the_stdlib_accepts(raw):
    """The orjson fast path hands what it refuses to the stdlib, so nothing accepted before is refused."""
    from bridge.core.delivery import parse_body
    data, text = parse_body(JSON, raw)
    assert repr(data) == repr(json.loads(raw)) and text == raw.decode()
