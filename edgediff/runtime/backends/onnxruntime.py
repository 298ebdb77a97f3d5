"""ONNX Runtime backend: the CPU provider everywhere, CUDA / TensorRT providers where installed.

On a GPU provider every input and output lives in a device buffer that is allocated once per
shape and reused on every call (ONNX Runtime's IO binding), so the weights, the text
embeddings and the U-Net's buffers stay on the GPU across the denoising loop and only the
latents cross the bus: the numpy scheduler needs them on the host between steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.schema import QUANTIZED_PRECISIONS
from edgediff.errors import BackendError
from edgediff.runtime.backends.base import unchanged
from edgediff.runtime.backends.heap import release_freed_heap
from edgediff.runtime.backends.vae_split import VaeParts
from edgediff.runtime.memory import DEFAULT_MEMORY, check_memory_mode

_log = logging.getLogger(__name__)

# Backend name -> execution providers in priority order (ORT falls back along the list).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "ONNX Runtime is not installed",
            "Install one build: pip install 'edgediff[cpu]' (CPU) or 'edgediff[gpu]' (CUDA)",
        ) from None
    return onnxruntime


@contextlib.contextmanager
def _ort_errors() -> Iterator[None]:
    """ONNX Runtime's own exceptions (bad shapes, out of memory) as one-line BackendErrors."""
    try:
        yield
    except Exception as e:  # ORT's own exception types (InvalidArgument, Fail, ...) are bare
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(
            f"ONNX Runtime could not run the model: {first}",
            "If memory ran out, ask for fewer or smaller images; otherwise check the bundle "
            "with `edgediff info` and re-export it if its manifest and models disagree",
        ) from None


class OrtSession:
    """An onnxruntime.InferenceSession that casts feeds to the dtypes the model declares."""

    def __init__(self, session: Any, run_options: Any = None):
        self._session = session
        self._run_options = run_options
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self._input_dtypes = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.ascontiguousarray(value, dtype=self._input_dtypes.get(name) or value.dtype)
            for name, value in feeds.items()
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays; returns host arrays by output name."""
        session = self._live()
        with _ort_errors():
            outputs = session.run(None, self._cast(feeds), self._run_options)
        return dict(zip(self.output_names, outputs, strict=True))

    def _live(self) -> Any:
        if self._session is None:
            raise BackendError("this model's session was closed", "Load the pipeline again")
        return self._session

    def close(self) -> None:
        """Release the ONNX Runtime session (its weights and arenas)."""
        self._session = None
        release_freed_heap()


class BoundOrtSession(OrtSession):
    """A session whose inputs and outputs sit in device buffers kept from call to call.

    Buffers are made for each new set of input shapes (the first call at a shape lets ONNX
    Runtime size the outputs) and reused while shapes repeat: a call copies the feeds into
    them, runs, and copies the outputs back. Fixed addresses are what CUDA-graph replay needs.
    """

    def __init__(
        self,
        session: Any,
        device: str,
        device_id: int = 0,
        run_options: Any = None,
    ):
        super().__init__(session, run_options)
        self._ort = _import_onnxruntime()
        self._device = (device, device_id)
        self._binding = session.io_binding()
        self._shapes: tuple | None = None
        self._inputs: dict[str, Any] = {}
        self._outputs: list[Any] | None = None
        self._held: dict[str, np.ndarray] = {}  # the last call's feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy feeds into the bound device buffers, run, return host copies of the outputs."""
        self._live()
        feeds = self._cast(feeds)
        shapes = tuple((name, feeds[name].shape) for name in self.input_names)
        if shapes != self._shapes:
            self._bind_new_shapes(feeds)
            self._shapes = shapes
        else:
            for name in self.input_names:
                if not unchanged(feeds[name], self._held.get(name)):
                    self._inputs[name].update_inplace(feeds[name])
        self._held = feeds
        with _ort_errors():
            self._live().run_with_iobinding(self._binding, self._run_options)
        if self._outputs is None:  # first call at these shapes: keep what ORT allocated
            self._outputs = self._binding.get_outputs()
            for name, value in zip(self.output_names, self._outputs, strict=True):
                self._binding.bind_ortvalue_output(name, value)
        # On the CPU, numpy() is a view of the bound buffer the next call overwrites.
        copy = self._device[0] == "cpu"
        return {
            n: np.array(v.numpy(), copy=copy)
            for n, v in zip(self.output_names, self._outputs, strict=True)
        }

    def _bind_new_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        for name in self.input_names:
            # A copy: on the CPU device the OrtValue would otherwise wrap (and later be
            # overwritten through) the caller's array.
            value = self._ort.OrtValue.ortvalue_from_numpy(feeds[name].copy(), *self._device)
            self._binding.bind_ortvalue_input(name, value)
            self._inputs[name] = value
        for name in self.output_names:
            self._binding.bind_output(name, *self._device)
        self._outputs = None

    def close(self) -> None:
        """Release the device buffers and the session."""
        self._inputs, self._outputs, self._held, self._shapes = {}, None, {}, None
        self._binding = None
        super().close()


class OrtBackend:
    """Loads ONNX models into ONNX Runtime sessions with the providers of one backend name.

    `io_binding` keeps inputs and outputs in buffers reused across calls (default: on for the
    GPU backends). `cuda_graph` has ort-cuda capture each model's first run and replay it; it
    needs fixed input shapes for the life of the session. `cache_dir` is where ort-trt keeps
    the TensorRT engines and timing cache its execution provider builds. `spin` False stops
    ONNX Runtime's idle worker threads from spinning for new work (None: its default, on),
    which is what a process that shares its cores with other work (a server) wants.
    `memory` is the pipeline's memory mode (runtime.memory): "fast" keeps what a run allocated
    for the next, "balanced" and "low" hand it back after each run. `fuse_attention` runs each
    attention as one MultiHeadAttention op that never holds the N² scores (ort_attention).
    `vae_arena` False runs the VAE's sessions (bundle folders vae_*) without ONNX Runtime's
    CPU arena outside "fast" (session_options says when that pays; the pipeline decides it
    from the bundle, runtime.memory.large_vae_buffers).
    """

    array_location = "host"
    model_format = "onnx"

    def __init__(
        self,
        name: str = "ort-cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        cache_dir: str | Path | None = None,
        device_id: int = 0,
        spin: bool | None = None,
        memory: str = DEFAULT_MEMORY,
        fuse_attention: bool = True,
        vae_arena: bool = True,
    ):
        ort = _import_onnxruntime()
        if not isinstance(vae_arena, bool):
            raise BackendError(
                f"vae_arena must be True or False, not {vae_arena!r}", "Pass vae_arena=False"
            )
        if name not in PROVIDERS:
            raise BackendError(
                f"unknown ONNX Runtime backend '{name}'", f"Use {', '.join(PROVIDERS)}"
            )
        wanted = PROVIDERS[name]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendError(
                f"backend '{name}' needs ONNX Runtime's {wanted[0]}, which this onnxruntime "
                f"build lacks (it has {', '.join(available)})",
                "Install onnxruntime-gpu (pip install 'edgediff[gpu]', after uninstalling "
                "onnxruntime) on a machine with an NVIDIA GPU, or use --backend ort-cpu",
            )
        if cuda_graph and name != "ort-cuda":
            raise BackendError(f"CUDA graphs are an ort-cuda option, not {name}'s")
        self.name = name
        self.threads = threads
        self.device_id = device_id
        self.io_binding = name != "ort-cpu" if io_binding is None else io_binding
        self.cuda_graph = cuda_graph
        self.cache_dir = cache_dir
        self.spin = spin
        self.memory = check_memory_mode(memory)
        # TensorRT fuses the spelled-out attention itself and cannot run ORT's contrib op.
        self.fuse_attention = fuse_attention and name != "ort-trt"
        self.vae_arena = vae_arena
        self.providers = [p for p in wanted if p in available]
        self._sessions: list[OrtSession] = []

    def _arena(self, model_path: Path) -> bool:
        """Whether this model's session allocates from ONNX Runtime's CPU arena."""
        vae = Path(model_path).parent.name.startswith("vae_")
        return self.memory == "fast" or self.vae_arena or not vae

    def load(self, model_path: Path, precision: str = "fp32") -> OrtSession:
        """Create an inference session for one ONNX file (`precision` as the bundle names it)."""
        ort = _import_onnxruntime()
        providers = self._providers(precision)
        model_path = Path(model_path)
        lowered = _with_fused_attention(model_path) if self.fuse_attention else None
        session = None
        if lowered is not None:
            try:
                session = self._session_from_bytes(lowered, model_path, precision)
            except Exception as e:  # an ORT too old for the op or the option: run it as stored
                _log.warning(
                    "ONNX Runtime could not load %s with fused attention (%s); loading it as "
                    "stored, whose attention holds the N² scores",
                    model_path, str(e).splitlines()[0],
                )  # fmt: skip
        if session is None:
            arena = self._arena(model_path)
            options = session_options(ort, self.memory, self.threads, self.spin, arena)
            try:
                session = ort.InferenceSession(str(model_path), options, providers=providers)
            except Exception as e:  # ORT raises its own exception types for unreadable models
                raise BackendError(
                    f"ONNX Runtime could not load '{model_path}': {str(e).splitlines()[0]}",
                    "Re-export the bundle with `edgediff export CHECKPOINT BUNDLE --force`",
                ) from None
        release_freed_heap()  # the parsed model file
        arena = self._arena(model_path)
        run_options = run_options_for(ort, self.memory, self.name, self.device_id, arena)
        if not self.io_binding:
            loaded = OrtSession(session, run_options)
        else:
            device = "cpu" if self.name == "ort-cpu" else "cuda"
            loaded = BoundOrtSession(session, device, self.device_id, run_options)
        return self._keep(loaded)

    def load_vae_for_tiles(
        self, model_path: Path, precision: str = "fp32", split: bool = True
    ) -> VaeParts:
        """A VAE as sessions for tiles that share the whole image's GroupNorm statistics: the
        part tiles run, its GroupNorms rewritten (ort_groupnorm), and where the VAE has global
        attention (`split`), the part around it that runs on the whole image (vae_split)."""
        ort = _import_onnxruntime()
        model_path = Path(model_path)
        graphs = _tile_graphs(model_path, split, self.fuse_attention)
        whole_first = graphs.whole_first
        # Only the graphs' bytes are left of the parsing; freed with them once the sessions
        # exist, the heap goes back whole (SD 1.5's decoder: 451 MiB resident after, not 831).
        sessions: list[OrtSession] = []
        try:
            for data in (graphs.tiled, graphs.whole):
                if data is None:
                    continue
                # ORT warns once per added input that it also has an initializer (its
                # default), which is the point: errors only.
                session = self._session_from_bytes(data, model_path, precision, errors_only=True)
                # Never IO-bound: ORT lists only inputs without defaults, so a
                # BoundOrtSession would bind the image alone and drop the statistics.
                arena = self._arena(model_path)
                run_options = run_options_for(ort, self.memory, self.name, self.device_id, arena)
                sessions.append(self._keep(OrtSession(session, run_options)))
        except Exception as e:  # ORT raises its own exception types for unreadable models
            for loaded in sessions:
                loaded.close()
            raise BackendError(
                f"ONNX Runtime could not load '{model_path}' with GroupNorm statistics: "
                f"{str(e).splitlines()[0]}",
                "Decode with plain tiles (vae_tiling.decode_tiled) instead",
            ) from None
        finally:
            del graphs
            release_freed_heap()
        whole = sessions[1] if len(sessions) > 1 else None
        return VaeParts(tiled=sessions[0], whole=whole, whole_first=whole_first)

    def _session_from_bytes(
        self, data: bytes, model_path: Path, precision: str, errors_only: bool = False
    ) -> Any:
        """An ORT session of a rewritten graph of `model_path`, its external weights read
        from beside that file."""
        ort = _import_onnxruntime()
        arena = self._arena(model_path)
        options = session_options(ort, self.memory, self.threads, self.spin, arena)
        options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(model_path.parent))
        if errors_only:
            options.log_severity_level = 3
        return ort.InferenceSession(data, options, providers=self._providers(precision))

    def _providers(self, precision: str) -> list[tuple[str, dict[str, str]]]:
        return [
            (p, provider_options(p, precision, self.cuda_graph, self.cache_dir, self.device_id))
            for p in self.providers
        ]

    def _keep(self, loaded: OrtSession) -> OrtSession:
        # Memory "low" closes and reloads sessions every generation: forget the closed ones.
        self._sessions = [s for s in self._sessions if s._session is not None]
        self._sessions.append(loaded)
        return loaded

    def close(self) -> None:
        """Release every session this backend loaded."""
        for session in self._sessions:
            session.close()
        self._sessions.clear()


# ORT >= 1.20 reads external weights from here when the model comes as bytes.
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def _tile_graphs(model_path: Path, split: bool, fuse: bool) -> VaeParts:
    """The serialized graphs of OrtBackend.load_vae_for_tiles: the tiled part with GroupNorms
    that take and report statistics, and the whole part (or None)."""
    from edgediff.runtime.backends.onnx_proto import load_model
    from edgediff.runtime.backends.ort_attention import fuse_attention
    from edgediff.runtime.backends.ort_groupnorm import add_norm_statistics
    from edgediff.runtime.backends.vae_split import split_global_attention

    try:
        model = load_model(model_path.read_bytes())
        if fuse:
            fuse_attention(model)
        parts = split_global_attention(model) if split else VaeParts(tiled=model)
        del model  # the parts hold what they need
        rewritten = add_norm_statistics(parts.tiled)
    except (OSError, ValueError) as e:  # ValueError: a graph the rewrite does not know
        raise BackendError(
            f"cannot add GroupNorm statistics to '{model_path}': {e}",
            "Decode with plain tiles (vae_tiling.decode_tiled) instead",
        ) from None
    if not rewritten:
        raise BackendError(
            f"'{model_path}' has no GroupNorm to share statistics of",
            "Plain tiles (vae_tiling.decode_tiled) are exact for it already",
        )
    whole = None if parts.whole is None else parts.whole.SerializeToString()
    parts.whole = None
    return VaeParts(parts.tiled.SerializeToString(), whole, parts.whole_first)


def session_options(
    ort: Any, memory: str, threads: int | None, spin: bool | None, arena: bool = True
) -> Any:
    """SessionOptions for one memory mode (`arena`: OrtBackend._arena); each setting below
    was chosen by measurement.

    Measured on SD 1.5 sizes (random weights), ORT 1.32, 2 threads of a 2-core CI machine; the
    U-Net on batch 2 at 64×64 latents (a 512² image with guidance), the VAE decoder on one
    64×64 latent:
    * attention fused (ort_attention), every mode: U-Net peak 6.5 -> 4.1 GiB, 11.0 -> 8.3 s.
    * memory pattern off, every mode. ORT's planner otherwise reserves one block for a run's
      whole peak: U-Net 9.15 against 6.5 GiB, 16.6–18.0 s against 11.0–15.3 s a call. VAE
      decoder: 2.8–2.9 GiB against 1.7 GiB.
    * the arena stays on for the text encoder and U-Net in every mode, and outside "fast" it
      is shrunk after each run (run_options_for). Without it everywhere, the shipped model
      peaked 40 % higher (365 against 259 MiB at 512²): glibc keeps small freed activations,
      which only a fixed mmap threshold avoided, at 26–30 % of the shipped model's time.
    * the VAE, which runs once per image, goes without it outside "fast" where its feature
      maps are large (OrtBackend vae_arena; runtime.memory.large_vae_buffers): maps of 32 MiB
      and more are mmapped by glibc and go back to the system when freed, while the arena's
      fragmentation held them. SD 1.5 decoder alone at 512²: 1.43 against 1.71–1.85 GiB; a
      balanced SD 1.5 512² generation 5.27 against 5.46 GiB (diffusers 5.43), 48.4 against
      50.4 s side by side. Where maps are small glibc keeps them: the shipped model at 512²
      peaked at 397 against 291 MiB without the arena, so it keeps it.
    * graph optimisation level ALL: EXTENDED gave the VAE decoder the same peak.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def run_options_for(ort: Any, memory: str, name: str, device_id: int, arena: bool = True) -> Any:
    """RunOptions for a memory mode: outside "fast" the arenas hand a run's activations back
    after it, so a pipeline holds its weights between calls, not every component's peak
    (`arena`: whether the session has a CPU arena; ORT refuses to shrink one it lacks)."""
    shrink = (["cpu:0"] if arena else []) + ([] if name == "ort-cpu" else [f"gpu:{device_id}"])
    if memory == "fast" or not shrink:
        return None
    arenas = ";".join(shrink)
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
    return options


def _with_fused_attention(model_path: Path) -> bytes | None:
    """The model's graph with fused attention, as bytes; None when there is nothing to fuse."""
    from edgediff.runtime.backends.onnx_proto import load_model
    from edgediff.runtime.backends.ort_attention import fuse_attention

    try:
        model = load_model(model_path.read_bytes())
    except Exception:  # unreadable or not ONNX: ORT's own load names the problem
        return None
    return model.SerializeToString() if fuse_attention(model) else None


def provider_options(
    provider: str, precision: str, cuda_graph: bool, cache_dir: str | Path | None, device_id: int
) -> dict[str, str]:
    """ONNX Runtime options for one execution provider and one model of an edgediff backend."""
    if provider == "CUDAExecutionProvider":
        return {"device_id": str(device_id), "enable_cuda_graph": str(int(cuda_graph))}
    if provider == "TensorrtExecutionProvider":
        options = {"device_id": str(device_id)}
        if precision not in QUANTIZED_PRECISIONS:
            options["trt_fp16_enable"] = "True"
        # Q/DQ models get no precision flags: with TensorRT 10 the EP then builds a strongly
        # typed network that runs each layer in the type its Q/DQ pairs give it.
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BackendError(
                    f"ort-trt cannot create its engine cache '{cache_dir}' ({e.strerror})",
                    "Copy the bundle to a folder you can write to and load it from there",
                ) from None
            options.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(cache_dir),
            )
        return options
    return {}
