"""Print the shape of the code: lines per package, the longest functions, where defaults live.

Run before and after a restructuring (`python scripts/measure_structure.py [ROOT]`) and compare.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from pathlib import Path

# A default written as a literal: `steps=8`, `default=3.0`, `"guidance": 3`, `STEPS = 8` ...
_DEFAULT_LITERAL = re.compile(
    r"(?i)(steps|guidance|guidance_scale|cfg)\w*\"?\s*(:\s*[\w.]+\s*)?[:=]\s*(8|3|3\.0)f?\b(?!\.\d)"
    r"|\?\s*request->steps\s*:\s*8\b"
)
_CLICK_DEFAULT = re.compile(r"--(steps|guidance)\b.*default=(8|3|3\.0)\b")


def lines_per_package(root: Path) -> Counter:
    """Non-blank lines of Python per top-level package of edgediff."""
    counts: Counter = Counter()
    for path in sorted((root / "edgediff").rglob("*.py")):
        parts = path.relative_to(root / "edgediff").parts
        package = parts[0] if len(parts) > 1 else "(top)"
        counts[package] += sum(1 for line in path.read_text().splitlines() if line.strip())
    return counts


def longest_functions(root: Path, top: int = 10) -> list[tuple[int, str]]:
    """The `top` longest functions by line span, as (lines, qualified name)."""
    found = []
    for path in sorted((root / "edgediff").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = node.end_lineno - node.lineno + 1
                found.append((span, f"{path.relative_to(root)}:{node.name}"))
    return sorted(found, reverse=True)[:top]


def default_sites(root: Path) -> list[str]:
    """Places outside tests where steps 8 or guidance 3 is written as a literal."""
    sites = []
    paths = [*(root / "edgediff").rglob("*.py")]
    for folder in ("capi", "include"):
        paths += [p for p in (root / folder).rglob("*") if p.suffix in (".c", ".h", ".hpp")]
    for path in sorted(paths):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _DEFAULT_LITERAL.search(line) or _CLICK_DEFAULT.search(line):
                sites.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return sites


def main() -> None:
    """Print the three measures for the tree at argv[1] (default: this checkout)."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    packages = lines_per_package(root)
    print("lines per package (non-blank):")
    for package, count in sorted(packages.items(), key=lambda item: -item[1]):
        print(f"  {package:<12} {count:>6}")
    print(f"  {'total':<12} {sum(packages.values()):>6}")
    print("longest functions:")
    for span, name in longest_functions(root):
        print(f"  {span:>4}  {name}")
    sites = default_sites(root)
    print(f"places a default (steps 8, guidance 3) is written: {len(sites)}")
    for site in sites:
        print(f"  {site}")


if __name__ == "__main__":
    main()
