"""Text -> image with a bundle: tokenizer, text encoder, DDIM loop with guidance, VAE decoder."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.engine_compat import require_compatible
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import (
    REQUIRED_COMPONENTS,
    TINY_DECODER,
    DistillationRecord,
    ModelEntry,
    kind_of,
)
from edgediff.errors import BackendError, BundleError, InputError
from edgediff.runtime import request_checks as checks
from edgediff.runtime.backends import DEFAULT_BACKEND, Backend, Session, get_backend
from edgediff.runtime.backends.vae_split import VaeParts
from edgediff.runtime.editing import inpaint_blend, noised_start, strength_start
from edgediff.runtime.guidance import cfg_denoiser, embedded_denoiser, is_guided
from edgediff.runtime.image_inputs import image_array, latent_mask, mask_array
from edgediff.runtime.images import to_images, to_pil
from edgediff.runtime.memory import (
    DEFAULT_MEMORY,
    MemoryEstimate,
    available_bytes,
    check_memory_mode,
    estimate_memory,
    large_vae_buffers,
)
from edgediff.runtime.request import (
    DECODERS,
    DEFAULT_COUNT,
    DEFAULT_DECODER,
    DEFAULT_ETA,
    default_strength,
    recommended_guidance,
    recommended_steps,
)
from edgediff.runtime.samplers import StepConstraint, sample_ddim
from edgediff.runtime.schedulers import DDIMScheduler
from edgediff.runtime.tensorrt_flavours import installed_flavours
from edgediff.runtime.tokenizer import PromptTokenizer
from edgediff.runtime.vae_tiling import (
    DEFAULT_TILE,
    decode_tiled,
    decode_tiled_synced,
    encode_tiled,
    encode_tiled_synced,
)

_log = logging.getLogger(__name__)

# Where the shipped default model lives inside the installed package.
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "default-bundle"

OUTPUT_TYPES = ("pil", "np", "latent")
PIPELINE_COMPONENTS = REQUIRED_COMPONENTS  # the denoising pipeline runs exactly these


def _entry(bundle: Bundle, component: str, precision: str | None) -> ModelEntry:
    """The model a precision loads: the U-Net must have it; other components use it if they
    have it (quantisation pays off mostly in the U-Net) and their default otherwise."""
    if precision is None or kind_of(component) == "unet":
        return bundle.model(component, precision)
    models = bundle.manifest.components[component].models
    return models[precision] if precision in models else bundle.model(component)


def _model(
    bundle: Bundle, backend: Backend, component: str, precision: str | None
) -> tuple[str, str, tuple[str, ...]]:
    """(file to load, its precision, files to hash-check) of a component for this backend."""
    if backend.model_format == "engine":
        engine = bundle.engine(component, precision, backend.platform.toolkit.flavour)
        require_compatible(engine, backend.platform, bundle.root)
        return engine.file, engine.precision, (engine.file,)
    entry = _entry(bundle, component, precision)
    return entry.file, entry.precision, entry.files


def _decoder_component(bundle: Bundle, decoder: str) -> str:
    """The component a decoder choice loads, or a one-line error."""
    if decoder not in DECODERS:
        raise InputError(f"unknown decoder '{decoder}'", f"Use one of: {', '.join(DECODERS)}")
    if decoder == "full":
        return "vae_decoder"
    if TINY_DECODER not in bundle.manifest.components:
        raise BundleError(
            "this bundle has no tiny decoder",
            "Make one with `edgediff distill` and export its OUT folder, or use --decoder full",
        )
    return TINY_DECODER


def _backend_options(name: str, bundle: Bundle) -> dict[str, Any]:
    """Options a backend named on its own gets from the bundle: ort-trt caches engines in it,
    TensorRT-RTX its runtime cache, and where both TensorRTs are installed the bundle's
    engines say which one to use; ort-cpu runs a VAE with large feature maps without its
    arena (runtime.memory.large_vae_buffers)."""
    if name == "ort-cpu":
        return {"vae_arena": not large_vae_buffers(bundle)}
    if name == "ort-trt":
        return {"cache_dir": bundle.path("engines/ort-trt")}
    if name != "trt":
        return {}
    options: dict[str, Any] = {"cache_dir": bundle.path("engines/rtx")}
    flavours = {e.flavour for e in bundle.manifest.engines}
    if len(flavours) == 1 and len(installed_flavours()) > 1:
        options["flavour"] = flavours.pop()
    return options


def default_bundle() -> Path:
    """The bundle shipped inside the package, or an error saying how to get one."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise BundleError(
            "no bundle was named and this install ships no default model",
            "Name one with --bundle DIR (make one with `edgediff random-checkpoint CKPT` and "
            "`edgediff export CKPT DIR`)",
        )
    return DEFAULT_BUNDLE


# Auto VAE tiling leaves this share of the memory available for the rest of the process.
_TILING_HEADROOM = 0.8

# Where a VAE component's session for tiles (its GroupNorm statistics shared) is kept.
_TILED = "{}+tiles"

# feeds by input name -> outputs by output name: one call of a component's model.
ModelCall = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True)
class Models:
    """The three model calls one generation makes. Pipeline.models runs the loaded sessions;
    wrap or replace one (dataclasses.replace) to record its inputs or try another model."""

    text_encoder: ModelCall
    unet: ModelCall
    vae_decoder: ModelCall
    vae_encoder: ModelCall | None = None  # None: the pipeline's (image-to-image, inpainting)


@dataclass
class Timings:
    """Seconds spent inside each component's backend calls during the last generation."""

    components: dict[str, float] = field(default_factory=dict)
    total: float = 0.0

    def add(self, component: str, seconds: float) -> None:
        """Count `seconds` against `component`."""
        self.components[component] = self.components.get(component, 0.0) + seconds

    @property
    def backend(self) -> float:
        """Seconds inside backend calls, all components together."""
        return sum(self.components.values())


class Pipeline:
    """A loaded bundle that generates images; call it like diffusers' StableDiffusionPipeline."""

    def __init__(
        self,
        bundle: Bundle,
        sessions: dict[str, Session],
        tokenizer: PromptTokenizer,
        scheduler: DDIMScheduler,
        backend: Backend,
        owns_backend: bool = False,
        memory: str = DEFAULT_MEMORY,
    ):
        self.bundle = bundle
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.backend = backend
        self._owns_backend = owns_backend  # made by load() from a name: closed with the pipeline
        self.config = bundle.manifest.model
        self.last_timings = Timings()
        # The bundle files each component was loaded from (set by load()).
        self.model_files: dict[str, tuple[str, ...]] = {}
        # How load() picked models, for U-Net variants loaded on first use.
        self._precision: str | None = None
        self._verify = True
        self.decoder = "vae_decoder"  # the decoder component: "vae_decoder" or TINY_DECODER
        self.memory = check_memory_mode(memory)
        self._plain_tiles: set[str] = set()  # VAE components tiled without shared statistics

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike | Bundle | None = None,
        backend: str | Backend = DEFAULT_BACKEND,
        precision: str | None = None,
        verify: bool = True,
        decoder: str = DEFAULT_DECODER,
        backend_options: dict[str, Any] | None = None,
        memory: str = DEFAULT_MEMORY,
    ) -> Pipeline:
        """Open a bundle (the shipped default if None), check its hashes, load each component.

        `precision` ("fp32", "fp16", "int8", "fp8") picks the U-Net's model, and each other
        component's where it has one; None loads each component's default. With the "trt"
        backend it picks the engines `edgediff build` made (None: the only set built).
        `decoder` "tiny" decodes with the bundle's tiny decoder (edgediff distill) instead of
        the VAE's. `backend_options` go to the backend `backend` names (e.g. ort-* `threads`).
        `memory` (runtime.memory): "fast" keeps every model and what its runs allocated,
        "balanced" keeps the models and frees each run's activations, "low" loads each model
        for its stage of a generation and releases it after (slower: every call loads them).
        """
        memory = check_memory_mode(memory)
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(default_bundle() if bundle is None else bundle)
        manifest = bundle.manifest
        decoder_component = _decoder_component(bundle, decoder)
        # Cheap checks of the bundle first, so a bad one fails before any model is loaded.
        if verify:
            bundle.verify([manifest.tokenizer.file])
        tokenizer = PromptTokenizer(
            bundle.path(manifest.tokenizer.file),
            manifest.tokenizer.max_length,
            manifest.tokenizer.pad_token_id,
        )
        scheduler = DDIMScheduler.from_config(manifest.scheduler)
        owns_backend = isinstance(backend, str)
        if isinstance(backend, str):
            options = {**_backend_options(backend, bundle), **(backend_options or {})}
            if backend.startswith("ort-"):
                options.setdefault("memory", memory)
            backend = get_backend(backend, **options)
        elif backend_options:
            raise InputError("backend_options apply to a backend named, not to a Backend object")
        sessions: dict[str, Session] = {}
        try:
            # The U-Net of the bundle's recommended step count; others load on first use.
            unet = bundle.unet_for(recommended_steps(bundle.manifest))
            names = ("text_encoder", unet, decoder_component)
            models = {n: _model(bundle, backend, n, precision) for n in names}
            if verify:
                bundle.verify([f for m in models.values() for f in m[2]])
            # "low" loads each model when its stage runs (a bad model fails then, not here).
            for name, (file, model_precision, _) in models.items():
                if memory != "low":
                    sessions[name] = backend.load(bundle.path(file), model_precision)
        except BaseException:
            for session in sessions.values():
                session.close()
            if owns_backend:
                backend.close()
            raise
        pipeline = cls(bundle, sessions, tokenizer, scheduler, backend, owns_backend, memory)
        pipeline.model_files = {name: files for name, (_, _, files) in models.items()}
        pipeline._precision, pipeline._verify = precision, verify
        pipeline.decoder = decoder_component
        return pipeline

    def close(self) -> None:
        """Release the models (and the backend, if load() made it); the pipeline cannot run
        after. Safe to call twice."""
        for session in self.sessions.values():
            session.close()
        if self._owns_backend:
            self.backend.close()
            self._owns_backend = False

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the models and the steps

    def unet_for(self, steps: int | None) -> str:
        """The U-Net component that runs `steps` steps: the one distilled for that many if the
        bundle has it, else "unet"."""
        return self.bundle.unet_for(steps)

    def models_for(self, steps: int | None) -> Models:
        """The model calls of a `steps`-step generation, each timed into last_timings."""
        return Models(
            text_encoder=self._timed("text_encoder"),
            unet=self._timed(self.unet_for(steps)),
            vae_decoder=self._timed(self.decoder),
            vae_encoder=self._timed("vae_encoder"),
        )

    @property
    def models(self) -> Models:
        """The model calls of a generation of the default step count (`default_steps`)."""
        return self.models_for(self.default_steps)

    def session(self, component: str) -> Session:
        """The session of `component`, loaded (and hash-checked) the first time it is needed:
        a bundle's other U-Nets cost nothing until a step count asks for one."""
        if component not in self.sessions:
            file, precision = self._checked_model(component)
            self.sessions[component] = self.backend.load(file, precision)
        return self.sessions[component]

    def _checked_model(self, component: str) -> tuple[Path, str]:
        """(path, precision) of the model `component` loads, its files hash-checked."""
        file, precision, files = _model(self.bundle, self.backend, component, self._precision)
        if self._verify:
            self.bundle.verify(list(files))
        self.model_files[component] = files
        return self.bundle.path(file), precision

    def release(self, *components: str) -> None:
        """Close the sessions of `components` (they load again when next needed)."""
        for component in components:
            session = self.sessions.pop(component, None)
            if session is not None:
                session.close()

    def _stage_done(self, *components: str) -> None:
        """End of a generation's stage: memory "low" releases the models it ran."""
        if self.memory == "low":
            self.release(*components, *(_TILED.format(c) for c in components))

    def _files(self, component: str) -> tuple[str, ...]:
        """The bundle files `component` loads from, without loading it."""
        if component not in self.model_files:
            files = _model(self.bundle, self.backend, component, self._precision)[2]
            self.model_files[component] = files
        return self.model_files[component]

    def _timed(self, component: str) -> ModelCall:
        kind = kind_of(component)

        def run(**feeds: np.ndarray) -> dict[str, np.ndarray]:
            session = self.session(component)
            start = time.perf_counter()
            out = session.run(feeds)
            self.last_timings.add(kind, time.perf_counter() - start)
            return out

        return run

    def encode(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        per_prompt: int,
        models: Models | None = None,
    ) -> np.ndarray:
        """Text embeddings for the U-Net: [uncond; cond] (each repeated per image) when guided."""
        texts = prompts if negative_prompts is None else negative_prompts + prompts
        ids = self.tokenizer(texts)
        run = (models or self.models).text_encoder
        embeddings = run(input_ids=ids)["last_hidden_state"]
        # Image i of prompt p sits at p * per_prompt + i, as in diffusers.
        cond = np.repeat(embeddings.astype(np.float32), per_prompt, axis=0)
        cond.flags.writeable = False  # lets device backends keep it on the GPU for every step
        return cond

    def initial_noise(
        self, batch: int, height: int, width: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The standard normal latents a seeded call starts from, before the scheduler's
        scaling: what `latents=` takes to make the same images as `seed=`."""
        f = self.config.vae_scale_factor
        shape = (batch, self.config.latent_channels, height // f, width // f)
        return rng.standard_normal(shape, dtype=np.float32)

    def initial_latents(
        self, batch: int, height: int, width: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Standard normal latents scaled by the scheduler's initial sigma."""
        noise = self.initial_noise(batch, height, width, rng)
        return noise * np.float32(self.scheduler.init_noise_sigma)

    def distillation_for(self, steps: int | None) -> DistillationRecord | None:
        """What the U-Net of a `steps`-step generation was distilled for (None: not distilled)."""
        component = self.unet_for(steps)
        source = self._files(component)[0]
        # An engine names the ONNX model it was built from, which holds the record.
        source = {e.file: e.onnx for e in self.bundle.manifest.engines}.get(source, source)
        for entry in self.bundle.manifest.components[component].models.values():
            if entry.file == source:
                return entry.distillation
        return None

    def guidance_embedded_for(self, steps: int | None) -> bool:
        """Whether that U-Net was guidance-distilled: it takes w and runs once on batch N."""
        component = self.unet_for(steps)
        if component in self.sessions:
            return "guidance" in self.sessions[component].input_names
        # Not loaded ("low" memory, or a variant not run yet): the bundle's record says.
        return self.bundle.guidance_embedded(component)

    @property
    def guidance_embedded(self) -> bool:
        """Whether the U-Net of the default step count takes w as an input."""
        return self.guidance_embedded_for(self.default_steps)

    @property
    def default_steps(self) -> int:
        """Steps a call makes when none are asked for: the bundle's recommendation, if any."""
        return recommended_steps(self.bundle.manifest)

    @property
    def default_guidance(self) -> float:
        """The guidance scale of a call that asks for neither steps nor a scale."""
        return recommended_guidance(self.bundle)

    def guidance_for(self, steps: int | None) -> float:
        """The guidance scale of a `steps`-step call that asks for none: the bundle's
        recommendation for the kind of U-Net that runs it (`runtime.request`)."""
        return recommended_guidance(self.bundle, steps)

    def denoiser(
        self,
        cond: np.ndarray,
        guidance_scale: float,
        models: Models | None = None,
        steps: int | None = None,
        conditioning: np.ndarray | None = None,
    ) -> Callable[[np.ndarray, int], np.ndarray]:
        """The guided U-Net of a `steps`-step generation as a function of (latents, timestep),
        for a sampler to walk with. `conditioning` (an inpainting U-Net's mask and masked-image
        latents, one per image) is concatenated to the latents on the channel axis."""
        run = (models or self.models_for(steps)).unet

        def noise_prediction(
            sample: np.ndarray, t: int, embeddings: np.ndarray, *guidance: np.ndarray
        ) -> np.ndarray:
            if conditioning is not None:
                # [x; x] under guidance: the same mask and masked image for both halves.
                tiled = np.concatenate([conditioning] * (len(sample) // len(conditioning)))
                sample = np.concatenate([sample, tiled], axis=1)
            feeds = {
                "sample": sample,
                "timestep": np.array([t], dtype=np.float32),
                "encoder_hidden_states": embeddings,
            }
            if guidance:
                feeds["guidance"] = guidance[0]
            return run(**feeds)["out_sample"].astype(np.float32)

        if self.guidance_embedded_for(steps):
            return embedded_denoiser(noise_prediction, cond, guidance_scale)
        return cfg_denoiser(noise_prediction, cond, guidance_scale)

    def encode_image(
        self, images: np.ndarray, models: Models | None = None, tiled: bool = False
    ) -> np.ndarray:
        """Images N×3×H×W in [-1, 1] -> latents, scaled: the mean of the VAE's posterior.

        diffusers samples the posterior with its generator; its spread is far below what the
        added noise brings, and the mean keeps an image's latents independent of the seed.
        `tiled` encodes in overlapping tiles (runtime.vae_tiling): memory bounded at any size.
        """
        run = (models or self.models).vae_encoder or self._timed("vae_encoder")
        images = images.astype(np.float32)
        f = self.config.vae_scale_factor
        if tiled:
            synced = self._tile_session("vae_encoder")
            if synced is not None:
                parameters = encode_tiled_synced(synced.tiled, images, f, whole=synced.whole)
            else:
                encode = lambda x: run(sample=x)["latent_parameters"]  # noqa: E731
                parameters = encode_tiled(encode, images, f)
        else:
            parameters = run(sample=images)["latent_parameters"]
        mean = parameters[:, : self.config.latent_channels].astype(np.float32)
        return mean * np.float32(self.config.scaling_factor)

    def decode(
        self, latents: np.ndarray, models: Models | None = None, tiled: bool = False
    ) -> np.ndarray:
        """Latents -> float images NHWC in [0, 1]; `tiled` decodes in overlapping tiles."""
        z = latents / np.float32(self.config.scaling_factor)
        run = (models or self.models).vae_decoder
        if tiled:
            f = self.config.vae_scale_factor
            synced = self._tile_session(self.decoder)
            if synced is not None:
                return to_images(decode_tiled_synced(synced.tiled, z, f, whole=synced.whole))
            decode = lambda x: run(latent_sample=x)["sample"]  # noqa: E731
            return to_images(decode_tiled(decode, z, f))
        return to_images(run(latent_sample=z)["sample"])

    def _tile_session(self, component: str) -> VaeParts | None:
        """`component` loaded so that tiles share the whole image's GroupNorm statistics and
        a mid-block attention sees the whole image (ONNX Runtime; vae_tiling and vae_split
        measure why), as timed calls; None where the backend cannot (TensorRT) or the model
        has no GroupNorm (tiles are exact then)."""
        load = getattr(self.backend, "load_vae_for_tiles", None)
        key = _TILED.format(component)
        if component in self._plain_tiles:
            return None
        if load is None:
            _log.warning(
                "the %s backend cannot share GroupNorm statistics across tiles: %s decodes "
                "in plain tiles, whose colours may shift from tile to tile",
                self.backend.name, component,
            )  # fmt: skip
            self._plain_tiles.add(component)
            return None
        if key not in self.sessions:
            file, precision = self._checked_model(component)
            try:
                parts = load(file, precision)
            except BackendError as e:
                _log.warning("%s: %s runs in plain tiles", e, component)
                self._plain_tiles.add(component)
                return None
            # The whole-image session is not needed while tiles run: release it here.
            if self.memory != "fast":
                self.release(component)
            self.sessions[key] = parts
        parts, kind = self.sessions[key], kind_of(component)
        whole = None if parts.whole is None else self._timed_call(parts.whole.run, kind)
        return VaeParts(self._timed_call(parts.tiled.run, kind), whole, parts.whole_first)

    def _timed_call(self, call: Callable, kind: str) -> Callable:
        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            out = call(feeds)
            self.last_timings.add(kind, time.perf_counter() - start)
            return out

        return run

    # ------------------------------------------------------------ the call

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = DEFAULT_ETA,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = DEFAULT_COUNT,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        output_type: str = "pil",
        progress: bool = False,
        callback: Callable[[int, int, np.ndarray], Any] | None = None,
        models: Models | None = None,
        image: Any = None,
        mask_image: Any = None,
        strength: float | None = None,
        vae_tiling: bool | None = None,
    ) -> Any:
        """Generate images. Returns PIL images, float32 N×H×W×3 in [0, 1] ("np") or latents.

        `num_inference_steps` None makes the bundle's recommended count (`default_steps`), and
        `guidance_scale` None its recommended scale for that count (`guidance_for`); a bundle
        with a U-Net distilled for the count asked runs that one. `callback(step, num_steps,
        latents)` runs after each denoising step. `models` replaces the model calls
        (default: models_for(num_inference_steps)), e.g. to record what each one is fed.

        `image` (a PIL image or an H×W×3 array; one, or one per prompt) makes it image-to-image
        as diffusers' StableDiffusionImg2ImgPipeline: the image's latents noised to the step
        `strength` selects (default: `default_strength`), then the remaining steps. `mask_image`
        (white: repaint) makes it inpainting (default strength 1): by latent blending, where
        outside the mask every step ends on the image's own latents re-noised, or, for a
        bundle whose U-Net inpaints (9 channels), through the U-Net's mask inputs. With an image,
        `latents` is the noise added (default: drawn from the seed). The image is used at its
        size if that is a multiple of the size factor, else resized to `height` × `width`
        when given (`runtime.image_inputs`).

        `vae_tiling` True decodes (and encodes the image) in overlapping tiles, False never;
        None (default) tiles when `needs_vae_tiling` says the whole image would not fit in the
        memory available.
        """
        prompts = checks.prompts(prompt, "prompt")
        n = checks.integer(num_images_per_prompt, "num_images_per_prompt", 1)
        if num_inference_steps is None:
            num_inference_steps = self.default_steps
        num_inference_steps = checks.integer(
            num_inference_steps, "num_inference_steps", 1, self.scheduler.num_train_timesteps
        )
        if guidance_scale is None:
            guidance_scale = self.guidance_for(num_inference_steps)
        guidance_scale = checks.real(guidance_scale, "guidance_scale", 0.0, checks.MAX_GUIDANCE)
        eta = checks.real(eta, "eta", 0.0, 1.0)
        seed = checks.seed(seed)
        if vae_tiling not in (None, True, False):
            raise InputError(f"vae_tiling must be True, False or None, got {vae_tiling!r}")
        latents = checks.latents(latents, self.config.latent_channels)
        _check_outputs_and_hooks(output_type, callback, models)
        source = None
        if image is not None or mask_image is not None:
            source = self._source(
                image, mask_image, strength, len(prompts), height, width, num_inference_steps
            )
            height, width = source.images.shape[2:]
        elif strength is not None:
            raise InputError("strength applies to image-to-image", "Pass an image, or drop it")
        if self.config.inpainting and mask_image is None:
            raise InputError(
                "this bundle's U-Net is an inpainting model: it repaints a masked image",
                "Pass image and mask_image",
            )
        height, width = self._check_size(latents, height, width)
        checks.fits_in_memory(
            len(prompts) * n,
            height,
            width,
            self.config.latent_channels,
            self.config.vae_scale_factor,
        )
        if self.guidance_embedded_for(num_inference_steps):
            negatives = self._check_embedded_guidance(
                negative_prompt, guidance_scale, num_inference_steps
            )
        else:
            negatives = _check_negatives(negative_prompt, len(prompts), guidance_scale)
        if latents is not None and len(latents) != len(prompts) * n:
            raise InputError(
                f"latents hold {len(latents)} images, the request makes {len(prompts) * n}",
                "Pass one latent per prompt and image",
            )
        self.last_timings = Timings()
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        if vae_tiling is None:
            vae_tiling = self.needs_vae_tiling(
                len(prompts) * n, height, width, guidance_scale, num_inference_steps
            )
        try:
            result = self._generate(
                prompts, negatives, n, num_inference_steps, guidance_scale, eta, height, width,
                latents, source, rng, output_type, callback, progress, models, vae_tiling,
            )  # fmt: skip
        finally:
            self._stage_done(*list(self.sessions))  # "low": nothing stays loaded, even on error
        self.last_timings.total = time.perf_counter() - start
        return to_pil(result) if output_type == "pil" else result

    def _generate(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        n: int,
        steps: int,
        guidance_scale: float,
        eta: float,
        height: int,
        width: int,
        latents: np.ndarray | None,
        source: _Source | None,
        rng: np.random.Generator,
        output_type: str,
        callback: Callable[[int, int, np.ndarray], Any] | None,
        progress: bool,
        models: Models | None,
        vae_tiling: bool,
    ) -> np.ndarray:
        """The stages of a checked call: encode the text (and image), denoise, decode."""
        models = models or self.models_for(steps)
        cond = self.encode(prompts, negatives, n, models)
        self._stage_done("text_encoder")
        skip, constraint, conditioning = 0, None, None
        if source is None:
            if latents is None:
                x = self.initial_latents(len(prompts) * n, height, width, rng)
            else:
                x = latents * np.float32(self.scheduler.init_noise_sigma)
        else:
            x, skip, constraint, conditioning = self._image_start(
                source, n, latents, rng, steps, models, vae_tiling
            )
            self._stage_done("vae_encoder")
        x = sample_ddim(
            self.denoiser(cond, guidance_scale, models, steps, conditioning),
            x,
            self.scheduler,
            steps,
            eta=eta,
            rng=rng,
            callback=callback,
            progress=_progress if progress else None,
            start=skip,
            constraint=constraint,
        )
        self._stage_done(self.unet_for(steps))
        return x if output_type == "latent" else self.decode(x, models, vae_tiling)

    def _source(
        self,
        image: Any,
        mask_image: Any,
        strength: Any,
        count: int,
        height: Any,
        width: Any,
        steps: int,
    ) -> _Source:
        """The checked image(s), mask(s) and strength of an image-to-image or inpainting call."""
        if image is None:
            raise InputError("mask_image needs the image it masks", "Pass image too")
        if strength is None:
            strength = default_strength(mask_image is not None)
        strength = checks.real(strength, "strength", 0.0, 1.0)
        start = strength_start(steps, strength)
        given = {
            name: None if value is None else checks.integer(value, name, 1)
            for name, value in (("height", height), ("width", width))
        }
        # A height or width that is not a multiple is refused by _check_size, as without image.
        m = self.config.size_multiple
        images = image_array(image, count, given["height"], given["width"], m)
        mask = None
        if mask_image is not None:
            resized = given["height"] is not None or given["width"] is not None
            mask = mask_array(mask_image, count, images.shape[2:], resized)
        return _Source(images, mask, strength, start)

    def _image_start(
        self,
        source: _Source,
        per_prompt: int,
        noise: np.ndarray | None,
        rng: np.random.Generator,
        steps: int,
        models: Models,
        tiled: bool = False,
    ) -> tuple[np.ndarray, int, StepConstraint | None, np.ndarray | None]:
        """(starting latents, timesteps skipped, the inpainting blend or None, an inpainting
        U-Net's extra input channels or None)."""
        image_latents = self.encode_image(source.images, models, tiled)
        image_latents = np.repeat(image_latents, per_prompt, axis=0)
        if noise is None:
            noise = rng.standard_normal(image_latents.shape, dtype=np.float32)
        elif noise.shape != image_latents.shape:
            raise InputError(
                f"latents (the noise added to the image) have shape {noise.shape}, the image's "
                f"latents {image_latents.shape}"
            )
        pure = source.mask is not None and source.strength == 1.0
        x = noised_start(self.scheduler, image_latents, noise, steps, source.start, pure)
        if source.mask is None:
            return x, source.start, None, None
        mask = np.repeat(latent_mask(source.mask, self.config.vae_scale_factor), per_prompt, 0)
        if self.config.inpainting:
            # The U-Net sees the mask and what is left of the image, as diffusers' 9-channel
            # inpainting does: masked pixels are 0 (mid-grey) before encoding.
            masked = self.encode_image(source.images * (source.mask < 0.5), models, tiled)
            conditioning = np.concatenate([mask, np.repeat(masked, per_prompt, 0)], axis=1)
            return x, source.start, None, conditioning
        blend = inpaint_blend(self.scheduler, mask, image_latents, noise, steps, source.start)
        return x, source.start, blend, None

    def memory_estimate(
        self,
        images: int = DEFAULT_COUNT,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        vae_tiling: bool = False,
        synced_tiles: bool | None = None,
    ) -> MemoryEstimate:
        """Estimated weights and activations of a generation's models (runtime.memory);
        `.peak(mode)` is the process's estimated peak in a memory mode. `synced_tiles`: whether
        VAE tiles share GroupNorm statistics (None: as this backend decodes them)."""
        steps = steps or self.default_steps
        if guidance_scale is None:
            guidance_scale = self.guidance_for(steps)
        size = self.config.default_image_size
        unet = self.unet_for(steps)
        guided = is_guided(guidance_scale) and not self.guidance_embedded_for(steps)
        files = {c: self._files(c) for c in ("text_encoder", unet, self.decoder)}
        tile = DEFAULT_TILE * self.config.vae_scale_factor if vae_tiling else None
        if synced_tiles is None:  # as _tile_session will decode: plain where it fell back
            shares = hasattr(self.backend, "load_vae_for_tiles")
            synced_tiles = shares and self.decoder not in self._plain_tiles
        return estimate_memory(
            self.bundle, files, images, height or size, width or size, images * (1 + guided),
            tile, synced_tiles,
        )  # fmt: skip

    def needs_vae_tiling(
        self, images: int, height: int, width: int, guidance_scale: float, steps: int
    ) -> bool:
        """Whether to decode in tiles: when decoding the whole image would need more than
        the memory available now (MemAvailable, less headroom). Tiles are not bitwise the
        whole image (runtime.vae_tiling measures how far), so they are used only when needed."""
        whole = self.memory_estimate(images, height, width, guidance_scale, steps)
        return whole.activations[self.decoder] > _TILING_HEADROOM * available_bytes()

    def _check_embedded_guidance(
        self, negative_prompt: Any, guidance_scale: float, steps: int
    ) -> None:
        """A guidance-distilled U-Net has no unconditional pass, so no negative prompt."""
        if negative_prompt not in (None, "", [""]):
            raise InputError(
                "this bundle's U-Net is guidance-distilled without negative prompts, so it "
                "cannot use one",
                "Drop the negative prompt, or generate with the teacher's bundle",
            )
        distilled = self.distillation_for(steps)
        if distilled is not None:
            if steps not in distilled.steps:
                learnt = ", ".join(map(str, distilled.steps))
                _log.warning(
                    "%d steps run a U-Net distilled for %s steps off the grid it learnt, so "
                    "images may be worse than at %s steps",
                    steps, learnt, learnt,
                )  # fmt: skip
            low, high = distilled.guidance_range
            if not low <= guidance_scale <= high:
                _log.warning(
                    "guidance %g is outside the range the U-Net was distilled for (%g to %g)",
                    guidance_scale, low, high,
                )  # fmt: skip
        return None

    def _check_size(self, latents: np.ndarray | None, height: Any, width: Any) -> tuple[int, int]:
        """(height, width) in pixels: given, from the latents, or the model's default."""
        f = self.config.vae_scale_factor
        m = self.config.size_multiple
        given = {
            name: None if value is None else checks.integer(value, name, 1)
            for name, value in (("height", height), ("width", width))
        }
        if latents is not None:
            from_latents = (latents.shape[2] * f, latents.shape[3] * f)
            height = given["height"] or from_latents[0]
            width = given["width"] or from_latents[1]
            if from_latents != (height, width):
                raise InputError(f"latents of shape {latents.shape} do not fit {height}x{width}")
        else:
            height = given["height"] or self.config.default_image_size
            width = given["width"] or self.config.default_image_size
        for name, value in (("height", height), ("width", width)):
            if value % m:
                lower = max(m, value - value % m)
                raise InputError(
                    f"{name} {value} is not a positive multiple of {m} (VAE factor {f} × U-Net "
                    f"factor {self.config.unet_scale_factor})",
                    f"Use e.g. {lower} or {lower + m}",
                )
        return height, width


@dataclass(frozen=True)
class _Source:
    """What an image-to-image or inpainting call starts from."""

    images: np.ndarray  # N×3×H×W in [-1, 1], one per prompt
    mask: np.ndarray | None  # N×1×H×W of 0 (keep) and 1 (repaint)
    strength: float
    start: int  # timesteps skipped


def _check_outputs_and_hooks(output_type: Any, callback: Any, models: Any) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable or None, got {callback!r}")
    if models is not None and not isinstance(models, Models):
        raise InputError(f"models must be a Models or None, got {type(models).__name__}")


def _check_negatives(negative_prompt: Any, count: int, guidance_scale: float) -> list[str] | None:
    """One negative prompt per prompt when guided ("" if none was given); None when not."""
    if not is_guided(guidance_scale):
        return None
    negatives = checks.prompts(
        "" if negative_prompt is None else negative_prompt, "negative_prompt"
    )
    if len(negatives) == 1:
        negatives = negatives * count
    if len(negatives) != count:
        raise InputError(
            f"{len(negatives)} negative prompts for {count} prompts",
            "Give one negative prompt, or one per prompt",
        )
    return negatives


def _progress(timesteps: np.ndarray) -> Any:
    from tqdm.auto import tqdm

    return tqdm(timesteps, desc="denoising", unit="step", leave=False)
