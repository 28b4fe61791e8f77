"""``doctor``'s checks of this machine: the database file (path, ownership against the running and
the service user, writability, schema) and the listen address. Nothing is created or changed:
the database is opened read-only (``bridge.store.operator``), the port only bound for a moment.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bridge.settings import Settings

OK, PROBLEM, WARNING = "ok", "problem", "warning"
SERVICE_USER = "wp-sync-bridge"


@dataclass
class Finding:
    """One line of the doctor's table. ``exit_code`` is what a problem here makes the run exit with
    (78 configuration, 69 a service unavailable, 1 anything else)."""

    check: str
    status: str
    detail: str
    fix: str = ""
    exit_code: int = 1


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def service_account(name: str | None) -> pwd.struct_passwd | None:
    """The account the service runs as: ``name``, else ``wp-sync-bridge`` when it exists."""
    try:
        return pwd.getpwnam(name or SERVICE_USER)
    except KeyError:
        return None


def _writable_by(st: os.stat_result, account: pwd.struct_passwd) -> bool:
    if account.pw_uid == 0:
        return True
    groups = {g for g in os.getgrouplist(account.pw_name, account.pw_gid)}
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def _ownership(files: list[Path], account: pwd.struct_passwd | None) -> list[Finding]:
    out = []
    me = os.geteuid()
    owner = account.pw_uid if account else me
    who = account.pw_name if account else f"{_user(me)} (this user)"
    wrong = [f for f in files if f.stat().st_uid != owner]
    if wrong:
        names = " ".join(str(f) for f in wrong)
        out.append(Finding("database owner", PROBLEM,
                           f"{names} owned by {_user(wrong[0].stat().st_uid)}, but the bridge runs as {who}",
                           f"chown {account.pw_name if account else _user(me)}: {names}"))
    else:
        out.append(Finding("database owner", OK, f"owned by {who}"))
    return out


def _dead_jobs(jobs: dict[str, int]) -> list[Finding]:
    if not jobs.get("dead"):
        return []
    return [Finding("dead jobs", WARNING, f"{jobs['dead']} job(s) in the dead-letter state",
                    "wp-sync-bridge jobs list --status dead; after fixing the cause: "
                    "wp-sync-bridge jobs requeue --status dead")]


def _schema(version: int, known: int, backup: str) -> Finding:
    if version < known:
        return Finding("database schema", WARNING, f"version {version}; serve will migrate it to {known}",
                       f"back it up first: {backup}")
    return Finding("database schema", OK, f"version {version}")


def postgres_findings(settings: Settings) -> list[Finding]:
    """Reachability and schema of ``database.url``; never creates or migrates anything."""
    from bridge.store.db import SchemaTooNew
    from bridge.store.operator import NotABridgeDatabase, latest_version, open_existing_url, read_version
    from bridge.store.pgdb import PostgresUnavailable
    from bridge.store.queue import counts

    db = settings.database
    out = [Finding("database.url", OK, f"PostgreSQL at {db.where} (several bridges may share it)")]
    try:
        with open_existing_url(db.url.get_secret_value(), need_latest=False) as conn:
            version = read_version(conn)
            jobs = counts(conn)
    except NotABridgeDatabase:
        return out + [Finding("database schema", WARNING, "no wp-sync-bridge queue in this database yet",
                              "expected before the first start: serve creates it")]
    except SchemaTooNew as exc:
        return out + [Finding("database schema", PROBLEM, str(exc), "upgrade wp-sync-bridge", 75)]
    except PostgresUnavailable as exc:
        return [Finding("database.url", PROBLEM, f"{db.where}: {exc}",
                        "is PostgreSQL running, and do the user, password and database name in database.url "
                        "exist (psql with the same URL tells)?", 69)]
    out.append(_schema(version, latest_version("postgresql"), "pg_dump --format=custom DBNAME > bridge.dump"))
    return out + _dead_jobs(jobs)


def database_findings(settings: Settings, service_user: str | None = None) -> list[Finding]:
    """Path, ownership, writability and schema of ``database.path`` (or reachability and schema of
    ``database.url``); never creates anything."""
    from bridge.store.operator import DatabaseMissing, latest_version, open_existing, read_version
    from bridge.store.queue import counts
    from bridge.store.db import SchemaTooNew

    if settings.database.backend == "postgresql":
        return postgres_findings(settings)
    path = Path(settings.database.path)
    account = service_account(service_user)
    if not path.parent.is_dir():
        return [Finding("database.path", WARNING, f"directory {path.parent} does not exist yet",
                        "serve creates it at the first start (systemd's StateDirectory= too); if a database "
                        "exists elsewhere, database.path is wrong")]
    if not path.exists():
        out = [Finding("database.path", WARNING, f"no database at {path}: serve will create a new, empty one",
                       "expected before the first start; otherwise database.path points at the wrong file")]
        if account and not _writable_by(path.parent.stat(), account):
            out.append(Finding("database directory", PROBLEM,
                               f"{path.parent} is not writable by {account.pw_name}",
                               f"chown {account.pw_name}: {path.parent}"))
        return out
    files = [path] + [Path(f"{path}{s}") for s in ("-wal", "-shm", ".lock") if Path(f"{path}{s}").exists()]
    out = [Finding("database.path", OK, str(path))]
    out += _ownership(files, account)
    writer = account
    if writer is not None and not (_writable_by(path.stat(), writer)
                                   and _writable_by(path.parent.stat(), writer)):
        out.append(Finding("database writable", PROBLEM,
                           f"{path} or its directory is not writable by {writer.pw_name}",
                           f"chmod u+w {path} {path.parent}"))
    elif writer is None and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        out.append(Finding("database writable", PROBLEM,
                           f"{path} or its directory is not writable by this user",
                           "run as the user that owns it, or fix the permissions"))
    else:
        out.append(Finding("database writable", OK, "file and directory writable"))
    try:
        with open_existing(path, need_latest=False) as conn:
            version = read_version(conn)
            jobs = counts(conn) if version else {}
    except SchemaTooNew as exc:
        return out + [Finding("database schema", PROBLEM, str(exc), "upgrade wp-sync-bridge", 75)]
    except (DatabaseMissing, OSError, Exception) as exc:  # a corrupt or foreign file
        return out + [Finding("database schema", PROBLEM, f"cannot read {path}: {exc}",
                              "is database.path really a wp-sync-bridge database?")]
    out.append(_schema(version, latest_version(), "wp-sync-bridge backup PATH"))
    return out + _dead_jobs(jobs)


def _bridge_answers(host: str, port: int, path: str = "/healthz") -> bool:
    """True when a bridge answers there: /healthz says alive, or /metrics shows the bridge's metrics
    (a 401 asking for the bearer token counts: it is the bridge's own answer)."""
    url_host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{url_host}:{port}{path}", timeout=3) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        return path == "/metrics" and exc.code == 401
    except (OSError, ValueError):
        return False
    if path == "/metrics":
        return b"wpsb_build_info" in body
    try:
        return json.loads(body).get("alive") is True
    except ValueError:
        return False


def listen_findings(settings: Settings) -> list[Finding]:
    """Whether ``server.host:server.port`` can be bound (or a bridge already answers there), and
    ``server.metrics_host:metrics_port`` when /metrics has an address of its own."""
    server = settings.server
    out = _bindable(server.host, server.port, "server", "listen address", "/healthz")
    if server.metrics_port is not None:
        out += _bindable(server.metrics_host or server.host, server.metrics_port, "server.metrics",
                         "metrics address", "/metrics")
    return out


def _bindable(host: str, port: int, key: str, check: str, probe_path: str) -> list[Finding]:
    """One address: bindable now, or already served by a bridge, or the reason it cannot be."""
    where = f"{host}:{port}"
    host_key, port_key = (f"{key}.host", f"{key}.port") if key == "server" else (f"{key}_host", f"{key}_port")
    if port == 0:
        return [Finding(port_key, WARNING, "0: a random free port at each start",
                        "set a fixed port (for the TLS proxy or the scraper)")]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [Finding(host_key, PROBLEM, f"{host!r} does not resolve: {exc.strerror}",
                        "use an address of this machine, e.g. 127.0.0.1", 78)]
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            if _bridge_answers(host, port, probe_path):
                return [Finding(check, OK, f"{where}: a bridge is already serving there")]
            return [Finding(check, PROBLEM, f"{where} is in use by another program",
                            f"stop it, or choose another {port_key}")]
        if exc.errno == errno.EADDRNOTAVAIL:
            return [Finding(host_key, PROBLEM, f"{host} is not an address of this machine",
                            "use 127.0.0.1 behind a local TLS proxy, or an address this machine has", 78)]
        if exc.errno == errno.EACCES:
            return [Finding(port_key, PROBLEM, f"{where}: ports below 1024 need privileges",
                            "use a port above 1024 (behind the TLS proxy)", 78)]
        return [Finding(check, PROBLEM, f"{where}: {exc.strerror}", f"check {host_key} and {port_key}")]
    finally:
        sock.close()
    return [Finding(check, OK, f"{where} can be bound")]
