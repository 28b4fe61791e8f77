"""The metrics an operator alerts on (build info, oldest waiting job, WordPress and CRMs up) and
/metrics on its own address behind a bearer token, on a real running bridge."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bridge import __version__
from bridge.metrics import Metrics
from tests.conftest import bridge_config, customerly_delivery, unique_email

TOKEN = "metrics-token-123"


def _value(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_oldest_queued_job_age_and_build_info():
    """The oldest queued job's age is exported in seconds (0 when none waits); build_info names the version."""
    metrics = Metrics()
    text = metrics.render({"queued": 1}, time.time() - 120).decode()
    assert 119 <= _value(text, "wpsb_oldest_queued_job_age_seconds") < 180
    assert _value(metrics.render({"queued": 0}, None).decode(), "wpsb_oldest_queued_job_age_seconds") == 0
    assert 'wpsb_build_info{python="' in text and f'version="{__version__}"' in text


@pytest.mark.wordpress
async def test_metrics_on_their_own_port_behind_a_token(tmp_path, wp_stack, fake_crm, start_bridge):
    """server.metrics_port moves /metrics off the webhook port; without the bearer token it is 401;
    with it, WordPress is up and each CRM as its last request found it (a wrong token: down)."""
    connections = {
        "customerly": {"crm": "customerly", "base_url": fake_crm.customerly_base,
                       "secrets": {"token": fake_crm.customerly_token}},
        "badcly": {"crm": "customerly", "base_url": fake_crm.customerly_base, "secrets": {"token": "wrong-token-9"}},
    }
    config = bridge_config(tmp_path, wp_stack, fake_crm, connections=connections,
                           server={"metrics_host": "127.0.0.1", "metrics_port": 0, "metrics_token": TOKEN})
    running = await start_bridge(config)
    bridge = running.bridge
    assert bridge.metrics_port and bridge.metrics_port != bridge.port
    email = unique_email("metrics")
    fake_crm.add_customerly_user(email)
    for path in ("/hooks/customerly", "/hooks/badcly"):
        _, answer = await running.send(customerly_delivery(email), path=path, wpf_action="add")
        await running.wait_job(answer["job_id"])
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{running.url}/metrics") as resp:
            assert resp.status == 404
        url = f"http://127.0.0.1:{bridge.metrics_port}/metrics"
        async with s.get(url) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with s.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        deadline = time.monotonic() + 20
        while True:
            async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
                text = await resp.text()
            if (_value(text, "wpsb_wordpress_up") == 1 and _value(text, 'wpsb_crm_up{connection="customerly"}') == 1
                    and _value(text, 'wpsb_crm_up{connection="badcly"}') == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert _value(text, "wpsb_wordpress_up") == 1
    assert _value(text, 'wpsb_crm_up{connection="customerly"}') == 1
    assert _value(text, 'wpsb_crm_up{connection="badcly"}') == 0
    assert "wpsb_build_info" in text and "wpsb_oldest_queued_job_age_seconds" in text
    assert TOKEN not in text and fake_crm.customerly_token not in text
