"""systemd conventions of a real ``wp-sync-bridge serve`` process: the notification protocol over a
NOTIFY_SOCKET this test binds (READY, STATUS, WATCHDOG, RELOADING, STOPPING), SIGHUP reloads,
credentials from $CREDENTIALS_DIRECTORY, syslog priority prefixes, and the unit file itself.

No WordPress is needed: the bridge starts (and reports WordPress unreachable) without one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bridge.systemd import Notifier, watchdog_interval_s

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wp-sync-bridge.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
OLD_KEY, NEW_KEY = "old-access-key-1", "new-access-key-2"


def config_text(tmp_path: Path, keys: list[str] | None, log_level: str = "info", **worker: int) -> str:
    """A serve configuration with nothing to reach (WordPress and the CRM on port 9)."""
    key_line = f"access_keys = {json.dumps(keys)}" if keys is not None else ""
    worker_lines = "\n".join(f"{k} = {v}" for k, v in {"poll_interval_s": 0.2, **worker}.items())
    return f"""
log_level = "{log_level}"
[server]
host = "127.0.0.1"
port = 0
{key_line}
[database]
path = "{tmp_path / 'bridge.db'}"
[worker]
{worker_lines}
[wordpress]
url = "http://127.0.0.1:9"
application_password = "abcd efgh ijkl mnop"
[connections.customerly]
crm = "customerly"
base_url = "http://127.0.0.1:9/customerly/v1"
secrets = {{ token = "cly-token-in-file" }}
"""


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket collecting every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 30) -> dict[str, str]:
        """The first message (after those already matched) that has ``key`` (equal to ``value``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.messages:
                if key in message and (value is None or message[key] == value) and not message.get("_seen" + key):
                    message["_seen" + key] = "1"
                    return message
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        raise AssertionError(f"no {key}={value or '*'} within {timeout_s} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Served:
    """A ``wp-sync-bridge serve`` subprocess; stderr goes to a file the test reads."""

    def __init__(self, tmp_path: Path, config: Path, **env: str) -> None:
        self.stderr_path = tmp_path / "serve.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config", str(config)], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def log(self) -> str:
        return self.stderr_path.read_text()

    def wait_log(self, text: str, timeout_s: float = 20) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in (log := self.log()):
                return log
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def post(port: int, key: str) -> int:
    """One Customerly-style add of a new address (so never a duplicate); the HTTP status."""
    body = json.dumps({"data": {"user": {"data": {"email": f"hup-{time.monotonic_ns()}@example.com"}}}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/?wpf_action=add&access_key={key}", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def port_of(status: str) -> int:
    pattern = r"serving on 127\.0\.0\.1:(\d+), \d+ queued, \d+ running, \d+ dead(; WordPress unreachable)?$"
    match = re.match(pattern, status)
    assert match, status
    return int(match.group(1))


@pytest.fixture
def listener(tmp_path):
    sock = NotifyListener(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notify_ready_status_watchdog_reload_and_stopping(tmp_path, listener):
    """READY with a STATUS naming the port, WATCHDOG pings, SIGHUP applies a new key and log level
    (RELOADING then READY, the daemon alive), an invalid file keeps the running one, STOPPING on SIGTERM."""
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path, [OLD_KEY]))
    served = Served(tmp_path, config, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="400000")
    try:
        ready = listener.wait_for("READY", "1")
        port = port_of(ready["STATUS"])
        listener.wait_for("WATCHDOG", "1")
        listener.wait_for("WATCHDOG", "1")  # repeatedly, not once
        # WordPress (port 9) does not answer: the next status line says so.
        assert listener.wait_for("STATUS", f"serving on 127.0.0.1:{port}, 0 queued, 0 running, 0 dead; "
                                 "WordPress unreachable")
        assert post(port, OLD_KEY) == 202 and post(port, NEW_KEY) == 403
        assert "delivery.accepted" not in served.log()  # a debug event, and the level is info

        config.write_text(config_text(tmp_path, [NEW_KEY], log_level="debug"))
        served.proc.send_signal(signal.SIGHUP)
        assert "MONOTONIC_USEC" in listener.wait_for("RELOADING", "1")
        listener.wait_for("READY", "1")
        served.wait_log("config.reloaded")
        assert post(port, NEW_KEY) == 202 and post(port, OLD_KEY) == 403
        served.wait_log("delivery.accepted")
        assert served.proc.poll() is None

        config.write_text(config_text(tmp_path, ["short"]))  # too short a key: refused, old config kept
        served.proc.send_signal(signal.SIGHUP)
        log = served.wait_log("config.reload_failed")
        assert "server.access_keys" in log and "short" not in log.split("config.reload_failed")[1].split("\n")[0]
        listener.wait_for("READY", "1")
        assert served.proc.poll() is None and post(port, NEW_KEY) == 202

        assert served.stop() == 0
        assert listener.wait_for("STOPPING", "1")["STATUS"].startswith("stopping")
    finally:
        served.stop()
    assert NEW_KEY not in served.log() and OLD_KEY not in served.log()


def test_watchdog_for_another_pid_is_not_pinged(tmp_path, listener):
    """WATCHDOG_PID naming another process: READY and STATUS, but never WATCHDOG=1."""
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path, [OLD_KEY]))
    served = Served(tmp_path, config, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    try:
        listener.wait_for("READY", "1")
        time.sleep(1.0)
        assert served.stop() == 0
        listener.wait_for("STOPPING", "1")
    finally:
        served.stop()
    assert not [m for m in listener.messages if "WATCHDOG" in m]


def test_journal_priorities_and_credentials(tmp_path):
    """With stderr as the journal ($JOURNAL_STREAM): each line starts with its syslog priority,
    job.dead at <3> (err); the access key came from $CREDENTIALS_DIRECTORY, never printed."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "WPSB_SERVER__ACCESS_KEYS").write_text("cred-access-key-1\n")
    (creds / "connections.customerly.secrets.token").write_text("cly-token-from-credential\n")
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path, None, max_attempts=1, http_attempts=1))
    listener = NotifyListener(tmp_path / "n.sock")
    stderr = tmp_path / "serve.stderr"
    stderr.touch()
    st = os.stat(stderr)
    served = Served(tmp_path, config, NOTIFY_SOCKET=str(listener.path), CREDENTIALS_DIRECTORY=str(creds),
                    JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    try:
        port = port_of(listener.wait_for("READY", "1")["STATUS"])
        assert post(port, "cly-token-in-file") == 403
        assert post(port, "cred-access-key-1") == 202
        served.wait_log("job.dead")
    finally:
        assert served.stop() == 0
        listener.close()
    lines = served.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines}
    assert by_event["job.dead"] == "<3>" and by_event["delivery.forbidden"] == "<4>"
    assert by_event["bridge.started"] == "<6>"
    text = served.log()
    assert "cred-access-key-1" not in text and "cly-token-from-credential" not in text


def test_without_journal_stream_lines_are_plain_json(tmp_path, listener):
    """$JOURNAL_STREAM naming another file (stderr redirected): no priority prefix."""
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path, [OLD_KEY]))
    served = Served(tmp_path, config, NOTIFY_SOCKET=str(listener.path), JOURNAL_STREAM="1:1")
    try:
        listener.wait_for("READY", "1")
    finally:
        assert served.stop() == 0
    assert served.log().startswith("{") and json.loads(served.log().splitlines()[0])["event"]


def serve_exit(tmp_path: Path, *args: str, config: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bridge", "serve", *args]
    if config is not None:
        path = tmp_path / "exit.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_exit_codes_follow_sysexits(tmp_path):
    """64 usage, 66 missing config file, 78 invalid configuration (key named), 73 database cannot be
    created, 69 port taken, 75 database held by another bridge."""
    assert serve_exit(tmp_path, "--no-such-option").returncode == 64
    missing = serve_exit(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 66 and "nope.toml" in missing.stderr
    bad_level = serve_exit(tmp_path, config=config_text(tmp_path, [OLD_KEY], log_level="verbose"))
    assert bad_level.returncode == 78 and "log_level" in bad_level.stderr
    no_keys = serve_exit(tmp_path, config=config_text(tmp_path, None))
    assert no_keys.returncode == 78 and "server.access_keys" in no_keys.stderr
    bad_port = serve_exit(tmp_path, config=config_text(tmp_path, [OLD_KEY]).replace("port = 0", "port = 70000"))
    assert bad_port.returncode == 78 and "server.port" in bad_port.stderr

    (tmp_path / "bridge.db.lock").mkdir()  # the lock file cannot be created (root passes any permission check)
    no_db = serve_exit(tmp_path, config=config_text(tmp_path, [OLD_KEY]))
    assert no_db.returncode == 73 and "cannot open the database" in no_db.stderr, no_db.stderr
    (tmp_path / "bridge.db.lock").rmdir()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve_exit(tmp_path, config=config_text(tmp_path, [OLD_KEY]).replace("port = 0", f"port = {port}"))
    assert busy.returncode == 69 and str(port) in busy.stderr, busy.stderr

    import fcntl

    with open(tmp_path / "bridge.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        locked = serve_exit(tmp_path, config=config_text(tmp_path, [OLD_KEY]))
    assert locked.returncode == 75 and "in use" in locked.stderr


def test_notifier_addresses_and_watchdog_interval(tmp_path):
    """An '@' NOTIFY_SOCKET is the abstract namespace; no socket means every call is a no-op;
    the watchdog interval is half of WATCHDOG_USEC and only for this PID."""
    name = f"wpsb-test-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify(READY=1, STATUS="up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        server.close()
    assert not Notifier({}).enabled and Notifier({}).notify(READY=1) is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).notify(READY=1) is False  # nobody listens
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None and watchdog_interval_s({}) is None


def _unit_with_exec_start(tmp_path: Path) -> Path:
    """The unit, copied with ExecStart pointing at this virtual environment's wp-sync-bridge
    (verify checks that the binary exists; /opt/wp-sync-bridge is not installed here)."""
    binary = Path(sys.executable).parent / "wp-sync-bridge"
    assert binary.exists(), binary
    text = UNIT.read_text()
    assert "ExecStart=/opt/wp-sync-bridge/bin/wp-sync-bridge " in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace("ExecStart=/opt/wp-sync-bridge/bin/wp-sync-bridge ", f"ExecStart={binary} "))
    return path


def test_unit_verifies_clean(tmp_path):
    """systemd-analyze verify prints nothing about the unit (ExecStart rewritten to a binary that exists)."""
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(_unit_with_exec_start(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result


def test_unit_security_exposure_is_at_most_2(tmp_path):
    """systemd-analyze security --offline=true rates the unit 2.0 or lower."""
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_declares_notify_limits_and_restart_policy():
    """Type=notify with the watchdog, journal priorities, LimitNOFILE, and configuration exits kept from restart."""
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["Type"] == "notify" and int(lines["WatchdogSec"]) > 0
    assert lines["SyslogLevelPrefix"] == "yes" and int(lines["LimitNOFILE"]) >= 65536
    assert lines["Restart"] == "on-failure"
    assert set(lines["RestartPreventExitStatus"].split()) == {"64", "65", "66", "78"}
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
