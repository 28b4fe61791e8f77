"""tests/stack_smoke.sh inside the suite: scripts/wordpress-stack's lifecycle (up, down, purge,
no process left) and the companion plugin's contract over curl, on a throwaway stack of its own
(on ports free at the time, so checkouts testing side by side do not collide)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.wordpress

SCRIPT = Path(__file__).resolve().parent / "stack_smoke.sh"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stack_smoke_script_passes():
    """Every check of stack_smoke.sh passes (about 20 s)."""
    env = {
        **os.environ,
        "SMOKE_DB_PORT": str(free_port()),
        "SMOKE_WP_PORT": str(free_port()),
    }
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, f"stack_smoke.sh failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    assert "checks passed" in out.stdout
