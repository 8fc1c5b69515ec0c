"""Directory sync: read people from LDAP or Active Directory (ldap3) and apply DESIGN.md rule 3.

The sync has two halves. :func:`read_directory` talks to the server and returns plain
:class:`DirectoryPerson` records (and the entries it had to skip); it writes nothing, so an
unreachable server, a refused bind or a search that fails half-way changes nothing.
:func:`apply` then brings the profiles in line with what was read, only through the seat
service (``seats.admit_or_wait``, ``block``, ``unblock``, ``move``, ``activate_waiting``), in
one transaction that the caller commits: either the whole sync is kept or none of it. Both
halves work in pages and batches of 500, with the listing in a spool file, so that a
directory of 100,000 people costs about as much memory as one of 10,000 (issue 11).

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

import dataclasses
import json
import os
import ssl
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select, text

from . import audit, notifications, seats
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
#: Listed people applied per batch: one query finds their profiles, one flush creates the new.
BATCH_SIZE = 500
#: A listing larger than this (bytes) waits in a temporary file, not in memory.
SPOOL_IN_MEMORY = 4 * 2**20
#: Progress is reported every this many people (smaller syncs report none).
PROGRESS_EVERY = 10_000
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


class _Spool:
    """People kept in the order they were added, in a temporary file once there are many.

    A directory of 100,000 people is about 20 MB of records: they wait on disk (the file is
    private to the process and removed when closed), so the sync's memory does not grow
    with the directory. Written first, then read back (any number of times).
    """

    def __init__(self, people=()):
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        self._count = 0
        self._reading = False
        for person in people:
            self.append(person)

    def append(self, person: DirectoryPerson) -> None:
        if self._reading:  # a read stopped half-way left the position inside the file
            self._file.seek(0, os.SEEK_END)
            self._reading = False
        record = json.dumps(dataclasses.astuple(person), ensure_ascii=False)
        self._file.write(record.encode() + b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        self._reading = True
        self._file.seek(0)
        for line in self._file:
            yield DirectoryPerson(*json.loads(line))

    def close(self) -> None:
        self._file.close()


@dataclass
class DirectoryListing:
    """What a read found: the people (iterable, with ``len``), the skipped entries, and the
    stable ids of the people (computed when not given)."""

    people: object
    skipped: list[Skipped]
    ids: set[str] | None = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = {p.directory_id for p in self.people}

    def close(self) -> None:
        if isinstance(self.people, _Spool):
            self.people.close()


def read_directory(settings: DirectorySettings, progress=None) -> DirectoryListing:
    """Read every person under the base DN with a paged search. Raises DirectoryError.

    Page by page (``PAGE_SIZE``), each person written to a spool as it is read: only the
    stable ids and usernames seen (for the duplicate checks) stay in memory. ldap3's own
    ``paged_search`` generator is not used: it keeps every response in a list, and with
    ``raise_exceptions=False`` it ends quietly on an error instead of saying so.
    ``progress(n)`` is called with the entries read so far, every ``PROGRESS_EVERY``.
    Close the listing when done (``listing.close()``)."""
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
    people = _Spool()
    handed_back = False
    conn = ldap3.Connection(
        server,
        user=settings.bind_dn or None,
        password=settings.password or None,
        receive_timeout=settings.timeout,
        raise_exceptions=False,
        read_only=True,
        auto_referrals=False,  # AD answers with referrals to other partitions: not followed
        # Only raw values are read (see _person): without schema checks ldap3 does not also
        # format every value (a third of the time of reading 100,000 people).
        check_names=False,
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
        skipped: list[Skipped] = []
        read = 0
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
                read += 1
                if progress is not None and read % PROGRESS_EVERY == 0:
                    progress(read)
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
        del seen_names
        handed_back = True
        return DirectoryListing(people, skipped, ids=seen_ids)
    except LDAPException as exc:
        raise DirectoryError(
            f"The connection to the directory server at {settings.url} failed during the sync "
            f"({_reason(exc)}). Nothing was changed; try again."
        ) from None
    finally:
        _close(conn)
        if not handed_back:
            people.close()


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


#: Characters that make a DN need the full parser (escapes, quotes, multi-valued RDNs).
_DN_SPECIAL = frozenset('\\+";<>#')


def _norm_dn(dn: str) -> str:
    """A DN compared without regard to case, spaces, or the order inside a multi-valued RDN."""
    from ldap3.utils.dn import parse_dn

    if not any(ch in dn for ch in _DN_SPECIAL):  # the common DN: no parser needed
        return ",".join(
            "=".join(part.strip() for part in rdn.split("=", 1)) for rdn in dn.lower().split(",")
        )
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


def sync(
    session,
    settings: DirectorySettings,
    *,
    actor: str,
    now: datetime,
    path: str,
    progress=None,
):
    """Read the directory, then apply it. Raises DirectoryError (nothing changed) or
    returns a SyncReport. The caller commits (also after a DirectoryError, to keep the
    audit record of the failed attempt).

    ``progress(stage, done, total)``, when given, is called every ``PROGRESS_EVERY`` people:
    stage ``read`` (total None) while reading, then ``apply`` and ``create``."""
    try:
        read_progress = None if progress is None else (lambda n: progress("read", n, None))
        listing = read_directory(settings, progress=read_progress)
        try:
            return apply(session, listing, actor=actor, now=now, path=path, progress=progress)
        finally:
            listing.close()
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


@dataclass(frozen=True)
class _Row:
    """What the sync compares for one profile, read with its user in one Core query."""

    user_id: int
    directory_id: str | None
    exempt: bool
    block_reason: str | None
    area: str
    username: str
    first_name: str | None
    surname: str | None
    email: str | None
    active: bool


def _rows(session, where) -> list[_Row]:
    ad = adapter()
    columns = [
        Profile.user_id,
        Profile.directory_id,
        Profile.exempt,
        Profile.block_reason,
        Profile.area,
        *(ad.column(name) for name in ("username", "first_name", "surname", "email", "active")),
    ]
    query = select(*columns).join(ad.model, ad.column("id") == Profile.user_id).where(where)
    return [_Row(*row) for row in session.execute(query)]


def _needs_work(row: _Row, person: DirectoryPerson) -> bool:
    """True when the profile must change: names, username, area, or a block."""
    return (
        (row.first_name or "") != person.first_name
        or (row.surname or "") != person.surname
        or (row.email or "") != person.email
        or row.username != person.username
        or (person.area is not None and person.area != row.area)
        or (person.disabled and (bool(row.active) or row.block_reason == AWAITING_LICENSE))
    )


def _queue(person: DirectoryPerson, block_reason, active: bool) -> str | None:
    """Which later step a listed, enabled person goes to: 'waiting', 'reenabled' or None."""
    if person.disabled:
        return None
    if block_reason == AWAITING_LICENSE:
        return "waiting"
    if block_reason == BLOCKED_BY_DIRECTORY and not active:
        return "reenabled"
    return None


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def apply(
    session,
    listing: DirectoryListing,
    *,
    actor: str,
    now: datetime,
    path: str,
    progress=None,
):
    """Bring the profiles in line with ``listing`` (see the module docstring for the order).

    In batches of ``BATCH_SIZE`` listed people: one Core query reads their profiles and
    users; only people whose profile changes are loaded as ORM objects and go through the
    seat service one by one (updates, blocks, moves: few in a nightly sync); new people are
    set aside in a spool and created at the end, a batch per flush, by
    ``seats.admit_or_wait``. What stays in memory is the set of listed stable ids and the
    user ids of people queued for steps 3 and 4.
    """
    report = SyncReport(skipped=list(listing.skipped))
    # Entries skipped as malformed are still in the directory: never "gone" because of that.
    known_ids = listing.ids | {s.directory_id for s in listing.skipped if s.directory_id}
    if not len(listing.people) and not listing.skipped:
        count = session.execute(
            select(func.count()).where(Profile.directory_id.is_not(None))
        ).scalar()
        if count:
            raise DirectoryError(
                "The directory listed nobody under this base DN and filter, but "
                f"{count} profiles came from the directory. Nothing was changed: check "
                "the base DN and the filter (a sync never blocks everyone at once)."
            )
    shown = Counter()  # progress reports made per stage

    def report_progress(stage: str, done: int, of: int) -> None:
        if progress is not None and done // PROGRESS_EVERY > shown[stage]:
            shown[stage] = done // PROGRESS_EVERY
            progress(stage, done, of)

    new_people = _Spool()
    try:
        return _apply(session, listing, new_people, report, known_ids, progress=report_progress,
                      actor=actor, now=now, path=path)  # fmt: skip
    finally:
        new_people.close()


def _apply(session, listing, new_people, report, known_ids, *, progress, actor, now, path):
    """The steps of :func:`apply`, in order; ``new_people`` is the spool for step 5."""
    ad = adapter()
    if session.get_bind().dialect.name == "postgresql":
        # The planner's statistics know nothing of the people this transaction inserts, nor,
        # until autovacuum has run, of a large sync just committed: it takes the profiles
        # for a few rows and scans them for each batch's 500 keys (1.4 s a query at 100,000
        # people, so a first sync grew with the square of its size). The lookups by stable
        # id and username have unique indexes: use them. SET LOCAL ends with the transaction.
        session.execute(text("SET LOCAL enable_seqscan = off"))
    total = len(listing.people)
    tally: Counter = Counter()
    #: Steps 3 and 4: user id -> what step 1 did to them (the final count may change it).
    waiting: dict[int, str] = {}
    reenabled: dict[int, str] = {}
    done = 0
    for batch in _batches(listing.people, BATCH_SIZE):
        rows = {r.directory_id: r for r in _rows(session, Profile.directory_id.in_(
            [p.directory_id for p in batch]))}  # fmt: skip
        unmatched = []
        for person in batch:
            row = rows.get(person.directory_id)
            if row is None:
                unmatched.append(person)
            elif row.exempt:
                report.skipped.append(
                    Skipped(person.dn, "it is the administrator account, which no sync changes")
                )
            elif _needs_work(row, person):
                _sort(waiting, reenabled, tally, *_listed(session, person, row.user_id, report,
                      actor=actor, now=now, path=path))  # fmt: skip
            else:
                _sort(waiting, reenabled, tally, row.user_id, "unchanged",
                      _queue(person, row.block_reason, bool(row.active)))  # fmt: skip
        # Listed people without a directory profile: link a profile of the same username
        # (looked up for the whole batch at once), else they are new.
        keys = {person.username.strip().lower() for person in unmatched}
        same_name = set(
            session.scalars(select(Profile.username_key).where(Profile.username_key.in_(keys)))
        )
        for person in unmatched:
            user_id = None
            if person.username.strip().lower() in same_name:
                user_id = _adopt(session, person, known_ids, report)
                if user_id is False:
                    continue
            if user_id is not None:
                _sort(waiting, reenabled, tally, *_listed(session, person, user_id, report,
                      actor=actor, now=now, path=path))  # fmt: skip
            elif person.disabled:
                report.disabled_not_created += 1
            else:
                new_people.append(person)
        done += len(batch)
        progress("apply", done, total)

    # Gone from the directory: only profiles that came from it, and never deleted.
    gone = [
        user_id
        for user_id, directory_id in session.execute(
            select(Profile.user_id, Profile.directory_id)
            .join(ad.model, ad.column("id") == Profile.user_id)
            .where(
                Profile.directory_id.is_not(None),
                Profile.exempt.is_(False),
                or_(ad.column("active").is_(True), Profile.block_reason == AWAITING_LICENSE),
            )
            .execution_options(yield_per=2000)
        )
        if directory_id not in known_ids
    ]
    for user_id in gone:
        user = session.get(ad.model, user_id)
        seats.block(session, user, reason=BLOCKED_BY_DIRECTORY, actor=actor, now=now, path=path)
        report.blocked += 1

    # Waiting people the directory still lists and enables, oldest first.
    if waiting:
        result = seats.activate_waiting(
            session, actor=actor, now=now, path=path, only_ids=waiting.keys()
        )
        for user_id in result.activated_ids:
            waiting[user_id] = "activated"
        tally.update(waiting.values())
    del waiting

    # People the directory enabled again: a free seat, else the end of the queue.
    for user_id, outcome in reenabled.items():
        user = session.get(ad.model, user_id)
        try:
            if seats.activate(
                session, user, blocked_as=BLOCKED_BY_DIRECTORY, actor=actor, now=now, path=path
            ):
                outcome = "activated"
        except seats.SeatLimitExceeded:
            seats.block(session, user, reason=AWAITING_LICENSE, actor=actor, now=now, path=path)
            outcome = "requeued"
        tally[outcome] += 1

    report.activated += tally["activated"]
    report.blocked += tally["blocked"]
    report.updated += tally["updated"]
    report.unchanged += tally["unchanged"]
    report.requeued += tally["requeued"]

    # New people: active while seats are free, else created waiting (rule 3).
    created_waiting: Counter = Counter()
    waiting_names: dict[str, list[str]] = {}
    done = 0
    for batch in _batches(new_people, BATCH_SIZE):
        dns = {person.directory_id: person.dn for person in batch}
        admitted = seats.admit_or_wait(
            session,
            [
                seats.NewPerson(
                    username=person.username,
                    first_name=person.first_name,
                    surname=person.surname,
                    email=person.email,
                    area=person.area or PRIMARY_AREA,
                    directory_id=person.directory_id,
                )
                for person in batch
            ],
            source="directory",
            path=path,
            actor=actor,
            now=now,
        )
        for person, why in admitted.refused:
            report.skipped.append(Skipped(dns[person.directory_id], str(why), person.directory_id))
        for person, active in admitted.created:
            if active:
                report.created_active += 1
            else:
                report.created_waiting += 1
                pool = seats.pool_for(person.area, person.readonly)
                created_waiting[pool] += 1
                names = waiting_names.setdefault(pool, [])
                if len(names) < 20:
                    names.append(person.username)
        done += len(batch)
        progress("create", done, len(new_people))
    # The totals of all batches, so the Responsible person's email counts them all.
    for pool, count in sorted(created_waiting.items()):
        notifications.exceeded(
            session,
            pool=pool,
            trigger="waiting",
            path=path,
            usernames=waiting_names[pool],
            count=count,
            now=now,
        )

    report.waiting = _waiting_listed(session, listing.ids)
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
    seats.fold_waiting(session)  # last: it locks the waiting counts until the commit
    return report


def _sort(waiting: dict, reenabled: dict, tally: Counter, user_id, outcome, queue) -> None:
    """Count a listed person's outcome, or keep it for step 3 or 4 (which may change it)."""
    if queue == "waiting":
        waiting[user_id] = outcome
    elif queue == "reenabled":
        reenabled[user_id] = outcome
    else:
        tally[outcome] += 1


def _listed(session, person, user_id: int, report, *, actor, now, path):
    """A listed person whose profile changes (the ORM path): names, username, area, block.

    Returns (user id, outcome, queue) for :func:`_sort`.
    """
    ad = adapter()
    user = session.get(ad.model, user_id)
    profile = session.get(Profile, user_id)
    if profile.exempt:
        report.skipped.append(
            Skipped(person.dn, "it is the administrator account, which no sync changes")
        )
        return user_id, "skipped", None
    changed = _update_identity(session, user, profile, person, report, now=now)
    changed = _update_area(session, user, profile, person, report, actor, now, path) or changed
    outcome = "updated" if changed else "unchanged"
    active = bool(ad.get(user, "active"))
    if person.disabled and (active or profile.block_reason == AWAITING_LICENSE):
        seats.block(session, user, reason=BLOCKED_BY_DIRECTORY, actor=actor, now=now, path=path)
        return user_id, "blocked", None
    return user_id, outcome, _queue(person, profile.block_reason, active)


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
