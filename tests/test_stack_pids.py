"""scripts/wordpress-stack signals a recorded PID only when that process's command line shows this
stack's own data or site directory: a stale PID file now naming another MariaDB (or PHP) is left
alone. The decoys are processes of this test, named like the real daemons."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "wordpress-stack"


def decoy(bin_dir: Path, name: str, *args: str) -> subprocess.Popen:
    """A process whose /proc/PID/comm is ``name`` (a script's comm is its file name), in its own
    process group as the stack's daemons are."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text("#!/bin/sh\nwhile :; do sleep 0.2; done\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), *args], start_new_session=True)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != name:
        assert time.monotonic() < deadline, "decoy did not start"
        time.sleep(0.02)
    return proc


def stack(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WPSB_STACK_DIR": str(state), "WPSB_DB_PORT": "1", "WPSB_WP_PORT": "2"}
    return subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def state(tmp_path) -> Path:
    (tmp_path / "st" / "pids").mkdir(parents=True)
    return tmp_path / "st"


@pytest.fixture
def decoys():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # our own decoy's group, by the PID we started
            proc.wait()


def test_stale_pid_files_naming_other_daemons_are_not_signalled(tmp_path, state, decoys):
    """PID files pointing at a 'mariadbd' and a 'php' of another data directory: status says
    stopped, down leaves both running and drops the stale files."""
    other_db = decoy(tmp_path / "bin", "mariadbd", "--datadir=/var/lib/mysql", "--port=3306")
    other_php = decoy(tmp_path / "bin", "php", "-S", "127.0.0.1:80", "-t", "/var/www/html", "router.php")
    decoys += [other_db, other_php]
    (state / "pids" / "mariadbd.pid").write_text(f"{other_db.pid}\n")
    (state / "pids" / "php-server.pid").write_text(f"{other_php.pid}\n")

    status = stack(state, "status")
    assert status.returncode == 3 and "mariadb:   stopped" in status.stdout and "wordpress: stopped" in status.stdout

    down = stack(state, "down")
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    assert other_db.poll() is None and other_php.poll() is None
    assert "not this stack's mariadbd" in down.stderr and "not signalling it" in down.stderr
    assert not (state / "pids" / "mariadbd.pid").exists() and not (state / "pids" / "php-server.pid").exists()


def test_the_stacks_own_process_is_still_stopped(tmp_path, state, decoys):
    """A recorded process whose command line has this stack's --datadir is recognised and stopped."""
    ours = decoy(tmp_path / "bin", "mariadbd", f"--datadir={state / 'db' / 'data'}", "--port=1")
    decoys.append(ours)
    (state / "pids" / "mariadbd.pid").write_text(f"{ours.pid}\n")
    assert "mariadb:   running" in stack(state, "status").stdout
    down = stack(state, "down")
    assert down.returncode == 0 and "stopping mariadbd" in down.stderr, down.stderr
    assert ours.wait(10) is not None
