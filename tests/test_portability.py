"""What ships to a Jetson (runtime and engines) stays Python 3.10 and architecture neutral.

JetPack 6 runs Python 3.10 on aarch64. ruff's target-version (py310, pyproject.toml) flags
3.11-only syntax in CI; these tests also check the standard-library names ruff does not know
about, and compile the code with a real Python 3.10 where one is installed.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    p
    for d in ("runtime", "engines", "graphs")
    for p in sorted((ROOT / "edgediff" / d).rglob("*.py"))
]
SHIPPED += [
    ROOT / "edgediff" / n
    for n in ("__init__.py", "capi.py", "errors.py", "cli.py", "tolerances.py")
]

# Standard-library names that appeared in 3.11 or later.
NEWER_STDLIB = re.compile(
    r"\b(tomllib|StrEnum|ExceptionGroup|TaskGroup|LiteralString|assert_never|reveal_type|"
    r"NotRequired|dataclass_transform|datetime\.UTC|typing\.Self|import Self|, Self\b)"
)
X86_ONLY = re.compile(r"x86|amd64|\bavx\d*\b|\bsse\d\b", re.IGNORECASE)


def test_ruff_checks_against_python_310():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["ruff"]["target-version"] == "py310"
    assert config["project"]["requires-python"] == ">=3.10"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_code_parses_as_310_and_uses_no_newer_stdlib(path):
    source = path.read_text()
    ast.parse(source, filename=str(path), feature_version=(3, 10))
    assert not NEWER_STDLIB.findall(source), "3.11+ standard-library names"
    if path.parent.name != "edgediff":  # the CLI's help may name x86; runtime code may not
        assert not X86_ONLY.findall(source), "x86-specific code in what ships to aarch64"


def _python310() -> str | None:
    for candidate in (
        shutil.which("python3.10"),
        *Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"),
    ):
        if (
            candidate
            and subprocess.run([str(candidate), "--version"], capture_output=True).returncode == 0
        ):
            return str(candidate)
    return None


@pytest.mark.skipif(_python310() is None, reason="no Python 3.10 interpreter on this machine")
def test_shipped_code_compiles_under_a_real_python_310():
    code = "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"
    result = subprocess.run(
        [_python310(), "-c", code, *map(str, SHIPPED)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert sys.version_info >= (3, 10)
