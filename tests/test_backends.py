"""Backends on real parts: ONNX Runtime IO binding here; CUDA and TensorRT where they exist."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from edgediff.cli import cli
from edgediff.errors import BackendError
from edgediff.metrics.quality import psnr
from edgediff.runtime.backends import get_backend
from edgediff.runtime.backends.onnxruntime import OrtBackend, provider_options
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline
from edgediff.tolerances import GPU_IMAGE_MIN_PSNR_DB

REQUEST = dict(
    prompt=["a big red circle on the left", "a small blue square"], seed=7, output_type="np"
)


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def _has_gpu() -> bool:
    try:
        from edgediff.runtime.cuda import Cuda

        Cuda()
    except BackendError:
        return False
    return True


HAS_TRT = (_has_module("tensorrt") or _has_module("tensorrt_rtx")) and _has_gpu()
needs_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in _ort_providers(),
    reason="needs onnxruntime-gpu and an NVIDIA GPU (this onnxruntime has no CUDA provider)",
)
needs_trt = pytest.mark.skipif(
    not HAS_TRT,
    reason="needs TensorRT or TensorRT-RTX, cuda-python and an NVIDIA GPU (not on this machine)",
)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The request's images on ONNX Runtime's CPU provider, fp32."""
    return Pipeline.load(None)(**REQUEST)


# ---------------------------------------------------------------- runs everywhere


def test_io_bound_sessions_give_the_same_images_across_shape_changes(reference):
    pipe = Pipeline.load(None, backend=OrtBackend("ort-cpu", io_binding=True))
    assert type(pipe.sessions["unet"]).__name__ == "BoundOrtSession"
    np.testing.assert_array_equal(pipe(**REQUEST), reference)
    single = pipe("a green star", seed=2, output_type="np")  # new shapes: new buffers
    np.testing.assert_array_equal(
        single, Pipeline.load(None)("a green star", seed=2, output_type="np")
    )
    np.testing.assert_array_equal(pipe(**REQUEST), reference)  # and back


def test_io_bound_inputs_are_copied_unless_the_same_read_only_array(reference):
    session = OrtBackend("ort-cpu", io_binding=True).load(DEFAULT_BUNDLE / "vae_decoder/model.onnx")
    plain = OrtBackend("ort-cpu").load(DEFAULT_BUNDLE / "vae_decoder/model.onnx")
    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)
    kept = latents.copy()
    first = session.run({"latent_sample": latents})["sample"]
    latents *= 2  # changed in place: a writable array is copied again
    second = session.run({"latent_sample": latents})["sample"]
    np.testing.assert_array_equal(second, plain.run({"latent_sample": latents})["sample"])
    np.testing.assert_array_equal(kept * 2, latents)  # the session never wrote into it
    assert not np.array_equal(first, second)
    latents.flags.writeable = False  # read-only and passed again: may stay where it is
    third = session.run({"latent_sample": latents})["sample"]
    np.testing.assert_array_equal(third, second)


def test_tensorrt_ep_caches_in_the_bundle_and_leaves_qdq_models_strongly_typed(tmp_path):
    float_options = provider_options("TensorrtExecutionProvider", "fp32", False, tmp_path / "c", 0)
    assert float_options["trt_fp16_enable"] == "True"
    assert float_options["trt_engine_cache_path"] == str(tmp_path / "c")
    assert (tmp_path / "c").is_dir()
    qdq_options = provider_options("TensorrtExecutionProvider", "int8", False, None, 0)
    assert "trt_fp16_enable" not in qdq_options and "trt_int8_enable" not in qdq_options
    assert (
        provider_options("CUDAExecutionProvider", "fp32", True, None, 0)["enable_cuda_graph"] == "1"
    )


def test_closed_pipelines_release_their_sessions_and_refuse_to_run():
    with Pipeline.load(None) as pipe:
        pipe("a red circle", seed=1, output_type="np", num_inference_steps=2)
    with pytest.raises(BackendError, match="session was closed"):
        pipe("a red circle", seed=1, num_inference_steps=2)
    pipe.close()  # twice is fine
    backend = OrtBackend("ort-cpu")
    shared = Pipeline.load(None, backend=backend)
    shared.close()  # a backend the caller passed in stays the caller's to close
    again = Pipeline.load(None, backend=backend)
    assert again("a red circle", seed=1, output_type="np", num_inference_steps=2).shape[0] == 1
    backend.close()
    with pytest.raises(BackendError, match="session was closed"):
        again("a red circle", seed=1, num_inference_steps=2)


@pytest.mark.skipif(_has_module("tensorrt"), reason="checks the message where TensorRT is absent")
def test_without_classic_tensorrt_build_and_trt_say_what_to_install(tmp_path):
    with pytest.raises(BackendError, match=r"TensorRT's Python package is not installed.*apt"):
        get_backend("trt", flavour="tensorrt")
    result = CliRunner().invoke(cli, ["build", str(DEFAULT_BUNDLE), "--flavour", "tensorrt"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "pip install 'edgediff[trt]'" in result.output
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "nope")])
    assert "bundle folder" in result.output and "does not exist" in result.output
    with pytest.raises(BackendError, match="unknown TensorRT flavour 'trt'"):
        get_backend("trt", flavour="trt")


@pytest.mark.skipif(
    not _has_module("tensorrt_rtx") or _has_module("cuda"),
    reason="checks the message where TensorRT-RTX is installed and cuda-python is not",
)
def test_rtx_without_cuda_python_builds_but_does_not_run(tmp_path):
    with pytest.raises(BackendError, match=r"needs cuda-python.*edgediff\[trt-rtx\]"):
        get_backend("trt")
    result = CliRunner().invoke(
        cli, ["generate", "x", "--backend", "trt", "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1 and "cuda-python" in result.output


@pytest.mark.skipif(
    "CUDAExecutionProvider" in _ort_providers(), reason="checks the message where CUDA is absent"
)
def test_without_onnxruntime_gpu_ort_cuda_says_what_to_install():
    with pytest.raises(BackendError, match=r"lacks.*onnxruntime-gpu"):
        get_backend("ort-cuda")


# ---------------------------------------------------------------- GPU machines only


@needs_ort_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_matches_the_cpu(reference, cuda_graph):
    pipe = Pipeline.load(None, backend=OrtBackend("ort-cuda", cuda_graph=cuda_graph))
    for _ in range(2):  # the second call replays buffers (and the graph)
        images = pipe(**REQUEST)
        assert psnr(images, reference, peak=1.0) >= GPU_IMAGE_MIN_PSNR_DB["fp32"]


def _build_here(root, request):
    """Build `root`'s engines with the TensorRT installed, for the GPU here."""
    from edgediff.engines.build import build_engines
    from edgediff.engines.tensorrt_builder import build_engine, current_platform
    from edgediff.runtime.cuda import Cuda

    platform = current_platform()
    if platform.toolkit.builds_ahead_of_time:
        cuda = Cuda()
        _, capability = cuda.gpu()
        cuda.close()
        if capability not in platform.known_targets:
            pytest.skip(f"TensorRT-RTX builds no engines for compute capability {capability}")
        request = replace(request, targets=(capability,))
    return platform, request, build_engines(root, request, platform, build_engine)


@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_engines_build_once_and_match_the_cpu(reference, tmp_path, precision):
    from edgediff.engines.build import build_engines, default_timing_cache
    from edgediff.engines.plan import BuildRequest
    from edgediff.engines.tensorrt_builder import build_engine

    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    platform, request, built = _build_here(root, BuildRequest(precision=precision))
    assert not any(r.reused for r in built)
    assert all(r.reused for r in build_engines(root, request, platform, build_engine))
    cache = default_timing_cache(root, platform)
    assert cache is None if platform.toolkit.builds_ahead_of_time else cache.is_file()
    with Pipeline.load(root, backend="trt", precision=precision) as pipe:
        images = pipe(**REQUEST)
        assert psnr(images, reference, peak=1.0) >= GPU_IMAGE_MIN_PSNR_DB[precision]
    if platform.toolkit.builds_ahead_of_time:  # kernels compiled at first run are kept
        assert list((root / "engines/rtx").glob("runtime-*.cache"))


@needs_trt
def test_static_trt_engines_replay_cuda_graphs_and_refuse_other_shapes(reference, tmp_path):
    from edgediff.engines.plan import BuildRequest
    from edgediff.engines.profiles import Span
    from edgediff.errors import InputError
    from edgediff.runtime.backends.tensorrt import TrtBackend

    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    _build_here(root, BuildRequest(batch=Span(2, 2, 2), static=True))
    with Pipeline.load(root, backend=TrtBackend(cuda_graph=True)) as pipe:
        first, second = pipe(**REQUEST), pipe(**REQUEST)
        np.testing.assert_array_equal(first, second)
        assert psnr(first, reference, peak=1.0) >= GPU_IMAGE_MIN_PSNR_DB["fp16"]
        with pytest.raises(InputError, match="outside the engine's profile"):
            pipe("one prompt only", seed=1)
        pipe.backend.close()
