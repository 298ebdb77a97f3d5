"""Export one component (trace, fp16, save, check, measure), in this process or a helper process.

torch.export's symbolic tracing is single-threaded Python, so on a machine with two or more
cores the U-Net (the slowest trace by far) runs in a helper process while this process exports
the text encoder and the VAE. The helper is a fresh interpreter running helper_main rather
than a multiprocessing child, which would re-import the caller's main module. Pass/fail against
the tolerance is decided by the caller, from the errors measured here.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgediff.bundle.schema import ModelConfig, TensorSpec, kind_of
from edgediff.errors import EdgediffError, ExportError
from edgediff.quiet import captured_output, first_line

if TYPE_CHECKING:
    import torch

SCRATCH = ".work"  # inside the temporary bundle folder; removed before the manifest is written


@dataclass(frozen=True)
class ComponentJob:
    """Everything needed to export and measure one component (picklable for the helper)."""

    component: str
    checkpoint: str
    bundle_root: str  # the temporary bundle folder
    model: ModelConfig
    precision: str  # "fp32" or "fp16"
    opset: int
    cases: tuple[dict[str, np.ndarray], ...] = ()  # empty: no verification
    upcast_attention: bool = False
    threads: int = 0  # torch/ORT threads; 0 leaves the defaults
    kind: str = ""  # the graph it exports to (components.graph_kind); "" for its own


@dataclass(frozen=True)
class ComponentResult:
    """What the manifest records about one exported component."""

    component: str
    precision: str
    file: str  # relative to the bundle root
    external_data: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    checks: tuple[dict[str, Any], ...]
    seconds: float


@dataclass(frozen=True)
class ComponentFailure:
    """A component that could not be exported, as the one-line error the user will see."""

    component: str
    problem: str
    fix: str | None = None


def export_component(
    job: ComponentJob, load: Callable[[], torch.nn.Module] | None = None
) -> ComponentResult:
    """Export `job.component` to `<bundle>/<component>/model.onnx` and measure it against torch.

    `load` hands over an already loaded module (default: load it from the checkpoint); it is
    a callable so that no caller's frame keeps the weights alive once they are not needed.
    """
    import torch

    from edgediff.export.checkpoint import load_component
    from edgediff.export.components import wrap
    from edgediff.export.onnx_export import export_graph, save_ir
    from edgediff.export.verify import measure, torch_outputs
    from edgediff.graphs.files import check_model, io_specs
    from edgediff.graphs.fp16 import convert_to_fp16

    start = time.perf_counter()
    root = Path(job.bundle_root)
    rel = f"{job.component}/model.onnx"
    final = root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    kind = job.kind or job.component
    source = kind if kind == "vae_decoder_tiny" else kind_of(job.component)
    wrapper = wrap(kind, load() if load else load_component(job.checkpoint, source), job.model)
    threads = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        try:
            graph = export_graph(wrapper, kind, job.model, job.opset)
        except EdgediffError:
            raise
        except Exception as e:
            raise ExportError(
                f"torch.onnx could not export the {job.component}: {first_line(e)}",
                "The exporter's log is printed above; this architecture may be unsupported",
            ) from e
        fp32_file = (
            root / SCRATCH / job.component / "model.onnx" if job.precision == "fp16" else final
        )
        fp32_file.parent.mkdir(parents=True, exist_ok=True)
        external = save_ir(graph, fp32_file)
        del graph  # the IR references the torch weights
        # torch's answers first, so its weights are freed before the fp16 conversion, the
        # checker and ONNX Runtime each load the file (3.4 GB apiece for an SD 1.5 U-Net).
        expected = [torch_outputs(wrapper, case) for case in job.cases]
        del wrapper
        gc.collect()
        if job.precision == "fp16":
            external = convert_to_fp16(fp32_file, final, upcast_attention=job.upcast_attention)
            shutil.rmtree(fp32_file.parent)  # gigabytes at SD sizes
        check_model(final)
        inputs, outputs = io_specs(final)
        checks = measure(final, list(job.cases), expected, job.threads) if job.cases else ()
    finally:
        torch.set_num_threads(threads)
    return ComponentResult(
        component=job.component,
        precision=job.precision,
        file=rel,
        external_data=tuple(p.relative_to(root).as_posix() for p in external),
        inputs=inputs,
        outputs=outputs,
        checks=checks,
        seconds=time.perf_counter() - start,
    )


def run_job(
    job: ComponentJob, load: Callable[[], torch.nn.Module] | None = None
) -> ComponentResult | ComponentFailure:
    """export_component with its chatter captured, and any error turned into a ComponentFailure."""
    try:
        with captured_output():
            return export_component(job, load)
    except EdgediffError as e:
        return ComponentFailure(job.component, e.problem, e.fix)
    except Exception as e:
        return ComponentFailure(
            job.component,
            f"exporting the {job.component} failed: {first_line(e)}",
            "The log is printed above; please report it if the checkpoint loads in diffusers",
        )


_HELPER_CODE = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from edgediff.export.workers import helper_main; "
    "sys.exit(helper_main(sys.argv[2], sys.argv[3]))"
)


class Helper:
    """One component exported by a separate Python process (see _HELPER_CODE)."""

    def __init__(self, job: ComponentJob):
        self.job = job
        scratch = Path(job.bundle_root) / SCRATCH
        scratch.mkdir(parents=True, exist_ok=True)
        self._job_file = scratch / f"{job.component}.job.pickle"
        self._result_file = scratch / f"{job.component}.result.pickle"
        self._job_file.write_bytes(pickle.dumps(job))
        # The helper imports exactly what this process imports: same sys.path, same edgediff.
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HELPER_CODE,
                json.dumps(sys.path),
                str(self._job_file),
                str(self._result_file),
            ],
            stdin=subprocess.DEVNULL,
        )

    def result(self) -> ComponentResult | ComponentFailure:
        """Wait for the helper and return its result."""
        code = self._process.wait()
        if self._result_file.is_file():
            return pickle.loads(self._result_file.read_bytes())
        return ComponentFailure(
            self.job.component,
            f"the helper process exporting the {self.job.component} exited with code {code} "
            "before finishing",
            "It may have run out of memory; export with workers=1 to use one process",
        )

    def stop(self) -> None:
        """Kill the helper if it is still running (a failure or interrupt elsewhere)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def helper_main(job_file: str, result_file: str) -> int:
    """Entry point of the helper process: run one pickled job, pickle its result."""
    job = pickle.loads(Path(job_file).read_bytes())
    try:
        result = run_job(job)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the caller cleans up
        return 130
    tmp = Path(result_file + ".tmp")
    tmp.write_bytes(pickle.dumps(result))
    os.replace(tmp, result_file)  # the caller never reads a half-written result
    return 0
