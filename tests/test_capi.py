"""The C API and C++ wrapper, built with CMake and driven through tests/capi/capi_test.cpp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgediff.runtime import Bundle
from edgediff.runtime import request as defaults
from edgediff.runtime.images import to_uint8
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None,
    reason="needs CMake and a C++ compiler",
)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """The library, the example and the test program, built from this checkout."""
    build = tmp_path_factory.mktemp("cmake-build")
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if "Could NOT find Python3" in result.stderr:
            pytest.skip(f"{sys.executable} has no development files (headers, libpython) to embed")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build


def _run(build: Path, *args: str, program: str = "capi_test") -> subprocess.CompletedProcess:
    """Run one of the built programs with the library pointed at this interpreter."""
    env = {**os.environ, "EDGEDIFF_PYTHON": sys.executable}
    return subprocess.run(
        [str(build / program), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_c_pixels_equal_the_python_apis(build, tmp_path):
    out = tmp_path / "pixels.bin"
    result = _run(
        build, "pixels", str(DEFAULT_BUNDLE), str(out), "a small green star", "11", "0", "2"
    )
    assert result.returncode == 0, result.stderr
    count, height, width = map(int, result.stdout.split())
    pixels = np.fromfile(out, dtype=np.uint8).reshape(count, height, width, 3)
    expected = Pipeline.load()(  # steps 0 in C, None here: the bundle's recommended count
        "a small green star", seed=11, num_images_per_prompt=2, output_type="np"
    )
    np.testing.assert_array_equal(pixels, to_uint8(expected))


def test_cpp_edits_an_image_as_the_python_api_does(build, tmp_path):
    rng = np.random.default_rng(3)
    image = (rng.random((64, 48, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 48), np.uint8)
    mask[:, 24:] = 255
    image.tofile(tmp_path / "image.rgb")
    mask.tofile(tmp_path / "mask.l8")
    pipe = Pipeline.load()
    for extra, strength, kwargs in (
        ([], "0.6", {"strength": 0.6}),
        ([str(tmp_path / "mask.l8")], "0", {"mask_image": mask}),  # 0: the default strength
    ):
        out = tmp_path / "edited.bin"
        args = [str(DEFAULT_BUNDLE), str(out), "a small blue square", "5",
                str(tmp_path / "image.rgb"), "64", "48", strength, *extra]  # fmt: skip
        result = _run(build, "edit", *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["64", "48"]
        pixels = np.fromfile(out, dtype=np.uint8).reshape(1, 64, 48, 3)
        expected = pipe("a small blue square", image=image, seed=5, output_type="np", **kwargs)
        np.testing.assert_array_equal(pixels, to_uint8(expected))
    image_path = str(tmp_path / "image.rgb")  # 3 bytes a pixel: no mask of this image
    bad = _run(build, "edit", str(DEFAULT_BUNDLE), str(out), "a", "5", image_path, "64", "48",
               "0", image_path)  # fmt: skip
    assert bad.returncode == 1 and "status 1: the mask has" in bad.stderr


def test_c_opens_a_distilled_bundle_with_its_tiny_decoder(build, student_bundle, tmp_path):
    out = tmp_path / "pixels.bin"
    result = _run(
        build, "pixels", str(student_bundle), str(out), "a red circle", "3", "0", "1", "tiny"
    )
    assert result.returncode == 0, result.stderr
    count, height, width = map(int, result.stdout.split())
    pixels = np.fromfile(out, dtype=np.uint8).reshape(count, height, width, 3)
    with Pipeline.load(student_bundle, decoder="tiny") as pipe:
        expected = pipe("a red circle", seed=3, output_type="np")  # 1 step: recommended
        component = pipe.decoder
    assert component == "vae_decoder.tiny"
    np.testing.assert_array_equal(pixels, to_uint8(expected))


def test_c_and_cpp_defaults_are_the_runtimes(build):
    result = _run(build, "defaults", str(DEFAULT_BUNDLE))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    expected = {
        "steps": 0,  # the bundle's recommended count, decided when it runs
        "guidance": np.float32(defaults.C_RECOMMENDED_GUIDANCE),  # the bundle's, at run time
        "seed": 0,
        "count": defaults.DEFAULT_COUNT,
        "height": 0,  # the model's size
        "width": 0,
    }
    for source in ("c", "cpp"):
        fields = dict(zip(lines[source][::2], lines[source][1::2], strict=True))
        got = {k: np.float32(v) if k == "guidance" else int(v) for k, v in fields.items()}
        assert got == expected, f"{source}: {result.stdout}"
    # steps 0 and count 0 take the bundle's recommended count and the runtime's default count.
    recommended = Bundle.open(DEFAULT_BUNDLE).manifest.recommended_steps
    zero = f"steps {recommended or defaults.DEFAULT_STEPS} count {defaults.DEFAULT_COUNT}"
    assert lines["zero"] == zero.split()


def test_failures_return_their_status_and_a_readable_message(build, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(DEFAULT_BUNDLE, corrupt)
    weights = bytearray((corrupt / "unet/model.onnx").read_bytes())
    weights[1000] ^= 1
    (corrupt / "unet/model.onnx").write_bytes(weights)
    result = _run(build, "errors", str(DEFAULT_BUNDLE), str(corrupt))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 12 and "FAIL" not in result.stdout


def test_threads_at_once_give_what_one_after_another_gives(build):
    result = _run(build, "threads", str(DEFAULT_BUNDLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   three threads at once == one after another" in result.stdout


def test_the_readme_c_example_compiles_as_c99_and_runs(build):
    result = _run(build, program="readme_example")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2 64 64\n"


def test_the_example_writes_a_ppm(build, tmp_path):
    out = tmp_path / "red.ppm"
    result = _run(
        build, "a big red circle on the left", str(out), "--seed", "3", program="generate"
    )
    assert result.returncode == 0, result.stderr
    header, pixels = out.read_bytes().split(b"\n255\n", 1)
    assert header == b"P6\n64 64" and len(pixels) == 64 * 64 * 3
    expected = Pipeline.load()("a big red circle on the left", seed=3, output_type="np")
    np.testing.assert_array_equal(
        np.frombuffer(pixels, np.uint8).reshape(1, 64, 64, 3), to_uint8(expected)
    )


def test_an_installed_package_is_found_by_find_package(build, tmp_path):
    prefix, app = tmp_path / "prefix", tmp_path / "app"
    install = subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\n"
        "find_package(edgediff 0.1 REQUIRED)\n"
        "add_executable(app main.cpp)\nset_target_properties(app PROPERTIES CXX_STANDARD 17)\n"
        "target_link_libraries(app PRIVATE edgediff::edgediff)\n"
    )
    (app / "main.cpp").write_text(
        "#include <edgediff.hpp>\n#include <iostream>\n"
        "int main() { std::cout << edgediff::version() << ' ' << edgediff_abi_version(); }\n"
    )
    for command in (
        ["cmake", "-S", str(app), "-B", str(app / "build"), f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(app / "build")],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ran = subprocess.run([str(app / "build" / "app")], capture_output=True, text=True)
    assert ran.stdout == "0.1.0 3"
