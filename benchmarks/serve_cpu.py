"""What serving costs and buys on this machine: the Python API, `edgediff serve`, and
`edgediff serve --ray --replicas 2`, side by side on the shipped model, in one run.

At each concurrency C, C clients each make requests of one image, one after another, until
--requests are done: for the Python API, C threads calling one loaded Pipeline; for the
servers, C HTTP clients (benchmarks/serve_load.py). Prints images/s and latency per level, and
the serving overhead at concurrency 1 as a ratio of the Python API's latency. The clients run
on the same cores as the server: on a 2-core machine their HTTP and base64 work is part of what
is measured.

    python benchmarks/serve_cpu.py [--requests 64] [--concurrency 1,4,16] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import concurrency_list, payload_maker, percentile, run_level, wait_healthy

PROMPT = "a big red circle on the left"


def python_level(pipe: Any, concurrency: int, count: int) -> dict[str, Any]:
    """`count` one-image calls of one Pipeline from `concurrency` threads."""
    lock = threading.Lock()
    indices = iter(range(count))
    latencies: list[float] = []

    def client() -> None:
        while True:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            start = time.perf_counter()
            pipe(PROMPT, seed=1000 + i)
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {
        "images_per_s": count / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "batch_mean": 1.0,
    }


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_levels(args: list[str], levels: list[int], count: int) -> list[dict[str, Any]]:
    """Start `edgediff serve ARGS`, measure each level, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "edgediff.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        problem = wait_healthy(url, 180)
        if problem:
            raise SystemExit(f"{' '.join(args) or 'serve'}: {problem}")
        payload_for = payload_maker("openai", PROMPT, 1, None, 1000)
        run_level(url, 2, 8, payload_for, 120)  # warm-up: sessions, first-shape allocations
        return [run_level(url, c, count, payload_for, 120) for c in levels]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="images per level")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 4, 16])
    parser.add_argument("--no-ray", action="store_true", help="skip serve --ray")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be >= 1")

    from edgediff.runtime import Pipeline

    results: dict[str, list[dict[str, Any]]] = {}
    # The servers' ONNX Runtime settings (ModelChoice.backend_options), so the ratio below is
    # what HTTP and batching cost; ORT's defaults (spinning threads) are shown beside them.
    for name, options in (("Python API", {"spin": False}), ("Python API, ORT defaults", None)):
        with Pipeline.load(backend_options=options) as pipe:
            python_level(pipe, 2, 8)  # warm-up
            results[name] = [python_level(pipe, c, args.requests) for c in args.concurrency]
    results["edgediff serve"] = server_levels([], args.concurrency, args.requests)
    if not args.no_ray:
        ray_args = ["--ray", "--replicas", "2"]
        results["edgediff serve --ray --replicas 2"] = server_levels(
            ray_args, args.concurrency, args.requests
        )

    cores = os.cpu_count()
    print(f"shipped model, ORT CPU, {cores} cores, {args.requests} one-image requests per level")
    print(f"{'':34}{'clients':>8}{'img/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'img/call':>10}")
    for name, rows in results.items():
        for c, row in zip(args.concurrency, rows, strict=True):
            batch = row.get("batch_mean")
            print(
                f"{name:34}{c:>8}{row['images_per_s']:>9.1f}{row['p50_ms']:>9.1f}"
                f"{row['p95_ms']:>9.1f}{'n/a' if batch is None else f'{batch:.2f}':>10}"
            )
    base = results["Python API"][0]["p50_ms"]
    for name, rows in results.items():
        if name.startswith("edgediff serve") and args.concurrency[0] == 1:
            ratio = rows[0]["p50_ms"] / base
            print(f"{name}: p50 latency at 1 client = {ratio:.2f}x the Python API's")


if __name__ == "__main__":
    main()
