"""A throw-away OpenLDAP slapd on loopback for the directory tests (Debian's slapd package).

Each server has its own cn=config (made with slapadd), the core, cosine, inetorgperson and
nis schemas plus the project's own AD-like schema (tests/ldap/adlike.ldif), one mdb
database under a temporary folder, and listens on ``ldap://127.0.0.1:<free port>``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import ldap3

SUFFIX = "dc=licenses,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "slapd-test-secret"
SCHEMA_DIR = Path("/etc/ldap/schema")
OWN_SCHEMA = Path(__file__).parent / "ldap" / "adlike.ldif"
MODULE_DIR = Path("/usr/lib/ldap")


def slapd_binary() -> str | None:
    found = shutil.which("slapd")
    if found:
        return found
    return "/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config_ldif(
    folder: Path, schemas: list[Path], suffix: str = SUFFIX, max_size: int = 100 * 2**20
) -> str:
    admin_dn = f"cn=admin,{suffix}"
    parts = [
        f"dn: cn=config\nobjectClass: olcGlobal\ncn: config\nolcPidFile: {folder / 'slapd.pid'}\n",
    ]
    if (MODULE_DIR / "back_mdb.so").exists():
        parts.append(
            "dn: cn=module{0},cn=config\nobjectClass: olcModuleList\ncn: module{0}\n"
            f"olcModulePath: {MODULE_DIR}\nolcModuleLoad: back_mdb\n"
        )
    parts.append("dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n")
    for schema in schemas:
        text = schema.read_text()
        parts.append(text.strip() + "\n")
    parts.append(
        "dn: olcDatabase={-1}frontend,cn=config\nobjectClass: olcDatabaseConfig\n"
        "objectClass: olcFrontendConfig\nolcDatabase: {-1}frontend\nolcSizeLimit: 1000\n"
    )
    parts.append(
        "dn: olcDatabase={0}config,cn=config\nobjectClass: olcDatabaseConfig\n"
        "olcDatabase: {0}config\nolcAccess: {0}to * by * none\n"
    )
    parts.append(
        "dn: olcDatabase={1}mdb,cn=config\nobjectClass: olcDatabaseConfig\n"
        "objectClass: olcMdbConfig\nolcDatabase: {1}mdb\n"
        f"olcSuffix: {suffix}\nolcRootDN: {admin_dn}\nolcRootPW: {ADMIN_PASSWORD}\n"
        f"olcDbDirectory: {folder / 'data'}\nolcDbMaxSize: {max_size}\n"
        "olcAccess: {0}to * by dn.exact=" + admin_dn + " manage by * none\n"
    )
    return "\n".join(parts)


class Slapd:
    """One slapd process; ``start()``, ``stop()``, and ``connection()`` as the admin."""

    def __init__(
        self,
        folder: Path,
        *,
        extra_schemas: list[Path] | None = None,
        suffix: str = SUFFIX,
        add_suffix: bool = True,
        max_size: int = 100 * 2**20,
    ):
        self.folder = Path(folder)
        #: The mdb map size in bytes (a sparse file; the benchmarks load 100,000 people).
        self.max_size = max_size
        self.suffix = suffix
        self.admin_dn = f"cn=admin,{suffix}"
        self.add_suffix = add_suffix
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.schemas = [
            SCHEMA_DIR / "core.ldif",
            SCHEMA_DIR / "cosine.ldif",
            SCHEMA_DIR / "inetorgperson.ldif",
            SCHEMA_DIR / "nis.ldif",
            *(extra_schemas or []),
            OWN_SCHEMA,
        ]
        self._configured = False

    def _configure(self) -> None:
        binary = slapd_binary()
        config_dir = self.folder / "slapd.d"
        config_dir.mkdir(parents=True)
        (self.folder / "data").mkdir()
        ldif = self.folder / "config.ldif"
        ldif.write_text(_config_ldif(self.folder, self.schemas, self.suffix, self.max_size))
        slapadd = [binary, "-T", "add", "-n", "0", "-F", str(config_dir), "-l", str(ldif)]
        done = subprocess.run(slapadd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"slapadd of cn=config failed: {done.stderr or done.stdout}")
        self._configured = True

    def load_offline(self, ldif: Path) -> None:
        """Load entries with slapadd before the first start (fast: no protocol, no checks).

        The LDIF must hold the suffix entry itself; slapadd adds entryUUID and the other
        operational attributes as the server would.
        """
        if self.process is not None:
            raise RuntimeError("load_offline() is for a server that has not started yet")
        if not self._configured:
            self._configure()
        slapadd = [slapd_binary(), "-T", "add", "-q", "-b", self.suffix,
                   "-F", str(self.folder / "slapd.d"), "-l", str(ldif)]  # fmt: skip
        done = subprocess.run(slapadd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"slapadd of {ldif} failed: {done.stderr or done.stdout}")

    def start(self) -> Slapd:
        if not self._configured:
            self._configure()
        self.process = subprocess.Popen(
            [
                slapd_binary(),
                "-d",
                "0",
                "-F",
                str(self.folder / "slapd.d"),
                "-h",
                f"{self.url}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.process.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("slapd did not answer on loopback within 15 seconds")
        if self.add_suffix and not self._has_suffix():
            conn = self.connection()
            dc = self.suffix.split(",")[0].split("=", 1)[1]
            conn.add(self.suffix, ["dcObject", "organization"], {"dc": dc, "o": dc})
            conn.unbind()
        return self

    def _has_suffix(self) -> bool:
        conn = self.connection()
        found = conn.search(self.suffix, "(objectClass=*)", search_scope=ldap3.BASE)
        conn.unbind()
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def connection(self) -> ldap3.Connection:
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=2)
        return ldap3.Connection(server, self.admin_dn, ADMIN_PASSWORD, auto_bind=True)


class Directory:
    """A subtree of its own for one test: add, change and remove people in it."""

    def __init__(self, server: Slapd):
        self.server = server
        self.base_dn = f"ou=t{uuid.uuid4().hex[:10]},{SUFFIX}"
        self.conn = server.connection()
        self._check(self.conn.add(self.base_dn, ["organizationalUnit"]))

    def _check(self, ok: bool) -> None:
        if not ok:
            raise RuntimeError(f"LDAP write failed: {self.conn.result}")

    def reconnect(self) -> None:
        self.conn = self.server.connection()

    def add_ou(self, name: str) -> str:
        dn = f"ou={name},{self.base_dn}"
        self._check(self.conn.add(dn, ["organizationalUnit"]))
        return dn

    def add_group(self, name: str, members: list[str]) -> str:
        dn = f"cn={name},{self.base_dn}"
        self._check(self.conn.add(dn, ["groupOfNames"], {"member": members}))
        return dn

    def add_ad_user(
        self,
        username: str,
        *,
        first: str | None = None,
        surname: str = "Person",
        mail: list[str] | str | None = None,
        disabled: bool = False,
        parent: str | None = None,
        guid: uuid.UUID | None = None,
        **extra,
    ) -> str:
        """An Active Directory-style person (objectGUID, sAMAccountName, userAccountControl)."""
        first = first or username.capitalize()
        dn = f"cn={first} {surname} {username},{parent or self.base_dn}"
        attrs = {
            "cn": f"{first} {surname}",
            "sn": surname,
            "givenName": first,
            "sAMAccountName": username,
            "userAccountControl": str(514 if disabled else 512),
            "objectGUID": (guid or uuid.uuid4()).bytes_le,
            "mail": mail if mail is not None else f"{username}@example.com",
            **extra,
        }
        self._check(self.conn.add(dn, ["top", "user"], attrs))
        return dn

    def add_posix_user(self, uid: str, *, first: str | None = None, surname: str = "Person"):
        """An OpenLDAP-style person (uid, entryUUID given by the server)."""
        dn = f"uid={uid},{self.base_dn}"
        attrs = {
            "cn": f"{first or uid.capitalize()} {surname}",
            "sn": surname,
            "givenName": first or uid.capitalize(),
            "mail": f"{uid}@example.com",
        }
        self._check(self.conn.add(dn, ["inetOrgPerson"], attrs))
        return dn

    def set(self, dn: str, **values) -> None:
        changes = {name: [(ldap3.MODIFY_REPLACE, [value])] for name, value in values.items()}
        self._check(self.conn.modify(dn, changes))

    def disable(self, dn: str, disabled: bool = True) -> None:
        self.set(dn, userAccountControl=str(514 if disabled else 512))

    def remove(self, dn: str) -> None:
        self._check(self.conn.delete(dn))

    def rename(self, dn: str, new_rdn: str) -> str:
        self._check(self.conn.modify_dn(dn, new_rdn))
        return f"{new_rdn},{dn.split(',', 1)[1]}"
