"""`make demo` tells the whole story on a stack of its own: it exits 0, prints each step, the
table of WordPress users and what each CRM received back, and leaves nothing running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "wordpress-stack"

pytestmark = pytest.mark.wordpress


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in args:
                found.append(f"{entry.name}: {args}")
    return found


def test_demo_runs_the_whole_story_and_stops_what_it_started(tmp_path):
    """Exit 0; every CRM's step, the bad key, the requeued dead job, the users table, the write-backs;
    afterwards neither the bridge nor the stack's MariaDB and PHP run."""
    # Under the checkout (the mysql user must reach it; pytest's tmp_path is private to root).
    state = ROOT / f".stack-demo-{os.getpid()}"
    env = {**os.environ, "WPSB_STACK_DIR": str(state), "WPSB_DB_PORT": str(free_port()),
           "WPSB_WP_PORT": str(free_port()), "WPSB_DEMO_DIR": str(tmp_path / "demo")}
    env.pop("KEEP", None)
    try:
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        out = result.stdout
        assert result.returncode == 0, out + result.stderr
        for step in ("role=customer&send_notification=true", "wpf_action=update&", "wpf_action=update_tags",
                     "/hooks/usercom", '"roles_removed"', '"redacted": ["last_name"]', "403", "job 9: requeued"):
            assert step in out, step
        table = out.split("9. The WordPress users")[1].split("10. ")[0]
        lines = [line.split() for line in table.strip().splitlines()[3:]]
        assert [(row[2], row[-2], row[-1]) for row in lines] == [
            ("customerly", "customer", "newsletter,vip"), ("customerly", "subscriber", "beta"),
            ("usercom", "subscriber", "lead,paid"), ("rownd", "(none)", "-")], table
        assert "Ada King" in table and "Jay Rose" in table
        back = out.split("10. What each CRM received back")[1]
        assert back.count("logs in: yes") == 4 and "logs in: NO" not in back and "wp_user_id=" in back
        assert "Welcome mails WordPress sent in this run: 1" in out
        assert processes_mentioning(str(state)) == [] and processes_mentioning(str(tmp_path / "demo")) == []
    finally:
        subprocess.run([str(STACK), "purge"], env=env, capture_output=True, timeout=120)
