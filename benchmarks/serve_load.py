"""Throughput and latency of a running `edgediff serve` under N concurrent clients.

For each concurrency level, sends --warmup unmeasured requests and then --requests measured
ones, spread over that many client threads (each with its own HTTP session), every request
with its own seed so no cache can help. Prints one row per level: ok / rejected (429) /
error counts, wall time, images/s, requests/s, latency percentiles of the successful
requests, and how many images the server put into each pipeline call during the level
(from the `edgediff_batch_images` histogram on /metrics, read before and after).

    edgediff serve &
    python benchmarks/serve_load.py [--url http://127.0.0.1:8000] [--concurrency 1,4,16]
        [--requests 64] [--endpoint openai|a1111] [--n 1] [--size 64x64] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

PROMPT = "a big red circle on the left"
BATCH_METRIC = "edgediff_batch_images"
PATHS = {"openai": "/v1/images/generations", "a1111": "/sdapi/v1/txt2img"}

Payload = tuple[str, dict[str, Any]]
Histogram = dict[str, Any]  # {"count": float, "sum": float, "buckets": {le: cumulative}}

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


# --- arguments -------------------------------------------------------------------------


def concurrency_list(text: str) -> list[int]:
    """Parse "1,4,16" into positive ints (argparse type)."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not levels or min(levels) <= 0:
        raise argparse.ArgumentTypeError(f"concurrency levels must be > 0: {text!r}")
    return levels


def bounded_int(text: str, minimum: int) -> int:
    """Parse an int >= minimum, or raise argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}: {value}")
    return value


def positive_int(text: str) -> int:
    """Parse an int > 0 (argparse type)."""
    return bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """Parse an int >= 0 (argparse type)."""
    return bounded_int(text, 0)


def positive_float(text: str) -> float:
    """Parse a float > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """Parse "WxH" into (width, height), both > 0 (argparse type)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) <= 0:
        raise argparse.ArgumentTypeError(f"size must be WxH with positive integers: {text!r}")
    return int(match[1]), int(match[2])


def payload_maker(
    endpoint: str, prompt: str, n: int, size: tuple[int, int] | None, seed_base: int
) -> Callable[[int], Payload]:
    """A payload_for(i) whose request i asks for seed seed_base + i."""

    def payload_for(i: int) -> Payload:
        seed = seed_base + i
        if endpoint == "openai":
            body: dict[str, Any] = {
                "prompt": prompt,
                "n": n,
                "seed": seed,
                "response_format": "b64_json",
            }
            if size:
                body["size"] = f"{size[0]}x{size[1]}"
        else:
            body = {"prompt": prompt, "negative_prompt": "", "seed": seed, "batch_size": n}
            if size:
                body["width"], body["height"] = size
        return PATHS[endpoint], body

    return payload_for


# --- /health and /metrics ----------------------------------------------------------------


def wait_healthy(url: str, timeout: float) -> str | None:
    """Poll GET /health until 200; None when ready, else a one-line reason."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        try:
            response = requests.get(f"{url}/health", timeout=max(0.5, min(5.0, left)))
            if response.status_code == 200:
                return None
            last = response.status_code
        except requests.RequestException:
            pass
        if time.monotonic() + 0.5 > deadline:
            break
        time.sleep(0.5)
    if last is None:
        return f"no edgediff server answers at {url}/health: start one with `edgediff serve`"
    return f"edgediff server at {url}/health still answers {last} after {timeout:g} s: not ready"


def parse_histogram(text: str, name: str) -> Histogram | None:
    """The histogram `name` from Prometheus text, summed over label sets; None if absent."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    seen = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match or not match[1].startswith(name + "_"):
            continue
        try:
            value = float(match[3])
        except ValueError:
            continue
        suffix = match[1][len(name) + 1 :]
        if suffix == "count":
            count += value
        elif suffix == "sum":
            total += value
        elif suffix == "bucket":
            labels = dict(_LABEL.findall(match[2] or ""))
            try:
                le = float(labels["le"])  # float() reads "+Inf" too
            except (KeyError, ValueError):
                continue
            buckets[le] = buckets.get(le, 0.0) + value
        else:
            continue
        seen = True
    return {"count": count, "sum": total, "buckets": buckets} if seen else None


def read_batches(url: str, timeout: float) -> Histogram | None:
    """The server's edgediff_batch_images histogram now; None if /metrics lacks it."""
    try:
        response = requests.get(f"{url}/metrics", timeout=timeout)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return parse_histogram(response.text, BATCH_METRIC)


def batch_delta(before: Histogram | None, after: Histogram | None) -> dict[str, Any] | None:
    """Pipeline calls, mean images per call and per-bucket counts between two readings."""
    if before is None or after is None:
        return None
    calls = after["count"] - before["count"]
    if calls < 0:  # the server restarted mid-level: the counters say nothing about it
        return None
    cumulative = {
        le: value - before["buckets"].get(le, 0.0) for le, value in after["buckets"].items()
    }
    per_bucket: dict[str, int] = {}
    previous = 0.0
    for le in sorted(cumulative):
        # Prometheus buckets are cumulative; a label is the bucket's upper bound (le)
        here = cumulative[le] - previous
        previous = cumulative[le]
        if here > 0:
            label = "+Inf" if math.isinf(le) else f"{le:g}"
            per_bucket[label] = round(here)
    mean = (after["sum"] - before["sum"]) / calls if calls > 0 else None
    return {"calls": round(calls), "mean": mean, "buckets": per_bucket}


# --- load --------------------------------------------------------------------------------


def images_in(body: Any) -> int:
    """Images in a successful response of either API."""
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return len(body["data"])
    if isinstance(body, dict) and isinstance(body.get("images"), list):
        return len(body["images"])
    raise ValueError("200 response without `data` or `images`")


def error_message(response: requests.Response) -> str:
    """A one-line description of a failed response."""
    try:
        body = response.json()
        message = body["error"]["message"] if "error" in body else body.get("detail", body)
    except (ValueError, TypeError, KeyError, AttributeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"


def drive(
    url: str,
    concurrency: int,
    requests_total: int,
    payload_for: Callable[[int], Payload],
    timeout: float,
) -> dict[str, Any]:
    """Send requests 0..requests_total-1 from `concurrency` threads; raw outcomes."""
    lock = threading.Lock()
    next_index = iter(range(requests_total))
    latencies: list[float] = []
    outcome = {"ok": 0, "rejected": 0, "errors": 0, "images": 0, "first_error": None}
    # Threads start together so the wall time covers only the run, not thread start-up
    start = threading.Barrier(concurrency + 1)

    def record(key: str, error: str | None = None) -> None:
        with lock:
            outcome[key] += 1
            if error and outcome["first_error"] is None:
                outcome["first_error"] = error

    def client() -> None:
        session = requests.Session()
        start.wait()
        while True:
            # A shared index (not a fixed share per thread) keeps every client busy to the end
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            path, body = payload_for(i)
            sent = time.perf_counter()
            try:
                response = session.post(f"{url}{path}", json=body, timeout=timeout)
                if response.status_code == 200:
                    images = images_in(response.json())
                    seconds = time.perf_counter() - sent
                    with lock:
                        latencies.append(seconds)
                        outcome["images"] += images
                    record("ok")
                elif response.status_code == 429:
                    record("rejected")
                else:
                    record("errors", error_message(response))
            except Exception as exc:  # any failure is a data point, not a reason to stop
                record("errors", f"{type(exc).__name__}: {exc}")
        session.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    outcome["wall_s"] = time.perf_counter() - began
    outcome["latencies"] = latencies
    return outcome


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_level(
    url: str,
    concurrency: int,
    requests: int,
    payload_for: Callable[[int], Payload],
    timeout: float,
) -> dict[str, Any]:
    """One measured level: `requests` requests over `concurrency` clients; the result row."""
    # `requests` (the count, named as callers expect) hides the module here: don't use it
    url = url.rstrip("/")
    before = read_batches(url, timeout)
    raw = drive(url, concurrency, requests, payload_for, timeout)
    batches = batch_delta(before, read_batches(url, timeout))
    wall = raw["wall_s"]

    def ms(q: float) -> float | None:
        value = percentile(raw["latencies"], q)
        return None if value is None else 1000 * value

    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": raw["ok"],
        "rejected": raw["rejected"],
        "errors": raw["errors"],
        "wall_s": wall,
        "images": raw["images"],
        "images_per_s": raw["images"] / wall if wall > 0 else None,
        "requests_per_s": requests / wall if wall > 0 else None,
        "p50_ms": ms(50),
        "p95_ms": ms(95),
        "p99_ms": ms(99),
        "batch_calls": None if batches is None else batches["calls"],
        "batch_mean": None if batches is None else batches["mean"],
        "batch_buckets": None if batches is None else batches["buckets"],
        "first_error": raw["first_error"],
    }


# --- output ------------------------------------------------------------------------------

COLUMNS = [
    ("conc", "concurrency", "{}"),
    ("reqs", "requests", "{}"),
    ("ok", "ok", "{}"),
    ("429", "rejected", "{}"),
    ("err", "errors", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("img/s", "images_per_s", "{:.2f}"),
    ("req/s", "requests_per_s", "{:.2f}"),
    ("p50 ms", "p50_ms", "{:.0f}"),
    ("p95 ms", "p95_ms", "{:.0f}"),
    ("p99 ms", "p99_ms", "{:.0f}"),
    ("img/batch", "batch_mean", "{:.2f}"),
]


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as an aligned table, then batch distributions and first errors."""
    cells = [[head for head, _, _ in COLUMNS]]
    for row in rows:
        cells.append(
            ["n/a" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        )
    widths = [max(len(line[col]) for line in cells) for col in range(len(COLUMNS))]
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    for row in rows:
        buckets = row["batch_buckets"]
        shown = "n/a" if buckets is None else " ".join(f"{k}:{v}" for k, v in buckets.items())
        print(f"concurrency {row['concurrency']}: batches: {shown or 'none'}")
    for row in rows:
        if row["first_error"]:
            print(f"concurrency {row['concurrency']}: first error: {row['first_error']}")


def main() -> None:
    """Wait for the server, run every concurrency level, print the rows."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Latency percentiles cover successful requests only (linear interpolation). "
        "Batch buckets are labelled by their upper bound (Prometheus `le`); "
        "img/batch is n/a when the server exposes no edgediff_batch_images metric.",
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="server base URL (default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_list,
        default=[1, 4, 16],
        help="comma list of client counts, one level each (default 1,4,16)",
    )
    parser.add_argument(
        "--requests", type=positive_int, default=64, help="measured requests per level (default 64)"
    )
    parser.add_argument(
        "--endpoint",
        choices=sorted(PATHS),
        default="openai",
        help="openai: POST /v1/images/generations; a1111: POST /sdapi/v1/txt2img",
    )
    parser.add_argument("--prompt", default=PROMPT, help="prompt of every request")
    parser.add_argument("--n", type=positive_int, default=1, help="images per request (default 1)")
    parser.add_argument(
        "--size", type=image_size, default=None, help="WxH, e.g. 64x64 (default: server's)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=4,
        help="unmeasured requests before each level (default 4)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        help="seconds to wait for /health, and per request (default 120)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = parser.parse_args()
    url = args.url.rstrip("/")

    problem = wait_healthy(url, args.timeout)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)

    rows = []
    seed = 0  # every request, warm-up included, gets a seed no other request used
    for concurrency in args.concurrency:
        if args.warmup:
            warm = payload_maker(args.endpoint, args.prompt, args.n, args.size, seed)
            drive(url, min(concurrency, args.warmup), args.warmup, warm, args.timeout)
            seed += args.warmup
        measured = payload_maker(args.endpoint, args.prompt, args.n, args.size, seed)
        rows.append(run_level(url, concurrency, args.requests, measured, args.timeout))
        seed += args.requests

    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config["size"] = None if args.size is None else f"{args.size[0]}x{args.size[1]}"
        print(json.dumps({"config": config, "rows": rows}))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
