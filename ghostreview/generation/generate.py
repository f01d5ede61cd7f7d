"""The generate stage's library side: plan every image of the benchmark, draw only those the store lacks, and rebuild
the stage's output directory (PNGs + manifest) from the store.

Every image is keyed by a hash of everything that decides its pixels (:func:`job_fields`), so a change of the prompt
set or of the seed count draws only the new images, and a killed run resumes from what finished. The missing images
go to an engine in work units (one batch each, :func:`work_units`): ``local`` draws them in this process, ``ray`` on
a Ray cluster (:mod:`ghostreview.generation.engines`); both fill the same store with the same keys. The plan itself
(jobs, keys, infotexts) is :mod:`ghostreview.generation.plan`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ghostreview import __version__
from ghostreview.generation.engines import open_engine
from ghostreview.generation.families import FLUX_FAMILY
from ghostreview.generation.flux_keys import flux_variant
from ghostreview.generation.loading import CheckpointFile, checkpoint_config_dir
from ghostreview.generation.lora import PARTIAL_FLAG, a1111_lora_hash, lora_status, model_modules
from ghostreview.generation.manifest import MANIFEST_COLUMNS
from ghostreview.generation.plan import (  # noqa: F401 (check_lora_files: the CLI's validate uses it from here)
    DrawSettings,
    ImageJob,
    ModelIdentity,
    batches,
    check_lora_files,
    infotext_for,
    job_fields,
    plan_jobs,
)
from ghostreview.generation.store import DamagedEntryError, ImageStore, Problem, job_key
from ghostreview.generation.worker import PipelineSpec, WorkUnit, image_runtime
from ghostreview.protocol import Benchmark
from ghostreview.util.atomic import replace_dir
from ghostreview.util.hashing import file_sha256
from ghostreview.util.rendition import RENDITIONS
from ghostreview.util.runtime import pick_dtype, progress_bar, set_cpu_threads


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
    for job, key, text in zip(jobs, keys, infotexts, strict=True):
        flags, status = image_flags(job, key, store)
        r = job.request
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
            "width": r.width if not r.hires else int(r.width * r.hires.scale),
            "height": r.height if not r.hires else int(r.height * r.hires.scale),
            "flags": ";".join(flags),
            "infotext": text,
        })
    return rows


def write_output(out_dir: Path, rows: Sequence[dict], store: ImageStore, model: ModelIdentity) -> None:
    """Rebuild the stage output from the store: PNGs, ``manifest.csv`` and ``model.json``, swapped in atomically."""

    def build(tmp: Path) -> None:
        for row in rows:
            if row["image"]:
                link_checked(store, row["image_hash"], tmp / row["image"])
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        info = dataclasses.asdict(model) | {"autov2": model.autov2}
        (tmp / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    replace_dir(out_dir, build)


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
class EngineChoice:
    """Where the missing images are drawn: ``name`` is a key of ``engines.ENGINES`` ("local" or "ray"); ``address``
    and ``workers`` are the Ray cluster's (None: start Ray on this machine; 0: one worker per GPU)."""

    name: str = "local"
    address: str | None = None
    workers: int = 0


@dataclass(frozen=True)
class GenerateSettings:
    """Everything ``run_generate`` needs for one model, resolved from params by the stage script. ``checkpoint`` is
    the file as the stage inspected it (``loading.inspect_checkpoint``), read once and passed down."""

    model_name: str
    checkpoint: CheckpointFile
    config_dir: Path | None
    vae: Path | None
    clip_skip: int
    prediction: str
    allow_pickle: bool
    lora_dirs: Mapping[str, Path]
    counts: Mapping[str, int]
    tasks: Sequence[str]
    generation: DrawSettings
    store: Path
    cache: Path
    engine: EngineChoice = EngineChoice()
    base: str | None = None  # generation.bases: the resolved base (None: the family's plain one, as before bases)
    prose: bool | None = None  # models.<m>.prose: general prompts in prose (None: as the base says)
    clip_l: Path | None = None  # Flux: the separate files of a transformer-only checkpoint (models.<m>.clip_l ...)
    t5xxl: Path | None = None
    t5_tokenizer: Path | None = None


def model_identity(s: GenerateSettings, hash_cache: Path) -> ModelIdentity:
    """The checkpoint side of every image, from the checkpoint read once (``inspect_checkpoint``)."""
    ckpt = s.checkpoint
    vae_sha = file_sha256(s.vae, hash_cache) if s.vae else None
    return ModelIdentity(
        name=s.model_name,
        family=ckpt.family,
        checkpoint_name=ckpt.path.stem,
        sha256=file_sha256(ckpt.path, hash_cache),
        vae_sha256=vae_sha,
        clip_skip=s.clip_skip,
        prediction=s.prediction,
        random_weights=ckpt.random_weights,
        vae_file=s.vae.name if s.vae else None,
        base=s.base or "",
        ztsnr=ckpt.ztsnr,  # the file's marker; loading.open_pipeline samples by the same record
        clip_l_sha256=file_sha256(s.clip_l, hash_cache) if s.clip_l else None,
        t5xxl_sha256=file_sha256(s.t5xxl, hash_cache) if s.t5xxl else None,
        flux_variant=flux_variant(ckpt.shapes) if ckpt.family == FLUX_FAMILY else None,
    )


def flux_lora_checker(ckpt: CheckpointFile, config_dir: Path | None) -> Callable[[Path], str]:
    """``flux_lora.flux_lora_status`` of a LoRA file against the checkpoint's transformer (its config, built once)."""
    from ghostreview.generation.flux import transformer_config
    from ghostreview.generation.flux_lora import flux_lora_status

    config = functools.cache(lambda: transformer_config(ckpt, config_dir))
    return lambda path: flux_lora_status(path, config())


def run_generate(bench: Benchmark, s: GenerateSettings, out_dir: Path, progress: bool = True) -> dict[str, int]:
    """Plan, draw what the store lacks (with ``generation.engine``), and rebuild ``out_dir`` from the store.

    Returns counts: images, drawn, reused (from the store), skipped (not drawable: see the manifest's flags).
    """
    ckpt, family = s.checkpoint, s.checkpoint.family
    hash_cache = s.cache / "sha256.json"
    model = model_identity(s, hash_cache)
    gen = s.generation
    set_cpu_threads(gen.cpu_threads)
    # a LoRA must fit the model's modules (names, shapes): built on the meta device from the config dir once a LoRA
    # is checked, so a file that would stop PEFT is recorded for its (model, LoRA) pair and never drawn
    modules = functools.cache(lambda: model_modules(family, s.config_dir or checkpoint_config_dir(
        ckpt, family, s.cache / "configs")))
    status = functools.cache(flux_lora_checker(ckpt, s.config_dir) if family == FLUX_FAMILY else
                             lambda p: lora_status(p, family, modules()))
    jobs = plan_jobs(
        bench, family, s.counts, s.tasks, gen, s.clip_skip, s.lora_dirs.get(family, s.cache),  # no table: no LoRAs
        status, lambda p: file_sha256(p, hash_cache), base=s.base, prose=s.prose,
    )
    lora_hash = functools.cache(a1111_lora_hash)  # reads each LoRA file once per run
    texts = [infotext_for(j, model, f"ghostreview-{__version__}", lora_hash) for j in jobs]
    store = ImageStore(s.store, renditions=s.cache / RENDITIONS)  # the report's renditions made as images are stored
    with open_engine(s.engine.name, s.engine.address, s.engine.workers) as engine:
        device = engine.device(gen.device)  # where the images are drawn: part of every key
        dtype = pick_dtype(gen.dtype, device)
        runtime = image_runtime(device, dtype, gen.batch_size)
        keys = [job_key(job_fields(j, model, runtime)) for j in jobs]
        units = work_units(jobs, keys, texts, store, gen.batch_size)
        drawn = 0
        if units:
            spec = PipelineSpec(ckpt, s.config_dir, s.vae, s.allow_pickle, s.prediction, device,
                                str(dtype).removeprefix("torch."), gen.cpu_threads, s.cache, gen.batch_size,
                                s.clip_l, s.t5xxl, s.t5_tokenizer)
            with progress_bar(total=sum(map(len, units)), unit="img", desc=f"generate@{s.model_name}",
                              disable=not progress) as bar:
                drawn = engine.draw(spec, units, store, bar.update)
    rows = manifest_rows(jobs, keys, texts, store, model)
    write_output(out_dir, rows, store, model)
    skipped = sum(1 for j in jobs if j.status)
    return {"images": len(jobs) - skipped, "drawn": drawn, "reused": len(jobs) - skipped - drawn, "skipped": skipped}
