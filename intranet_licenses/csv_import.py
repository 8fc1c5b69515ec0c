"""CSV upload of people: read the files HR sends, preview them against the free seats, apply.

The rule (README "Importing people from CSV"): rows with problems are listed with their line
numbers and skipped; the valid rows are created all or nothing, in one transaction; if they
need more seats than a pool has free, the whole upload is refused before anything is
written, and the refusal is recorded like every other refused seat action.

The file is read twice, line by line, never whole: once to check every row and count the
seats it needs (the preview), and once more to write the valid rows in batches (apply).
"""

from __future__ import annotations

import csv
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import audit, seats
from .errors import LicensesError
from .extension import adapter, config, logger
from .models import POOLS, PRIMARY_AREA, Profile

#: Rows checked (and written) together: one username query and one flush per batch.
BATCH_SIZE = 500
#: Problems kept for display; further ones are only counted.
MAX_PROBLEMS_KEPT = 1000
#: Created usernames kept for display in the result.
MAX_NAMES_KEPT = 200

Progress = Callable[[int], None]


class ImportFileError(LicensesError):
    """The file as a whole cannot be imported; ``str(error)`` says why and what to do."""


# Columns ------------------------------------------------------------------------------

USERNAME, UPN, EMAIL, FIRST, SURNAME, DISPLAY = (
    "username",
    "sign-in name",
    "email",
    "first name",
    "surname",
    "display name",
)
AREA, POOL, READONLY, STATE, BLOCK_SIGN_IN = (
    "area",
    "pool",
    "read-only",
    "account state",
    "block sign in",
)

#: Compact header (lower case, letters and digits only) -> the field it fills.
_HEADERS = {
    **dict.fromkeys(["username", "login", "loginname", "samaccountname", "uid"], USERNAME),
    **dict.fromkeys(["userprincipalname", "upn", "signinname"], UPN),
    **dict.fromkeys(
        ["email", "emailaddress", "mail", "primaryemail", "primaryemailaddress", "workemail"],
        EMAIL,
    ),
    **dict.fromkeys(["firstname", "givenname", "forename"], FIRST),
    **dict.fromkeys(["surname", "lastname", "familyname", "sn"], SURNAME),
    **dict.fromkeys(["displayname", "name", "fullname"], DISPLAY),
    "area": AREA,
    "pool": POOL,
    "readonly": READONLY,
    "accountstate": STATE,
}
_IDENTITY = (USERNAME, UPN, EMAIL)
_YES = {"yes", "y", "true", "1", "x"}
_NO = {"no", "n", "false", "0", ""}


def _field_for(header: str) -> str | None:
    """The field a header names, or None. ``Name [displayName] Required`` reads the brackets."""
    spaced = " ".join(header.lower().split())
    if spaced == "user name":  # Microsoft 365 admin center: the sign-in name (UPN)
        return UPN
    if spaced.startswith("block sign in"):  # Entra: "Block sign in (Yes/No) [accountEnabled]"
        return BLOCK_SIGN_IN
    bracket = re.search(r"\[([^\]]+)\]", spaced)
    compact = re.sub(r"[^a-z0-9]", "", bracket.group(1) if bracket else spaced)
    return _HEADERS.get(compact)


# Reading the file ---------------------------------------------------------------------

_DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs"}
_FORMULA = re.compile(r"'(?=[=+\-@\t\r]| +[=+\-@])")


@dataclass
class FileFacts:
    """What the reader found out about the file, said back to the person in the preview."""

    name: str
    bom: bool
    delimiter: str
    crlf: bool
    header_line: int
    columns: list[tuple[str, str]]
    ignored: list[str]

    def sentence(self) -> str:
        bom = "with a byte-order mark" if self.bom else "without a byte-order mark"
        ends = "Windows (CRLF)" if self.crlf else "Unix (LF)"
        return (
            f"{self.name}: UTF-8 {bom}, separated by {_DELIMITERS[self.delimiter]}, "
            f"{ends} line ends."
        )

    def columns_sentence(self) -> str:
        used = ", ".join(f"{header} ({name})" for header, name in self.columns)
        text = f"Columns used: {used}."
        if self.ignored:
            text += f" Ignored: {', '.join(self.ignored)}."
        return text


def _not_csv(name: str, head: bytes) -> str | None:
    """Why the first bytes show this is not a UTF-8 CSV file, or None."""
    save_as = "Open it in Excel and save it as 'CSV UTF-8 (Comma delimited) (*.csv)'."
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{name} is saved as UTF-16 ('Unicode text'), not UTF-8. {save_as}"
    if head.startswith(b"PK\x03\x04"):
        return f"{name} is an Excel workbook or another zip file, not CSV. {save_as}"
    if head.startswith(b"%PDF"):
        return f"{name} is a PDF document, not CSV. {save_as}"
    if b"\x00" in head:
        return f"{name} is not a CSV file: it contains binary data. {save_as}"
    return None


def _decode(raw: bytes, line: int, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImportFileError(
            f"Line {line} of {name} is not UTF-8 text (the file was probably saved in "
            "another encoding, such as Windows-1252). Open it in Excel and save it as "
            "'CSV UTF-8 (Comma delimited) (*.csv)', then upload it again."
        ) from None


def _choose_delimiter(header: str) -> tuple[str, list[str]]:
    """The separator under which the header names the most known columns."""
    best = None
    for delimiter in _DELIMITERS:
        cells = next(csv.reader([header], delimiter=delimiter), [])
        known = sum(1 for cell in cells if _field_for(cell))
        score = (known, len(cells))
        if best is None or score > best[0]:
            best = (score, delimiter, cells)
    return best[1], best[2]


class CsvPeople:
    """An open CSV file of people: ``facts`` about it, and its rows as dicts by field.

    Use as a context manager; iterate :meth:`rows` for ``(line, values)`` pairs, where
    ``line`` is the line the row starts on and ``values`` maps each field to its text
    (or, for a row with more cells than the header, ``None``).
    """

    def __init__(self, file_path, name: str | None = None, max_bytes: int | None = None):
        self.path = Path(file_path)
        self.name = name or self.path.name
        size = self.path.stat().st_size
        limit = max_bytes if max_bytes is not None else config("MAX_UPLOAD_BYTES")
        if size > limit:
            raise ImportFileError(
                f"{self.name} is {size_text(size)}; the largest file accepted is "
                f"{size_text(limit)}. "
                "Split it into smaller files, or ask the administrator to raise "
                "LICENSES_MAX_UPLOAD_BYTES."
            )
        self.size = size
        self._file = open(self.path, "rb")  # closed by close() / __exit__
        try:
            self.facts, self._header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._file.close()

    def position(self) -> int:
        return self._file.tell()

    def _read_header(self):
        f = self._file
        head = f.read(4096)
        if not head.strip():
            raise ImportFileError(f"{self.name} is empty.")
        problem = _not_csv(self.name, head)
        if problem:
            raise ImportFileError(problem)
        f.seek(0)
        bom = head.startswith(b"\xef\xbb\xbf")
        if bom:
            f.read(3)
        line = 0
        while True:
            raw = f.readline()
            line += 1
            if not raw:
                raise ImportFileError(f"{self.name} has no header line naming its columns.")
            if b"\r" in raw.rstrip(b"\r\n"):
                raise ImportFileError(
                    f"{self.name} uses old Macintosh line ends (CR only). Save it again as "
                    "'CSV UTF-8 (Comma delimited) (*.csv)'."
                )
            text = _decode(raw, line, self.name).strip()
            # Entra's bulk-create template starts with a "version:v1.0" line.
            if text and not text.lower().startswith("version:"):
                break
        try:
            delimiter, cells = _choose_delimiter(text)
        except csv.Error as exc:  # a cell over the csv module's limit (131,072 characters)
            raise ImportFileError(
                f"Line {line} of {self.name}, the header, cannot be read as CSV ({exc}). "
                "The first line must name the columns, for example "
                "'Username,First name,Surname,Email'."
            ) from None
        header = [_field_for(cell) for cell in cells]
        columns: list[tuple[str, str]] = []
        ignored: list[str] = []
        taken: set[str] = set()
        for cell, name in zip(cells, header, strict=True):
            if name and name not in taken:
                taken.add(name)
                columns.append((cell.strip(), name))
            else:
                ignored.append(cell.strip() or "(no name)")
        header = [
            name if name and (cell.strip(), name) in columns else None
            for cell, name in zip(cells, header, strict=True)
        ]
        if not taken.intersection(_IDENTITY):
            shown = ", ".join(c.strip() for c in cells[:12]) + (", ..." if len(cells) > 12 else "")
            raise ImportFileError(
                f"{self.name} has no username or email column. The first line must name the "
                "columns, for example 'Username,First name,Surname,Email' (our People export) "
                "or 'User Name,First Name,Last Name,...' (the Microsoft 365 template); this "
                f"file's first line reads: {shown}"
            )
        facts = FileFacts(
            name=self.name,
            bom=bom,
            delimiter=delimiter,
            crlf=raw.endswith(b"\r\n"),
            header_line=line,
            columns=columns,
            ignored=ignored,
        )
        return facts, header

    def _lines(self) -> Iterator[str]:
        line = self.facts.header_line
        for raw in self._file:
            line += 1
            yield _decode(raw, line, self.name)

    def rows(self) -> Iterator[tuple[int, dict[str, str] | None]]:
        reader = csv.reader(self._lines(), delimiter=self.facts.delimiter, strict=True)
        width = len(self._header)
        used = [(index, name) for index, name in enumerate(self._header) if name]
        while True:
            start = self.facts.header_line + reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportFileError(
                    f"Line {start} of {self.name} cannot be read as CSV ({exc}). Check its "
                    "quotes: a value that contains the separator or a line break must be "
                    'in double quotes, and a quote inside it doubled ("").'
                ) from None
            if not "".join(cells).strip():
                continue  # blank line, or a row of empty cells left by a spreadsheet
            if len(cells) > width and "".join(cells[width:]).strip():
                yield start, None
                continue
            values = {}
            for index, name in used:
                if index < len(cells):
                    cell = cells[index].strip()
                    if cell.startswith("'"):
                        cell = _FORMULA.sub("", cell, count=1)
                    values[name] = cell
            yield start, values


def size_text(n: int) -> str:
    """'20 MB', '1.6 KB', '1000 bytes'."""
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


# Checking rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int
    username: str
    message: str

    def sentence(self) -> str:
        who = f" ({self.username})" if self.username else ""
        return f"Line {self.line}{who}: {self.message}"


@dataclass
class Tally:
    """What a pass over the file found: rows, people to create, problems."""

    rows: int = 0
    #: (area, pool, active) -> people
    create: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    problem_rows: int = 0
    #: The line of every row with a problem (all of them, for the writing pass).
    problem_lines: set[int] = field(default_factory=set)

    def problem(self, problem: Problem) -> None:
        self.problem_rows += 1
        self.problem_lines.add(problem.line)
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)

    @property
    def valid_rows(self) -> int:
        return sum(self.create.values())

    @property
    def needed(self) -> dict[str, int]:
        """New seats per pool (people created blocked take none)."""
        needed = dict.fromkeys(POOLS, 0)
        for (_area, pool, active), n in self.create.items():
            if active:
                needed[pool] += n
        return needed


_SIMPLE_LOCAL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z"
)


class _EmailChecker:
    """email_validator's verdict, with each domain checked once (it is most of the cost).

    A plain ASCII local part (dot-atom) with a domain that validated before is accepted at
    once; everything else, and every address with a problem, goes through validate_email
    itself, so the messages are its own.
    """

    def __init__(self):
        self._domains: dict[str, str | None] = {}

    def __call__(self, email: str) -> str:
        local, _at, domain = email.rpartition("@")
        if len(email) <= 200 and _SIMPLE_LOCAL.match(local):
            known = self._domains.get(domain, "")
            if known == "" and len(self._domains) < 10_000:
                try:
                    known = validate_email(f"a@{domain}", check_deliverability=False).domain
                except EmailNotValidError:
                    known = None
                self._domains[domain] = known
            if known:
                return f"{local}@{known}"
        return validate_email(email, check_deliverability=False).normalized


def _is_header(values: dict[str, str]) -> bool:
    """True for a row whose every cell names the column it is in (a second header line,
    as when two exports were joined; it may start with the second file's byte-order mark)."""
    return len(values) >= 2 and all(
        _field_for(value.lstrip("\ufeff")) == name for name, value in values.items()
    )


def _local_part(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _flag(value: str, column: str, problems: list[str], yes=(), no=()) -> bool | None:
    """Yes/No (and the words in ``yes``/``no``) as a bool; None and a problem otherwise."""
    low = value.strip().lower()
    if low in _YES or low in yes:
        return True
    if low in _NO or low in no:
        return False
    problems.append(f"{column} is '{value}'; use Yes or No.")
    return None


class _RowChecker:
    """Turns a row's values into a NewPerson or a list of problems (seats.py's field rules)."""

    def __init__(self):
        self._areas: dict[str, str | Exception] = {}
        self._email = _EmailChecker()

    def area(self, value: str) -> str:
        wanted = value.strip() or PRIMARY_AREA
        if wanted.lower() == "primary area":
            wanted = PRIMARY_AREA
        if wanted not in self._areas:
            try:
                self._areas[wanted] = seats.check_area(wanted)
            except seats.PersonError as exc:
                self._areas[wanted] = exc
        found = self._areas[wanted]
        if isinstance(found, Exception):
            raise found
        return found

    def check(self, values: dict[str, str]) -> tuple[str, seats.NewPerson | None, list[str]]:
        problems: list[str] = []
        username = values.get(USERNAME, "")
        upn = values.get(UPN, "")
        email = values.get(EMAIL, "")
        if not username:
            username = _local_part(upn or email)
        if not email and "@" in upn:
            email = upn
        if not username:
            problems.append("no username, sign-in name or email address.")
        elif problem := seats.text_problem(
            f"username '{seats.shown(username)}'", username, username=True
        ):
            problems.append(problem)
        first, surname = values.get(FIRST, ""), values.get(SURNAME, "")
        if (not first or not surname) and values.get(DISPLAY):
            given, _, family = values[DISPLAY].rpartition(" ")
            first, surname = first or given.strip(), surname or family.strip()
        if not first and not surname:
            problems.append("the first name and the surname are missing.")
        elif not first:
            problems.append("the first name is missing.")
        elif not surname:
            problems.append("the surname is missing.")
        else:
            problems.extend(
                problem
                for label, value in (("first name", first), ("surname", surname))
                if (problem := seats.text_problem(label, value))
            )
        if email:
            try:
                email = self._email(email)
            except EmailNotValidError as exc:
                problems.append(f"'{email}' is not a valid email address ({exc}).")
        area = PRIMARY_AREA
        try:
            area = self.area(values.get(AREA, ""))
        except seats.PersonError as exc:
            problems.append(str(exc)[0].lower() + str(exc)[1:])
        readonly = False
        if values.get(READONLY):
            readonly = bool(_flag(values[READONLY], "Read-only", problems, yes=("read-only",)))
        pool_text = values.get(POOL, "").strip().lower().replace("-", "")
        if pool_text:
            if pool_text not in POOLS:
                problems.append(f"unknown pool '{values[POOL]}'; pools are {', '.join(POOLS)}.")
            elif pool_text == "readonly":
                readonly = True
            elif seats.pool_for(area, readonly) != pool_text:
                problems.append(
                    f"the pool '{values[POOL]}' does not go with the area '{area}' (people in "
                    f"{area} draw on the {seats.pool_for(area, False)} pool)."
                )
        active = True
        if values.get(STATE):
            active = _flag(values[STATE], "Account state", problems, ("active",), ("blocked",))
        elif values.get(BLOCK_SIGN_IN):
            active = not _flag(values[BLOCK_SIGN_IN], "Block sign in", problems)
        if problems:
            return username, None, problems
        person = seats.NewPerson(
            username=username,
            first_name=first,
            surname=surname,
            email=email,
            area=area,
            readonly=readonly,
            active=bool(active),
        )
        return username, person, []


def _existing(session, keys: set[str]) -> dict[str, str]:
    """Existing usernames (as spelt) for these lower-cased keys, in one query."""
    if not keys:
        return {}
    ad = adapter()
    with session.no_autoflush:  # during apply, add_many flushes its batches itself
        rows = session.execute(
            select(Profile.username_key, ad.column("username"))
            .join(ad.model, ad.column("id") == Profile.user_id)
            .where(Profile.username_key.in_(keys))
        )
        return dict(rows.all())


def _people(
    session,
    reader: CsvPeople,
    tally: Tally,
    progress: Progress | None,
    checked: Tally | None = None,
) -> Iterator[seats.NewPerson]:
    """Check every row, counting into ``tally``; yield the people that can be created.

    With ``checked`` (the writing pass) the rows that pass found a problem in are skipped
    and the database is not asked again: a username someone else took since then is caught
    by the unique index (IntegrityError, everything rolled back). Asking again while the
    import's own rows pile up in the transaction made PostgreSQL quadratic: with the
    table's statistics from before the import, the planner scans the table for every batch.
    """
    checker = _RowChecker()
    seen: dict[str, int] = {}  # username key -> first line it is on
    batch: list[tuple[int, str, seats.NewPerson | None, list[str]]] = []

    def drain():
        existing = {}
        if checked is None:
            keys = {seats._key(username) for _line, username, person, _p in batch if person}
            existing = _existing(session, keys)
        for line, username, person, problems in batch:
            key = seats._key(username)
            if key in existing:
                problems.append(
                    f"a person with the username '{existing[key]}' already exists "
                    "(usernames are compared without regard to case)."
                )
            if key and key in seen and seen[key] != line:
                problems.append(
                    f"the username '{username}' is already on line {seen[key]} of this file "
                    "(usernames are compared without regard to case); only the first is used."
                )
            if problems:
                tally.problem(Problem(line, username, " ".join(_capital(problems))))
            else:
                tally.create[
                    (person.area, seats.pool_for(person.area, person.readonly), person.active)
                ] += 1
                yield person
        batch.clear()
        if progress is not None:
            progress(reader.position())

    for line, values in reader.rows():
        tally.rows += 1
        if checked is not None and line in checked.problem_lines:
            continue  # listed by the checking pass
        if values is None:
            tally.problem(
                Problem(
                    line,
                    "",
                    "This row has more cells than the header has columns. A value that "
                    "contains the separator must be in double quotes.",
                )
            )
            continue
        if _is_header(values):
            tally.problem(
                Problem(
                    line,
                    "",
                    "This row looks like a header line (it names the columns again); were "
                    "two files joined? Remove the line and check the rows after it.",
                )
            )
            continue
        username, person, problems = checker.check(values)
        key = seats._key(username)
        if key:
            seen.setdefault(key, line)
        batch.append((line, username, person, problems))
        if len(batch) >= BATCH_SIZE:
            yield from drain()
    if batch:
        yield from drain()
    if progress is not None:
        progress(reader.position())


def _capital(sentences: list[str]) -> list[str]:
    return [s[0].upper() + s[1:] for s in sentences]


# Preview and apply --------------------------------------------------------------------


@dataclass
class Preview:
    """What an upload would do, computed without writing anything."""

    facts: FileFacts
    tally: Tally
    figures: list[seats.PoolFigures]
    shortfalls: list[seats.SeatLimitExceeded]

    @property
    def can_apply(self) -> bool:
        return self.tally.valid_rows > 0 and not self.shortfalls

    def lines(self) -> list[str]:
        """The preview in sentences, the same on the page and in the CLI."""
        t = self.tally
        lines = [self.facts.sentence(), self.facts.columns_sentence()]
        if not t.rows:
            lines.append("The file has a header but no rows of people.")
            return lines
        lines.append(
            f"{_n(t.rows, 'row')}: {t.valid_rows:,} can be imported, "
            f"{t.problem_rows:,} {'has' if t.problem_rows == 1 else 'have'} problems."
        )
        if t.valid_rows:
            lines.append(f"To create: {create_sentence(t.create)}.")
            lines.extend(seat_sentences(t.needed, self.figures))
        lines.append(self.verdict())
        return lines

    def verdict(self) -> str:
        t = self.tally
        if not t.rows:
            return "Nothing to import."
        if not t.valid_rows:
            return (
                "Nothing to import: every row has a problem. Correct the file and upload it again."
            )
        if self.shortfalls:
            short = "; ".join(_short_sentence(r) for r in self.shortfalls)
            return (
                f"Not enough free seats ({short}), so the upload will be refused as a whole "
                "and nothing will be written. Request more licenses, block or delete people "
                "who no longer need access, or remove rows from the file."
            )
        skipped = (
            f"; the {_n(t.problem_rows, 'row')} with problems will be skipped"
            if t.problem_rows
            else ""
        )
        return f"Applying creates these {_n(t.valid_rows, 'person', 'people')}{skipped}."


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def create_sentence(create: Counter) -> str:
    parts = []

    def order(item):
        (area, pool, active), _n = item
        return (not active, area != PRIMARY_AREA, area, POOLS.index(pool))

    for (area, pool, active), n in sorted(create.items(), key=order):
        state = "active" if active else "blocked"
        parts.append(f"{n:,} {state} in {area} ({pool} pool)")
    return "; ".join(parts)


def seat_sentences(needed: dict[str, int], figures: list[seats.PoolFigures]) -> list[str]:
    """'Needs 40 intranet seats, 12 free.' for every pool the file needs seats in."""
    lines = []
    for figure in figures:
        n = needed.get(figure.pool, 0)
        if not n:
            continue
        seat = f"{figure.pool} seat" if n == 1 else f"{figure.pool} seats"
        if figure.limit is None:
            lines.append(f"Needs {n:,} {seat}; the {figure.pool} pool has no limit.")
        elif n > figure.free:
            lines.append(f"Needs {n:,} {seat}, {figure.free:,} free: {n - figure.free:,} short.")
        else:
            lines.append(f"Needs {n:,} {seat}, {figure.free:,} free.")
    return lines


def _short_sentence(refusal: seats.SeatLimitExceeded) -> str:
    free = max((refusal.limit or 0) - refusal.used, 0)
    return f"needs {refusal.needed:,} {refusal.pool} seats, {free:,} free"


def preview(
    session, file_path, *, name: str | None = None, now: datetime, progress=None
) -> Preview:
    """Read and check the whole file and compare it with the free seats; writes nothing."""
    with CsvPeople(file_path, name) as reader:
        tally = Tally()
        for _person in _people(session, reader, tally, progress):
            pass
        facts = reader.facts
    return Preview(
        facts=facts,
        tally=tally,
        figures=seats.figures(session, now),
        shortfalls=seats.shortfalls(session, tally.needed, now),
    )


@dataclass
class Result:
    """What an apply did: created people, skipped rows, or why nothing was written."""

    preview: Preview
    created: Counter = field(default_factory=Counter)
    created_names: list[str] = field(default_factory=list)
    tally: Tally | None = None
    refusals: list[seats.SeatLimitExceeded] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.refusals and not self.error and sum(self.created.values()) > 0

    @property
    def problems(self) -> list[Problem]:
        return (self.tally or self.preview.tally).problems

    @property
    def problem_rows(self) -> int:
        return (self.tally or self.preview.tally).problem_rows

    def lines(self) -> list[str]:
        """The result in sentences, the same on the page and in the CLI."""
        if self.refusals:
            return [
                "Refused: nothing was imported.",
                *(str(refusal) for refusal in self.refusals),
            ]
        if self.error:
            return [self.error]
        total = sum(self.created.values())
        if not total:
            return [self.preview.verdict()]
        line = (
            f"Imported: created {_n(total, 'person', 'people')}: {create_sentence(self.created)}."
        )
        lines = [line]
        if self.problem_rows:
            lines.append(f"Skipped {_n(self.problem_rows, 'row')} with problems.")
        return lines


def apply(
    session,
    file_path,
    *,
    name: str | None = None,
    actor: str,
    now: datetime,
    path: str,
    progress: Progress | None = None,
    checked: Preview | None = None,
) -> Result:
    """Create the valid rows' people, all or nothing (see the module docstring).

    Flushes only; the caller commits, also after a refusal or an error (to keep the audit
    record). On a refusal or a database error everything this call wrote is rolled back
    first, so the data is as it was before the upload. ``checked`` is a preview of the same
    file made just before in the same process (the CLI), saving one pass over the file; the
    free seats are read again in any case, and every row is checked again as it is written.
    """
    if checked is None:
        before = preview(session, file_path, name=name, now=now)
    else:
        before = replace(checked, shortfalls=seats.shortfalls(session, checked.tally.needed, now))
    result = Result(preview=before)
    subject = before.facts.name[:255]
    if not before.tally.valid_rows:
        return result
    if before.shortfalls:
        result.refusals = before.shortfalls
        for refusal in before.shortfalls:
            seats.record_refusal(
                session,
                refusal,
                actor=actor,
                action="import",
                path=path,
                now=now,
                subject=subject,
            )
        return result

    tally = Tally()
    names = result.created_names

    def people():
        with CsvPeople(file_path, name) as reader:
            for person in _people(session, reader, tally, None, checked=before.tally):
                if len(names) < MAX_NAMES_KEPT:
                    names.append(person.username)
                yield person

    def written(done: int) -> None:
        if progress is not None:
            progress(done)

    try:
        created = seats.add_many(
            session,
            people(),
            source="csv",
            path=path,
            actor=actor,
            now=now,
            batch_size=BATCH_SIZE,
            after_batch=written,
        )
    except seats.SeatLimitExceeded as race:
        # Seats were taken between the check and the write: undo every batch, then report.
        session.rollback()
        names.clear()
        refusals = seats.shortfalls(session, before.tally.needed, now) or [race]
        result.refusals = refusals
        for refusal in refusals:
            seats.record_refusal(
                session,
                refusal,
                actor=actor,
                action="import",
                path=path,
                now=now,
                subject=subject,
            )
        return result
    except SQLAlchemyError as exc:
        session.rollback()
        names.clear()
        logger.exception("CSV import of %s failed", subject)
        reason = type(getattr(exc, "orig", None) or exc).__name__
        result.error = (
            f"Nothing was imported: the database reported an error half-way ({reason}), and "
            "everything the upload had written was undone, so the data is as it was before. "
            "Try again; if it happens again, tell the intranet's administrator."
        )
        if isinstance(exc, IntegrityError):
            result.error = (
                "Nothing was imported: the database refused a row as a duplicate, most "
                "likely a username someone added while the upload was being written. "
                "Everything the upload had written was undone. Preview the file again: it "
                "will show which rows are affected."
            )
        audit.record(
            session,
            at=now,
            actor=actor,
            action="import",
            path=path,
            outcome="error",
            subject=subject,
            detail=str(exc)[:2000],
        )
        return result
    except BaseException:
        session.rollback()
        raise
    result.created = created
    for problem in tally.problems:  # only if a row read differently the second time
        before.tally.problem(problem)
    result.tally = tally = before.tally
    audit.record(
        session,
        at=now,
        actor=actor,
        action="import",
        path=path,
        subject=subject,
        detail=f"Created {sum(created.values())}: {create_sentence(created)}; "
        f"skipped {_n(tally.problem_rows, 'row')} with problems.",
    )
    return result


# Uploads kept between the preview and "Apply" -----------------------------------------

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32}$")
#: An upload not applied within this many seconds is discarded.
UPLOAD_MAX_AGE = 24 * 3600


def uploads_folder(instance_path) -> Path:
    folder = Path(instance_path) / "licenses-uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def upload_paths(instance_path, token: str) -> tuple[Path, Path] | None:
    """The stored CSV and its metadata file for ``token``, or None for a malformed token."""
    if not _TOKEN.match(token or ""):
        return None
    folder = uploads_folder(instance_path)
    return folder / f"{token}.csv", folder / f"{token}.json"


def claim_upload(csv_path: Path) -> Path | None:
    """Take the stored CSV for one Apply, or None when another request took it first.

    A rename is atomic: of two clicks at once, exactly one finds the file.
    """
    claimed = csv_path.with_name(f"{csv_path.stem}.{secrets.token_hex(8)}.applying")
    try:
        os.rename(csv_path, claimed)
    except FileNotFoundError:
        return None
    return claimed


def release_upload(claimed: Path, csv_path: Path) -> None:
    """Put a claimed CSV back for another Apply, unless the upload was discarded (its
    metadata file is gone): then remove it."""
    if csv_path.with_suffix(".json").exists():
        try:
            os.rename(claimed, csv_path)
        except FileNotFoundError:
            pass
    else:
        claimed.unlink(missing_ok=True)


def clean_uploads(instance_path, now_ts: float) -> None:
    """Remove uploads older than UPLOAD_MAX_AGE (previewed and never applied)."""
    for entry in uploads_folder(instance_path).iterdir():
        try:
            if now_ts - entry.stat().st_mtime > UPLOAD_MAX_AGE:
                entry.unlink()
        except OSError:  # another worker removed it first
            pass


def save_stream(stream, target: Path, max_bytes: int, name: str) -> int:
    """Copy an upload to ``target`` in chunks, refusing it past ``max_bytes``."""
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(64 * 1024):
            written += len(chunk)
            if written > max_bytes:
                out.close()
                target.unlink()
                raise ImportFileError(
                    f"{name} is larger than {size_text(max_bytes)}, the largest file accepted. "
                    "Split it into smaller files, or ask the administrator to raise "
                    "LICENSES_MAX_UPLOAD_BYTES."
                )
            out.write(chunk)
    return written
