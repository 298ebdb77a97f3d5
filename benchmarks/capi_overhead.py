"""The C API's overhead over the Python API: one generation on the shipped model.

Builds libedgediff and tests/capi/capi_test with CMake (into --build), then times the same
request (prompt, the bundle's recommended steps and guidance, 64x64) through the Python API
in this process
and through the C++ wrapper in a child, alternating rounds so both see the same machine state.
Prints the medians and their ratio.

    python benchmarks/capi_overhead.py [--runs 30] [--rounds 3] [--build /tmp/edgediff-capi]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a big red circle on the left"


def build(folder: Path) -> Path:
    """Configure and build with this interpreter; the test program's path."""
    for command in (
        ["cmake", "-S", str(ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(folder), "-j2"],
    ):  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return folder / "capi_test"


def python_seconds(runs: int) -> list[float]:
    """Per-call seconds of Pipeline.__call__ + uint8 conversion (what the C path returns)."""
    from edgediff.runtime.images import to_uint8
    from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline

    pipe = Pipeline.load(DEFAULT_BUNDLE)
    to_uint8(pipe(PROMPT, seed=0, output_type="np"))  # warm-up
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        # steps and guidance unset, as the C++ Request's defaults leave them: the bundle's own
        to_uint8(pipe(PROMPT, seed=0, output_type="np"))
        seconds.append(time.perf_counter() - start)
    return seconds


def c_seconds(program: Path, runs: int) -> list[float]:
    """Per-call seconds of edgediff::Pipeline::generate in a child (one warm-up first)."""
    from edgediff.runtime.pipeline import DEFAULT_BUNDLE

    env = {**os.environ, "EDGEDIFF_PYTHON": sys.executable}
    out = subprocess.run(
        [str(program), "time", str(DEFAULT_BUNDLE), str(runs)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return [float(line) for line in out.split()]


def main() -> None:
    """Build, time both paths in alternating rounds, print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", type=Path, default=Path("/tmp/edgediff-capi"))
    args = parser.parse_args()
    program = build(args.build)
    py, c = [], []
    for _ in range(args.rounds):
        py += python_seconds(args.runs)
        c += c_seconds(program, args.runs)
    py_ms, c_ms = 1000 * statistics.median(py), 1000 * statistics.median(c)
    print(f"Python API: {py_ms:.2f} ms per image (median of {len(py)})")
    print(f"C API:      {c_ms:.2f} ms per image (median of {len(c)})")
    print(f"C / Python: {c_ms / py_ms:.3f} ({c_ms - py_ms:+.2f} ms)")


if __name__ == "__main__":
    main()
