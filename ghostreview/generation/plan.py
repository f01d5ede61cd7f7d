"""The plan of one model's review: every image of the benchmark as an :class:`ImageJob`, what decides its pixels
(:func:`job_fields`, hashed into its key in the store), its A1111 infotext, and the batches it is drawn in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ghostreview.generation import flux
from ghostreview.generation.draw import DrawRequest, Hires
from ghostreview.generation.families import FLUX_FAMILY
from ghostreview.generation.infotext import (
    AUTOMATIC,
    SCHEDULE_LABELS,
    TIMESTEP_SAMPLERS,
    a1111_sampler_fields,
    combined_sampler_name,
    flux_fields,
    format_infotext,
    format_lora_hashes,
    read_a1111_sampler,
    split_schedule,
)
from ghostreview.generation.lora import LoraSpec, status_flag
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.generation.samplers import SAMPLERS, SCHEDULE_FLAGS, unknown_name_message
from ghostreview.protocol import Benchmark, BenchmarkError, LoraEntry, benchmark_items, model_lora_table
from ghostreview.util.hashing import autov2

SCHEDULE_TYPES = (AUTOMATIC, *SCHEDULE_FLAGS)  # the values generation.schedule_type takes (A1111's labels)


class SamplerChoiceError(ValueError):
    """A sampler and schedule type that name no sampler we draw with; ``key`` is the setting at fault ("sampler" or
    "schedule_type"), the message lists the valid values."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def sampler_name(sampler: str, schedule_type: str | None = None) -> str:
    """The sampler images are drawn with (a key of ``samplers.SAMPLERS``, the name their store keys record) for
    params' ``generation.sampler`` and ``generation.schedule_type``.

    ``schedule_type`` None: ``sampler`` alone decides, a combined name as A1111 wrote them before 1.9 ("DPM++ 2M
    Karras"; a plain "DPM++ 2M" samples the model's own sigmas, Uniform). A schedule type is A1111 1.9's field and
    folds into the name: ("DPM++ 2M", "Karras") -> "DPM++ 2M Karras", so both forms draw the same images under the
    same keys; "Automatic" is A1111's default schedule for that sampler (Karras for DPM++ 2M, Exponential for
    DPM++ 2M SDE and DPM++ 3M SDE, Uniform for Euler) and adds nothing to a name that already ends in a schedule.

    Raises:
        SamplerChoiceError: an unknown sampler or schedule type (with the valid ones and the closest), a schedule
            type that contradicts the one the name ends in, one given to a time-step sampler (DDIM, PLMS, UniPC: no
            sigma schedule), or one not offered for that sampler.
    """
    if schedule_type is not None and schedule_type not in SCHEDULE_TYPES:
        if schedule_type in SCHEDULE_LABELS:  # A1111 has it; diffusers computes no schedule equal to it
            raise SamplerChoiceError("schedule_type", f"schedule type {schedule_type!r} (A1111's) is not drawn here: "
                                                      f"diffusers has no equal schedule. Valid: "
                                                      f"{', '.join(SCHEDULE_TYPES)}")
        raise SamplerChoiceError("schedule_type", unknown_name_message("schedule type", schedule_type,
                                                                       list(SCHEDULE_TYPES)))
    if sampler not in SAMPLERS:
        raise SamplerChoiceError("sampler", unknown_name_message("sampler", sampler, list(SAMPLERS)))
    if schedule_type is None:
        return sampler
    base, named = split_schedule(sampler)
    if named is not None and schedule_type not in (AUTOMATIC, named):
        raise SamplerChoiceError("schedule_type", f"schedule type {schedule_type!r} contradicts sampler {sampler!r}, "
                                                  f"which names the {named} schedule; write sampler {base!r} with "
                                                  f"schedule type {schedule_type!r}, or leave the schedule type out")
    if base in TIMESTEP_SAMPLERS and schedule_type != AUTOMATIC:
        raise SamplerChoiceError("schedule_type", f"{base!r} is one of A1111's time-step samplers, which have no "
                                                  f"sigma schedule; write schedule type 'Automatic' or leave it out")
    name = combined_sampler_name(*read_a1111_sampler(sampler, schedule_type))
    if name not in SAMPLERS:
        offered = [t for t in SCHEDULE_TYPES if t == AUTOMATIC or combined_sampler_name(base, t) in SAMPLERS]
        automatic = f" (A1111's Automatic for {base!r})" if schedule_type == AUTOMATIC else ""
        raise SamplerChoiceError("schedule_type", f"schedule type {split_schedule(name)[1]!r}{automatic} is not "
                                                  f"available for {base!r}; valid for it: {', '.join(offered)}")
    return name


@dataclass(frozen=True)
class DrawSettings:
    """The settings every image of a run shares (A1111's txt2img fields): what the stage reads from params'
    ``generation`` section, as plain values. ``hires`` None: no hires fix. ``sampler`` is a key of
    ``samplers.SAMPLERS``: params' sampler and schedule type folded by :func:`sampler_name`."""

    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    hires: Hires | None = None
    batch_size: int = 4  # images per forward: part of every image's key
    device: str = "auto"
    dtype: str = "auto"
    cpu_threads: int = 0  # 0 keeps torch's default

    def request(self, prompt: str, negative: str, seed: int, clip_skip: int) -> DrawRequest:
        """The :class:`DrawRequest` of one image drawn with these settings."""
        return DrawRequest(prompt=prompt, negative_prompt=negative, seed=seed, steps=self.steps,
                           cfg_scale=float(self.cfg_scale), width=self.width, height=self.height,
                           sampler=self.sampler, clip_skip=clip_skip, hires=self.hires)


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the checkpoint side of an image."""

    name: str
    family: str
    checkpoint_name: str
    sha256: str
    vae_sha256: str | None = None
    clip_skip: int = 1
    prediction: str = "epsilon"
    random_weights: bool = False
    vae_file: str | None = None  # the standalone VAE's file name (A1111's infotext names it so)
    base: str = ""  # generation.bases: the base whose prompts and settings it is reviewed with ("": before bases)
    ztsnr: bool = False  # sampled on the zero-terminal-SNR schedule (its file's ztsnr marker)
    clip_l_sha256: str | None = None  # Flux: the separate text-encoder files (a swapped T5 file redraws)
    t5xxl_sha256: str | None = None
    flux_variant: str | None = None  # Flux: "flux1-dev" or "flux1-schnell" (flux_keys.flux_variant); None: SD

    @property
    def autov2(self) -> str:
        return autov2(self.sha256)


@dataclass(frozen=True)
class ImageJob:
    """One image of the benchmark for one model; ``status`` is empty when it can be drawn, else its LoRAs' statuses
    (``; ``-joined) and ``status_flags`` their manifest flags (:func:`ghostreview.generation.lora.status_flag`)."""

    task: str
    item: str
    seed: int
    prompt: str
    negative_prompt: str
    loras: tuple[LoraSpec, ...]
    lora_hashes: tuple[tuple[str, str], ...]
    status: str
    request: DrawRequest
    status_flags: tuple[str, ...] = ()


def check_lora_files(entries: Iterable[LoraEntry], lora_dir: Path, source: str) -> None:
    """Every LoRA file of the table must exist before any work starts."""
    missing = [e for e in entries if not (lora_dir / e.file).is_file()]
    if missing:
        names = ", ".join(f"{e.name} -> {lora_dir / e.file}" for e in missing[:5])
        raise BenchmarkError(
            f"{source}: {len(missing)} LoRA file(s) of the benchmark are missing: {names}"
            f"{' ...' if len(missing) > 5 else ''}. Put the files there (see docs/benchmark.md), or leave the LoRA "
            f"task out with benchmark.tasks in params.yaml."
        )


def plan_jobs(
    bench: Benchmark,
    family: str,
    counts: Mapping[str, int],
    tasks: Sequence[str],
    settings: DrawSettings,
    clip_skip: int,
    lora_dir: Path,
    lora_check: Callable[[Path], str],
    file_hash: Callable[[Path], str],
    base: str | None = None,
    prose: bool | None = None,
) -> list[ImageJob]:
    """Every image of the benchmark for one model, in benchmark order.

    ``lora_check(path)`` returns "ok" or the reason a LoRA cannot be used with this family (recorded, not raised);
    ``file_hash(path)`` gives a file's sha256 (cached by the caller); ``base`` the model's base, whose prompt
    conventions apply (``protocol.benchmark_items``; None: the family's plain base); ``prose`` the model entry's
    choice of prose general prompts (None: the base's).
    """
    table_name = model_lora_table(bench, family, base)  # the base's own table (Pony, Illustrious), else the family's
    if table_name is None:  # no LoRA table for this model (Flux without one): no LoRA images
        tasks, counts = [t for t in tasks if t != "lora"], {**counts, "lora": 0}
    table = {e.name: e for e in bench.loras.get(table_name or "", ())}
    source = f"{bench.name} LoRA table {table_name}"
    if "lora" in tasks:
        check_lora_files(table.values(), lora_dir, source)
    jobs = []
    for it in benchmark_items(bench, family, counts, base, prose):
        if it.task not in tasks:
            continue
        text, _ = extract_lora_tags(it.prompt)  # LoRAs are applied to the weights, not through the text
        specs = tuple(LoraSpec(name, lora_dir / table[name].file, weight) for name, weight in it.loras)
        statuses = [s for s in (lora_check(spec.path) for spec in specs) if s != "ok"]
        hashes = tuple((spec.name, file_hash(spec.path)) for spec in specs)
        negative = "" if family == FLUX_FAMILY else it.negative_prompt  # Flux (distilled, CFG 1) reads none
        request = settings.request(text, negative, it.seed, clip_skip)
        jobs.append(ImageJob(it.task, it.item, it.seed, it.prompt, negative, specs, hashes,
                             "; ".join(statuses), request, tuple(dict.fromkeys(map(status_flag, statuses)))))
    return jobs


def job_fields(job: ImageJob, model: ModelIdentity, runtime: Mapping[str, str]) -> dict:
    """Everything that decides an image's pixels; its hash is the image's key in the store."""
    return {
        "checkpoint_sha256": model.sha256,
        "vae_sha256": model.vae_sha256,
        "prediction": model.prediction,
        "loras": [[name, sha, spec.weight] for (name, sha), spec in zip(job.lora_hashes, job.loras)],
        "request": dataclasses.asdict(job.request),
        "runtime": dict(runtime),
    } | ({"ztsnr": True} if model.ztsnr else {}) | text_encoder_fields(model)  # absent when off: older keys stay


def text_encoder_fields(model: ModelIdentity) -> dict:
    """Flux's separate CLIP-L and T5-XXL files are part of the pixels; absent for SD models and all-in-one files."""
    return {k: v for k, v in {"clip_l_sha256": model.clip_l_sha256, "t5xxl_sha256": model.t5xxl_sha256}.items()
            if v}


def infotext_for(job: ImageJob, model: ModelIdentity, version: str, lora_hash: Callable[[Path], str]) -> str:
    """A1111 infotext, so that the PNG dropped into A1111 (1.9 or later) draws this image with the same settings.

    Fields in A1111's order and form, including those whose absence A1111 reads as its own default or the user's
    current setting: ``Schedule type`` always explicit (A1111 reads a missing one as the sampler's default, Karras
    for DPM++ 2M), ``RNG: CPU`` (its default is GPU noise; we draw CPU noise), ``VAE`` (``None``: the checkpoint's
    own), and our prompt encoding (``generation.encode``): ``Emphasis: Original`` and ``Pad conds: True`` (prompt
    and negative padded to one length with empty chunks). ``Lora hashes`` holds ``lora_hash(file)``
    (``a1111_lora_hash``): A1111 finds a tag's LoRA by it, since our tags carry benchmark names, not file names.
    ``Version`` does not parse as an A1111 version, so A1111 switches on none of its backward-compatibility options.
    """
    r = job.request
    sampler, schedule = a1111_sampler_fields(r.sampler)
    fields: dict[str, object] = {
        "Steps": r.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": r.cfg_scale,
        "Seed": r.seed,
        "Size": f"{r.width}x{r.height}",
        "Model hash": model.autov2,
        "Model": model.checkpoint_name,
        "VAE hash": autov2(model.vae_sha256) if model.vae_sha256 else None,
        "VAE": model.vae_file or "None",
        "Denoising strength": r.hires.denoising_strength if r.hires else None,
        "Clip skip": r.clip_skip if r.clip_skip > 1 else None,
        "RNG": "CPU",
        # A1111 1.8's "Noise schedule for sampling" as its infotext writes it (Forge too); pasted back, A1111 samples
        # on the zero-terminal-SNR schedule even for a file without the ztsnr marker
        "Noise Schedule": "Zero Terminal SNR" if model.ztsnr else None,
    }
    if r.hires:
        fields.update({
            "Hires upscale": r.hires.scale,
            "Hires steps": r.hires.steps or None,  # 0: the base steps, which A1111 writes as no field
            "Hires upscaler": r.hires.upscaler,
        })
    if job.loras:
        fields["Lora hashes"] = format_lora_hashes({spec.name: lora_hash(spec.path) for spec in job.loras})
    if model.flux_variant:
        fields.update(flux_infotext_fields(r, model.flux_variant))
    else:  # our SD prompt encoding; Flux encodes with CLIP-L + T5 and no emphasis
        fields.update({"Emphasis": "Original", "Pad conds": True})
    fields["Version"] = version
    return format_infotext(job.prompt, job.negative_prompt, fields)


def flux_infotext_fields(r: DrawRequest, variant: str) -> dict[str, object]:
    """Forge's Flux fields (CFG scale 1, Distilled CFG Scale, Schedule type Simple, Shift), over SD's; Clip skip
    dropped (Flux has none)."""
    guidance, shift = flux.guidance_and_shift(r, variant, flux.real_configs(variant)["scheduler"])
    return {**flux_fields(guidance, shift), "Clip skip": None}


def batches(jobs: Sequence[ImageJob], size: int) -> list[list[ImageJob]]:
    """Consecutive jobs that share their LoRAs and settings, at most ``size`` each (A1111's batch of seed+k)."""
    groups: dict[tuple, list[ImageJob]] = {}
    for job in jobs:
        r = job.request
        key = (job.loras, r.sampler, r.steps, r.cfg_scale, r.width, r.height, r.hires, r.clip_skip)
        groups.setdefault(key, []).append(job)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
