"""Which ordering key a contact's jobs share, and how two keys of one person become one: pure.

A contact's jobs run one at a time in arrival order on one key (``bridge.store.queue``: one head
per key). A delivery's own key is its CRM contact ID (``CONN:id:ID``), else its case-folded email
(``CONN:email:EMAIL``); a contact ID that is the email (Customerly) orders with the email. Once the
bridge knows that an email belongs to a contact ID (a link: a delivery carrying both, or a run that
read the CRM's record or found the WordPress user), deliveries naming only that email take the ID's
key. ``bridge.store.aliases`` keeps the links and applies these decisions in the enqueue's
transaction.

The rules, in one place:

- Where a link is learned from: on a connection that fetches contacts, only from a run's finding
  (the CRM's record for the ID gives its email), because there the delivery only names the contact
  and its access key may have leaked: a forged pair must not put one person's email-only jobs in
  another ID's line (coalesced into a run that fetches the other ID). On a connection that does
  not fetch, the delivery is the record: a delivery carrying both links them at intake.
- An email is linked to one contact ID at most. An email seen with a second ID is *contested*: it
  is never linked again (two people are never merged: coalescing would do one person's job with
  the other's record), and its email-only deliveries keep their own email key.
- When a link is learned, every job of the email key joins the ID key's line (whatever its status,
  so history and ``jobs requeue`` follow) and the joined line gets one head: its job in flight if
  it has one, else its oldest waiting job. A job queued after the link therefore waits for every
  job queued before it under either key.
- If both keys have a job in flight at that moment, the two cannot become one line (two runs would
  hold it): the link is not learned then (``deferred``); the person's next delivery carrying both,
  or next run, learns it.
- A run's own finding (the CRM's record, the WordPress user) is the contact's current email: its
  other emails are unlinked from that ID (an email that changed in the CRM stops naming it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Decision = Literal["new", "known", "conflict", "contested"]
# How learning a link is logged (level, event); the other results change nothing worth an event.
LINK_LOG = {"new": ("info", "contact.linked"), "conflict": ("warning", "contact.link_refused"),
            "deferred": ("info", "contact.link_deferred")}


def id_key(connection: str, contact_id: str) -> str:
    """The ordering key of a CRM contact ID (IDs are compared as sent: case matters)."""
    return f"{connection}:id:{contact_id}"


def email_key(connection: str, email: str) -> str:
    """The ordering key of an email, case-folded (``Bob@x`` and ``bob@x`` are one contact)."""
    return f"{connection}:email:{email.casefold()}"


def is_email_id(contact_id: str | None, email: str | None) -> bool:
    """Whether the contact ID is the email itself (Customerly's IDs are), ignoring case."""
    return bool(contact_id and email and contact_id.casefold() == email.casefold())


def own_key(connection: str, contact_id: str | None, email: str | None) -> str:
    """A delivery's key without any learned link: the contact ID, else the case-folded email."""
    if contact_id and not is_email_id(contact_id, email):
        return id_key(connection, contact_id)
    return email_key(connection, email or contact_id or "")


def link(contact_id: str | None, email: str | None) -> tuple[str, str] | None:
    """The (contact ID, case-folded email) link a pair states, or None when it states none (one of
    the two missing, or the ID is the email)."""
    if not contact_id or not email or is_email_id(contact_id, email):
        return None
    return contact_id, email.casefold()


def links_from_deliveries(fetches_contacts: bool) -> bool:
    """Whether a delivery carrying an ID and an email links them at intake: only where the delivery
    is the record (the connection does not fetch contacts from the CRM)."""
    return not fetches_contacts


def key_for(connection: str, contact_id: str | None, email: str | None, linked_id: str | None) -> str:
    """The key a delivery is queued under: its own contact ID when it has one, else the ID its
    email is linked to (``linked_id``, None when unlinked or contested), else its email."""
    if contact_id and not is_email_id(contact_id, email):
        return id_key(connection, contact_id)
    if linked_id:
        return id_key(connection, linked_id)
    return own_key(connection, contact_id, email)


def decide_link(stored: bool, stored_id: str | None, contact_id: str) -> Decision:
    """What a link (email → ``contact_id``) does given what is stored for the email: ``stored``
    whether a row exists, ``stored_id`` its ID (None: contested). ``new``: learn it; ``known``:
    nothing to do; ``conflict``: the email is linked to another ID, so it becomes contested;
    ``contested``: it already is, nothing to do."""
    if not stored:
        return "new"
    if stored_id is None:
        return "contested"
    return "known" if stored_id == contact_id else "conflict"


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A queued or running job of a line. ``merged_into``: the run it is coalesced into, if any."""

    id: int
    status: str
    merged_into: int | None = None

    @property
    def in_flight(self) -> bool:
        """The head of a run (a running job that is not merged into another)."""
        return self.status == "running" and self.merged_into is None


@dataclass(frozen=True, slots=True)
class Join:
    """Joining the email key's line to the ID key's: ``head`` is the one job of the joined line
    that may run (None: the line has no active job)."""

    head: int | None


def plan_join(id_line: list[ActiveJob], email_line: list[ActiveJob]) -> Join | None:
    """How the two lines of one person become one, or None when they cannot now (both have a job in
    flight). The head is the job in flight, else the oldest active job: later arrivals wait."""
    runs = [j for j in id_line if j.in_flight], [j for j in email_line if j.in_flight]
    if runs[0] and runs[1]:
        return None
    flying = runs[0] or runs[1]
    if flying:
        return Join(flying[0].id)
    active = [j.id for j in (*id_line, *email_line)]
    return Join(min(active) if active else None)
