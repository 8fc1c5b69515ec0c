"""The example hosts use only the extension's documented, public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import intranet_licenses

ROOT = Path(__file__).parent.parent
HOST_FILES = sorted((ROOT / "examples").rglob("*.py"))
README = (ROOT / "README.md").read_text(encoding="utf-8")


def imported_names(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import of intranet_licenses in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("intranet_"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("intranet_")]
    return found


@pytest.mark.parametrize("path", HOST_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_host_imports_only_public_names(path):
    for module, name in imported_names(path):
        assert module == "intranet_licenses", f"{path.name} reaches into {module}"
        assert name in intranet_licenses.__all__, f"{path.name} imports unexported {name}"


def test_every_name_the_hosts_use_is_documented_in_the_readme():
    used = {name for path in HOST_FILES for _, name in imported_names(path)}
    assert {"Licenses", "UserAdapter", "login_refusal", "last_refusal"} <= used
    for name in used:
        assert f"`{name}" in README, f"{name} is used by an example but not in README.md"
