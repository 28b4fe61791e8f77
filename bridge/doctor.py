"""``wp-sync-bridge doctor``: one run reports every problem at once, as a table of
check / ok|problem|warning / what was found and how to fix it.

Order: the configuration (every validation error with the source of its value, placeholders,
values that parse but cannot work), this machine (database, listen address; ``doctor_local``),
then the services: WordPress (reachable, TLS, credentials, the plugin and its API version, the
bridge user's capabilities, the configured roles) and each CRM connection (its credentials,
through the harmless ``probe`` request its connector describes). A remote check whose settings
are broken is skipped with a pointer to the configuration problem, not run with defaults.

Nothing here prints a secret: messages come from typed errors (whose text never holds
credentials) and the caller scrubs the configured secret values from the output on top.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
from typing import Any, Iterable
from urllib.parse import urlsplit

import aiohttp

from bridge.config_report import ConfigReport, collect
from bridge.doctor_local import OK, PROBLEM, WARNING, Finding, database_findings, listen_findings
from bridge.errors import AuthFailed, NotFound, Permanent, RemoteError, Transient
from bridge.settings import Settings

# What the plugin checks for each operation (wordpress/wp-sync-bridge.php, wpsb_authorize).
NEEDED_CAPS = ("list_users", "create_users", "edit_users", "promote_users")
EX_CONFIG, EX_UNAVAILABLE = 78, 69


def config_findings(report: ConfigReport) -> list[Finding]:
    """One line per configuration problem or warning, naming the key and the value's source."""
    out = []
    for p in report.problems:
        status = PROBLEM if p.severity == "problem" else WARNING
        out.append(Finding(p.key, status, f"{p.message} [{p.source}]", p.fix, EX_CONFIG))
    if report.settings is not None and report.ok:
        names = ", ".join(report.settings.connections) or "none"
        out.insert(0, Finding("configuration", OK, f"valid; connections: {names}"))
    return out


def _quick(settings: Settings) -> Settings:
    """The settings with one HTTP attempt per request: the doctor reports, it does not insist."""
    worker = settings.worker.model_copy(update={"http_attempts": 1})
    wp = settings.wordpress.model_copy(update={"timeout_s": min(settings.wordpress.timeout_s, 10.0)})
    return settings.model_copy(update={"worker": worker, "wordpress": wp})


def _unavailable(check: str, where: str, exc: RemoteError) -> Finding:
    text = exc.message
    if "Certificate" in text or "SSL" in text:
        return Finding(f"{check} TLS", PROBLEM, f"{where}: the TLS certificate is not trusted ({text})",
                       "fix the site's certificate, or install its CA on this machine", EX_UNAVAILABLE)
    return Finding(check, PROBLEM, f"{where}: {text}",
                   "check the URL, DNS, the firewall and that the site is up",
                   EX_UNAVAILABLE)


def _caps_from(data: dict[str, Any]) -> tuple[set[str], list[str]]:
    caps = data.get("capabilities") or data.get("allcaps") or data.get("caps") or {}
    granted = {k for k, v in caps.items() if v} if isinstance(caps, dict) else set(caps)
    return granted, [str(r) for r in data.get("roles") or []]


async def _core_me(settings: Settings) -> dict[str, Any] | None:
    """The bridge user as core REST ``/wp/v2/users/me?context=edit`` describes it (roles and
    capabilities), or None when the site does not say."""
    from bridge.clients.http import basic_auth, send

    wp = settings.wordpress
    headers = {"Authorization": basic_auth(wp.username, wp.application_password.get_secret_value()),
               "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        try:
            return await send(session, "wordpress", "GET", wp.url.rstrip("/") + "/",
                              params={"rest_route": "/wp/v2/users/me", "context": "edit"},
                              timeout_s=wp.timeout_s)
        except RemoteError:
            return None


def _needs_delete(settings: Settings) -> bool:
    return any(c.delete_policy == "delete" for c in settings.connections.values())


def _from_plugin(settings: Settings, caller: dict[str, Any]) -> list[Finding]:
    """The plugin's own account of its caller (``status.caller``, wordpress/README.md)."""
    user = settings.wordpress.username
    out = []
    missing = list(caller.get("missing_capabilities") or [])
    if missing:
        out.append(Finding("wordpress capabilities", PROBLEM, f"{user!r} lacks {', '.join(missing)}",
                           "give the user the plugin's role WP Sync Bridge (wpsb_bridge), "
                           "docs/production.md"))
    else:
        role = " (role wpsb_bridge)" if caller.get("has_bridge_role") else ""
        out.append(Finding("wordpress capabilities", OK, f"{user!r} has {', '.join(NEEDED_CAPS)}{role}"))
    if caller.get("is_administrator"):
        out.append(Finding("wordpress user", WARNING,
                           f"{user!r} is an administrator: its application password "
                           "hands over the whole site if it leaks", "use a user with the role WP Sync Bridge "
                           "(wpsb_bridge), docs/production.md"))
    elif caller.get("excess_capabilities"):
        excess = ", ".join(caller["excess_capabilities"])
        out.append(Finding("wordpress user", WARNING, f"{user!r} also holds {excess}",
                           "give it only the role WP Sync Bridge (wpsb_bridge)"))
    grantable = caller.get("grantable_roles")
    if isinstance(grantable, list):
        wanted = settings.wordpress.granted_roles()
        refused = [r for r in dict.fromkeys([settings.wordpress.default_role, *wanted]) if r not in grantable]
        if refused:
            out.append(Finding("wordpress.allowed_roles", PROBLEM, f"the plugin would not let {user!r} grant "
                               f"{', '.join(refused)} (it may grant {', '.join(grantable) or 'none'})",
                               "use roles that are not privileged, or see wordpress/SECURITY.md", EX_CONFIG))
    return out


async def _capability_findings(settings: Settings, status: dict[str, Any]) -> list[Finding]:
    """What the bridge user may do: from the plugin's ``status.caller`` when it reports it, else
    from core REST; plus ``delete_users`` when a connection deletes users."""
    user = settings.wordpress.username
    caller = status.get("caller")
    me = None
    if isinstance(caller, dict) and "missing_capabilities" in caller:
        out = _from_plugin(settings, caller)
        if not _needs_delete(settings):
            return out
        me = await _core_me(settings)
    else:
        me = await _core_me(settings)
        if me is None:
            return [Finding("wordpress capabilities", WARNING, f"could not read what {user!r} may do",
                            "check its capabilities by hand (docs/production.md)")]
        granted, roles = _caps_from(me)
        missing = [c for c in NEEDED_CAPS if c not in granted]
        out = [Finding("wordpress capabilities", PROBLEM, f"{user!r} lacks {', '.join(missing)}",
                       "grant them to the bridge's role (docs/production.md)") if missing else
               Finding("wordpress capabilities", OK, f"{user!r} has {', '.join(NEEDED_CAPS)}")]
        if "administrator" in roles or "manage_options" in granted:
            out.append(Finding("wordpress user", WARNING,
                               f"{user!r} is an administrator: more than the bridge needs",
                               "use a dedicated least-privilege user (docs/production.md)"))
    if _needs_delete(settings):
        granted = _caps_from(me)[0] if me else set()
        if "delete_users" not in granted:
            out.append(Finding("wordpress capabilities", PROBLEM, f"{user!r} lacks delete_users, which "
                               "delete_policy = 'delete' needs", "define WPSB_BRIDGE_CAN_DELETE_USERS in "
                               "wp-config.php (wordpress/README.md), or use remove_roles"))
    return out


def _role_findings(settings: Settings, roles: Iterable[str]) -> list[Finding]:
    site = set(roles)
    wp = settings.wordpress
    out = []
    if wp.default_role not in site:
        out.append(Finding("wordpress.default_role", PROBLEM,
                           f"{wp.default_role!r} is not a role of this site "
                           f"(it has {', '.join(sorted(site))})", "use one of the site's roles", EX_CONFIG))
    missing = [r for r in (wp.allowed_roles or []) if r not in site]
    if missing:
        out.append(Finding("wordpress.allowed_roles", PROBLEM, f"{', '.join(missing)} not on this site",
                           "remove them or create the roles in WordPress", EX_CONFIG))
    if not out:
        out.append(Finding("wordpress roles", OK, f"default_role {wp.default_role!r}"
                           + (f" and allowed_roles {', '.join(wp.allowed_roles)}" if wp.allowed_roles else "")
                           + " exist on the site"))
    return out


async def wordpress_findings(settings: Settings) -> list[Finding]:
    """Reachable, TLS, credentials, plugin and API version, capabilities, roles."""
    from bridge.clients.wordpress import API_VERSION, make_wordpress

    s = _quick(settings)
    url = s.wordpress.url
    wp = make_wordpress(s)
    try:
        try:
            status = await wp.status()
        except AuthFailed as exc:
            if exc.status == 403:
                return [Finding("wordpress credentials", PROBLEM,
                                f"{s.wordpress.username!r} logged in but may not "
                                "list users", "grant list_users to the bridge's role (docs/production.md)")]
            return [Finding("wordpress credentials", PROBLEM,
                            f"{url} refused {s.wordpress.username!r} and its "
                            "application password",
                            "create a new application password for wordpress.username")]
        except NotFound as exc:
            if exc.code == "rest_no_route" or "xmlrpc" in exc.message.lower():
                return [Finding("wordpress plugin", PROBLEM,
                                f"{url} answers, but the wp-sync-bridge plugin is not "
                                "installed", "wp-sync-bridge install-plugin /path/to/wordpress (or copy "
                                "wp-sync-bridge.php to wp-content/mu-plugins/)")]
            return [Finding("wordpress.url", PROBLEM,
                            f"{url} does not look like a WordPress site ({exc.message})",
                            "point wordpress.url at the site's home address", EX_CONFIG)]
        except Transient as exc:
            return [_unavailable("wordpress", url, exc)]
        except Permanent as exc:
            return [Finding("wordpress", PROBLEM, f"{url}: {exc.message}", "see the site's PHP error log")]
        out = [Finding("wordpress", OK, f"{url} reachable, WordPress {status.get('wordpress_version')}")]
        if urlsplit(url).scheme == "https":
            out.append(Finding("wordpress TLS", OK, "certificate verified"))
        out.append(Finding("wordpress credentials", OK, f"{s.wordpress.username!r} accepted"))
        api = int(status.get("api_version") or 0)
        if api != API_VERSION:
            out.append(Finding("wordpress plugin", PROBLEM,
                               f"plugin {status.get('plugin_version')} speaks API {api}, "
                               f"this bridge needs {API_VERSION}", "install the plugin that ships with this "
                               "bridge: wp-sync-bridge install-plugin WP_ROOT"))
        else:
            out.append(Finding("wordpress plugin", OK, f"plugin {status.get('plugin_version')}, API {api}"))
        out += await _capability_findings(s, status)
        try:
            out += _role_findings(s, await wp.roles())
        except RemoteError as exc:
            out.append(Finding("wordpress roles", PROBLEM, f"could not read the site's roles: {exc.message}",
                               ""))
        return out
    finally:
        await wp.close()


async def _probe(name: str, settings: Settings, session: aiohttp.ClientSession) -> Finding:
    from bridge.clients.crm import CrmClient
    from bridge.core.templates import TemplateError

    conn = settings.connections[name]
    crm = CrmClient(name, conn, session, settings.worker, settings.wordpress.timeout_s)
    check = f"crm {name}"
    if crm.spec.probe is None:
        return Finding(check, WARNING, "credentials not checked: the connector describes no probe request",
                       f"describe connections.{name}.connector.probe (a harmless GET, e.g. the contact list)")
    target = crm.spec.base_url or "(no base_url)"
    try:
        await crm.request(crm.spec.probe, {})
    except TemplateError as exc:
        return Finding(check, PROBLEM, f"probe request has a hole: {exc}", f"see connections.{name}",
                       EX_CONFIG)
    except AuthFailed:
        return Finding(f"connections.{name}.secrets", PROBLEM, f"{target} refused the credentials",
                       f"set the right token in connections.{name}.secrets (or its WPSB_ variable)")
    except NotFound:
        return Finding(f"connections.{name}.base_url", PROBLEM, f"{target}: the probe's path was not found",
                       "check the base URL (the API's root, e.g. .../api/public or .../v1)", EX_CONFIG)
    except Transient as exc:
        return _unavailable(check, target, exc)
    except Permanent as exc:
        return Finding(check, PROBLEM, f"{target}: {exc.message}", f"check connections.{name}")
    return Finding(check, OK, f"{target} accepted the credentials")


async def crm_findings(settings: Settings, report: ConfigReport) -> list[Finding]:
    """Each connection's credentials through its probe request (all connections at once)."""
    s = _quick(settings)
    out: list[Finding] = []
    runnable = []
    for name in s.connections:
        if report.touches(f"connections.{name}"):
            out.append(Finding(f"crm {name}", WARNING, "not checked: its configuration has problems (above)",
                               f"fix connections.{name} first"))
        else:
            runnable.append(name)
    async with aiohttp.ClientSession(headers={"User-Agent": "wp-sync-bridge doctor"}) as session:
        out += await asyncio.gather(*(_probe(n, s, session) for n in runnable))
    return out


async def _remote(settings: Settings, report: ConfigReport) -> list[Finding]:
    wp_keys = ("wordpress.url", "wordpress.username", "wordpress.application_password", "wordpress.transport")
    if any(report.touches(k) for k in wp_keys):
        wp = [Finding("wordpress", WARNING, "not checked: its settings have problems (above)",
                      "fix them first")]
    else:
        wp = await wordpress_findings(settings)
    return wp + await crm_findings(settings, report)


def run(config: str | None, service_user: str | None = None, offline: bool = False) -> list[Finding]:
    """Every check, in the order of the table. ``offline`` leaves out WordPress and the CRMs."""
    report = collect(config)
    out = config_findings(report)
    settings = report.settings
    if settings is None:
        return out
    out += database_findings(settings, service_user)
    if not report.touches("server.host") and not report.touches("server.port"):
        out += listen_findings(settings)
    if not offline:
        from bridge.cli_common import run_async

        out += run_async(_remote(settings, report))
    return out


def exit_code(findings: list[Finding]) -> int:
    """0 without problems; else 78 when the configuration is wrong, 69 when a service is
    unavailable, 1 otherwise."""
    codes = {f.exit_code for f in findings if f.status == PROBLEM}
    for code in (EX_CONFIG, EX_UNAVAILABLE):
        if code in codes:
            return code
    return 1 if codes else 0


def as_json(findings: list[Finding]) -> str:
    """The findings as a JSON list (for scripts and monitoring)."""
    return json.dumps([{"check": f.check, "status": f.status, "detail": f.detail, "fix": f.fix}
                       for f in findings],
                      indent=2)


def render(findings: list[Finding], width: int | None = None, color: bool = False) -> str:
    """The table: check, status, then what was found with the fix on the next line (wrapped)."""
    import click

    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    first = min(30, max([len("check")] + [len(f.check) for f in findings]))
    rest = max(30, width - first - 12)
    colors = {OK: "green", PROBLEM: "red", WARNING: "yellow"}
    lines = [f"{'check':<{first}}  {'status':<8}  what / how to fix",
             f"{'-' * first}  {'-' * 8}  {'-' * rest}"]
    for f in findings:
        text = textwrap.wrap(f.detail, rest) or [""]
        if f.fix and f.status != OK:
            text += textwrap.wrap(f"→ {f.fix}", rest, subsequent_indent="  ")
        status = f"{f.status:<8}"
        if color:
            status = click.style(status, fg=colors.get(f.status))
        if len(f.check) > first:  # a long key gets a line of its own, never cut
            lines.append(f.check)
        lines.append(f"{f.check if len(f.check) <= first else '':<{first}}  {status}  {text[0]}")
        lines += [f"{'':<{first}}  {'':<8}  {t}" for t in text[1:]]
    problems = sum(f.status == PROBLEM for f in findings)
    warnings = sum(f.status == WARNING for f in findings)
    lines.append("")
    lines.append(f"{problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)
