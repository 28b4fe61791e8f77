"""The two retry layers against the real WordPress and the fake CRM: tenacity within a run,
the queue across runs (backoff, Retry-After), and the dead-letter state."""

from __future__ import annotations

import pytest

from bridge.worker import backoff_s
from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    """Queue backoff doubles per attempt, stays within [ceiling/2, ceiling], and is capped."""
    lows = [backoff_s(n, 5, 3600, rand=lambda: 0.0) for n in range(1, 6)]
    highs = [backoff_s(n, 5, 3600, rand=lambda: 1.0) for n in range(1, 6)]
    assert lows == [2.5, 5, 10, 20, 40] and highs == [5, 10, 20, 40, 80]
    assert backoff_s(30, 5, 3600, rand=lambda: 1.0) == 3600


async def test_transient_crm_failures_are_retried_by_the_queue(tmp_path, wp_stack, fake_crm, start_bridge):
    """503s beyond tenacity's attempts put the job back in the queue; a later run succeeds."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, worker={"http_attempts": 2, "max_attempts": 5}))
    email = unique_email("flaky")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Flaky"})
    fake_crm.fail("/customerly/v1/users", status=503, times=3, method="GET")
    _, answer = await b.send(customerly_delivery(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"], timeout_s=30)
    assert job["status"] == "done" and job["attempts"] == 2, job
    assert WordPressProbe(wp_stack).user_count(email) == 1


async def test_exhausted_retries_go_to_the_dead_letter_state(tmp_path, wp_stack, fake_crm, start_bridge):
    """A CRM that keeps failing: after max_attempts the job is dead with the reason; WordPress untouched."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, worker={"http_attempts": 1, "max_attempts": 3}))
    email = unique_email("down")
    fake_crm.add_customerly_user(email)
    fake_crm.fail("/customerly/v1/users", status=502, times=10, method="GET")
    _, answer = await b.send(customerly_delivery(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"], timeout_s=30)
    assert job["status"] == "dead" and job["attempts"] == 3
    assert "gave up after 3 attempts" in job["last_error"] and "HTTP 502" in job["last_error"]
    assert WordPressProbe(wp_stack).user_count(email) == 0
    fake_crm.clear()
