"""`edgediff serve`: a real server process on a loopback port, spoken to over HTTP by stock
clients (requests, the OpenAI SDK), its images compared byte for byte with `edgediff generate`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

requests = pytest.importorskip("requests", reason="the server tests need the [dev] extra")
pytest.importorskip("fastapi", reason="edgediff serve needs the [serve] extra")

from edgediff.cli import cli  # noqa: E402

OPENAI = "/v1/images/generations"
A1111 = "/sdapi/v1/txt2img"
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a big red circle on the left", "a small blue square", "a green triangle at the top")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `edgediff serve` process and its URL."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def post(self, path: str, body: dict, timeout: float = 60) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=timeout)

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=10).json()

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (every label set) in /metrics."""
        text = requests.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_until_queued(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["queued"] < count:
            assert time.monotonic() < deadline, f"the server never held {count} requests"
            time.sleep(0.005)


@contextmanager
def running(*args: str, tmp_path: Path, ready_s: float = 120) -> Iterator[Server]:
    """Start `edgediff serve ARGS` on a free port; stop it (SIGTERM) after the block."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgediff.cli", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no /health after {ready_s} s:\n{log.read_text()}"
            try:
                if requests.get(server.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The shipped model served with the defaults."""
    with running(tmp_path=tmp_path_factory.mktemp("serve")) as s:
        yield s


def generated_pngs(tmp_path: Path, *args: str) -> list[bytes]:
    """The PNG files `edgediff generate ARGS` writes, as bytes."""
    out = tmp_path / "generated.png"
    result = CliRunner().invoke(cli, ["generate", *args, "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    paths = sorted(tmp_path.glob("generated*.png"))
    return [p.read_bytes() for p in paths]


def pngs(answer: dict) -> list[bytes]:
    if "data" in answer:
        return [base64.b64decode(d["b64_json"]) for d in answer["data"]]
    return [base64.b64decode(image) for image in answer["images"]]


# ------------------------------------------------------------------------ both dialects


def test_openai_endpoint_makes_the_pngs_generate_makes(server, tmp_path):
    answer = server.post(OPENAI, {"prompt": PROMPTS[0], "seed": 11, "n": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["seed"] == 11 and isinstance(body["created"], int)
    assert pngs(body) == generated_pngs(tmp_path, PROMPTS[0], "--seed", "11", "-n", "2")


def test_a1111_endpoint_with_requests(server, tmp_path):
    body = {
        "prompt": PROMPTS[1],
        "negative_prompt": "",
        "steps": 1,
        "cfg_scale": 4.0,
        "width": 48,
        "height": 64,
        "seed": 5,
        "batch_size": 2,
        "sampler_name": "Euler a",
        "restore_faces": False,
    }
    answer = requests.post(server.url + A1111, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    expected = generated_pngs(
        tmp_path, PROMPTS[1], "--seed", "5", "-n", "2", "--steps", "1", "--guidance", "4",
        "--width", "48", "--height", "64",
    )  # fmt: skip
    assert pngs(reply) == expected
    info = json.loads(reply["info"])
    assert info["seed"] == 5 and info["all_seeds"] == [5, 5] and info["steps"] == 1
    assert info["ignored_fields"] == ["restore_faces"]
    assert reply["parameters"]["cfg_scale"] == 4.0 and reply["parameters"]["batch_size"] == 2


def test_a1111_seed_minus_one_draws_a_seed_it_reports(server):
    reply = server.post(A1111, {"prompt": PROMPTS[2], "seed": -1}).json()
    seed = json.loads(reply["info"])["seed"]
    assert 0 <= seed < 2**31
    again = server.post(A1111, {"prompt": PROMPTS[2], "seed": seed}).json()
    assert pngs(again) == pngs(reply)


def test_a1111_img2img_edits_as_generate_does(server, tmp_path):
    from PIL import Image

    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    answer = server.post(A1111, {"prompt": "a big red circle on the left", "seed": 1})
    source.write_bytes(pngs(answer.json())[0])
    half = Image.new("L", (64, 64))
    half.paste(255, (32, 0, 64, 64))
    half.save(mask)
    encoded = {p: base64.b64encode(p.read_bytes()).decode() for p in (source, mask)}
    body = {"prompt": "a big blue circle on the left", "seed": 4, "denoising_strength": 0.6,
            "init_images": [encoded[source]], "cfg_scale": 8}  # fmt: skip
    reply = server.post("/sdapi/v1/img2img", body).json()
    assert "init_images" not in reply["parameters"]
    expected = generated_pngs(tmp_path, body["prompt"], "--seed", "4", "--image", str(source),
                              "--strength", "0.6", "--guidance", "8")  # fmt: skip
    assert pngs(reply) == expected
    body.update(mask=f"data:image/png;base64,{encoded[mask]}", denoising_strength=1.0)
    reply = server.post("/sdapi/v1/img2img", body).json()
    args = ("--seed", "4", "--image", str(source), "--mask", str(mask), "--strength", "1")
    expected = generated_pngs(tmp_path, body["prompt"], *args, "--guidance", "8")
    assert pngs(reply) == expected
    for bad, field in (
        ({"init_images": ["not base64!"]}, "init_images[0]"),
        ({"init_images": [base64.b64encode(b"text").decode()]}, "init_images[0]"),
        ({"init_images": []}, "init_images"),
        ({"denoising_strength": 2}, "denoising_strength"),
        ({"mask": base64.b64encode(Image.new("L", (8, 8)).tobytes()).decode()}, "mask"),
    ):
        answer = server.post("/sdapi/v1/img2img", {**body, **bad})
        assert answer.status_code == 400 and field in answer.json()["error"]["message"], answer.text


def test_openai_python_client(server):
    openai = pytest.importorskip("openai", reason="the OpenAI client comes with [dev]")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    try:
        result = client.images.generate(
            prompt=PROMPTS[0],
            n=2,
            size="64x64",
            response_format="b64_json",
            extra_body={"seed": 3},
        )
    finally:
        client.close()
    assert len(result.data) == 2
    images = [base64.b64decode(d.b64_json) for d in result.data]
    assert all(png.startswith(b"\x89PNG") for png in images) and images[0] != images[1]
    direct = server.post(OPENAI, {"prompt": PROMPTS[0], "n": 2, "seed": 3, "size": "64x64"})
    assert pngs(direct.json()) == images


# ------------------------------------------------------------------------ batching


def concurrent_bodies() -> list[dict]:
    """16 requests, mostly sharing settings; two at another step count and one with eta."""
    bodies = [{"prompt": PROMPTS[i % 3], "seed": 100 + i, "n": 1 + i % 2} for i in range(16)]
    bodies[5]["steps"] = bodies[9]["steps"] = 1
    bodies[12]["size"] = "48x64"
    return bodies


def test_concurrent_requests_are_batched_and_equal_the_serial_images(server):
    bodies = concurrent_bodies()
    serial = [pngs(server.post(OPENAI, b).json()) for b in bodies]
    calls_before = server.metric("edgediff_batch_images_count")
    images_before = server.metric("edgediff_batch_images_sum")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: server.post(OPENAI, b), bodies))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert [pngs(a.json()) for a in answers] == serial
    calls = server.metric("edgediff_batch_images_count") - calls_before
    images = server.metric("edgediff_batch_images_sum") - images_before
    assert images == sum(b["n"] for b in bodies)
    assert calls < len(bodies), "16 concurrent requests ran as 16 pipeline calls: no batching"


# ------------------------------------------------------------------------ bad requests

BAD = [
    (OPENAI, {}, "prompt"),
    (OPENAI, {"prompt": ""}, "prompt"),
    (OPENAI, {"prompt": 3}, "prompt"),
    (OPENAI, {"prompt": "a", "n": 0}, "n"),
    (OPENAI, {"prompt": "a", "n": 9}, "n"),
    (OPENAI, {"prompt": "a", "n": 1.5}, "n"),
    (OPENAI, {"prompt": "a", "size": "12"}, "size"),
    (OPENAI, {"prompt": "a", "size": "60x64"}, "width"),
    (OPENAI, {"prompt": "a", "size": "4096x4096"}, "height"),
    (OPENAI, {"prompt": "a", "steps": 0}, "steps"),
    (OPENAI, {"prompt": "a", "steps": "2"}, "steps"),
    (OPENAI, {"prompt": "a", "guidance_scale": -1}, "guidance_scale"),
    (OPENAI, {"prompt": "a", "guidance_scale": True}, "guidance_scale"),
    (OPENAI, {"prompt": "a", "seed": -5}, "seed"),
    (OPENAI, {"prompt": "a", "seed": 2**64}, "seed"),
    (OPENAI, {"prompt": "a", "response_format": "url"}, "response_format"),
    (OPENAI, {"prompt": "a", "stepz": 2}, "stepz"),
    (OPENAI, {"prompt": "a", "negative_prompt": "blue"}, "negative prompt"),
    (A1111, {"prompt": "a", "width": 33}, "width"),
    (A1111, {"prompt": "a", "width": 0}, "width"),
    (A1111, {"prompt": "a", "cfg_scale": 1000}, "cfg_scale"),
    (A1111, {"prompt": "a", "batch_size": 0}, "batch_size"),
    (A1111, {"prompt": "a", "batch_size": 5, "n_iter": 2}, "batch_size"),
    (A1111, {"prompt": "a", "seed": -2}, "seed"),
    (A1111, {"prompt": "a", "eta": 2}, "eta"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD, ids=[f"{p[1:3]}-{f}" for p, _, f in BAD])
def test_a_bad_field_gets_a_400_that_names_it(server, path, body, field):
    answer = server.post(path, body)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert field in message and len(message.splitlines()) == 1


def test_a_body_that_is_not_json_gets_a_400(server):
    for data, headers in (("{", {"content-type": "application/json"}), ("prompt=a", {})):
        answer = requests.post(server.url + OPENAI, data=data, headers=headers, timeout=10)
        assert answer.status_code == 400
        assert "JSON object" in answer.json()["error"]["message"]


def test_a_bad_request_in_a_batch_fails_alone(server):
    bodies = [{"prompt": PROMPTS[0], "seed": s} for s in range(6)]
    bodies[3] = {"prompt": PROMPTS[0], "seed": 3, "negative_prompt": "red"}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: server.post(OPENAI, b), bodies))
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 200, 200]


# ------------------------------------------------------------------------ health, metrics, docs


def test_health_metrics_and_docs(server):
    health = server.health()
    assert health["status"] == "ok" and health["default_steps"] == 2
    assert health["limits"] == {"max_batch": 8, "max_queue": 64, "batch_wait_ms": 0.0}
    server.post(OPENAI, {"prompt": "a", "seed": 1})
    text = requests.get(server.url + "/metrics", timeout=10).text
    for name in ("edgediff_requests_total", "edgediff_queue_depth", "edgediff_batch_images",
                 "edgediff_request_seconds_bucket", "edgediff_images_total"):  # fmt: skip
        assert name in text
    assert server.metric('edgediff_requests_total{endpoint="openai",status="200"}') >= 1
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    paths = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {OPENAI, A1111, "/health", "/metrics"} <= set(paths)


def test_a_client_that_goes_away_does_not_stall_the_server(server):
    with pytest.raises(requests.exceptions.Timeout):
        server.post(OPENAI, {"prompt": PROMPTS[0], "n": 8, "size": "256x256"}, timeout=0.05)
    answer = server.post(OPENAI, {"prompt": PROMPTS[1], "seed": 2})
    assert answer.status_code == 200
    deadline = time.monotonic() + 30
    while server.metric("edgediff_queue_depth") > 0:
        assert time.monotonic() < deadline, "the abandoned request never left the queue"
        time.sleep(0.05)


# ------------------------------------------------------------------------ limits and stopping

SLOW = {"prompt": PROMPTS[0], "size": "512x512", "seed": 1}  # ~1 s on 2 cores


def test_a_full_queue_answers_429_at_once_and_sigterm_finishes_in_flight_work(tmp_path):
    args = ("--max-queue", "1", "--max-batch", "1", "--max-size", "512")
    with running(*args, tmp_path=tmp_path) as server:
        slow: dict = {}
        worker = threading.Thread(target=lambda: slow.update(answer=server.post(OPENAI, SLOW)))
        worker.start()
        server.wait_until_queued(1)
        started = time.monotonic()
        refused = server.post(OPENAI, {"prompt": "a", "seed": 2})
        assert refused.status_code == 429 and time.monotonic() - started < 0.5
        assert refused.headers["Retry-After"] == "1"
        assert "--max-queue 1" in refused.json()["error"]["message"]
        worker.join()
        assert slow["answer"].status_code == 200

        worker = threading.Thread(target=lambda: slow.update(answer=server.post(OPENAI, SLOW)))
        worker.start()
        server.wait_until_queued(1)
        server.process.send_signal(signal.SIGTERM)
        worker.join()
        assert slow["answer"].status_code == 200, slow["answer"].text
        # uvicorn re-raises the signal once it has stopped, as a process killed by it would.
        assert server.process.wait(30) in (0, -signal.SIGTERM), server.log.read_text()
        assert "Application shutdown complete" in server.log.read_text()


def test_serve_refuses_a_busy_port_and_stray_ray_flags():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 1 and "already in use" in result.output
    result = CliRunner().invoke(cli, ["serve", "--replicas", "2"])
    assert result.exit_code == 1 and "--replicas is a Ray Serve option" in result.output
    result = CliRunner().invoke(cli, ["serve", "--ray", "--autoscale", "3:1"])
    assert result.exit_code == 1 and "--autoscale must be MIN:MAX" in result.output


# ------------------------------------------------------------------------ Ray Serve


def test_ray_serve_with_two_replicas(server, tmp_path):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the [ray] extra)")
    bodies = concurrent_bodies()
    with running("--ray", "--replicas", "2", tmp_path=tmp_path, ready_s=180) as on_ray:
        health = on_ray.health()
        assert health["replicas"] == 2 and health["backend"] == "ort-cpu"
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda b: on_ray.post(OPENAI, b), bodies))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        # The same images as the single-process server's (and so as `edgediff generate`'s).
        here = [pngs(server.post(OPENAI, b).json()) for b in bodies]
        assert [pngs(a.json()) for a in answers] == here
        assert on_ray.post(A1111, {"prompt": "a", "seed": 1, "width": 33}).status_code == 400
        assert on_ray.metric("edgediff_batch_images_sum") == sum(b["n"] for b in bodies)
        assert on_ray.metric("edgediff_batch_images_count") < len(bodies)
        on_ray.process.send_signal(signal.SIGTERM)
        assert on_ray.process.wait(90) == 0, on_ray.log.read_text()


def test_the_kuberay_sample_configures_a_valid_application():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with Ray")
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the [ray] extra)")
    from edgediff.errors import InputError
    from edgediff.serve.ray_app import settings_from_args

    manifest = yaml.safe_load((ROOT / "deploy/kuberay/rayservice.yaml").read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "edgediff.serve.ray_app:app_builder"
    model, plan, limits = settings_from_args(app["args"])
    assert model.backend == "ort-cuda" and str(model.bundle) == "/models/my-bundle"
    assert plan.autoscale == (1, 4) and plan.gpus_per_replica == 1.0
    assert limits.max_batch == 8 and limits.max_queue == 256
    # `serve run edgediff.serve.ray_app:app_builder max_batch=4` passes strings.
    assert settings_from_args({"max_batch": "4"})[2].max_batch == 4
    for bad in ({"replica": 2}, {"max_batch": "many"}, {"autoscale": "4"}, {"max_queue": -1}):
        with pytest.raises(InputError):
            settings_from_args(bad)
