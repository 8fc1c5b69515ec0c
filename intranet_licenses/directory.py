"""Directory sync: read people from LDAP or Active Directory (ldap3) and apply DESIGN.md rule 3.

The sync has two halves. :func:`read_directory` talks to the server and returns plain
:class:`DirectoryPerson` records (and the entries it had to skip); it writes nothing, so an
unreachable server, a refused bind or a search that fails half-way changes nothing.
:func:`apply` then brings the profiles in line with what was read, only through the seat
service (``seats.add_person``, ``block``, ``unblock``, ``move``, ``activate_waiting``), in one
transaction that the caller commits: either the whole sync is kept or none of it.

Order of the steps (it decides who gets a seat when seats are scarce):

1. listed people who already have a profile: names, emails, usernames (renames) and areas
   are brought up to date, and people disabled in the directory are blocked (frees seats);
2. directory profiles the directory no longer lists are blocked ("gone");
3. waiting people the directory still lists and enables are activated, oldest first;
4. people blocked by the directory whom it enables again are activated, else they wait;
5. new people are created: active while their pool has free seats, else waiting.

So people who waited longest get freed seats first, and a new person never jumps the queue.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from . import audit, seats
from .errors import LicensesError
from .extension import adapter, config
from .models import AWAITING_LICENSE, BLOCKED_BY_DIRECTORY, PRIMARY_AREA, Profile

#: Attributes read from each entry.
ATTRIBUTES = [
    "sAMAccountName",
    "uid",
    "givenName",
    "sn",
    "cn",
    "mail",
    "userAccountControl",
    "objectGUID",
    "entryUUID",
    "memberOf",
]
#: The "account disabled" bit of Active Directory's userAccountControl.
ACCOUNTDISABLE = 0x2
#: Entries asked for per page of the paged search.
PAGE_SIZE = 500
#: Skipped entries listed one by one in a report (the count is always complete).
LISTED_SKIPS = 50


class DirectoryError(LicensesError):
    """The directory could not be read; nothing was changed. ``str()`` says why."""


@dataclass(frozen=True)
class DirectorySettings:
    """Where and how to read the directory (defaults from ``LICENSES_LDAP_*``)."""

    url: str
    base_dn: str
    bind_dn: str | None = None
    password: str | None = None
    search_filter: str = "(objectClass=person)"
    #: {area name: group DN or OU DN}; the first that holds a person decides their area.
    areas: dict = field(default_factory=dict)
    timeout: int = 10
    #: CA certificates (PEM file) for ldaps://; None uses the system's.
    ca_file: str | None = None


def settings_from_config(
    *, url=None, bind_dn=None, password=None, base_dn=None, search_filter=None
) -> DirectorySettings:
    """Settings from the arguments given, else from ``LICENSES_LDAP_*`` (and the password
    also from the ``LICENSES_LDAP_PASSWORD`` environment variable)."""
    url = url or config("LDAP_URL")
    base_dn = base_dn or config("LDAP_BASE_DN")
    if not url:
        raise DirectoryError(
            "No directory server is set: set LICENSES_LDAP_URL (for example "
            "ldap://ad.example.com), or pass --url to the command."
        )
    if not base_dn:
        raise DirectoryError(
            "No base DN is set: set LICENSES_LDAP_BASE_DN (for example "
            "ou=Staff,dc=example,dc=com), or pass --base-dn to the command."
        )
    if password is None:
        password = config("LDAP_PASSWORD") or os.environ.get("LICENSES_LDAP_PASSWORD")
    bind_dn = bind_dn or config("LDAP_BIND_DN")
    if bind_dn and not password:
        raise DirectoryError(
            f"No password for {bind_dn}: set LICENSES_LDAP_PASSWORD, or pass --password-file "
            "to the command."
        )
    areas = {}
    for area, dn in dict(config("LDAP_AREAS") or {}).items():
        try:
            seats.check_area(area)
        except seats.PersonError as exc:
            raise DirectoryError(f"LICENSES_LDAP_AREAS names an unknown area: {exc}") from None
        areas[area] = _clean_dn(dn, f"LICENSES_LDAP_AREAS['{area}']")
    return DirectorySettings(
        url=url,
        base_dn=_clean_dn(base_dn, "The base DN"),
        bind_dn=bind_dn,
        password=password,
        search_filter=search_filter or config("LDAP_FILTER"),
        areas=areas,
        timeout=int(config("LDAP_TIMEOUT")),
        ca_file=config("LDAP_CA_FILE"),
    )


def _clean_dn(dn: str, what: str) -> str:
    """``dn`` without the spaces people type around ``,`` ``+`` and ``=`` (which ldap3 refuses
    to send), or DirectoryError saying what is wrong with it."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError as exc:
        raise DirectoryError(
            f"{what} '{dn}' is not a valid DN ({exc}); write it like "
            "ou=Staff,dc=example,dc=com. Nothing was changed."
        ) from None
    return "".join(f"{attr}={value}{separator}" for attr, value, separator in parts)


# Reading the directory ------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryPerson:
    """One person as the directory lists them."""

    directory_id: str
    username: str
    first_name: str
    surname: str
    email: str
    disabled: bool
    area: str | None  # None when no areas are configured (the area is then left alone)
    dn: str


@dataclass(frozen=True)
class Skipped:
    """An entry the sync could not use, and why."""

    dn: str
    why: str
    directory_id: str | None = None


@dataclass
class DirectoryListing:
    people: list[DirectoryPerson]
    skipped: list[Skipped]


def read_directory(settings: DirectorySettings) -> DirectoryListing:
    """Read every person under the base DN with a paged search. Raises DirectoryError."""
    import ldap3
    from ldap3.core.exceptions import LDAPException, LDAPInvalidFilterError

    # ldaps:// verifies the server's certificate (ldap3's default would not).
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file or None)
    try:
        server = ldap3.Server(
            settings.url, get_info=ldap3.NONE, connect_timeout=settings.timeout, tls=tls
        )
    except LDAPException as exc:
        raise DirectoryError(f"'{settings.url}' is not a usable directory URL ({exc}).") from None
    conn = ldap3.Connection(
        server,
        user=settings.bind_dn or None,
        password=settings.password or None,
        receive_timeout=settings.timeout,
        raise_exceptions=False,
        read_only=True,
        auto_referrals=False,  # AD answers with referrals to other partitions: not followed
    )
    try:
        try:
            conn.open()
        except LDAPException as exc:
            raise DirectoryError(
                f"The directory server at {settings.url} cannot be reached ({_reason(exc)}). "
                "Nothing was changed; check the URL and that the server is running."
            ) from None
        if not conn.bind():
            who = settings.bind_dn or "anonymous"
            raise DirectoryError(
                f"The directory server at {settings.url} refused the sign-in as {who} "
                f"({conn.result.get('description')}: {conn.result.get('message') or 'no detail'})."
                " Nothing was changed; check the bind DN and password."
            )
        groups = _area_groups(conn, settings)
        people: list[DirectoryPerson] = []
        skipped: list[Skipped] = []
        seen_ids: set[str] = set()
        seen_names: set[str] = set()
        cookie = None
        while True:
            try:
                conn.search(
                    settings.base_dn,
                    settings.search_filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=ATTRIBUTES,
                    paged_size=PAGE_SIZE,
                    paged_cookie=cookie,
                )
            except LDAPInvalidFilterError:
                raise DirectoryError(
                    f"'{settings.search_filter}' is not a valid LDAP filter; "
                    "write it like (objectClass=person). Nothing was changed."
                ) from None
            result = conn.result
            if result["result"] != 0:
                raise DirectoryError(
                    f"The directory search under {settings.base_dn} failed "
                    f"({result.get('description')}: {result.get('message') or 'no detail'}). "
                    "Nothing was changed; check the base DN and the filter."
                )
            for entry in conn.response or []:
                if entry.get("type") != "searchResEntry":
                    continue
                outcome = _person(entry["dn"], entry["raw_attributes"], settings, groups)
                if isinstance(outcome, Skipped):
                    skipped.append(outcome)
                    continue
                if outcome.directory_id in seen_ids:
                    skipped.append(
                        Skipped(outcome.dn, "its stable id appears twice in the directory")
                    )
                    continue
                if seats._key(outcome.username) in seen_names:
                    skipped.append(
                        Skipped(
                            outcome.dn,
                            f"another entry has the username '{outcome.username}' "
                            "(usernames are compared without regard to case)",
                            outcome.directory_id,
                        )
                    )
                    continue
                seen_ids.add(outcome.directory_id)
                seen_names.add(seats._key(outcome.username))
                people.append(outcome)
            controls = result.get("controls") or {}
            cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                break
        return DirectoryListing(people, skipped)
    except LDAPException as exc:
        raise DirectoryError(
            f"The connection to the directory server at {settings.url} failed during the sync "
            f"({_reason(exc)}). Nothing was changed; try again."
        ) from None
    finally:
        _close(conn)


def _close(conn) -> None:
    """Unbind, and close the socket even when opening or binding failed half-way."""
    from ldap3.core.exceptions import LDAPException

    try:
        if not conn.closed:
            conn.unbind()
    except LDAPException:
        pass
    sock = getattr(conn, "socket", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _reason(exc) -> str:
    text = str(exc).strip().replace("socket ssl wrapping error: ", "").split(" - ")[0]
    # ldap3 wraps some causes in tuples: (("('[SSL: ...] ... (_ssl.c:1006)',)",))
    text = text.strip("()\"', ")
    return text[:200] or type(exc).__name__


@dataclass(frozen=True)
class _AreaScope:
    area: str
    dn: str  # normalised
    members: frozenset  # normalised member DNs when the DN is a group, else empty
    is_group: bool


def _norm_dn(dn: str) -> str:
    """A DN compared without regard to case, spaces, or the order inside a multi-valued RDN."""
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except Exception:
        return dn.strip().lower()
    rdns: list[list[str]] = [[]]
    for attr, value, sep in parts:
        rdns[-1].append(f"{attr.lower()}={value.lower()}")
        if sep != "+":
            rdns.append([])
    return ",".join("+".join(sorted(rdn)) for rdn in rdns if rdn)


def _area_groups(conn, settings: DirectorySettings) -> list[_AreaScope]:
    """Read each configured area DN once: a group (its members) or an OU (a subtree)."""
    import ldap3

    scopes = []
    for area, dn in settings.areas.items():
        conn.search(
            dn,
            "(objectClass=*)",
            search_scope=ldap3.BASE,
            attributes=["member", "uniqueMember", "objectClass"],
        )
        if conn.result["result"] != 0 or not conn.response:
            raise DirectoryError(
                f"LICENSES_LDAP_AREAS maps the area '{area}' to {dn}, which the directory "
                f"does not have ({conn.result.get('description')}). Nothing was changed."
            )
        raw = conn.response[0]["raw_attributes"]
        classes = {v.decode("utf-8", "replace").lower() for v in raw.get("objectClass", [])}
        members = [
            _norm_dn(v.decode("utf-8", "replace"))
            for name in ("member", "uniqueMember")
            for v in raw.get(name, [])
        ]
        is_group = bool(members) or bool(
            classes & {"group", "groupofnames", "groupofuniquenames", "posixgroup"}
        )
        scopes.append(
            _AreaScope(seats.check_area(area), _norm_dn(dn), frozenset(members), is_group)
        )
    return scopes


def _first(raw: dict, name: str) -> str:
    for value in raw.get(name) or []:
        text = value.decode("utf-8").strip()
        if text:
            return text
    return ""


def _first_name_from_cn(raw: dict, surname: str) -> str:
    """No givenName: a common name without the surname ("Barbara Jensen" -> "Barbara").

    The first cn value that ends with the surname gives the first name; else the first cn.
    """
    names = [v.decode("utf-8").strip() for v in raw.get("cn") or []]
    names = [name for name in names if name]
    for name in names:
        if surname and name.lower().endswith(" " + surname.lower()):
            return name[: -len(surname)].strip()
    return names[0] if names else ""


def _stable_id(raw: dict) -> str | None:
    guid = raw.get("objectGUID") or []
    if guid:
        value = guid[0]
        if len(value) == 16:
            # Active Directory stores the GUID with its first three fields little-endian.
            return str(uuid.UUID(bytes_le=bytes(value)))
        try:  # some servers and proxies send the GUID already as text
            return str(uuid.UUID(value.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            return None
    entry_uuid = raw.get("entryUUID") or []
    if entry_uuid:
        try:
            return str(uuid.UUID(entry_uuid[0].decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _person(dn: str, raw: dict, settings, groups) -> DirectoryPerson | Skipped:
    """Map one entry, or say why it cannot be used."""
    raw = {name.split(";")[0]: values for name, values in raw.items()}
    # Attribute names come back as the server spells them; compare without case.
    lowered = {name.lower(): values for name, values in raw.items()}
    raw = {name: lowered.get(name.lower(), []) for name in ATTRIBUTES}
    directory_id = _stable_id(raw)
    if directory_id is None:
        return Skipped(dn, "it has no usable objectGUID or entryUUID (stable id)")
    try:
        username = _first(raw, "sAMAccountName") or _first(raw, "uid")
        surname = _first(raw, "sn")
        first_name = _first(raw, "givenName")
        if not first_name:
            first_name = _first_name_from_cn(raw, surname)
        email = _first(raw, "mail")
        control = _first(raw, "userAccountControl")
    except UnicodeDecodeError:
        return Skipped(dn, "a name, username or email is not UTF-8 text", directory_id)
    if not username:
        return Skipped(dn, "it has neither sAMAccountName nor uid", directory_id)
    disabled = False
    if control:
        try:
            disabled = bool(int(control) & ACCOUNTDISABLE)
        except ValueError:
            return Skipped(dn, f"userAccountControl '{control}' is not a number", directory_id)
    try:
        fields = seats.check_person_fields(username, first_name, surname, email)
    except seats.PersonError as exc:
        return Skipped(dn, str(exc), directory_id)
    area = None
    if groups:
        area = PRIMARY_AREA
        own = _norm_dn(dn)
        member_of = {_norm_dn(v.decode("utf-8", "replace")) for v in raw.get("memberOf", [])}
        for scope in groups:
            if scope.is_group:
                inside = own in scope.members or scope.dn in member_of
            else:
                inside = own.endswith("," + scope.dn)
            if inside:
                area = scope.area
                break
    return DirectoryPerson(
        directory_id=directory_id,
        username=fields["username"],
        first_name=fields["first_name"],
        surname=fields["surname"],
        email=fields["email"],
        disabled=disabled,
        area=area,
        dn=dn,
    )


# Applying it ----------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a sync did, in counts, plus the entries it skipped and other notes."""

    created_active: int = 0
    created_waiting: int = 0
    activated: int = 0
    blocked: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    #: People the directory enabled again who found no free seat and now wait.
    requeued: int = 0
    #: Disabled directory accounts without a profile (not created).
    disabled_not_created: int = 0
    #: People awaiting a license after the sync, per pool (only people the directory lists).
    waiting: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "created active": self.created_active,
            "created waiting": self.created_waiting,
            "activated": self.activated,
            "blocked": self.blocked,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
        }

    def sentence(self) -> str:
        return "Directory sync: " + ", ".join(f"{n} {label}" for label, n in self.counts().items())

    def lines(self) -> list[str]:
        """The report in sentences, as the command prints it and the page shows it."""
        out = [self.sentence() + "."]
        if self.requeued:
            out.append(
                f"{self.requeued} people the directory enabled again found no free seat and "
                "wait for a license."
            )
        if self.disabled_not_created:
            out.append(
                f"{self.disabled_not_created} accounts disabled in the directory have no "
                "profile here and were not created."
            )
        for pool, count in sorted(self.waiting.items()):
            if count:
                out.append(
                    f"{count} people wait for a license in the {pool} pool: request more "
                    "licenses, or block people who no longer need access."
                )
        out.extend(self.notes)
        for item in self.skipped[:LISTED_SKIPS]:
            out.append(f"Skipped {item.dn}: {item.why}.")
        if len(self.skipped) > LISTED_SKIPS:
            out.append(f"... and {len(self.skipped) - LISTED_SKIPS} more skipped entries.")
        return out


def sync(session, settings: DirectorySettings, *, actor: str, now: datetime, path: str):
    """Read the directory, then apply it. Raises DirectoryError (nothing changed) or
    returns a SyncReport. The caller commits (also after a DirectoryError, to keep the
    audit record of the failed attempt)."""
    try:
        listing = read_directory(settings)
        return apply(session, listing, actor=actor, now=now, path=path)
    except DirectoryError as exc:
        audit.record(
            session,
            at=now,
            actor=actor,
            action="sync",
            path=path,
            outcome="error",
            detail=str(exc),
        )
        raise


def apply(session, listing: DirectoryListing, *, actor: str, now: datetime, path: str):
    """Bring the profiles in line with ``listing`` (see the module docstring for the order)."""
    ad = adapter()
    report = SyncReport(skipped=list(listing.skipped))
    by_id = {
        directory_id: user_id
        for user_id, directory_id in session.execute(
            select(Profile.user_id, Profile.directory_id).where(Profile.directory_id.is_not(None))
        )
    }
    # Load every directory profile and its user in a few queries (not one per person); the
    # list keeps them in the session's identity map, so session.get() below finds them.
    loaded = _load(session, list(by_id.values()))
    listed_ids = {p.directory_id for p in listing.people}
    # Entries skipped as malformed are still in the directory: never "gone" because of that.
    known_ids = listed_ids | {s.directory_id for s in listing.skipped if s.directory_id}
    if not listing.people and not listing.skipped and by_id:
        raise DirectoryError(
            "The directory listed nobody under this base DN and filter, but "
            f"{len(by_id)} profiles came from the directory. Nothing was changed: check "
            "the base DN and the filter (a sync never blocks everyone at once)."
        )

    new_people: list[DirectoryPerson] = []
    #: What happened to each listed person who has a profile (one count per person).
    outcome: dict[int, str] = {}
    enabled_waiting: set[int] = set()
    reenabled: list[int] = []
    for person in listing.people:
        user_id = by_id.get(person.directory_id)
        if user_id is None:
            user_id = _adopt(session, person, known_ids, report)
            if user_id is False:
                continue
        if user_id is None:
            if person.disabled:
                report.disabled_not_created += 1
            else:
                new_people.append(person)
            continue
        if user_id in outcome:
            continue
        user = session.get(ad.model, user_id)
        profile = session.get(Profile, user_id)
        if profile.exempt:
            report.skipped.append(
                Skipped(person.dn, "it is the administrator account, which no sync changes")
            )
            outcome[user_id] = "skipped"
            continue
        changed = _update_identity(session, user, profile, person, report, now=now)
        changed = _update_area(session, user, profile, person, report, actor, now, path) or changed
        outcome[user_id] = "updated" if changed else "unchanged"
        active = bool(ad.get(user, "active"))
        if person.disabled:
            if active or profile.block_reason == AWAITING_LICENSE:
                seats.block(
                    session, user, reason=BLOCKED_BY_DIRECTORY, actor=actor, now=now, path=path
                )
                outcome[user_id] = "blocked"
        elif profile.block_reason == AWAITING_LICENSE:
            enabled_waiting.add(user_id)
        elif profile.block_reason == BLOCKED_BY_DIRECTORY and not active:
            reenabled.append(user_id)

    # Gone from the directory: only profiles that came from it, and never deleted.
    for directory_id, user_id in by_id.items():
        if directory_id in known_ids or user_id in outcome:
            continue
        user = session.get(ad.model, user_id)
        profile = session.get(Profile, user_id)
        if user is None or profile is None or profile.exempt:
            continue
        if ad.get(user, "active") or profile.block_reason == AWAITING_LICENSE:
            seats.block(
                session, user, reason=BLOCKED_BY_DIRECTORY, actor=actor, now=now, path=path
            )
            report.blocked += 1

    # Waiting people the directory still lists and enables, oldest first.
    if enabled_waiting:
        seats.activate_waiting(session, actor=actor, now=now, path=path, only_ids=enabled_waiting)
        for user_id in enabled_waiting:
            if ad.get(session.get(ad.model, user_id), "active"):
                outcome[user_id] = "activated"

    # People the directory enabled again: a free seat, else the end of the queue.
    for user_id in reenabled:
        user = session.get(ad.model, user_id)
        try:
            seats.unblock(session, user, actor=actor, now=now, path=path, action="activate")
            outcome[user_id] = "activated"
        except seats.SeatLimitExceeded:
            seats.block(session, user, reason=AWAITING_LICENSE, actor=actor, now=now, path=path)
            outcome[user_id] = "requeued"

    tally = Counter(outcome.values())
    report.activated += tally["activated"]
    report.blocked += tally["blocked"]
    report.updated += tally["updated"]
    report.unchanged += tally["unchanged"]
    report.requeued += tally["requeued"]

    # New people: active while seats are free, else created waiting (rule 3).
    for person in new_people:
        try:
            user = seats.add_person(
                session,
                username=person.username,
                first_name=person.first_name,
                surname=person.surname,
                email=person.email,
                area=person.area or PRIMARY_AREA,
                source="directory",
                path=path,
                actor=actor,
                now=now,
                wait_when_full=True,
                directory_id=person.directory_id,
            )
        except seats.PersonError as exc:
            report.skipped.append(Skipped(person.dn, str(exc), person.directory_id))
            continue
        if ad.get(user, "active"):
            report.created_active += 1
        else:
            report.created_waiting += 1

    report.waiting = _waiting_listed(session, listed_ids)
    audit.record(
        session,
        at=now,
        actor=actor,
        action="sync",
        path=path,
        detail=report.sentence(),
    )
    for pool, count in sorted(report.waiting.items()):
        if count:
            record_exceeded(session, pool=pool, waiting=count, actor=actor, now=now, path=path)
    session.flush()
    del loaded
    return report


def _load(session, user_ids: list[int], chunk: int = 500) -> list:
    ad = adapter()
    loaded: list = []
    for start in range(0, len(user_ids), chunk):
        part = user_ids[start : start + chunk]
        loaded += session.scalars(select(ad.model).where(ad.column("id").in_(part))).all()
        loaded += session.scalars(select(Profile).where(Profile.user_id.in_(part))).all()
    return loaded


def record_exceeded(session, *, pool: str, waiting: int, actor: str, now: datetime, path: str):
    """A sync left people waiting for a license in ``pool``: its audit row (action ``sync``,
    outcome ``waiting``). The over-limit email comes from the exceeded events that
    ``seats.add_person(..., wait_when_full=True)`` reports for each waiting person (rule 6).
    """
    audit.record(
        session,
        at=now,
        actor=actor,
        action="sync",
        path=path,
        outcome="waiting",
        pool=pool,
        detail=f"{waiting} people the directory lists wait for a license in the {pool} pool.",
    )


def _waiting_listed(session, listed_ids: set[str]) -> dict[str, int]:
    rows = session.execute(
        select(Profile.pool, Profile.directory_id).where(
            Profile.block_reason == AWAITING_LICENSE, Profile.directory_id.is_not(None)
        )
    ).all()
    counts = Counter(pool for pool, directory_id in rows if directory_id in listed_ids)
    return dict(counts)


def _adopt(session, person: DirectoryPerson, known_ids: set[str], report) -> int | None | bool:
    """A listed person without a directory profile: link a profile of the same username.

    Returns the user id linked, None when nobody has the username (a new person), or
    False when the entry was skipped (the username belongs to another listed account).
    """
    row = session.execute(
        select(Profile).where(Profile.username_key == seats._key(person.username))
    ).scalar()
    if row is None:
        return None
    if row.exempt:
        report.skipped.append(
            Skipped(person.dn, "it is the administrator account, which no sync changes")
        )
        return False
    if row.directory_id is not None and row.directory_id in known_ids:
        report.skipped.append(
            Skipped(
                person.dn,
                f"the username '{person.username}' belongs to another directory account",
                person.directory_id,
            )
        )
        return False
    # Added by hand or by CSV before the directory knew them, or recreated in the directory
    # under a new stable id: the same person, so link rather than duplicate.
    old = row.directory_id
    row.directory_id = person.directory_id
    report.notes.append(
        f"{person.username} was linked to the directory entry {person.dn}"
        + (f" (it replaces the old directory id {old})." if old else ".")
    )
    return row.user_id


def _update_identity(session, user, profile, person, report, *, now) -> bool:
    """Usernames (renames), names and emails follow the directory, even when pools are full."""
    ad = adapter()
    changed = False
    for name, value in (
        ("first_name", person.first_name),
        ("surname", person.surname),
        ("email", person.email),
    ):
        if (ad.get(user, name) or "") != value:
            ad.set(user, name, value)
            changed = True
    if ad.get(user, "username") != person.username:
        taken = session.execute(
            select(Profile.user_id).where(
                Profile.username_key == seats._key(person.username),
                Profile.user_id != profile.user_id,
            )
        ).scalar()
        if taken is not None:
            report.notes.append(
                f"{ad.get(user, 'username')} was not renamed to {person.username}: "
                "another person has that username."
            )
        else:
            ad.set(user, "username", person.username)
            changed = True
    if changed:
        seats._flush(session, now)  # no seat moves: the listener only refreshes search keys
    return changed


def _update_area(session, user, profile, person, report, actor, now, path) -> bool:
    """Follow the directory's area (only when LICENSES_LDAP_AREAS is set)."""
    if person.area is None or person.area == profile.area:
        return False
    try:
        seats.move(
            session,
            user,
            area=person.area,
            readonly=profile.readonly,
            actor=actor,
            now=now,
            path=path,
        )
    except seats.SeatError as exc:
        report.notes.append(
            f"{person.username} stays in the area {profile.area} instead of {person.area}: {exc}"
        )
        return False
    return True
