"""What a process that draws does, whichever engine runs it: load one checkpoint's pipeline once, swap LoRAs when a
batch needs other ones, draw a work unit and put its images in the store.

Plain data (:class:`PipelineSpec`, :data:`WorkUnit`) travels from the generate stage to the engine and, for
``ray``, to its actors; :func:`image_runtime` is the runtime part of every image's key, which a Ray worker compares
with the driver's before it draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ghostreview.generation.draw import draw
from ghostreview.generation.drawversion import DRAW_VERSION  # part of every image's key; when to bump it: that module
from ghostreview.generation.families import FLUX_FAMILY
from ghostreview.generation.flux import draw_flux, open_flux_checkpoint
from ghostreview.generation.flux_lora import FluxLoraAdapters
from ghostreview.generation.loading import (
    CheckpointFile,
    checkpoint_config_dir,
    device_optimizations,
    open_pipeline,
    optimize_pipeline,
)
from ghostreview.generation.lora import PARTIAL_FLAG, LoraAdapters, LoraSpec
from ghostreview.generation.store import ImageStore, StoreWriter
from ghostreview.util.runtime import library_versions

if TYPE_CHECKING:
    from ghostreview.generation.plan import ImageJob

WorkUnit = list  # [(ImageJob, key, infotext), ...]: one batch of missing images, the unit an engine hands out


@dataclass(frozen=True)
class PipelineSpec:
    """How to load one checkpoint's pipeline: plain data, so it travels to Ray workers (same paths on every node).

    ``checkpoint`` is the file as the generate stage inspected it (``loading.inspect_checkpoint``): its family and
    tiny-kit marker are read from there, never from the file again.
    """

    checkpoint: CheckpointFile
    config_dir: Path | None  # None: the family's shipped config (or the tiny one for kit files), under ``cache``
    vae: Path | None
    allow_pickle: bool
    prediction: str
    device: str  # resolved: "cpu", "cuda", "cuda:1"
    dtype: str  # torch dtype name: "float32", "float16", "bfloat16"
    cpu_threads: int
    cache: Path
    batch_size: int  # images per forward (generation.batch_size): part of every image's key
    clip_l: Path | None = None  # Flux: the separate files of a transformer-only checkpoint (generation/flux.py)
    t5xxl: Path | None = None
    t5_tokenizer: Path | None = None  # Flux, real-size: the T5 tokenizer folder (the kit's is built offline)

    @property
    def family(self) -> str:
        return self.checkpoint.family


def load_spec_pipeline(spec: PipelineSpec):
    """The diffusers pipeline of ``spec`` (the checkpoint is loaded once per process that draws), with the device's
    speed options (:func:`generation.loading.optimize_pipeline`)."""
    import torch

    if spec.family == FLUX_FAMILY:
        return open_flux_checkpoint(spec.checkpoint, spec.cache / "configs", config_dir=spec.config_dir,
                                    clip_l=spec.clip_l, t5xxl=spec.t5xxl, vae=spec.vae,
                                    t5_tokenizer=spec.t5_tokenizer, dtype=getattr(torch, spec.dtype),
                                    device=spec.device)
    config_dir = spec.config_dir or checkpoint_config_dir(spec.checkpoint, spec.family, spec.cache / "configs")
    pipe = open_pipeline(spec.checkpoint, spec.family, config_dir, vae=spec.vae, allow_pickle=spec.allow_pickle,
                         prediction_type=spec.prediction if spec.prediction != "epsilon" else None,
                         dtype=getattr(torch, spec.dtype), device=spec.device)
    return optimize_pipeline(pipe, spec.device)  # the benchmarked path; nothing on the CPU (bit-identical there)


def pipeline_drawer(pipe, family: str, batch_size: int) -> Callable[[Sequence[ImageJob]], list]:
    """A ``draw_batch`` for :func:`draw_unit` that switches LoRAs only when a batch needs other ones (each file is
    loaded once, :class:`generation.lora.LoraAdapters`); every forward
    holds ``batch_size`` images (see :func:`generation.draw.draw`). Images drawn with a LoRA applied in part carry
    ``lora_partial: <status>`` among their flags (a LoRA diffusers applied in part, or failed to load: see
    :meth:`generation.lora.LoraAdapters.activate`); the images are drawn with the LoRAs that did load, and excluded."""
    current: list[tuple[LoraSpec, ...]] = [()]
    partial: list[list[str]] = [[]]  # the flags of the active LoRAs
    flux = family == FLUX_FAMILY  # its own LoRA formats and drawing (generation/flux_lora.py, generation/flux.py)
    adapters = (FluxLoraAdapters(pipe) if flux else LoraAdapters(pipe, family))  # each file loaded once per pipeline

    def draw_batch(batch: Sequence[ImageJob]) -> list:
        if batch[0].loras != current[0]:
            problems = adapters.activate(batch[0].loras)
            partial[0] = [f"{PARTIAL_FLAG}: {status}" for status in problems.values()]
            current[0] = batch[0].loras
        requests = [j.request for j in batch]
        drawn = draw_flux(pipe, requests, batch_size) if flux else draw(pipe, family, requests, batch_size=batch_size)
        return [(image, flags + partial[0]) for image, flags in drawn]

    return draw_batch


def draw_unit(unit: WorkUnit, store: ImageStore | StoreWriter, draw_batch: Callable[[Sequence[ImageJob]], list]) -> int:
    """Draw one unit and put each image in the store (the batch is drawn together, then stored image by image); with
    a :class:`StoreWriter` the images are queued and stored on its thread while the next unit is drawn."""
    for (job, key, text), (image, flags) in zip(unit, draw_batch([j for j, _, _ in unit]), strict=True):
        store.put(key, image, text, {"flags": flags, "task": job.task, "item": job.item, "seed": job.seed})
    return len(unit)


def image_runtime(device: str, dtype, batch_size: int) -> dict[str, str]:
    """The runtime part of every image key: library versions, device type, dtype, the drawing code's version, the
    forward batch shape and, on the CPU, torch's thread count (float results depend on both: a fixed shape per
    forward makes them independent of the batch-mates, not of the shape; 1 vs 2 threads moved 12 of 55,296 8-bit
    values of four tiny hires images); off the CPU, the speed options the pipeline runs with
    (:func:`generation.loading.device_optimizations`)."""
    import torch

    runtime = library_versions() | {"device": device.split(":")[0], "dtype": str(dtype), "draw": DRAW_VERSION,
                                    "batch": str(batch_size)}
    if runtime["device"] == "cpu":
        return runtime | {"threads": str(torch.get_num_threads())}
    return runtime | {"optimizations": ",".join(device_optimizations(device))}  # they change the rounding there
