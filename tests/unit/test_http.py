"""Reading answers into values or typed errors in one place, and the tenacity policy built on them."""

import email.utils
import json

import pytest

from bridge.clients.http import parse_retry_after, read_response, retrying
from bridge.errors import AuthFailed, NotFound, Permanent, RateLimited, Transient


def body(data) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize("status,payload,headers,error", [
    (500, {"error": {"message": "Access token not found.", "code": 0}}, {}, AuthFailed),
    (500, {"code": "existing_user_email", "message": "Sorry, that email address is already used!"}, {}, Permanent),
    (500, {"code": "internal_server_error", "message": "boom"}, {}, Transient),
    (502, {}, {}, Transient),
    (503, {}, {}, Transient),
    (504, {}, {}, Transient),
    (429, {}, {"Retry-After": "7"}, RateLimited),
    (401, {"code": "rest_not_logged_in"}, {}, AuthFailed),
    (403, {"detail": "Invalid token."}, {}, AuthFailed),
    (404, {"detail": "Not found."}, {}, NotFound),
    (400, {"code": "rest_invalid_param", "message": "Invalid parameter(s): email"}, {}, Permanent),
    (409, {"code": "wpsb_email_conflict", "message": "taken"}, {}, Permanent),
])
def test_statuses_become_typed_errors(status, payload, headers, error):
    """Each answer style maps to one error type; Customerly's 500 auth answer is AuthFailed."""
    with pytest.raises(error) as info:
        read_response("svc", status, headers, body(payload), auth_markers=["Access token not found"])
    assert type(info.value) is error
    if error is RateLimited:
        assert info.value.retry_after_s == 7


def test_success_bodies_and_not_found_markers():
    """2xx gives the decoded JSON; a 2xx carrying a not-found marker is NotFound; empty is None."""
    assert read_response("svc", 200, {}, body({"data": {"email": "a@b.c"}})) == {"data": {"email": "a@b.c"}}
    assert read_response("svc", 204, {}, b"") is None
    with pytest.raises(NotFound):
        read_response("svc", 200, {}, body({"error": {"message": "User doesn't exist"}}), not_found_markers=["User doesn't exist"])
    with pytest.raises(Transient):
        read_response("svc", 200, {}, b"<html>proxy error</html>")


def test_retry_after_in_seconds_or_as_a_date():
    """Retry-After is read as delta-seconds or an HTTP date."""
    assert parse_retry_after("120") == 120
    when = email.utils.formatdate(1000 + 30, usegmt=True)
    assert parse_retry_after(when, now_s=1000) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_tenacity_retries_transient_then_gives_up_and_never_retries_permanent():
    """Transient errors are retried up to the attempt limit; Permanent ones are not retried at all."""
    calls = {"t": 0, "p": 0}

    async def run(kind, exc):
        async for attempt in retrying(3, 0.001, 0.01):
            with attempt:
                calls[kind] += 1
                raise exc

    with pytest.raises(Transient):
        await run("t", Transient("svc", "down"))
    with pytest.raises(Permanent):
        await run("p", Permanent("svc", "bad"))
    assert calls == {"t": 3, "p": 1}


async def test_long_retry_after_is_left_to_the_queue():
    """A Retry-After longer than the in-run limit is not slept on: it goes back to the queue at once."""
    calls = 0

    async def run():
        nonlocal calls
        async for attempt in retrying(5, 0.001, 1.0):
            with attempt:
                calls += 1
                raise RateLimited("svc", "slow down", retry_after_s=600)

    with pytest.raises(RateLimited):
        await run()
    assert calls == 1


def test_client_address_behind_a_trusted_proxy():
    """Behind a trusted proxy the throttle keys on the forwarded client, never on a spoofable header otherwise."""
    from bridge.web.throttle import client_address

    proxies = frozenset({"127.0.0.1"})
    assert client_address("127.0.0.1", "203.0.113.9, 127.0.0.1", proxies) == "203.0.113.9"
    assert client_address("127.0.0.1", "6.6.6.6, 203.0.113.9", proxies) == "203.0.113.9"
    assert client_address("198.51.100.7", "203.0.113.9", proxies) == "198.51.100.7"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address(None, None, frozenset()) == "-"
