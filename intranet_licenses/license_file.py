"""The license file format: canonical form, Ed25519 signing, verify-then-parse and checks."""

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import LicensesError

POOLS = ("intranet", "extranet", "readonly")
POOL_KEYS = {
    "intranet": "MAX_USERS",
    "extranet": "MAX_EXTRANET_USERS",
    "readonly": "MAX_READONLY_USERS",
}
#: The other limits DESIGN.md names; a site reads them but no pool draws on them.
OTHER_LIMIT_KEYS = ("MAX_PUBLISH_LOCATIONS", "MAX_EFORMS_PROJECTS")
#: Every MAX_* key a license may carry (a mistyped one would read as 0).
LIMIT_KEYS = (*POOL_KEYS.values(), *OTHER_LIMIT_KEYS)
STATES = ("valid", "expired", "bad_signature", "wrong_host", "malformed", "none")
REQUIRED_KEYS = ("Issued", "Expires", "Host-Name")

SIGNATURE_KEY = "Signature"
SIGNATURE_PREFIX = f"{SIGNATURE_KEY}:"
SIGNATURE_LENGTH = 64  # bytes of an Ed25519 signature
DEFAULT_PORT = 443  # a host name without a port means this port, on either side

BAD_SIGNATURE_SENTENCE = (
    "License signature is not valid: the file was changed or was not issued for this installation."
)
NO_LICENSE_SENTENCE = "No license is installed."
VALID_SENTENCE = "License is valid."

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII only; fromisoformat takes more
_NUMBER = re.compile(r"[0-9]+")  # ASCII only: no sign, point, underscore or other digits
_PORT = re.compile(r"[0-9]{1,5}")
_PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


class LicenseFileError(LicensesError):
    """A license or key that cannot be used; ``str(error)`` is a sentence for a sysadmin."""

    state = "error"


class MalformedLicense(LicenseFileError):
    """The license text does not follow the format; ``line`` is 1-based, or None."""

    state = "malformed"

    def __init__(
        self, detail: str, line: int | None = None, *, intro: str = "License file is malformed"
    ) -> None:
        self.detail = detail
        self.line = line
        where = "" if line is None else f"line {line}: "
        super().__init__(f"{intro}: {where}{detail}.")


class BadSignature(LicenseFileError):
    """The signature cannot be decoded, or no trusted public key verifies it."""

    state = "bad_signature"

    def __init__(self, message: str = BAD_SIGNATURE_SENTENCE) -> None:
        super().__init__(message)


class KeyFileError(LicenseFileError):
    """A private or public key that cannot be read or is not an Ed25519 key."""

    state = "key"


@dataclass(frozen=True)
class License:
    """A license whose signature was verified, with its fields in file order.

    ``text`` is the text as given, with LF line ends and no byte-order mark.
    """

    fields: tuple[tuple[str, str], ...]
    text: str
    key_fingerprint: str

    def get(self, key: str, default: str | None = None) -> str | None:
        for name, value in self.fields:
            if name == key:
                return value
        return default

    @property
    def registered_to(self) -> str | None:
        return self.get("Registered-To")

    @property
    def host_id(self) -> str | None:
        return self.get("Host-Id")

    @property
    def host_name(self) -> str | None:
        return self.get("Host-Name")

    @property
    def issued(self) -> date:
        return _parse_date("Issued", self.get("Issued", ""))

    @property
    def expires(self) -> date | None:
        """The last valid day (UTC), or None for ``Never``."""
        return _parse_expires(self.get("Expires", ""))

    def limit(self, key: str) -> int | None:
        """The ``MAX_*`` value: None for ``Unlimited``, 0 when the key is missing."""
        if not key.startswith("MAX_"):
            raise ValueError(f"{key!r} is not a limit; limits are the MAX_* keys")
        value = self.get(key)
        return 0 if value is None else _parse_limit(key, value)

    def pool_limit(self, pool: str) -> int | None:
        try:
            key = POOL_KEYS[pool]
        except KeyError:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}") from None
        return self.limit(key)

    def expired_on(self, today: date) -> bool:
        """Whether the license has expired on ``today`` (UTC); the Expires day is still valid."""
        expires = self.expires
        return expires is not None and today > expires

    def matches_host(self, site_name: str) -> bool:
        return host_matches(self.host_name or "", site_name)


@dataclass(frozen=True)
class Status:
    """What a sysadmin is told about the installed license."""

    state: str
    sentence: str
    license: License | None = None

    @property
    def valid(self) -> bool:
        return self.state == "valid"


def canonical_bytes(text: str) -> bytes:
    """The signed form: LF ends, no trailing spaces or tabs, no blank or Signature lines.

    A leading byte-order mark is dropped too, so a file saved by a Windows editor verifies.
    """
    lines = (line.rstrip(" \t") for line in _normalise(text).split("\n"))
    kept = [line for line in lines if line and not line.startswith(SIGNATURE_PREFIX)]
    return ("\n".join(kept) + "\n").encode("utf-8")


def sign_text(
    fields: Iterable[tuple[str, str]] | Mapping[str, str],
    private_key: Ed25519PrivateKey | str | bytes | os.PathLike,
) -> str:
    """Return the full license text for ``fields``, ending with its Signature line.

    The fields are checked as ``load_license`` would check them, so a license that this
    returns always loads; a problem raises MalformedLicense naming the field.
    """
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    seen: dict[str, int | None] = {}
    lines = []
    for key, raw_value in pairs:
        value = str(raw_value).strip()
        try:
            _check_field(key, value, seen)
        except ValueError as error:
            raise MalformedLicense(str(error), intro="Cannot sign the license") from None
        seen[key] = None
        lines.append(f"{key}: {value}".rstrip())
    try:
        _check_required(seen)
    except ValueError as error:
        raise MalformedLicense(str(error), intro="Cannot sign the license") from None
    body = "\n".join(lines) + "\n"
    signature = load_private_key(private_key).sign(canonical_bytes(body))
    return f"{body}{SIGNATURE_PREFIX} {base64.b64encode(signature).decode('ascii')}\n"


def load_license(text: str | bytes, public_keys: Iterable[Ed25519PublicKey]) -> License:
    """Verify the signature over the canonical bytes, then parse; raise on any problem."""
    text = _normalise(_as_text(text))
    encoded_signature = _find_signature(text)
    try:
        message = canonical_bytes(text)
    except UnicodeEncodeError:
        raise MalformedLicense("it contains characters that are not valid text") from None
    fingerprint = _verify(message, encoded_signature, public_keys)
    return License(fields=_parse(text), text=text, key_fingerprint=fingerprint)


def evaluate(
    text: str | bytes | None,
    public_keys: Iterable[Ed25519PublicKey],
    site_name: str,
    today: date,
) -> Status:
    """The license's state and sentence for this site on ``today`` (UTC).

    Never raises for bad license text; None or blank text means no license is installed.
    A license for another host is reported as such even if it has also expired.
    """
    if text is None:
        return Status("none", NO_LICENSE_SENTENCE)
    try:
        if not _normalise(_as_text(text)).strip():
            return Status("none", NO_LICENSE_SENTENCE)
        license = load_license(text, public_keys)
    except LicenseFileError as error:
        return Status(error.state, str(error))
    if not license.matches_host(site_name):
        hosts = " ".join((license.host_name or "").split())
        site = site_name.strip() or "no site name is set"
        return Status(
            "wrong_host", f"License is for host(s) {hosts}, not for this site ({site}).", license
        )
    if license.expired_on(today):
        return Status("expired", f"License expired on {license.expires.isoformat()}.", license)
    return Status("valid", VALID_SENTENCE, license)


def host_matches(patterns: str, site_name: str) -> bool:
    """Whether any of the space-separated ``host[:port]`` patterns matches ``site_name``.

    ``*`` alone matches everything; ``*`` as a host matches any host; ``*`` as a DNS label
    matches exactly one label; ``*`` as a port matches any port; no port means 443.
    """
    site = _parse_site(site_name)
    for pattern in patterns.split():
        if pattern == "*":
            return True
        if site is None:
            continue
        try:
            labels, port = _parse_host_pattern(pattern)
        except ValueError:
            continue
        site_labels, site_port = site
        if port is not None and port != site_port:
            continue
        if labels is None or _labels_match(labels, site_labels):
            return True
    return False


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the SHA-256 of the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new vendor key: (private PEM, PKCS8 unencrypted; public PEM, SubjectPublicKeyInfo)."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(
    pem_or_path: Ed25519PrivateKey | str | bytes | os.PathLike,
) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM text or the path of a PEM file."""
    if isinstance(pem_or_path, Ed25519PrivateKey):
        return pem_or_path
    data, source = _read_pem(pem_or_path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"Cannot use {source}: it is protected by a password; store it unencrypted."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"Cannot use {source}: it is not a PEM private key.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"Cannot use {source}: it is not an Ed25519 key.")
    return key


def load_public_keys(
    values: Iterable[str | bytes | os.PathLike | Ed25519PublicKey]
    | str
    | bytes
    | os.PathLike
    | None,
) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from PEM text, paths of PEM files, or a list of them.

    One text or file may hold several keys; None gives an empty list.
    """
    if values is None:
        return []
    if isinstance(values, str | bytes | os.PathLike | Ed25519PublicKey):
        values = [values]
    keys = []
    for value in values:
        if isinstance(value, Ed25519PublicKey):
            keys.append(value)
            continue
        data, source = _read_pem(value, "public key")
        if b"PRIVATE KEY-----" in data:
            raise KeyFileError(
                f"Cannot use {source}: it holds a private key; give the public key instead."
            )
        blocks = _PEM_PUBLIC_KEY.findall(data)
        if not blocks:
            raise KeyFileError(f"Cannot use {source}: it is not a PEM public key.")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except (ValueError, UnsupportedAlgorithm):
                raise KeyFileError(f"Cannot use {source}: it is not a PEM public key.") from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"Cannot use {source}: it is not an Ed25519 key.")
            keys.append(key)
    return keys


def _read_pem(value: str | bytes | os.PathLike, what: str) -> tuple[bytes, str]:
    """(PEM bytes, how to name the source in a message) of PEM text or a PEM file's path."""
    if isinstance(value, str | bytes) and not value:
        raise KeyFileError(f"No {what} was given.")
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode("utf-8"), f"the {what} given"
    if isinstance(value, bytes) and b"-----BEGIN" in value:
        return value, f"the {what} given"
    try:
        path = os.fsdecode(value)
    except TypeError:
        raise KeyFileError(
            f"A {what} must be PEM text or the path of a PEM file, not {type(value).__name__}."
        ) from None
    try:
        with open(path, "rb") as file:
            return file.read(), f"the {what} file {path}"
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        reason = getattr(error, "strerror", None) or str(error)
        raise KeyFileError(f"Cannot read the {what} file {path}: {reason}.") from None


def _normalise(text: str) -> str:
    """LF line ends, without a leading byte-order mark (as Windows editors add)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedLicense("it is not UTF-8 text") from None
    return text


def _find_signature(text: str) -> str:
    """The base64 value of the one Signature line."""
    found = [
        (number, line)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.startswith(SIGNATURE_PREFIX)
    ]
    if not found:
        raise MalformedLicense("it has no Signature line")
    if len(found) > 1:
        raise MalformedLicense(
            f"Signature appears twice (first on line {found[0][0]})", found[1][0]
        )
    return found[0][1].removeprefix(SIGNATURE_PREFIX).strip()


def _verify(message: bytes, encoded_signature: str, public_keys) -> str:
    """The fingerprint of the first trusted key that verifies the signature."""
    try:
        signature = base64.b64decode(encoded_signature, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        signature = b""
    if len(signature) != SIGNATURE_LENGTH:
        raise BadSignature(
            "License signature is not valid: the Signature line does not hold "
            "a base64-encoded Ed25519 signature."
        )
    keys = list(public_keys)
    if not keys:
        raise BadSignature(
            "License signature cannot be checked: no trusted public keys are configured."
        )
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return key_fingerprint(key)
    raise BadSignature()


def _parse(text: str) -> tuple[tuple[str, str], ...]:
    """The fields of verified text, in file order."""
    fields = []
    seen: dict[str, int | None] = {}
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip(" \t")
        if not line or line.startswith("#") or line.startswith(SIGNATURE_PREFIX):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise MalformedLicense(f"expected 'Key: Value', found {_quote(line)}", number)
        value = value.strip()
        try:
            _check_field(key, value, seen)
        except ValueError as error:
            raise MalformedLicense(str(error), number) from None
        seen[key] = number
        fields.append((key, value))
    try:
        _check_required(seen)
    except ValueError as error:
        raise MalformedLicense(str(error)) from None
    return tuple(fields)


def _check_field(key: str, value: str, seen: Mapping[str, int | None]) -> None:
    """Raise ValueError with a sentence fragment if this field cannot be in a license."""
    if not key:
        raise ValueError("the line has no key before ':'")
    if any(character.isspace() for character in key):
        raise ValueError(f"the key {key!r} contains a space")
    if ":" in key or key.startswith("#") or key == SIGNATURE_KEY:
        raise ValueError(f"{key!r} cannot be used as a key")
    if "\n" in value or "\r" in value:
        raise ValueError(f"the value of {key} contains a line break")
    if key in seen:
        first = seen[key]
        raise ValueError(f"{key} appears twice" + (f" (first on line {first})" if first else ""))
    if key == "Issued":
        _parse_date(key, value)
    elif key == "Expires":
        _parse_expires(value)
    elif key == "Host-Name":
        if not value:
            raise ValueError("Host-Name has no host pattern (use * for any host)")
        for pattern in value.split():
            _parse_host_pattern(pattern)
    elif key.startswith("MAX_"):
        _parse_limit(key, value)


def _check_required(seen: Mapping[str, int | None]) -> None:
    for key in REQUIRED_KEYS:
        if key not in seen:
            raise ValueError(f"it has no {key} line")


def _parse_date(key: str, value: str) -> date:
    if _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{key} must be a date like 2026-12-31, not {_quote(value)}")


def _parse_expires(value: str) -> date | None:
    if value.isascii() and value.lower() == "never":
        return None
    try:
        return _parse_date("Expires", value)
    except ValueError:
        raise ValueError(
            f"Expires must be a date like 2026-12-31 or Never, not {_quote(value)}"
        ) from None


#: The largest seat limit a license may name (the seat counters are 32-bit integers).
MAX_LIMIT = 2_147_483_647


def _parse_limit(key: str, value: str) -> int | None:
    if value.isascii() and value.lower() == "unlimited":
        return None
    if _NUMBER.fullmatch(value):
        try:
            number = int(value)
        except ValueError:  # more digits than int() accepts
            raise ValueError(f"{key} is too large") from None
        if number > MAX_LIMIT:
            raise ValueError(f"{key} is larger than {MAX_LIMIT:,}; write Unlimited instead")
        return number
    raise ValueError(f"{key} must be a whole number or Unlimited, not {_quote(value)}")


def _parse_host_pattern(pattern: str) -> tuple[list[str] | None, int | None]:
    """(labels, or None for any host; port, or None for any port) of one Host-Name pattern."""
    if pattern == "*":
        return None, None
    host, colon, port_text = pattern.lower().partition(":")
    if not colon:
        port = DEFAULT_PORT
    elif port_text == "*":
        port = None
    elif _PORT.fullmatch(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ValueError(
            f"Host-Name pattern {_quote(pattern)} needs a port from 1 to 65535 or * after ':'"
        )
    if host == "*":
        return None, port
    labels = host.removesuffix(".").split(".")
    if not all(labels) or any("*" in label and label != "*" for label in labels):
        raise ValueError(
            f"Host-Name pattern {_quote(pattern)} is not a host name "
            "(* may only stand for a whole label, as in *.example.com)"
        )
    return labels, port


def _labels_match(pattern: list[str], site: list[str]) -> bool:
    """Label by label, as TLS does: ``*`` stands for exactly one label."""
    if len(pattern) != len(site):
        return False
    return all(label in ("*", actual) for label, actual in zip(pattern, site, strict=True))


def _parse_site(site_name: str) -> tuple[list[str], int] | None:
    """(labels, port) of the configured site name, or None if it is empty or not a name."""
    host, colon, port_text = site_name.strip().lower().partition(":")
    if not colon:
        port = DEFAULT_PORT
    elif _PORT.fullmatch(port_text):
        port = int(port_text)
    else:
        return None
    labels = host.removesuffix(".").split(".")
    if not all(labels) or "*" in host or any(c.isspace() for c in host):
        return None
    return labels, port


def _quote(value: str, limit: int = 40) -> str:
    """``value`` quoted for a message, cut short if long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
