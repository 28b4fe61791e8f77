"""A reload swaps the secrets the clients really send (a CRM token, the WordPress application
password), against the real WordPress and the fake CRM; the watchdog stops when a worker loop dies."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.settings import load_settings
from bridge.systemd import Notifier
from tests.conftest import RunningBridge, bridge_config, customerly_delivery, unique_email

pytestmark = pytest.mark.wordpress


def write_config(path, config: dict) -> None:
    """The settings dict as TOML (JSON values are valid TOML values for these)."""
    lines = [f"log_format = {json.dumps(config['log_format'])}"]
    for section in ("server", "database", "worker", "wordpress"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in config[section].items()]
    for name, conn in config["connections"].items():
        lines.append(f"[connections.{name}]")
        for k, v in conn.items():
            if isinstance(v, dict):  # an inline table
                lines.append(f"{k} = {{ " + ", ".join(f"{sk} = {json.dumps(sv)}" for sk, sv in v.items()) + " }")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")


async def test_reload_applies_a_crm_token_and_the_wordpress_password(tmp_path, wp_stack, fake_crm):
    """A wrong Customerly token kills a job; after a reload with the right one the next job is done;
    a reload with a wrong application password makes WordPress refuse the next job."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["connections"]["customerly"]["secrets"] = {"token": "wrong-token-value"}
    path = tmp_path / "bridge.toml"
    write_config(path, config)
    bridge = Bridge(load_settings(path), config_path=path)
    await bridge.start()
    session = aiohttp.ClientSession()
    try:
        running = RunningBridge(bridge, session)
        email = unique_email("reload")
        fake_crm.add_customerly_user(email, attributes={"first_name": "Re"})
        _, a1 = await running.send(customerly_delivery(email), wpf_action="add")
        first = await running.wait_job(a1["job_id"])
        assert first["status"] == "dead" and "AuthFailed" in first["last_error"], first

        config["connections"]["customerly"]["secrets"] = {"token": "cly-test-token"}
        write_config(path, config)
        assert await bridge.reload()
        again = {**customerly_delivery(email), "type": "user.created"}  # not a duplicate of the first
        _, a2 = await running.send(again, wpf_action="add")
        second = await running.wait_job(a2["job_id"])
        assert second["status"] == "done", second

        config["wordpress"]["application_password"] = "aaaa bbbb cccc dddd"
        write_config(path, config)
        assert await bridge.reload()
        other = unique_email("reload-wp")
        fake_crm.add_customerly_user(other, attributes={"first_name": "Wp"})
        _, a3 = await running.send(customerly_delivery(other), wpf_action="add")
        third = await running.wait_job(a3["job_id"])
        assert third["status"] == "dead" and "AuthFailed: wordpress" in third["last_error"], third
        assert "aaaa bbbb" not in third["last_error"]
    finally:
        await session.close()
        await bridge.stop()


async def test_watchdog_stops_when_a_worker_loop_dies(tmp_path, wp_stack, fake_crm):
    """WATCHDOG=1 arrives while the worker loops run and no more once one of them is gone."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
    bridge = Bridge(load_settings(None, **bridge_config(tmp_path, wp_stack, fake_crm)), notifier=notifier)

    def drain() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(listener.recv(4096))
            except BlockingIOError:
                return out

    await bridge.start()
    try:
        deadline = time.monotonic() + 10
        seen: list[bytes] = []
        while sum(m == b"WATCHDOG=1" for m in seen) < 2:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
            seen += drain()
        assert seen[0].startswith(b"READY=1\nSTATUS=serving on 127.0.0.1:")
        await bridge.worker._loops.cancel()  # what a crashed loop leaves behind: no loop running
        await asyncio.sleep(0.3)
        drain()
        await asyncio.sleep(1.0)
        assert b"WATCHDOG=1" not in drain()
    finally:
        await bridge.stop()
        listener.close()
        notifier.close()
