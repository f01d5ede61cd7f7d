"""The generate stage's library side: plan every image of the benchmark, draw only those the store lacks, and rebuild
the stage's output directory (PNGs + manifest) from the store.

Every image is keyed by a hash of everything that decides its pixels (:func:`job_fields`), so a change of the prompt
set or of the seed count draws only the new images, and a killed run resumes from what finished. The missing images
go to an engine in work units (one batch each, :func:`work_units`): :class:`LocalEngine` draws them in this process,
``generation.engine: ray`` on a Ray cluster (:mod:`ghostreview.generation.engines`); both fill the same store with the same keys.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from tqdm import tqdm

from ghostreview import __version__
from ghostreview.protocol import Benchmark, BenchmarkError, LoraEntry, benchmark_items
from ghostreview.generation.draw import DrawRequest, Hires, draw
from ghostreview.util.hashing import autov2, file_sha256
from ghostreview.generation.infotext import a1111_sampler_fields, format_infotext, format_lora_hashes
from ghostreview.generation.loading import (
    CheckpointFile,
    checkpoint_config_dir,
    inspect_checkpoint,
    load_pipeline,
    pipeline_config_dir,
)
from ghostreview.generation.lora import (
    PARTIAL_FLAG,
    LoraSpec,
    a1111_lora_hash,
    apply_loras,
    lora_status,
    model_modules,
    remove_loras,
    status_flag,
)
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.generation.prompts import extract_lora_tags
from ghostreview.util.runtime import library_versions, pick_device, pick_dtype, set_cpu_threads
from ghostreview.generation.store import DamagedEntryError, ImageStore, Problem, job_key
from ghostreview.generation.drawversion import DRAW_VERSION  # part of every image's key; when to bump it: that module


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


def settings_requests(settings: Mapping, prompt: str, negative: str, seed: int, clip_skip: int) -> DrawRequest:
    """A :class:`DrawRequest` from the ``generation`` params (a plain mapping, as in params.yaml)."""
    hires = settings["hires"]
    return DrawRequest(
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=settings["steps"],
        cfg_scale=float(settings["cfg_scale"]),
        width=settings["width"],
        height=settings["height"],
        sampler=settings["sampler"],
        clip_skip=clip_skip,
        hires=Hires(
            scale=float(hires["scale"]),
            steps=hires["steps"],
            denoising_strength=float(hires["denoising_strength"]),
            upscaler=hires["upscaler"],
        )
        if hires["enabled"]
        else None,
    )


def check_lora_files(entries: Iterable[LoraEntry], lora_dir: Path, source: str) -> None:
    """Every LoRA file of the table must exist before any work starts."""
    missing = [e for e in entries if not (lora_dir / e.file).is_file()]
    if missing:
        names = ", ".join(f"{e.name} -> {lora_dir / e.file}" for e in missing[:5])
        raise BenchmarkError(
            f"{source}: {len(missing)} LoRA file(s) of the benchmark are missing: {names}"
            f"{' ...' if len(missing) > 5 else ''}. Put the files there (see docs/benchmark.md), or leave the LoRA task "
            f"out with benchmark.tasks in params.yaml."
        )


def plan_jobs(
    bench: Benchmark,
    family: str,
    counts: Mapping[str, int],
    tasks: Sequence[str],
    settings: Mapping,
    clip_skip: int,
    lora_dir: Path,
    lora_check: Callable[[Path], str],
    file_hash: Callable[[Path], str],
) -> list[ImageJob]:
    """Every image of the benchmark for one model, in benchmark order.

    ``lora_check(path)`` returns "ok" or the reason a LoRA cannot be used with this family (recorded, not raised);
    ``file_hash(path)`` gives a file's sha256 (cached by the caller).
    """
    table = {e.name: e for e in bench.loras.get(family, ())}
    source = f"{bench.name} LoRA table for {family}"
    if "lora" in tasks:
        check_lora_files(table.values(), lora_dir, source)
    jobs = []
    for it in benchmark_items(bench, family, counts):
        if it.task not in tasks:
            continue
        text, _ = extract_lora_tags(it.prompt)  # LoRAs are applied to the weights, not through the text
        specs = tuple(LoraSpec(name, lora_dir / table[name].file, weight) for name, weight in it.loras)
        statuses = [s for s in (lora_check(spec.path) for spec in specs) if s != "ok"]
        hashes = tuple((spec.name, file_hash(spec.path)) for spec in specs)
        request = settings_requests(settings, text, it.negative_prompt, it.seed, clip_skip)
        jobs.append(ImageJob(it.task, it.item, it.seed, it.prompt, it.negative_prompt, specs, hashes,
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
    }


def infotext_for(job: ImageJob, model: ModelIdentity, version: str, lora_hash: Callable[[Path], str]) -> str:
    """A1111 infotext, so that the PNG dropped into A1111 (1.9 or later) draws this image with the same settings.

    Fields in A1111's order and form, including those whose absence A1111 reads as its own default or the user's
    current setting: ``Schedule type`` always explicit (A1111 reads a missing one as the sampler's default, Karras
    for DPM++ 2M), ``RNG: CPU`` (its default is GPU noise; we draw CPU noise), ``VAE`` (``None``: the checkpoint's
    own), and our prompt encoding (``ghostreview.generation.encode``): ``Emphasis: Original`` and ``Pad conds: True`` (prompt
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
    }
    if r.hires:
        fields.update({
            "Hires upscale": r.hires.scale,
            "Hires steps": r.hires.steps or None,  # 0: the base steps, which A1111 writes as no field
            "Hires upscaler": r.hires.upscaler,
        })
    if job.loras:
        fields["Lora hashes"] = format_lora_hashes({spec.name: lora_hash(spec.path) for spec in job.loras})
    fields.update({"Emphasis": "Original", "Pad conds": True, "Version": version})
    return format_infotext(job.prompt, job.negative_prompt, fields)


def batches(jobs: Sequence[ImageJob], size: int) -> list[list[ImageJob]]:
    """Consecutive jobs that share their LoRAs and settings, at most ``size`` each (A1111's batch of seed+k)."""
    groups: dict[tuple, list[ImageJob]] = {}
    for job in jobs:
        r = job.request
        key = (job.loras, r.sampler, r.steps, r.cfg_scale, r.width, r.height, r.hires, r.clip_skip)
        groups.setdefault(key, []).append(job)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


WorkUnit = list  # [(ImageJob, key, infotext), ...]: one batch of missing images, the unit an engine hands out


def warn(message: str) -> None:
    """``warning: <message>`` on stderr, as the stages and the CLI print warnings."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def work_units(jobs: Sequence[ImageJob], keys: Sequence[str], infotexts: Sequence[str], store: ImageStore,
               batch_size: int, warn: Callable[[str], None] = warn) -> list[WorkUnit]:
    """The drawable jobs whose key the store lacks or cannot hand back (``store.check``: each stored PNG is read and
    hashed once), as batches (:func:`batches`) of (job, key, infotext); damaged entries are moved aside
    (:func:`set_aside_damaged`)."""
    drawable = [(j, k, t) for j, k, t in zip(jobs, keys, infotexts) if not j.status]
    problems = {k: store.check(k) for _, k, _ in drawable}
    set_aside_damaged(store, [p for p in problems.values() if p], warn)
    todo = {id(j): (j, k, t) for j, k, t in drawable if problems[k]}
    return [[todo[id(j)] for j in batch] for batch in batches([j for j, _, _ in todo.values()], batch_size)]


def set_aside_damaged(store: ImageStore, problems: Sequence[Problem], warn: Callable[[str], None]) -> None:
    """Move each damaged entry (truncated or replaced PNG, unreadable JSON) to the store's quarantine with a warning
    naming its file; entries without a recorded hash get one warning for all (their redraw overwrites them); absent
    and half-written entries are simply drawn."""
    for p in problems:
        if p.damaged:
            store.set_aside(p)
            warn(f"{p}; moved to {store.quarantine}/, the image is drawn again")
    unhashed = [p for p in problems if p.kind == "unhashed"]
    if unhashed:
        warn(f"{len(unhashed)} image(s) in the store have no recorded sha256 (stored before GhostReview recorded one, "
             f"e.g. {unhashed[0].path}): they are drawn again")


def draw_unit(unit: WorkUnit, store: ImageStore, draw_batch: Callable[[Sequence[ImageJob]], list]) -> int:
    """Draw one unit and put each image in the store (the batch is drawn together, then stored image by image)."""
    for (job, key, text), (image, flags) in zip(unit, draw_batch([j for j, _, _ in unit]), strict=True):
        store.put(key, image, text, {"flags": flags, "task": job.task, "item": job.item, "seed": job.seed})
    return len(unit)


def image_flags(job: ImageJob, key: str, store: ImageStore) -> tuple[list[str], str]:
    """An image's flags and its LoRA status: the plan's reason it cannot be drawn, or the flags stored with it.

    A stored flag may carry its detail after ``": "`` (``lora_partial: partial: <name>: no delta on ...``): the
    manifest's ``flags`` keep the name, the detail of ``lora_partial`` becomes the ``lora_status``.
    """
    if job.status:
        return list(job.status_flags), job.status
    stored = [str(f).partition(": ") for f in store.get_meta(key).get("flags", [])]
    partial = [detail for name, _, detail in stored if name == PARTIAL_FLAG]
    return [name for name, _, _ in stored], "; ".join(partial) or ("ok" if job.loras else "")


def manifest_rows(
    jobs: Sequence[ImageJob], keys: Sequence[str], infotexts: Sequence[str], store: ImageStore, model: ModelIdentity
) -> list[dict]:
    rows = []
    for job, key, text in zip(jobs, keys, infotexts):
        flags, status = image_flags(job, key, store)
        rows.append({
            "model": model.name,
            "family": model.family,
            "task": job.task,
            "item": job.item,
            "seed": job.seed,
            "image": "" if job.status else f"{key}.png",
            "image_hash": key,
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "loras": ", ".join(f"{s.name}:{s.weight:g}" for s in job.loras),
            "lora_status": status,
            "width": job.request.width if not job.request.hires else int(job.request.width * job.request.hires.scale),
            "height": job.request.height if not job.request.hires else int(job.request.height * job.request.hires.scale),
            "flags": ";".join(flags),
            "infotext": text,
        })
    return rows


def write_output(out_dir: Path, rows: Sequence[dict], store: ImageStore, model: ModelIdentity) -> None:
    """Rebuild the stage output from the store: PNGs, ``manifest.csv`` and ``model.json``, swapped in atomically."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for row in rows:
        if row["image"]:
            link_checked(store, row["image_hash"], tmp / row["image"])
    with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    info = dataclasses.asdict(model) | {"autov2": model.autov2}
    (tmp / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def link_checked(store: ImageStore, key: str, dest: Path) -> None:
    """``store.link_into`` for an entry :func:`work_units` checked: a hard link to the checked file costs a stat. An
    entry damaged since (another process wrote to the store, or the disk failed) is moved aside and the stage stops
    with an error; the next run draws it again."""
    try:
        store.link_into(key, dest)
    except DamagedEntryError as exc:
        store.set_aside(exc.problem)
        raise DamagedEntryError(exc.problem, f"{exc.problem}; the image changed in the store after this run checked "
                                f"it (another process wrote to the store, or the disk failed) and was moved to "
                                f"{store.quarantine}/. Run `dvc repro` again: it draws the image anew.") from exc


@dataclass(frozen=True)
class GenerateSettings:
    """Everything ``run_generate`` needs for one model, resolved from params by the stage script."""

    model_name: str
    checkpoint: Path
    config_dir: Path | None
    vae: Path | None
    clip_skip: int
    prediction: str
    allow_pickle: bool
    lora_dirs: Mapping[str, Path]
    counts: Mapping[str, int]
    tasks: Sequence[str]
    generation: object  # ghostreview.config.GenerationParams
    store: Path
    cache: Path


def model_identity(s: GenerateSettings, ckpt: CheckpointFile, hash_cache: Path) -> ModelIdentity:
    """The checkpoint side of every image, from the checkpoint read once (``inspect_checkpoint``)."""
    vae_sha = file_sha256(s.vae, hash_cache) if s.vae else None
    return ModelIdentity(
        name=s.model_name,
        family=ckpt.family,
        checkpoint_name=s.checkpoint.stem,
        sha256=file_sha256(s.checkpoint, hash_cache),
        vae_sha256=vae_sha,
        clip_skip=s.clip_skip,
        prediction=s.prediction,
        random_weights=ckpt.random_weights,
        vae_file=s.vae.name if s.vae else None,
    )


def pipeline_drawer(pipe, family: str, batch_size: int) -> Callable[[Sequence[ImageJob]], list]:
    """A ``draw_batch`` for :func:`draw_unit` that swaps LoRAs only when a batch needs other ones; every forward
    holds ``batch_size`` images (see :func:`ghostreview.generation.draw.draw`). Images drawn with a LoRA applied in part carry
    ``lora_partial: <status>`` among their flags (a LoRA diffusers applied in part, or failed to load: see
    :func:`ghostreview.generation.lora.apply_loras`); the images are drawn with the LoRAs that did load, and excluded."""
    current: list[tuple[LoraSpec, ...]] = [()]
    partial: list[list[str]] = [[]]  # the flags of the active LoRAs

    def draw_batch(batch: Sequence[ImageJob]) -> list:
        if batch[0].loras != current[0]:
            if current[0]:
                remove_loras(pipe)
            problems = apply_loras(pipe, family, batch[0].loras)
            partial[0] = [f"{PARTIAL_FLAG}: {status}" for status in problems.values()]
            current[0] = batch[0].loras
        drawn = draw(pipe, family, [j.request for j in batch], batch_size=batch_size)
        return [(image, flags + partial[0]) for image, flags in drawn]

    return draw_batch


@dataclass(frozen=True)
class PipelineSpec:
    """How to load one checkpoint's pipeline: plain data, so it travels to Ray workers (same paths on every node)."""

    checkpoint: Path
    family: str
    config_dir: Path | None  # None: the family's shipped config (or the tiny one for kit files), under ``cache``
    vae: Path | None
    allow_pickle: bool
    prediction: str
    device: str  # resolved: "cpu", "cuda", "cuda:1"
    dtype: str  # torch dtype name: "float32", "float16", "bfloat16"
    cpu_threads: int
    cache: Path
    batch_size: int  # images per forward (generation.batch_size): part of every image's key


def load_spec_pipeline(spec: PipelineSpec):
    """The diffusers pipeline of ``spec`` (the checkpoint is loaded once per process that draws)."""
    import torch

    config_dir = spec.config_dir or pipeline_config_dir(spec.checkpoint, spec.family, spec.cache / "configs",
                                                        allow_pickle=spec.allow_pickle)
    return load_pipeline(spec.checkpoint, spec.family, config_dir, vae=spec.vae, allow_pickle=spec.allow_pickle,
                         prediction_type=spec.prediction if spec.prediction != "epsilon" else None,
                         dtype=getattr(torch, spec.dtype), device=spec.device)


def image_runtime(device: str, dtype, batch_size: int) -> dict[str, str]:
    """The runtime part of every image key: library versions, device type, dtype, the drawing code's version, the
    forward batch shape and, on the CPU, torch's thread count (float results depend on both: a fixed shape per
    forward makes them independent of the batch-mates, not of the shape; 1 vs 2 threads moved 12 of 55,296 8-bit
    values of four tiny hires images)."""
    import torch

    runtime = library_versions() | {"device": device.split(":")[0], "dtype": str(dtype), "draw": DRAW_VERSION,
                                    "batch": str(batch_size)}
    return runtime | ({"threads": str(torch.get_num_threads())} if runtime["device"] == "cpu" else {})


class LocalEngine:
    """Draws in this process: the checkpoint is loaded once, then every unit is drawn in turn."""

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def device(self, requested: str) -> str:
        return pick_device(requested)

    def draw(self, spec: PipelineSpec, units: Sequence[WorkUnit], store: ImageStore,
             progress: Callable[[int], None]) -> int:
        draw_batch = pipeline_drawer(load_spec_pipeline(spec), spec.family, spec.batch_size)
        drawn = 0
        for unit in units:
            drawn += draw_unit(unit, store, draw_batch)
            progress(len(unit))
        return drawn


def open_engine(gen):
    """The engine named by ``generation.engine``: ``local`` (this process) or ``ray`` (a Ray cluster; optional extra)."""
    if gen.engine == "ray":
        from ghostreview.generation.engines.ray import RayEngine  # imports ray: only when asked for

        return RayEngine(gen.ray_address, gen.ray_workers)
    return LocalEngine()


def run_generate(bench: Benchmark, s: GenerateSettings, out_dir: Path, progress: bool = True) -> dict[str, int]:
    """Plan, draw what the store lacks (with ``generation.engine``), and rebuild ``out_dir`` from the store.

    Returns counts: images, drawn, reused (from the store), skipped (not drawable: see the manifest's flags).
    """
    ckpt = inspect_checkpoint(s.checkpoint, allow_pickle=s.allow_pickle)
    family = ckpt.family
    hash_cache = s.cache / "sha256.json"
    model = model_identity(s, ckpt, hash_cache)
    gen = s.generation
    set_cpu_threads(gen.cpu_threads)
    # a LoRA must fit the model's modules (names, shapes): built on the meta device from the config dir once a LoRA
    # is checked, so a file that would stop PEFT is recorded for its (model, LoRA) pair and never drawn
    modules = functools.cache(lambda: model_modules(family, s.config_dir or checkpoint_config_dir(
        ckpt, family, s.cache / "configs")))
    jobs = plan_jobs(
        bench, family, s.counts, s.tasks, dataclasses.asdict(gen), s.clip_skip, s.lora_dirs[family],
        functools.cache(lambda p: lora_status(p, family, modules())), lambda p: file_sha256(p, hash_cache),
    )
    lora_hash = functools.cache(a1111_lora_hash)  # reads each LoRA file once per run
    texts = [infotext_for(j, model, f"ghostreview-{__version__}", lora_hash) for j in jobs]
    store = ImageStore(s.store)
    with open_engine(gen) as engine:
        device = engine.device(gen.device)  # where the images are drawn: part of every key
        dtype = pick_dtype(gen.dtype, device)
        runtime = image_runtime(device, dtype, gen.batch_size)
        keys = [job_key(job_fields(j, model, runtime)) for j in jobs]
        units = work_units(jobs, keys, texts, store, gen.batch_size)
        drawn = 0
        if units:
            spec = PipelineSpec(s.checkpoint, family, s.config_dir, s.vae, s.allow_pickle, s.prediction, device,
                                str(dtype).removeprefix("torch."), gen.cpu_threads, s.cache, gen.batch_size)
            with tqdm(total=sum(map(len, units)), unit="img", desc=f"generate {s.model_name}",
                      disable=not progress) as bar:
                drawn = engine.draw(spec, units, store, bar.update)
    rows = manifest_rows(jobs, keys, texts, store, model)
    write_output(out_dir, rows, store, model)
    skipped = sum(1 for j in jobs if j.status)
    return {"images": len(jobs) - skipped, "drawn": drawn, "reused": len(jobs) - skipped - drawn, "skipped": skipped}
