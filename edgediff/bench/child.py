"""Running Python in a child process, so its peak memory and its crashes are its own."""

from __future__ import annotations

import subprocess
import sys

from edgediff.errors import EdgediffError


def run_python(args: list[str], what: str) -> str:
    """`python ARGS` in a child; its stdout, or an error naming `what` and its last stderr line."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EdgediffError(f"{what} failed: {last}")
    return proc.stdout
