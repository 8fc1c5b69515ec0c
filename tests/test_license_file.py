import base64
import hashlib
from datetime import date

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from intranet_licenses.license_file import (
    BAD_SIGNATURE_SENTENCE,
    POOL_KEYS,
    POOLS,
    STATES,
    BadSignature,
    KeyFileError,
    License,
    LicenseFileError,
    MalformedLicense,
    Status,
    canonical_bytes,
    evaluate,
    generate_key_pair,
    host_matches,
    key_fingerprint,
    load_license,
    load_private_key,
    load_public_keys,
    sign_text,
)

FIELDS = {
    "Registered-To": "Example Ltd",
    "Host-Id": "A1B2-C3D4",
    "Host-Name": "intranet.example.com",
    "Issued": "2026-01-01",
    "Expires": "2026-12-31",
    "MAX_USERS": "50",
    "MAX_EXTRANET_USERS": "Unlimited",
    "MAX_READONLY_USERS": "10",
    "CRM_ALLOWED": "Yes",
}
SITE = "intranet.example.com"
TODAY = date(2026, 6, 1)


@pytest.fixture
def private_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def public_keys(private_key):
    return [private_key.public_key()]


@pytest.fixture
def license_text(private_key):
    return sign_text(FIELDS, private_key)


def fields_with(**changes):
    """FIELDS with some values replaced (a key's underscores stand for hyphens; None drops)."""
    fields = dict(FIELDS)
    for name, value in changes.items():
        key = name if name.startswith("MAX_") else name.replace("_", "-")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return fields


def sign_raw(body, private_key):
    """Sign arbitrary text, bypassing sign_text's checks, to test parsing after verification."""
    signature = private_key.sign(canonical_bytes(body))
    return f"{body}Signature: {base64.b64encode(signature).decode('ascii')}\n"


def pem_of(key, *, public=False, password=None):
    if public:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


# Signing, verifying and the canonical form


def test_sign_then_load_round_trip(private_key, public_keys, license_text):
    license = load_license(license_text, public_keys)

    assert license.fields == tuple(FIELDS.items())
    assert license.text == license_text
    raw_public_key = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert license.key_fingerprint == hashlib.sha256(raw_public_key).hexdigest()[:16]
    assert license.key_fingerprint == key_fingerprint(private_key.public_key())
    assert license.registered_to == "Example Ltd"
    assert license.host_id == "A1B2-C3D4"
    assert license.host_name == "intranet.example.com"
    assert license.issued == date(2026, 1, 1)
    assert license.expires == date(2026, 12, 31)
    assert license.get("CRM_ALLOWED") == "Yes"
    assert license.get("EFORMS_ALLOWED") is None
    assert license.get("EFORMS_ALLOWED", "No") == "No"


def test_signed_text_is_readable_with_signature_last(license_text):
    lines = license_text.splitlines()

    assert lines[:-1] == [f"{key}: {value}" for key, value in FIELDS.items()]
    assert lines[-1].startswith("Signature: ")
    assert len(base64.b64decode(lines[-1].removeprefix("Signature: "))) == 64
    assert license_text.endswith("\n")
    assert "\r" not in license_text


def test_fields_keep_file_order(private_key, public_keys):
    fields = [
        ("Zulu", "last letter"),
        ("Expires", "Never"),
        ("Alpha", "first letter"),
        ("Host-Name", "*"),
        ("Issued", "2026-01-01"),
        ("MAX_USERS", "3"),
    ]
    text = sign_raw(
        "# Comments are signed too\n" + "".join(f"{k}: {v}\n" for k, v in fields), private_key
    )

    assert load_license(text, public_keys).fields == tuple(fields)


def test_sign_text_takes_pairs_or_mapping_and_key_as_pem(private_key, public_keys):
    from_pairs = sign_text(list(FIELDS.items()), pem_of(private_key))

    # Ed25519 signatures are deterministic: the same body and key give the same text.
    assert from_pairs == sign_text(FIELDS, private_key)
    assert load_license(from_pairs, public_keys).fields == tuple(FIELDS.items())


def test_canonical_bytes():
    text = "\ufeffA: 1  \r\n\r\n   \t\n# comment\t\rSignature: abc \nB: two words\n\n"

    assert canonical_bytes(text) == b"A: 1\n# comment\nB: two words\n"
    assert canonical_bytes("A: caf\u00e9") == "A: caf\u00e9\n".encode()


@pytest.mark.parametrize(
    "reformat",
    [
        pytest.param(lambda text: text.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda text: text.replace("\n", "\r"), id="cr"),
        pytest.param(lambda text: text.replace("\n", "  \t \n"), id="trailing-spaces"),
        pytest.param(lambda text: text.replace("\n", "\n\n  \n"), id="blank-lines"),
        pytest.param(lambda text: text.rstrip("\n"), id="no-final-newline"),
        pytest.param(lambda text: "\ufeff" + text, id="byte-order-mark"),
        pytest.param(lambda text: text.encode(), id="utf8-bytes"),
    ],
)
def test_harmless_reformatting_still_verifies(reformat, public_keys, license_text):
    license = load_license(reformat(license_text), public_keys)

    assert license.fields == tuple(FIELDS.items())
    assert "\r" not in license.text


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("MAX_USERS: 50", "MAX_USERS: 51", id="one-byte-of-a-value"),
        pytest.param("Example Ltd", "Example Ltd.", id="appended-byte"),
        pytest.param("Example Ltd", "Example  Ltd", id="inner-space"),
        pytest.param("MAX_USERS:", "MAX_USERZ:", id="key-name"),
        pytest.param("CRM_ALLOWED", "crm_allowed", id="key-case"),
        pytest.param("MAX_READONLY_USERS: 10\n", "", id="removed-line"),
        pytest.param(
            "CRM_ALLOWED: Yes\n", "CRM_ALLOWED: Yes\nERP_ALLOWED: Yes\n", id="added-line"
        ),
        pytest.param("Host-Id", "# Host-Id", id="commented-out"),
        pytest.param("Expires: 2026-12-31", "Expires: Never", id="expiry"),
    ],
)
def test_any_change_to_keys_or_values_breaks_the_signature(old, new, public_keys, license_text):
    assert old in license_text
    changed = license_text.replace(old, new, 1)

    with pytest.raises(BadSignature) as caught:
        load_license(changed, public_keys)
    assert caught.value.state == "bad_signature"
    assert str(caught.value) == BAD_SIGNATURE_SENTENCE


def test_a_key_that_did_not_sign_is_rejected(license_text):
    other = Ed25519PrivateKey.generate().public_key()

    with pytest.raises(BadSignature):
        load_license(license_text, [other])


def test_second_trusted_key_verifies_for_vendor_rotation(public_keys):
    new_vendor_key = Ed25519PrivateKey.generate()
    text = sign_text(FIELDS, new_vendor_key)
    trusted = [*public_keys, new_vendor_key.public_key()]

    license = load_license(text, trusted)

    assert license.key_fingerprint == key_fingerprint(new_vendor_key.public_key())
    assert license.key_fingerprint != key_fingerprint(public_keys[0])
    with pytest.raises(BadSignature):
        load_license(text, public_keys)


def test_no_trusted_keys_cannot_verify(license_text):
    with pytest.raises(BadSignature, match="no trusted public keys are configured"):
        load_license(license_text, [])


def test_missing_signature_line_is_malformed(public_keys, license_text):
    unsigned = "".join(line for line in license_text.splitlines(True) if "Signature" not in line)

    with pytest.raises(MalformedLicense) as caught:
        load_license(unsigned, public_keys)
    assert caught.value.state == "malformed"
    assert str(caught.value) == "License file is malformed: it has no Signature line."


def test_two_signature_lines_are_malformed(public_keys, license_text):
    signature_line = license_text.splitlines()[-1]
    text = f"{signature_line}\n{license_text}"

    with pytest.raises(
        MalformedLicense, match=r"line 11: Signature appears twice \(first on line 1\)"
    ):
        load_license(text, public_keys)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param("QUJD=", id="bad-padding"),
        pytest.param(base64.b64encode(bytes(63)).decode(), id="63-bytes"),
        pytest.param(base64.b64encode(bytes(65)).decode(), id="65-bytes"),
        pytest.param("\u00e9" * 88, id="non-ascii"),
    ],
)
def test_undecodable_signature_is_a_bad_signature(signature, public_keys, license_text):
    body = license_text.rsplit("Signature:", 1)[0]

    with pytest.raises(BadSignature, match="does not hold a base64-encoded Ed25519 signature"):
        load_license(f"{body}Signature: {signature}\n", public_keys)


def test_signature_is_checked_before_anything_is_parsed(public_keys):
    junk = (
        "not a key value line\nMAX_USERS: lots\nSignature: " + base64.b64encode(bytes(64)).decode()
    )

    with pytest.raises(BadSignature):
        load_license(junk, public_keys)


# Parsing signed text


def test_signed_line_without_colon_is_malformed(private_key, public_keys):
    text = sign_raw(
        "Issued: 2026-01-01\nExpires: Never\nHost-Name: *\n\nNo colon here\n", private_key
    )

    with pytest.raises(MalformedLicense) as caught:
        load_license(text, public_keys)
    assert caught.value.line == 5
    assert str(caught.value) == (
        "License file is malformed: line 5: expected 'Key: Value', found 'No colon here'."
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Max Users: 5", "the key 'Max Users' contains a space"),
        (": 5", "the line has no key before ':'"),
        ("\tMAX_USERS: 5", "the key '\\tMAX_USERS' contains a space"),
    ],
)
def test_bad_key_is_malformed_with_line_number(line, message, private_key, public_keys):
    text = sign_raw(f"Issued: 2026-01-01\nExpires: Never\nHost-Name: *\n{line}\n", private_key)

    with pytest.raises(MalformedLicense) as caught:
        load_license(text, public_keys)
    assert str(caught.value) == f"License file is malformed: line 4: {message}."


def test_value_is_split_on_first_colon_and_stripped(private_key, public_keys):
    body = "Issued:2026-01-01\nExpires:   Never\nHost-Name: a.example.com:8443\nNote: a: b \n"

    license = load_license(sign_raw(body, private_key), public_keys)

    assert license.fields == (
        ("Issued", "2026-01-01"),
        ("Expires", "Never"),
        ("Host-Name", "a.example.com:8443"),
        ("Note", "a: b"),
    )


def test_duplicate_key_is_malformed(private_key, public_keys):
    body = "".join(f"{key}: {value}\n" for key, value in FIELDS.items()) + "MAX_USERS: 500\n"

    with pytest.raises(MalformedLicense) as caught:
        load_license(sign_raw(body, private_key), public_keys)
    assert caught.value.line == 10
    assert "line 10: MAX_USERS appears twice (first on line 6)" in str(caught.value)


@pytest.mark.parametrize("key", ["Issued", "Expires", "Host-Name"])
def test_missing_required_key_is_malformed(key, private_key, public_keys):
    body = "".join(f"{k}: {v}\n" for k, v in FIELDS.items() if k != key)

    with pytest.raises(
        MalformedLicense, match=f"^License file is malformed: it has no {key} line"
    ):
        load_license(sign_raw(body, private_key), public_keys)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Issued", "2026-02-30"),
        ("Issued", "31/12/2026"),
        ("Issued", "20260101"),
        ("Issued", "2026-W01-1"),
        ("Issued", "Never"),
        ("Issued", ""),
        ("Issued", "\u0662\u0660\u0662\u0666-01-01"),
        ("Expires", "2026-13-01"),
        ("Expires", "Nevermore"),
        ("Expires", "2026-12-31T00:00"),
    ],
)
def test_bad_date_is_malformed(key, value, private_key, public_keys):
    body = "".join(f"{k}: {value if k == key else v}\n" for k, v in FIELDS.items())
    line = list(FIELDS).index(key) + 1

    with pytest.raises(
        MalformedLicense, match=f"line {line}: {key} must be a date like"
    ) as caught:
        load_license(sign_raw(body, private_key), public_keys)
    assert caught.value.line == line


@pytest.mark.parametrize("value", ["Never", "never", "NEVER"])
def test_expires_never(value, private_key, public_keys):
    license = load_license(sign_text(fields_with(Expires=value), private_key), public_keys)

    assert license.expires is None
    assert not license.expired_on(date(9999, 12, 31))


def test_expiry_day_itself_is_still_valid(public_keys, license_text):
    license = load_license(license_text, public_keys)

    assert not license.expired_on(date(2026, 1, 1))
    assert not license.expired_on(date(2026, 12, 31))
    assert license.expired_on(date(2027, 1, 1))


# Limits


@pytest.mark.parametrize("value", ["Unlimited", "unlimited", "UNLIMITED"])
def test_unlimited_is_none_never_a_number(value, private_key, public_keys):
    license = load_license(sign_text(fields_with(MAX_USERS=value), private_key), public_keys)

    assert license.limit("MAX_USERS") is None
    assert license.pool_limit("intranet") is None


def test_limits(public_keys, license_text):
    license = load_license(license_text, public_keys)

    assert license.limit("MAX_USERS") == 50
    assert type(license.limit("MAX_USERS")) is int
    assert license.limit("MAX_EXTRANET_USERS") is None
    assert license.limit("MAX_PUBLISH_LOCATIONS") == 0
    assert license.limit("MAX_EFORMS_PROJECTS") == 0
    assert {pool: license.pool_limit(pool) for pool in POOLS} == {
        "intranet": 50,
        "extranet": None,
        "readonly": 10,
    }
    assert set(POOL_KEYS) == set(POOLS)


def test_zero_and_leading_zeros_are_numbers(private_key, public_keys):
    text = sign_text(fields_with(MAX_USERS="0", MAX_READONLY_USERS="007"), private_key)
    license = load_license(text, public_keys)

    assert license.limit("MAX_USERS") == 0
    assert license.limit("MAX_READONLY_USERS") == 7


def test_limit_of_unknown_pool_or_non_limit_key_is_an_error(public_keys, license_text):
    license = load_license(license_text, public_keys)

    with pytest.raises(ValueError, match="unknown pool"):
        license.pool_limit("guests")
    with pytest.raises(ValueError, match="not a limit"):
        license.limit("CRM_ALLOWED")


@pytest.mark.parametrize(
    "value",
    ["10.5", "-3", "+5", "\u0661\u0660", "\uff15", "1_000", "1e3", "5 5", "ten", "", "Infinity"],
)
def test_bad_limit_is_malformed_with_line_number(value, private_key, public_keys):
    body = "".join(f"{k}: {value if k == 'MAX_USERS' else v}\n" for k, v in FIELDS.items())

    with pytest.raises(MalformedLicense) as caught:
        load_license(sign_raw(body, private_key), public_keys)
    assert caught.value.line == 6
    assert str(caught.value) == (
        f"License file is malformed: line 6: "
        f"MAX_USERS must be a whole number or Unlimited, not {value!r}."
    )


def test_huge_limit_is_malformed_not_a_crash(private_key, public_keys):
    body = "".join(f"{k}: {'9' * 5000 if k == 'MAX_USERS' else v}\n" for k, v in FIELDS.items())

    with pytest.raises(MalformedLicense, match="line 6: MAX_USERS is too large"):
        load_license(sign_raw(body, private_key), public_keys)


# Host names


@pytest.mark.parametrize(
    ("patterns", "site", "expected"),
    [
        ("*", "intranet.example.com", True),
        ("*", "intranet.example.com:8443", True),
        ("*", "localhost", True),
        ("*", "", True),
        ("intranet.example.com", "intranet.example.com", True),
        ("intranet.example.com", "intranet.example.com:443", True),
        ("intranet.example.com:443", "intranet.example.com", True),
        ("intranet.example.com", "intranet.example.com:8443", False),
        ("intranet.example.com:8443", "intranet.example.com:8443", True),
        ("intranet.example.com:8443", "intranet.example.com", False),
        ("intranet.example.com:*", "intranet.example.com:8443", True),
        ("intranet.example.com:*", "intranet.example.com", True),
        ("intranet.example.com:*", "other.example.com:8443", False),
        ("intranet.example.com", "intranet.example.org", False),
        ("intranet.example.com", "example.com", False),
        ("example.com", "intranet.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "intranet.example.com:443", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "a.example.org", False),
        ("*.example.com", "a.example.com:8443", False),
        ("*.example.com:443", "a.example.com", True),
        ("*.example.com:443", "a.example.com:8080", False),
        ("*.example.com:*", "a.example.com:8080", True),
        ("intranet.*.com", "intranet.example.com", True),
        ("*:8443", "anything.example.com:8443", True),
        ("*:8443", "anything.example.com", False),
        ("*:*", "anything.example.com:1", True),
        ("INTRANET.Example.COM", "intranet.example.com", True),
        ("*.example.com", "Intranet.EXAMPLE.com", True),
        ("intranet.example.com.", "intranet.example.com", True),
        ("a.example.com b.example.com:8443", "b.example.com:8443", True),
        ("a.example.com b.example.com:8443", "b.example.com", False),
        ("a.example.com  *.example.org", "x.example.org", True),
        ("a.example.com *.example.org", "x.example.net", False),
        ("intranet.example.com", "", False),
        ("*.example.com *:*", "", False),
        ("", "intranet.example.com", False),
        ("intranet.example.com", " intranet.example.com ", True),
        ("intranet.example.com", "intranet.example.com:https", False),
        ("foo*.example.com", "foo1.example.com", False),
        ("intranet.example.com:0x1bb", "intranet.example.com", False),
    ],
)
def test_host_matches(patterns, site, expected):
    assert host_matches(patterns, site) is expected


@pytest.mark.parametrize(
    "host_name",
    [
        "",
        "foo*.example.com",
        "intranet.example.com:99999",
        "intranet.example.com:https",
        "intranet..example.com",
        "a.example.com :443",
    ],
)
def test_bad_host_name_is_malformed(host_name, private_key, public_keys):
    body = "".join(f"{k}: {host_name if k == 'Host-Name' else v}\n" for k, v in FIELDS.items())

    with pytest.raises(MalformedLicense, match="^License file is malformed: line 3: Host-Name"):
        load_license(sign_raw(body, private_key), public_keys)


def test_license_matches_host(private_key, public_keys):
    text = sign_text(fields_with(Host_Name="*.example.com intranet.test:8443"), private_key)
    license = load_license(text, public_keys)

    assert license.matches_host("intranet.example.com")
    assert license.matches_host("intranet.test:8443")
    assert not license.matches_host("intranet.test")


# evaluate()


def test_evaluate_valid(public_keys, license_text):
    status = evaluate(license_text, public_keys, SITE, TODAY)

    assert status == Status("valid", "License is valid.", load_license(license_text, public_keys))
    assert status.valid


def test_evaluate_valid_on_expiry_day_and_expired_the_day_after(public_keys, license_text):
    last_day = evaluate(license_text, public_keys, SITE, date(2026, 12, 31))
    day_after = evaluate(license_text, public_keys, SITE, date(2027, 1, 1))

    assert last_day.state == "valid"
    assert day_after.state == "expired"
    assert day_after.sentence == "License expired on 2026-12-31."
    assert not day_after.valid
    assert day_after.license.expires == date(2026, 12, 31)


def test_evaluate_never_expires(private_key, public_keys):
    text = sign_text(fields_with(Expires="Never"), private_key)

    assert evaluate(text, public_keys, SITE, date(9999, 12, 31)).valid


def test_evaluate_bad_signature(public_keys, license_text):
    status = evaluate(license_text.replace("50", "51"), public_keys, SITE, TODAY)

    assert status == Status("bad_signature", BAD_SIGNATURE_SENTENCE)
    assert status.sentence == (
        "License signature is not valid: "
        "the file was changed or was not issued for this installation."
    )
    assert not status.valid


def test_evaluate_wrong_host(private_key, public_keys):
    text = sign_text(fields_with(Host_Name="*.example.com"), private_key)

    status = evaluate(text, public_keys, "intranet.test", TODAY)

    assert status.state == "wrong_host"
    assert status.sentence == (
        "License is for host(s) *.example.com, not for this site (intranet.test)."
    )
    assert status.license.host_name == "*.example.com"
    assert not status.valid


def test_evaluate_wrong_host_without_site_name(public_keys, license_text):
    status = evaluate(license_text, public_keys, "", TODAY)

    assert status.state == "wrong_host"
    assert status.sentence.endswith("not for this site (no site name is set).")


def test_evaluate_reports_wrong_host_before_expiry(public_keys, license_text):
    assert evaluate(license_text, public_keys, "other.test", date(2030, 1, 1)).state == (
        "wrong_host"
    )


def test_evaluate_malformed(private_key, public_keys):
    body = "".join(f"{k}: {'10.5' if k == 'MAX_USERS' else v}\n" for k, v in FIELDS.items())

    status = evaluate(sign_raw(body, private_key), public_keys, SITE, TODAY)

    assert status == Status(
        "malformed",
        "License file is malformed: line 6: MAX_USERS must be a whole number or Unlimited, "
        "not '10.5'.",
    )


@pytest.mark.parametrize("text", [None, "", "  \r\n\n\t", "\ufeff", b""])
def test_evaluate_none(text, public_keys):
    status = evaluate(text, public_keys, SITE, TODAY)

    assert status == Status("none", "No license is installed.")
    assert not status.valid


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "\x00\x01\x02\x7f\ufffd",
        "\ud800 lone surrogate\nSignature: " + "A" * 86 + "==",
        "::::\n:\n",
        "Signature:",
        "Signature: ====",
        "Signature: " + "A" * 86 + "==",
        "\n" * 10_000 + "Signature: x",
        "Signature: a\nSignature: b",
        "\u2028Signature: \u2029",
        b"\xff\xfe\x00junk",
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
    ],
)
def test_evaluate_never_raises_for_garbage(text, public_keys):
    status = evaluate(text, public_keys, SITE, TODAY)

    assert status.state in {"malformed", "bad_signature"}
    assert status.sentence.endswith(".")
    assert status.license is None


@pytest.mark.parametrize(
    "body",
    ["junk\n", "\x00: \x01\n", "Signature-ish junk: \ud7ff\n", "# only a comment\n", "\n"],
)
def test_evaluate_signed_garbage_is_malformed(body, private_key, public_keys):
    status = evaluate(sign_raw(body, private_key), public_keys, SITE, TODAY)

    assert status.state == "malformed"
    assert status.sentence.startswith("License file is malformed: ")


def test_every_state_is_listed():
    assert set(STATES) == {"valid", "expired", "bad_signature", "wrong_host", "malformed", "none"}


# sign_text refuses what would not load


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (fields_with(MAX_USERS="-3"), "MAX_USERS must be a whole number or Unlimited, not '-3'"),
        (fields_with(Expires=None), "it has no Expires line"),
        (fields_with(Issued="soon"), "Issued must be a date like 2026-12-31, not 'soon'"),
        ({**FIELDS, "Signature": "x"}, "'Signature' cannot be used as a key"),
        ({**FIELDS, "A:B": "x"}, "'A:B' cannot be used as a key"),
        ({**FIELDS, "#A": "x"}, "'#A' cannot be used as a key"),
        ({**FIELDS, "A B": "x"}, "the key 'A B' contains a space"),
        ({**FIELDS, "Note": "one\ntwo"}, "the value of Note contains a line break"),
        ([*FIELDS.items(), ("MAX_USERS", "5")], "MAX_USERS appears twice"),
    ],
)
def test_sign_text_refuses_fields_that_would_not_load(fields, message, private_key):
    with pytest.raises(MalformedLicense) as caught:
        sign_text(fields, private_key)
    assert str(caught.value) == f"Cannot sign the license: {message}."


def test_sign_text_writes_values_stripped_and_as_text(private_key, public_keys):
    text = sign_text(fields_with(MAX_USERS=25, Registered_To="  Example Ltd  "), private_key)
    license = load_license(text, public_keys)

    assert "MAX_USERS: 25\n" in text
    assert license.limit("MAX_USERS") == 25
    assert license.registered_to == "Example Ltd"


# Keys


def test_generate_key_pair_round_trip(tmp_path):
    private_pem, public_pem = generate_key_pair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    (tmp_path / "vendor.pem").write_bytes(private_pem)
    (tmp_path / "vendor.pub").write_bytes(public_pem)

    for private in (private_pem, private_pem.decode(), tmp_path / "vendor.pem"):
        text = sign_text(FIELDS, load_private_key(private))
        for public in (public_pem, public_pem.decode(), tmp_path / "vendor.pub"):
            keys = load_public_keys(public)
            assert len(keys) == 1
            assert load_license(text, keys).fields == tuple(FIELDS.items())
    assert len(load_public_keys(str(tmp_path / "vendor.pub"))) == 1


def test_load_public_keys_from_several_sources(tmp_path, private_key):
    _, first = generate_key_pair()
    _, second = generate_key_pair()
    (tmp_path / "both.pub").write_bytes(first + b"\n" + second)

    loaded = private_key.public_key()

    keys = load_public_keys([first.decode(), tmp_path / "both.pub", loaded])

    assert len(keys) == 4
    assert all(isinstance(key, Ed25519PublicKey) for key in keys)
    assert [key_fingerprint(key) for key in keys[:3]] == [
        key_fingerprint(key) for key in load_public_keys([first, first, second])
    ]
    assert keys[3] is loaded
    assert load_public_keys(None) == []
    assert load_public_keys([]) == []


# Keys are made by the test, not at import: each case is a function returning the value.
@pytest.mark.parametrize(
    ("make_value", "message"),
    [
        (lambda: "", "^No private key was given.$"),
        (
            lambda: "missing.pem",
            "^Cannot read the private key file missing.pem: No such file or directory.$",
        ),
        (
            lambda: b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
            "^Cannot use the private key given: it is not a PEM private key.$",
        ),
        (
            lambda: pem_of(ec_key()),
            "^Cannot use the private key given: it is not an Ed25519 key.$",
        ),
        (
            lambda: pem_of(Ed25519PrivateKey.generate(), password=b"secret"),
            "it is protected by a password; store it unencrypted.$",
        ),
        (lambda: 42, "^A private key must be PEM text or the path of a PEM file, not int.$"),
    ],
)
def test_load_private_key_errors(make_value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(KeyFileError, match=message) as caught:
        load_private_key(make_value())
    assert isinstance(caught.value, LicenseFileError)
    assert caught.value.state == "key"


def test_load_private_key_file_that_is_not_a_key(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")

    with pytest.raises(KeyFileError) as caught:
        load_private_key(path)
    assert (
        str(caught.value)
        == f"Cannot use the private key file {path}: it is not a PEM private key."
    )


@pytest.mark.parametrize(
    ("make_value", "message"),
    [
        (lambda: "missing.pub", "^Cannot read the public key file missing.pub: "),
        (
            lambda: generate_key_pair()[0],
            "^Cannot use the public key given: it holds a private key; "
            "give the public key instead.$",
        ),
        (lambda: pem_of(ec_key(), public=True), "it is not an Ed25519 key.$"),
        (
            lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "it is not a PEM public key.$",
        ),
        (lambda: b"-----BEGIN CERTIFICATE-----\n", "it is not a PEM public key.$"),
        (lambda: [b""], "^No public key was given.$"),
        (
            lambda: [object()],
            "^A public key must be PEM text or the path of a PEM file, not object.$",
        ),
    ],
)
def test_load_public_keys_errors(make_value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(KeyFileError, match=message):
        load_public_keys(make_value())


def test_license_is_a_frozen_value(public_keys, license_text):
    license = load_license(license_text, public_keys)

    with pytest.raises(AttributeError):
        license.text = "changed"
    assert isinstance(license, License)


def test_a_limit_beyond_the_counters_range_is_malformed(private_key, public_keys):
    from intranet_licenses.license_file import MAX_LIMIT

    text = sign_text(fields_with(MAX_USERS=str(MAX_LIMIT)), private_key)
    assert load_license(text, public_keys).limit("MAX_USERS") == MAX_LIMIT
    too_big = dict(fields_with(MAX_USERS="99999999999999999999"))
    body = "".join(f"{key}: {value}\n" for key, value in too_big.items())
    with pytest.raises(MalformedLicense, match="write Unlimited instead"):
        load_license(sign_raw(body, private_key), public_keys)
