"""The SQL of contact links (migration 0006): which email belongs to which CRM contact ID, so that
one person's deliveries share one ordering key. The decisions are ``bridge.core.contacts``; each
function here takes the writer's connection and runs inside its transaction (``queue.py``'s
convention), so a link learned at intake and the job it keys commit together. The SQL is plain
(qmark placeholders, no SQLite-only syntax) for the PostgreSQL store's dialect adapter."""

from __future__ import annotations

import sqlite3

from bridge.core.contacts import (ActiveJob, decide_link, email_key, id_key, is_email_id, key_for, link,
                                  plan_join)
from bridge.store import queue as q
from bridge.store.pgdb import dialect, lock


def linked(conn: sqlite3.Connection, connection: str, email: str) -> tuple[bool, str | None]:
    """What is stored for a case-folded email: (a row exists, its contact ID; None: contested)."""
    row = conn.execute("SELECT contact_id FROM contact_aliases WHERE connection = ? AND email = ?",
                       (connection, email)).fetchone()
    return (False, None) if row is None else (True, row[0])


def link_settled(conn: sqlite3.Connection, connection: str, contact_id: str, email: str) -> bool:
    """Whether learning this link (as a run's finding) would change nothing: the email is linked to
    this ID and the ID to no other email. A read: the worker asks it before taking the writer."""
    rows = conn.execute("SELECT email, contact_id FROM contact_aliases WHERE connection = ?"
                        " AND (email = ? OR contact_id = ?)",
                        (connection, email.casefold(), contact_id)).fetchall()
    return [tuple(r) for r in rows] == [(email.casefold(), contact_id)]


def learn(conn: sqlite3.Connection, now: float, connection: str, contact_id: str | None, email: str | None,
          current: bool = False) -> str:
    """Learn that ``email`` belongs to ``contact_id`` (see ``bridge.core.contacts``): ``new`` (linked;
    the email key's jobs joined the ID's line), ``known``, ``conflict`` (the email named another ID:
    now contested), ``contested``, ``deferred`` (both keys have a job in flight), or ``none`` (the
    pair states no link). ``current``: the pair is the contact's current email (a run's finding),
    so the ID's other emails are unlinked."""
    pair = link(contact_id, email)
    if pair is None:
        return "none"
    cid, folded = pair
    # Both lines' heads may change (PostgreSQL: several bridges; nothing on SQLite's one writer).
    lock(conn, [id_key(connection, cid), email_key(connection, folded)])
    decision = decide_link(*linked(conn, connection, folded), cid)
    if decision == "conflict":
        conn.execute("UPDATE contact_aliases SET contact_id = NULL, learned_at = ?"
                     " WHERE connection = ? AND email = ?", (now, connection, folded))
        return decision
    if decision == "new":
        if not _join(conn, connection, cid, folded):
            return "deferred"
        conn.execute("INSERT INTO contact_aliases (connection, email, contact_id, learned_at)"
                     " VALUES (?, ?, ?, ?)", (connection, folded, cid, now))
    if current and decision in ("new", "known"):
        conn.execute("DELETE FROM contact_aliases WHERE connection = ? AND contact_id = ? AND email <> ?",
                     (connection, cid, folded))
    return decision


def _learn_locks(now: float, connection: str, contact_id: str | None, email: str | None,
                 *_: object) -> list[str]:
    pair = link(contact_id, email)
    return [] if pair is None else [id_key(connection, pair[0]), email_key(connection, pair[1])]


learn.lock_keys = _learn_locks  # type: ignore[attr-defined]


def _join(conn: sqlite3.Connection, connection: str, contact_id: str, email: str) -> bool:
    """Move every job of the email's key into the ID's line and give the line one head
    (``plan_join``); False, moving nothing, when both lines have a job in flight."""
    into, other = id_key(connection, contact_id), email_key(connection, email)
    lines: dict[str, list[ActiveJob]] = {into: [], other: []}
    for row in conn.execute("SELECT id, status, merged_into, contact_key FROM jobs"
                            " WHERE contact_key IN (?, ?) AND status IN ('queued', 'running') ORDER BY id",
                            (into, other)):
        lines[row[3]].append(ActiveJob(row[0], row[1], row[2]))
    plan = plan_join(lines[into], lines[other])
    if plan is None:
        return False
    # Done and dead jobs move too: `contacts history` shows one line, and a requeue joins it.
    moved = conn.execute("UPDATE jobs SET contact_key = ? WHERE contact_key = ?", (into, other)).rowcount
    if moved and plan.head is not None:
        conn.execute("UPDATE jobs SET head = CASE WHEN id = ? THEN 1 ELSE 0 END"
                     " WHERE contact_key = ? AND status IN ('queued', 'running')", (plan.head, into))
    return True


def enqueue_contact(conn: sqlite3.Connection, now: float, dedupe_key: str, window_s: float, connection: str,
                    action: str, contact_id: str | None, email: str | None, payload: str,
                    waiting_only: bool = False, learns: bool = True) -> tuple[int, bool, str]:
    """``queue.enqueue`` under the contact's one key, in the same transaction: the link the delivery
    states is learned first (``learn``; only when ``learns``, see ``links_from_deliveries``), then
    an email-only delivery takes the key of the ID its email is linked to. Returns (job_id,
    duplicate, what the link did)."""
    event = learn(conn, now, connection, contact_id, email) if learns else "none"
    linked_id = None
    if email and (not contact_id or is_email_id(contact_id, email)):
        linked_id = linked(conn, connection, email.casefold())[1]
    key = key_for(connection, contact_id, email, linked_id)
    job_id, duplicate = q.enqueue(conn, now, dedupe_key, window_s, connection, action, key, payload,
                                  waiting_only)
    return job_id, duplicate, event


def _enqueue_contact_locks(now: float, dedupe_key: str, window_s: float, connection: str, action: str,
                           contact_id: str | None, email: str | None, *_: object) -> list[str]:
    # Both of the person's keys and the dedupe key; the key of an ID the email is linked to is
    # found while the call runs (a late lock: bridge.store.pgdb.lock).
    keys = ["dedupe:" + dedupe_key, *_learn_locks(now, connection, contact_id, email)]
    if contact_id:
        keys.append(id_key(connection, contact_id))
    if email:
        keys.append(email_key(connection, email))
    return keys


enqueue_contact.lock_keys = _enqueue_contact_locks  # type: ignore[attr-defined]
# Its commit is what a delivery's answer waits for: committed ahead of other writes (writer.answer_first).
enqueue_contact.answers_sender = True  # type: ignore[attr-defined]


def enqueue_contacts(conn: sqlite3.Connection, calls: list[tuple]) -> list[tuple[int, bool, str]]:
    """``enqueue_contact`` for a run of a batch's deliveries, in order (the PostgreSQL writer's
    ``many`` form): on PostgreSQL, one query reads the links of all their emails and the jobs are
    queued in one pipeline (``queue.enqueue_many``), instead of two round trips per delivery. A
    run in which a delivery states a link to learn goes one by one, as does SQLite."""
    full = [_with_defaults(args) for args in calls]
    if dialect(conn) != "postgresql" or any(a[9] and link(a[5], a[6]) is not None for a in full):
        return [enqueue_contact(conn, *args) for args in full]
    wanted = {(a[3], a[6].casefold()) for a in full if a[6] and (not a[5] or is_email_id(a[5], a[6]))}
    links: dict[tuple[str, str], str | None] = {}
    if wanted:
        pairs = sorted(wanted)
        rows = conn.execute("SELECT connection, email, contact_id FROM contact_aliases"
                            " WHERE (connection, email) IN"
                            " (SELECT * FROM unnest(?::text[], ?::text[]))",
                            ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
        links = {(r[0], r[1]): r[2] for r in rows}
    keyed = []
    for now, dedupe_key, window_s, connection, action, contact_id, email, payload, waiting_only, _ in full:
        linked_id = links.get((connection, email.casefold())) if email else None
        keyed.append((now, dedupe_key, window_s, connection, action,
                      key_for(connection, contact_id, email, linked_id),
                      payload, waiting_only))
    # The keys of linked IDs were not known when the batch took its locks: taken now (pgdb.lock).
    lock(conn, [k[5] for k in keyed])
    return [(job_id, duplicate, "none") for job_id, duplicate in q.enqueue_many(conn, keyed)]


def _with_defaults(args: tuple) -> tuple:
    """``enqueue_contact``'s arguments with its defaults filled in (waiting_only, learns)."""
    return (*args, *(False, True)[len(args) - 8:])


enqueue_contact.many = enqueue_contacts  # type: ignore[attr-defined]
