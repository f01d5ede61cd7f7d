"""Every setting reaches its use (issue 11): each leaf key of params.yaml and examples/params.full-v1.yaml, changed,
changes what a stage does, or is listed in NO_EFFECT with a reason that the docs also give. No setting is silently dead.

How (harness: tests/reach.py): the real stage scripts run in-process on tiny stand-ins laid out at the paths each
file names. A probe changes one key, reruns one stage and compares one observation with the unchanged run's: an
argument at the place of use (the pipeline loader, ``draw``, open_clip's factory, the CLIP towers' and VGG's
forwards, VGG's ``.to``, the LoRA loader, the image store, the Ray engine), an output, or the stage's error line (a
wrong sha256). Nothing is drawn: ``draw`` returns a dummy image per request. Second check, for DVC: every params key a
stage reads is in that stage's ``params`` in dvc.yaml (itself or a parent) or its value is written into the stage's
deps, so that changing it makes the stage stale; every key is read by some stage; and a stage lists no params it
never reads (a needless rerun; LISTED_UNREAD says why an entry is right anyway).

The full v1 example is run as written, except that its files are the tiny stand-ins: its pinned aesthetic sha256 is
replaced by the stand-in's, and open_clip builds the tiny CLIP whatever the arch (the arch is what is checked).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from reach import (
    PARAMS_FILES,
    ROOT,
    WHOLE_FILE,
    Pipeline,
    Project,
    Record,
    covered,
    get_key,
    leaves,
    pattern,
    read_params,
    set_key,
)

from ghostreview.util.hashing import file_sha256

PARAMS, FULL = PARAMS_FILES
WRONG_SHA = "0" * 64


# ------------------------------------------------------------------------------------------------- observations
def calls(name: str, key: str) -> Callable[[Record], list]:
    """``key`` of the recorded call ``name``. Both runs stop right after it: the rest of the stage is not observed."""
    def observe(r: Record) -> list:
        return [c[key] for c in r.calls[name]]

    observe.stop = name
    return observe


def requests(key: str) -> Callable[[Record], list]:
    """``key`` of the DrawRequests of the first ``draw`` call (the runs stop there)."""
    def observe(r: Record) -> list:
        return [q[key] for c in r.calls["draw"] for q in c["requests"]]

    observe.stop = "draw"
    return observe


def error(r: Record) -> str | None:
    return r.error


def refstats(r: Record) -> dict[str, str]:
    """Each reference set's statistics (tensor values only) in the refstats output."""
    from safetensors.torch import load_file

    out = r.out("data/refstats")
    return {str(p.relative_to(out)): hashlib.sha256(b"".join(t.numpy().tobytes() for _, t in sorted(
        load_file(str(p)).items()))).hexdigest() for p in sorted(out.rglob("*.safetensors"))}


def standardized(table: str, *columns: str) -> Callable[[Record], list]:
    return lambda r: [[row[c] for c in columns] for row in r.csv(f"data/standardized/{table}.csv")]


def metrics_scored(r: Record) -> list[str]:
    """The score tables the score stage wrote (one per judge)."""
    return sorted(p.relative_to(r.out("data/scores")).as_posix() for p in r.out("data/scores").rglob("*.csv"))


def report_text(r: Record) -> str:
    html = re.sub(r"data:[^\"')]+", "", r.out("reports/index.html").read_text(encoding="utf-8"))
    return r.out("reports/leaderboard.md").read_text(encoding="utf-8") + html


# ----------------------------------------------------------------------------------------------------- changes
def to(value: Any) -> Callable[[Any], Any]:
    return lambda old: value


def plus(step: float) -> Callable[[Any], Any]:
    return lambda old: old + step


def other_count(n: int) -> int:
    return n - 1 if n > 1 else n + 1


def other_threads(n: int) -> int:
    return 1 if n == 2 else 2


def elsewhere(path: str) -> str:
    """The same file or directory at another path (tests/reach.py links ``alt/<path>`` to every asset)."""
    return f"alt/{path}"


def sdxl(model: Mapping) -> bool:
    return "sdxl" in model["checkpoint"]


def sd15(model: Mapping) -> bool:
    return "sd15" in model["checkpoint"] or "my_model" in model["checkpoint"]  # the full example's one model


def flux(model: Mapping) -> bool:
    return "flux" in model["checkpoint"]


@dataclass(frozen=True)
class Probe:
    """Change ``key`` (with ``change``), run ``stage`` (``a>b``: a, then b on a's output) and compare ``observe``.

    files: the params files whose configuration the probe runs in.
    when: changes made in both runs: the configuration in which the key acts (for keys in NO_EFFECT).
    together: changes made with the key's, where one setting cannot change alone (an arch and its config file).
    model: which model's stage instance runs (default: the key's own model, else the first).
    gpus: the machine of both runs has this many CUDA GPUs as torch sees them (nothing runs on them).
    expect_error: the changed run must fail (a wrong hash is refused: that is the setting's effect).
    """

    key: str
    stage: str
    change: Callable[[Any], Any]
    observe: Callable[[Record], Any]
    files: tuple[str, ...] = PARAMS_FILES
    when: Mapping[str, Any] = field(default_factory=dict)
    together: Mapping[str, Any] = field(default_factory=dict)
    model: Callable[[Mapping], bool] | None = None
    expect_error: bool = False
    gpus: int = 0


P = Probe
GEN = "generate"
SCORING_CLIP, SCORING_VGG = ("score",), ("refstats", "score")
TOWERS = ("encode_image", "encode_text")  # the score stage runs both CLIP towers (aesthetic and CLIPScore)
SDXL_MODEL = {"models.my-model.checkpoint": "demo/kit/models/tiny-sdxl-a.safetensors"}
FLUX_PARTS = {"clip_l": "clip_l.safetensors", "t5xxl": "t5xxl.safetensors", "vae": "ae.safetensors"}
OTHER_FLUX = "alt/flux-other"  # tests/reach.py: a transformer-only Flux.1 dev's separate files with other weights

PROBES: list[Probe] = [
    P("benchmark.dir", GEN, to("alt/benchmark"), calls("plan", "jobs")),
    P("benchmark.dir", "refstats", to("alt/benchmark"), refstats),
    *[P(f"benchmark.images_per_item.{task}", GEN, other_count, calls("plan", "jobs"))
      for task in ("general", "style", "lora")],
    P("benchmark.tasks", GEN, to(["general", "style"]), calls("plan", "jobs")),
    P("benchmark.tasks", "refstats", to(["general", "style"]), refstats),
    P("paths.loras.sd15", GEN, elsewhere, calls("apply_loras", "loras"), model=sd15),
    P("paths.loras.sdxl", GEN, elsewhere, calls("apply_loras", "loras"), model=sdxl, files=(PARAMS,)),
    P("paths.loras.sdxl", GEN, elsewhere, calls("apply_loras", "loras"), model=sdxl, files=(FULL,), when=SDXL_MODEL),
    P("paths.loras.flux", GEN, elsewhere, calls("apply_loras", "loras"), model=flux, files=(PARAMS,)),
    *[P(f"paths.lora_headers.{family}", "refstats", to(f"alt/lora_headers/{family}"), refstats)
      for family in ("sd15", "sdxl", "flux")],
    P("paths.style_refs", "refstats", to("alt/style_refs"), refstats),
    P("paths.image_store", GEN, to("elsewhere/images"), calls("image_store", "root")),
    P("paths.cache", GEN, to("elsewhere/cache"), calls("file_sha256", "cache")),
    P("generation.sampler", GEN, to("Euler a"), requests("sampler")),
    # A1111 1.9's split form: the schedule type folds into the sampler every request is drawn with
    P("generation.schedule_type", GEN, to("Exponential"), requests("sampler"), when={"generation.sampler": "DPM++ 2M"}),
    P("generation.steps", GEN, plus(1), requests("steps")),
    P("generation.cfg_scale", GEN, plus(0.5), requests("cfg_scale")),
    P("generation.width", GEN, plus(16), requests("width")),
    P("generation.height", GEN, plus(16), requests("height")),
    P("generation.batch_size", GEN, other_count, calls("draw", "batch_size")),
    P("generation.hires.enabled", GEN, lambda v: not v, requests("hires")),
    P("generation.hires.scale", GEN, lambda v: 2.0 if v != 2.0 else 1.5, requests("hires")),
    P("generation.hires.steps", GEN, plus(1), requests("hires")),
    P("generation.hires.denoising_strength", GEN, lambda v: round(v + 0.1, 6), requests("hires")),
    P("generation.hires.upscaler", GEN, lambda v: "Lanczos" if v != "Lanczos" else "Latent", requests("hires")),
    P("generation.device", GEN, to("cuda:1"), calls("load_pipeline", "device"), gpus=2),
    P("generation.dtype", GEN, to("bfloat16"), calls("load_pipeline", "dtype")),
    P("generation.cpu_threads", GEN, other_threads, calls("draw", "threads")),
    P("generation.cpu_threads", GEN, other_threads, calls("job_key", "key")),  # the thread count is in every key
    P("generation.engine", GEN, to("ray"), calls("ray_engine", "address")),
    P("generation.ray_address", GEN, to("head.example.org:6379"), calls("ray_engine", "address"),
      when={"generation.engine": "ray"}),
    P("generation.ray_workers", GEN, plus(2), calls("ray_engine", "workers"), when={"generation.engine": "ray"}),
    P("models.*.checkpoint", GEN, elsewhere, calls("load_pipeline", "checkpoint")),
    P("models.*.checkpoint", GEN, to("demo/kit/models/tiny-sd15-b.safetensors"), calls("job_key", "key")),
    P("models.*.config", GEN, elsewhere, calls("load_pipeline", "config_dir")),
    P("models.*.clip_skip", GEN, plus(1), requests("clip_skip")),
    P("models.*.vae", GEN, to("alt/vae.safetensors"), calls("load_pipeline", "vae"), files=(FULL,)),
    P("models.*.vae", GEN, to("alt/vae.safetensors"), calls("job_key", "key"), files=(FULL,)),
    # params.yaml's first vae is a Flux model's ae.safetensors (transformer-only checkpoint), as are clip_l, t5xxl
    *[P(f"models.*.{part}", GEN, elsewhere, calls("load_pipeline", part), files=(PARAMS,)) for part in FLUX_PARTS],
    *[P(f"models.*.{part}", GEN, to(f"{OTHER_FLUX}/{file}"), calls("job_key", "key"), files=(PARAMS,))
      for part, file in FLUX_PARTS.items()],
    # params.yaml's first base, width, height and steps are a NoobAI V-Pred model's
    P("models.*.base", GEN, to("illustrious"), requests("prompt")),  # the base's prompt prefix
    P("models.*.width", GEN, plus(16), requests("width")),
    P("models.*.height", GEN, plus(16), requests("height")),
    P("models.*.steps", GEN, plus(1), requests("steps")),
    P("models.*.prediction", GEN, to("v_prediction"), calls("load_pipeline", "prediction_type")),
    P("models.*.prediction", GEN, to("v_prediction"), calls("job_key", "key")),
    P("models.*.title", "report", plus(" (renamed)"), report_text),
    *[P("scoring.clip.arch", s, to("ViT-B-32-quickgelu"), calls("open_clip", "arch"), files=(FULL,))
      for s in SCORING_CLIP],
    *[P("scoring.clip.arch", s, to("ghostreview-tiny2-ViT-quickgelu"), calls("open_clip", "arch"), files=(PARAMS,),
        together={"scoring.clip.model_config": "alt/clip-renamed/ghostreview-tiny2-ViT-quickgelu.json"})
      for s in SCORING_CLIP],
    *[P("scoring.clip.weights", s, elsewhere, calls("open_clip", "pretrained")) for s in SCORING_CLIP],
    *[P("scoring.clip.model_config", s, to("alt/clip-config/ghostreview-tiny-ViT-quickgelu.json"),
        calls("open_clip", "config"), files=(PARAMS,)) for s in SCORING_CLIP],
    *[P("scoring.clip.model_config", s, to("alt/clip-vit-l/ViT-L-14-quickgelu.json"), calls("open_clip", "config"),
        files=(FULL,)) for s in SCORING_CLIP],
    *[P("scoring.clip.sha256", s, to(WRONG_SHA), error, expect_error=True) for s in SCORING_CLIP],
    *[P("scoring.device", s, to("cuda:1"), calls("open_clip", "device"), gpus=2) for s in SCORING_CLIP],
    *[P("scoring.batch_size", "score", to(3), calls(tower, "rows")) for tower in TOWERS],
    *[P("scoring.cpu_threads", "score", other_threads, calls(tower, "threads")) for tower in TOWERS],
    P("scoring.aesthetic.weights", "score", elsewhere, calls("load_head", "path")),
    P("scoring.aesthetic.sha256", "score", to(WRONG_SHA), error, expect_error=True),
    P("scoring.aesthetic.good_threshold", "standardize", lambda v: 0.0 if v > 0 else 6.0,
      standardized("raw", "good_rate")),
    P("scoring.cpu_threads", "score", other_threads, calls("aesthetic_scores", "threads")),
    *[P("scoring.style.vgg_weights", s, elsewhere, calls("load_vgg", "path")) for s in SCORING_VGG],
    *[P("scoring.style.sha256", s, to(WRONG_SHA), error, expect_error=True) for s in SCORING_VGG],
    *[P("scoring.device", s, to("cuda:1"), calls("vgg_to", "args"), gpus=2) for s in SCORING_VGG],
    *[P("scoring.cpu_threads", s, other_threads, calls("style_grams", "threads")) for s in SCORING_VGG],
    P("scoring.style.image_size", "refstats", plus(8), calls("style_grams", "shape")),
    P("scoring.style.image_size", "refstats>score", plus(8), calls("style_grams", "shape")),
    P("scoring.batch_size", "score", to(3), calls("style_grams", "shape")),
    P("scoring.judges", "score", lambda v: [j for j in v if j != "pickscore"], metrics_scored),
    P("scoring.hpsv21.weights", "score", elsewhere, calls("load_hpsv21", "weights")),
    P("scoring.hpsv21.arch", "score", to("ViT-H-14"), calls("load_hpsv21", "arch")),
    P("scoring.hpsv21.model_config", "score", elsewhere, calls("load_hpsv21", "model_config")),
    P("scoring.hpsv21.sha256", "score", to(WRONG_SHA), error, expect_error=True),
    P("scoring.pickscore.model_dir", "score", elsewhere, calls("load_pickscore", "model_dir")),
    P("scoring.pickscore.processor_dir", "score", elsewhere, calls("load_pickscore", "processor_dir")),
    P("scoring.pickscore.sha256", "score", to(WRONG_SHA), error, expect_error=True),
    P("standardize.combined", "standardize", to(["aesthetic", "hpsv21"]), standardized("scores", "metric", "score"),
      files=(PARAMS,)),
    P("standardize.bootstrap", "standardize", to(200), standardized("pairwise", "p_a_beats_b")),
    P("standardize.seed", "standardize", plus(1), standardized("pairwise", "p_a_beats_b")),
    P("standardize.confidence", "standardize", to(0.5), standardized("scores", "lo", "hi")),
    P("standardize.reference", "standardize", to("no-such-set"), error, expect_error=True),
]


@dataclass(frozen=True)
class NoEffect:
    """Why a key does nothing in one file's configuration, and where the docs say so (``doc`` None: the file)."""

    reason: str
    phrase: str
    doc: str | None = None


NO_EFFECT: dict[tuple[str, str], NoEffect] = {
    **{(f, "generation.ray_address"): NoEffect("read by the Ray engine only; generation.engine is local",
                                               "ray: the cluster's address") for f in PARAMS_FILES},
    **{(f, "generation.ray_workers"): NoEffect("read by the Ray engine only; generation.engine is local",
                                               "ray: workers to start") for f in PARAMS_FILES},
    **{(FULL, f"standardize.{k}"): NoEffect(
        "the example's one model (a placeholder for the user's checkpoints): its z-scores within each item average 0, "
        "so its score is 0 in every resample; params.yaml's probes show the key acting with three models",
        "z-scored within its benchmark item over all reviewed models' images; a model's score is the mean of its z",
        "README.md") for k in ("bootstrap", "seed", "confidence", "combined")},
    **{(FULL, f"paths.loras.{family}"): NoEffect(
        f"the example's one model is not {family} (here: the SD1.5 stand-in); a family's LoRA files are read by the "
        "generate stages of that family's models only", "A review of one family needs only that family's LoRA files",
        "README.md") for family in ("sdxl", "flux")},
}

# (stage group, key pattern): keys a stage reads without its outputs depending on them, so dvc.yaml need not list them
OUTPUT_NEUTRAL: dict[tuple[str, str], str] = {
    **{("generate", f"paths.lora_headers.{family}"): "checks before drawing that the model's LoRA loss will have its "
                                                     "targets" for family in ("sd15", "sdxl", "flux")},
    ("generate", "paths.image_store"): "where images are kept, addressed by content: the output is the same anywhere",
    ("generate", "paths.cache"): "hash cache and materialized configs: where, not what",
    ("report", "paths.cache"): "the rendition cache, addressed by content and settings: where, not what",
    ("score", "paths.cache"): "the score store and hash cache, addressed by content and settings: where, not what",
}


# ---------------------------------------------------------------------------------------------------- the walk
FILES = {label: read_params(label) for label in PARAMS_FILES}
LEAVES = {label: dict(leaves(data)) for label, data in FILES.items()}


def probes_for(label: str, key: str) -> list[Probe]:
    return [p for p in PROBES if p.key == pattern(key) and label in p.files]


def first_key(label: str, key_pattern: str) -> str:
    return next(k for k in LEAVES[label] if pattern(k) == key_pattern)


CASES = [pytest.param(label, probe, id=f"{label}:{probe.key}:{probe.stage}:{i}")
         for label in PARAMS_FILES for i, probe in enumerate(PROBES)
         if label in probe.files and any(pattern(k) == probe.key for k in LEAVES[label])
         and (probe.when or (label, probe.key) not in NO_EFFECT)]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Pipeline]:
    project = Project(tmp_path_factory.mktemp("reach"))
    out = {}
    for label, data in FILES.items():
        data = json.loads(json.dumps(data))
        if get_key(data, "scoring.aesthetic.sha256"):  # the pin names the real head; the stand-in's hash instead
            set_key(data, "scoring.aesthetic.sha256",
                    file_sha256(project.assets / get_key(data, "scoring.aesthetic.weights")))
        out[label] = Pipeline(project, data, label)
    return out


@pytest.mark.parametrize("label", PARAMS_FILES)
def test_every_leaf_key_has_a_probe_or_a_documented_reason(label):
    """A key added to either file without a probe fails here: write its probe (or its NO_EFFECT reason)."""
    missing = sorted({pattern(k) for k in LEAVES[label] if not probes_for(label, k) and (label, pattern(k)) not in
                      NO_EFFECT})
    assert not missing, f"{label}: no probe shows that these keys do anything: {missing}"
    for f, key in NO_EFFECT:
        if f == label:
            assert any(pattern(k) == key for k in LEAVES[label]), f"NO_EFFECT lists {key}, which {label} lacks"
            acts = [p for p in probes_for(label, key) if p.when] + [
                p for other in PARAMS_FILES if (other, key) not in NO_EFFECT for p in probes_for(other, key)]
            assert acts, f"{label}: {key} has no effect here; add a probe (with `when`) showing where it acts"


def test_every_probe_and_table_entry_names_a_key_of_the_files():
    known = {pattern(k) for keys in LEAVES.values() for k in keys}
    stale = sorted({p.key for p in PROBES} - known) + sorted({k for _, k in OUTPUT_NEUTRAL} - known)
    assert not stale, f"probes or tables for keys no params file has: {stale}"


@pytest.mark.parametrize("label,key", sorted(NO_EFFECT))
def test_a_key_without_effect_says_so_in_the_docs(label, key):
    why = NO_EFFECT[(label, key)]
    text = (ROOT / (why.doc or label)).read_text(encoding="utf-8")
    assert why.phrase in " ".join(text.split()), f"{why.doc or label} does not say why {key} has no effect: {why}"


def _stage_name(pipe: Pipeline, probe: Probe, group: str, data: Mapping) -> str:
    if group not in {s.group for s in pipe.stages.values() if s.model}:
        return group
    if probe.model is not None:
        model = next(m for m, entry in data["models"].items() if probe.model(entry))
    elif probe.key.startswith("models."):
        model = first_key(pipe.label, probe.key).split(".")[1]
    else:
        model = next(iter(data["models"]))
    return f"{group}@{model}"


def changed(data: Mapping, changes: Mapping[str, Any]) -> dict:
    data = json.loads(json.dumps(data))
    for k, v in changes.items():
        set_key(data, k, v)
    return data


@pytest.mark.parametrize("label,probe", CASES)
def test_a_changed_setting_changes_what_its_stage_does(pipelines, label, probe):
    pipe = pipelines[label]
    key = first_key(label, probe.key)
    base_data = changed(pipe.data, probe.when)
    new_data = changed(base_data, {key: probe.change(get_key(base_data, key)), **probe.together})
    groups = probe.stage.split(">")
    names = [_stage_name(pipe, probe, g, new_data) for g in groups]
    stop = getattr(probe.observe, "stop", None)
    if probe.when or len(names) > 1 or stop or probe.gpus:
        base = pipe.reference(names, base_data, stop, probe.gpus)
        assert base.error is None, f"{label} with {dict(probe.when)}: {base.error}"
    else:
        base = pipe.base(names[0])
    new = pipe.probe(names, new_data, stop, probe.gpus)
    if probe.expect_error:
        assert new.error, f"{label}: {key} = {get_key(new_data, key)!r} was accepted by {names[-1]}"
    else:
        assert new.error is None, f"{label}: {key} = {get_key(new_data, key)!r}: {names[-1]} failed: {new.error}"
    before, after = probe.observe(base), probe.observe(new)
    assert before != after, (f"{label}: {key} changed from {get_key(base_data, key)!r} to {get_key(new_data, key)!r} "
                             f"but {names[-1]} did the same: {before!r}")


@pytest.mark.parametrize("label", PARAMS_FILES)
def test_each_stage_depends_on_the_params_keys_it_reads(pipelines, label):
    """DVC reruns a stage when a key it reads changes: the key (or a parent) is in its params, or in its deps."""
    pipe = pipelines[label]
    missing = []
    for name, stage in pipe.stages.items():
        for key in sorted(pipe.base(name).reads):
            if (stage.group, pattern(key)) not in OUTPUT_NEUTRAL and not covered(stage, key):
                missing.append(f"{name} reads {key}")
    assert not missing, f"{label}: dvc.yaml misses params its stages read: {missing}"


def test_every_output_neutral_read_happens(pipelines):
    read = {(s.group, pattern(k)) for pipe in pipelines.values() for n, s in pipe.stages.items()
            for k in pipe.base(n).reads}
    unread = set(OUTPUT_NEUTRAL) - read
    assert not unread, f"OUTPUT_NEUTRAL lists reads that no stage makes: {unread}"


# (stage group, params entry): listed in dvc.yaml though the stage reads no key under it, and why that is right
LISTED_UNREAD: dict[tuple[str, str], str] = {
    ("standardize", "models"): "the set of models (their keys) decides which outputs it reads; no field is read",
    ("arena", "models"): "the set of models (their keys) decides which votes and images count; no field is read",
    **{("score", f"scoring.{judge}"): f"read only where scoring.judges lists {judge} (params.yaml does: its probes "
                                      f"show each key acting; the full v1 example keeps the article's four)"
       for judge in ("hpsv21", "pickscore")},
}
OVER_LISTED: dict[str, str] = {}  # stage group -> why dvc.yaml lists a param it does not read (xfail until fixed)
GROUPS = list(dict.fromkeys(name.split("@")[0] for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))


@pytest.mark.parametrize("group", [pytest.param(g, marks=[pytest.mark.xfail(strict=True, reason=OVER_LISTED[g])]
                                                if g in OVER_LISTED else []) for g in GROUPS])
def test_a_stage_lists_no_params_it_does_not_read(pipelines, group):
    """params.yaml's promise: `dvc repro` after a change recomputes only what the change affects."""
    extra = set()
    for pipe in pipelines.values():
        for name, stage in pipe.stages.items():
            if stage.group == group:
                reads = pipe.base(name).reads
                extra |= {pattern(p) for p in stage.params if p != WHOLE_FILE and (group, p) not in LISTED_UNREAD
                          and not any(k == p or k.startswith(p + ".") for k in reads)}
    assert not extra, f"dvc.yaml lists params that {group} never reads: {sorted(extra)}"


READ_CASES = [pytest.param(label, key, id=f"{label}:{key}") for label in PARAMS_FILES for key in LEAVES[label]]


@pytest.mark.parametrize("label,key", READ_CASES)
def test_every_key_is_read_by_some_stage(pipelines, label, key):
    pipe = pipelines[label]
    readers = [name for name, stage in pipe.stages.items()
               if WHOLE_FILE not in stage.params and key in pipe.base(name).reads]  # a whole-file check uses nothing
    assert readers, f"{label}: no stage reads {key}"
