"""Harness of tests/test_settings_reach.py: does every setting reach the code that uses it?

- :func:`leaves` walks a params file; :func:`dvc_stages` expands dvc.yaml (``foreach``, ``${...}``) for it.
- :class:`Project` lays tiny stand-ins out at the paths each params file names (``demo/kit/...`` for params.yaml,
  ``weights/``, ``models/``, ``loras/``, ``benchmark_images/`` for the full v1 example), plus ``alt/<path>``, the same
  asset at another path, and ``alt/...`` variants with other contents (benchmark, reference images, CLIP configs, a
  Flux model's separate files).
- :class:`Pipeline` runs the real stage scripts (``main(argv)`` with the argv of dvc.yaml's ``cmd``) in-process, each in
  its own workspace (own HOME: image store and caches) whose inputs are links to a base run's outputs, with spies
  (:func:`spies`) where settings are used: generate's plan and image keys, the diffusers pipeline loaders (SD's and
  Flux's), ``draw`` and ``draw_flux`` (nothing is drawn: one flat dummy image per request), the LoRA loaders, the
  image store, the Ray engine, open_clip's model factory (it builds the tiny CLIP on the CPU whatever the arch and
  device), the CLIP towers' and VGG's forwards, VGG's ``.to(device)``, the aesthetic head. A :class:`Record` holds
  those calls (paths relative to the workspace), the stage's error line, and the params keys it read
  (:func:`recording`). A run may stop right after the call it is compared on (``stop``), and may see CUDA GPUs that
  are not there (``gpus``): every device is spied, nothing runs on one. Not probed, so skipped for time: the image
  store's fsyncs and the report's figures.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILES = ("params.yaml", "examples/params.full-v1.yaml")
MODEL_FIELD = re.compile(r"^models\.[^.]+\.")


# --------------------------------------------------------------------------------------------------- params data
def leaves(data: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf: mappings are walked, a list (``benchmark.tasks``) is one leaf."""
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            yield from leaves(v, key)
        else:
            yield key, v


def pattern(key: str) -> str:
    """``models.<slug>.<field>`` -> ``models.*.<field>``; other keys unchanged."""
    return MODEL_FIELD.sub("models.*.", key)


def read_params(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def get_key(data: Mapping, key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def set_key(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


# ------------------------------------------------------------------------------------------------------ dvc.yaml
@dataclass(frozen=True)
class Stage:
    """One stage instance of dvc.yaml, interpolated for one params file."""

    name: str  # "generate@demo-sd15-a"
    group: str  # "generate"
    model: str | None
    script: str
    argv: tuple[str, ...]
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]
    interpolated: frozenset[str]  # params keys whose values are written into cmd or deps (a change there is seen)


INTERP = re.compile(r"\$\{([^}]+)\}")
WHOLE_FILE = "*"  # a stage's params entry that tracks every key
SETTINGS_DIR = "data/params/"


def dvc_stages(data: Mapping) -> dict[str, Stage]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    stages = {}
    for group, body in spec.items():
        instances = [(f"{group}@{k}", k, body["do"]) for k in data["models"]] if "foreach" in body else [
            (group, None, body)]
        for name, model, s in instances:
            def sub(text: str, model=model) -> str:
                def one(m: re.Match) -> str:
                    expr = m.group(1)
                    if expr == "key":
                        return model
                    return str(get_key(data, f"models.{model}.{expr[5:]}" if expr.startswith("item.") else expr))
                return INTERP.sub(one, text)

            raw = [s["cmd"], *s.get("deps", [])]
            keys = {f"models.{model}.{e[5:]}" if e.startswith("item.") else e
                    for text in raw for e in INTERP.findall(text) if e != "key"}
            outs = [o if isinstance(o, str) else next(iter(o)) for o in [*s.get("outs", []), *s.get("metrics", [])]]
            words = shlex.split(sub(s["cmd"]))
            assert words[0] == "python", s["cmd"]
            params = []
            for p in s.get("params", []):  # "key", or {file: [keys]}; {params.yaml: None} tracks the whole file
                params += [sub(p)] if isinstance(p, str) else [
                    sub(k) for keys in p.values() for k in (keys or [WHOLE_FILE])]
            params += settings_keys(group, model, [sub(d) for d in s["deps"]])
            stages[name] = Stage(name, group, model, words[1], tuple(words[2:]), tuple(sub(d) for d in s["deps"]),
                                 tuple(params), tuple(sub(o) for o in outs), frozenset(keys))
    return stages


def settings_keys(group: str, model: str | None, deps: list[str]) -> list[str]:
    """The params keys a per-model stage tracks through its settings file (``data/params/<stage>.json``, written by
    checkparams from its ``SETTINGS`` table): a change of one of them rewrites the file, which the stage depends on."""
    checkparams = stage_module("stages/checkparams.py")
    files = [d for d in deps if d.startswith(SETTINGS_DIR) and not d.startswith(SETTINGS_DIR + "code/")]
    if not files:
        return []
    assert group in checkparams.SETTINGS, f"dvc.yaml: {group} depends on {files}, which checkparams does not write"
    assert files == [SETTINGS_DIR + checkparams.settings_file(group, model)], (group, files)
    return [k.format(model=model) for k in checkparams.SETTINGS[group]]


def overlaps(a: str, b: str) -> bool:
    """One path is the other or inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def covered(stage: Stage, key: str) -> bool:
    """A change of ``key`` makes ``stage`` stale: the key or a parent is in its params, or its value is in a dep."""
    return key in stage.interpolated or any(p in (WHOLE_FILE, key) or key.startswith(p + ".") for p in stage.params)


# ---------------------------------------------------------------------------------------------- reads of params
class Reads:
    """Leaf keys read from a Params object; reads inside validation (``check_files``, each dataclass's own checks)
    are not counted."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.paused = 0
        self._keep: list = []  # recording objects stay alive so that their ids stay theirs

    def add(self, key: str) -> None:
        if not self.paused:
            self.keys.add(key)


_RECORDING_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
    if cls not in _RECORDING_CLASSES:
        names = frozenset(f.name for f in dataclasses.fields(cls))

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            owner = _OWNERS.get(id(self))  # None: a copy the code made (dataclasses.replace), not read from params
            if owner and (name in names or name == "__dict__"):
                reads, prefix = owner
                for field_name in (names if name == "__dict__" else (name,)):
                    v = object.__getattribute__(self, field_name)
                    if not (dataclasses.is_dataclass(v) or isinstance(v, dict)):
                        reads.add(f"{prefix}.{field_name}" if prefix else field_name)
            return value

        _RECORDING_CLASSES[cls] = type(f"Recording{cls.__name__}", (cls,),
                                       {"__getattribute__": __getattribute__})
    return _RECORDING_CLASSES[cls]


_OWNERS: dict[int, tuple[Reads, str]] = {}


def recording(obj: Any, reads: Reads, prefix: str = "") -> Any:
    """A copy of a Params object whose every field access (also through ``vars`` or ``dataclasses.asdict``) adds
    the leaf key to ``reads``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: recording(getattr(obj, f.name), reads, f"{prefix}.{f.name}" if prefix else f.name)
                  for f in dataclasses.fields(obj)}
        reads.paused += 1  # building the copy runs the dataclass's own checks (__post_init__): validation, not a use
        try:
            copy = _recording_class(type(obj))(**values)
        finally:
            reads.paused -= 1
        reads._keep.append(copy)
        _OWNERS[id(copy)] = (reads, prefix)
        return copy
    if isinstance(obj, dict):
        return {k: recording(v, reads, f"{prefix}.{k}") for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------- records
@dataclass
class Record:
    """What one stage run did: spied calls (normalized), its error line (None: it succeeded), params keys read."""

    stage: Stage
    ws: Path
    stop: str | None = None  # the run ends right after the first call of this name is recorded
    gpus: int = 0  # CUDA GPUs torch reports (nothing runs on them: every place a device reaches is spied)
    calls: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    error: str | None = None
    reads: set[str] = field(default_factory=set)

    def out(self, rel: str) -> Path:
        return self.ws / rel

    def csv(self, rel: str) -> list[dict]:
        with open(self.ws / rel, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))


def norm(value: Any, ws: Path) -> Any:
    """Plain, comparable data: dataclasses as dicts, tuples as lists, paths relative to the workspace (``<ws>/``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return norm({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, ws)
    if isinstance(value, Mapping):
        return {str(k): norm(v, ws) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [norm(v, ws) for v in value]
    if isinstance(value, (Path, str)):
        text = str(value)
        for prefix in {str(ws.resolve()), str(ws)}:
            text = text.replace(prefix, "<ws>")
        return text
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------------- project
STYLE_COUNT, HEADER_SIZE = 2, 64


class Project:
    """Tiny stand-ins at the paths both params files name (assets/), shared read-only by every workspace."""

    def __init__(self, root: Path) -> None:
        from ghostreview.generation.families import LORA_FAMILIES, table_family
        from ghostreview.kit import flux
        from ghostreview.kit.demo import lora_step
        from ghostreview.kit.images import write_lora_header, write_style_references
        from ghostreview.kit.judges import write_tiny_judges
        from ghostreview.kit.scorers import TINY_CLIP_ARCH, tiny_clip_config, write_tiny_clip, write_tiny_vgg19
        from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir, write_tiny_vae
        from ghostreview.kit.vpred import write_tiny_vpred_checkpoint
        from ghostreview.protocol import cut_benchmark, load_benchmark
        from ghostreview.scoring.weights import read_state_dict, write_state_dict

        self.root = root
        a = self.assets = root / "assets"
        # 3 general prompts: the bootstrap resamples items (n - 1 draws of n per stratum): with fewer, its intervals
        # take too few values for standardize.confidence to move them
        cut_benchmark(ROOT / "data/benchmark/v1", root / "wide", general=3, styles=STYLE_COUNT, loras=1)
        cut_benchmark(root / "wide", a / "data/benchmark/v1", general=3, styles=1, loras=1)
        cut_benchmark(root / "wide", a / "alt/benchmark", general=1, styles=STYLE_COUNT, loras=1)
        bench = load_benchmark(a / "alt/benchmark")
        kit = a / "demo/kit"
        for family in ("sd15", "sdxl"):
            write_tiny_config_dir(kit / "configs" / family, family)
        write_tiny_checkpoint(kit / "models/tiny-sd15-a.safetensors", "sd15", 1)
        write_tiny_checkpoint(kit / "models/tiny-sdxl-a.safetensors", "sdxl", 3)
        other_weights(kit / "models/tiny-sd15-a.safetensors", kit / "models/tiny-sd15-b.safetensors")
        # the newer bases (params.yaml's NoobAI V-Pred and Flux.1 dev models; seeds as the kit's do not matter)
        write_tiny_vpred_checkpoint(kit / "models/tiny-vpred-a.safetensors", 5)
        write_tiny_vpred_checkpoint(kit / "models/tiny-vpred-b.safetensors", 6)
        flux.write_transformer_only(kit / "models/tiny-flux-dev-split", "flux1-dev", 7)
        flux.write_all_in_one(kit / "models/tiny-flux-dev-b.safetensors", "flux1-dev", 8)
        for table, entries in bench.loras.items():
            family = table_family(table)  # a base's table (Pony, Illustrious) in its family's folders
            for i, entry in enumerate(entries):
                lora_step(kit, family, entry.file, i, seed=i)()  # the kit's writer: Flux's in both formats
                for n, header in enumerate(entry.header_images):
                    for where, seed in ((kit / "lora_headers", 10 + n), (a / "alt/lora_headers", 20 + n)):
                        write_lora_header(where / family / entry.name / header, entry.name, seed, HEADER_SIZE)
        for style in bench.styles:
            for where, seed in ((kit / "style_refs", 30), (a / "alt/style_refs", 40)):
                write_style_references(where / style.reference_dir, style.name, 2, seed, HEADER_SIZE)
        self.clip_arch, clip_weights, clip_config = write_tiny_clip(kit / "scorers/clip", 0)
        assert self.clip_arch == TINY_CLIP_ARCH
        self.clip_config = tiny_clip_config()
        write_spread_head(kit / "scorers/laion_head.pth")
        write_tiny_vgg19(kit / "scorers/vgg19_features.safetensors", 0)
        write_tiny_judges(kit / "scorers", 0)  # the preference judges' stand-ins, where params.yaml names them

        # the full v1 example's paths: the same stand-ins (VGG narrower still: it runs at 512 px there)
        self._link(a / "models/my_model.safetensors", kit / "models/tiny-sd15-a.safetensors")
        for family in LORA_FAMILIES:
            self._link(a / "loras" / family, kit / "loras" / family)
            self._link(a / "benchmark_images/lora_headers" / family, kit / "lora_headers" / family)
        self._link(a / "benchmark_images/style_refs", kit / "style_refs")
        write_state_dict(read_state_dict(clip_weights), a / "weights/open_clip_vit_l14_quickgelu.bin")
        self._link(a / "weights/sac+logos+ava1-l14-linearMSE.pth", kit / "scorers/laion_head.pth")
        write_tiny_vgg19(a / "weights/vgg19-dcbb9e9d.pth", 0, width_divisor=64)

        # alt/: what a changed path points at; alt/<path> is the asset at <path> (the same file, another path)
        for name in PARAMS_FILES:
            for _, value in leaves(read_params(name)):
                if not isinstance(value, str):
                    continue
                src, dest = a / value, a / "alt" / value
                if not src.exists() or dest.exists():
                    continue
                if src.is_dir():
                    self._link(dest, src)
                else:  # a copy: the code may resolve links (load_clip does)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dest)
        # a standalone VAE (VAE keys only): validate refuses a full checkpoint given as a model's vae
        write_tiny_vae(a / "alt/vae.safetensors", "sd15", seed=1)
        # a Flux model's separate CLIP-L, T5-XXL and VAE files with other weights (its transformer is not used)
        flux.write_transformer_only(a / "alt/flux-other", "flux1-dev", 9)
        (a / "alt/clip-renamed").mkdir(parents=True)
        shutil.copy(clip_config, a / "alt/clip-renamed/ghostreview-tiny2-ViT-quickgelu.json")
        other = dict(self.clip_config, quick_gelu=False)  # same weights, another activation
        (a / "alt/clip-config").mkdir(parents=True)
        (a / "alt/clip-config" / f"{self.clip_arch}.json").write_text(json.dumps(other))
        (a / "alt/clip-vit-l").mkdir(parents=True)
        (a / "alt/clip-vit-l/ViT-L-14-quickgelu.json").write_text(json.dumps(self.clip_config))
        self.configs_cache = root / "configs-cache"  # materialized diffusers configs, shared by every run's HOME
        self.configs_cache.mkdir()

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def workspace(self, name: str) -> Path:
        """A new project directory: links to every asset, an empty HOME (image store, hash cache) and data/."""
        ws = self.root / name
        ws.mkdir()
        for entry in self.assets.iterdir():
            if entry.name != "data":
                (ws / entry.name).symlink_to(entry)
        (ws / "data").mkdir()
        (ws / "data/benchmark").symlink_to(self.assets / "data/benchmark")
        (ws / "data/arena").symlink_to(ROOT / "data/arena")  # the arena stage's votes: committed (the demo's)
        cache = ws / "home/.cache/ghostreview"
        cache.mkdir(parents=True)
        (cache / "configs").symlink_to(self.configs_cache)
        return ws


def write_spread_head(path: Path) -> Path:
    """A head of the LAION v2 layout scoring every image in (4.1, 5.9): 5 + 0.9 u.e on the L2-normalized embedding
    e, u a fixed unit vector. So scoring.aesthetic.good_threshold 0 and 6 give good-image rates 1 and 0 for sure
    (the kit's random head scores everything near 0, where no allowed threshold tells images apart)."""
    from ghostreview.scoring.aesthetic import LAYERS

    u = torch.randn(768, generator=torch.Generator().manual_seed(0))
    state = {}
    for name, (out_f, in_f) in LAYERS:
        weight = torch.zeros(out_f, in_f)
        weight[0, 0] = 1.0  # carry the first coordinate through
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, torch.zeros(out_f)
    first, last = LAYERS[0][0], LAYERS[-1][0]
    state[f"{first}.weight"][0] = u / u.norm()
    state[f"{last}.weight"][0, 0], state[f"{last}.bias"][0] = 0.9, 5.0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def other_weights(src: Path, dest: Path) -> None:
    """A copy of the checkpoint ``src`` (header metadata kept) with other values in one tensor: another model."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(dest), metadata=metadata)


# ------------------------------------------------------------------------------------------------------- spies
class StopRun(BaseException):
    """Ends a stage run once the call a probe observes is recorded (what follows is not observed)."""


@dataclass(frozen=True)
class FakePipe:
    """Stands in for a loaded diffusers pipeline: ``draw`` and the LoRA loader are spied, so it is never used."""

    checkpoint: str  # file name: each model draws its own dummy images

    def set_progress_bar_config(self, **kw: object) -> None:
        """The engine turns the pipeline's per-step bars off; nothing to turn off here."""


def dummy_image(pipe: FakePipe, request) -> Image.Image:
    seed = int(hashlib.sha256(f"{pipe.checkpoint}|{request.prompt}|{request.seed}".encode()).hexdigest()[:8], 16)
    return Image.new("RGB", (64, 64), tuple(np.random.default_rng(seed).integers(0, 256, 3).tolist()))


@contextmanager
def spies(mp: pytest.MonkeyPatch, rec: Record, project: Project) -> Iterator[None]:
    """Record the calls where settings are used; heavy ones return stand-ins (see the module docstring)."""
    import open_clip
    from open_clip import factory

    import ghostreview.generation.engines.local as local_engine
    import ghostreview.generation.engines.ray as ray_cluster
    import ghostreview.generation.generate as gen
    import ghostreview.generation.worker as worker
    import ghostreview.scoring.aesthetic as aesthetic
    import ghostreview.scoring.styleloss as styleloss
    import ghostreview.validate as validate

    calls = rec.calls
    mp.setattr(os, "fsync", lambda fd: None)  # the image store's crash safety is not probed here; it costs seconds
    if rec.gpus:
        mp.setattr(torch.cuda, "device_count", lambda: rec.gpus)
        mp.setattr(torch.cuda, "get_device_name", lambda device=None: f"fake GPU {device}")  # the score store key

    def log(name: str, **kw) -> None:
        calls[name].append(norm(kw, rec.ws))
        if name == rec.stop:
            raise StopRun(name)

    # params: which keys the stage reads (validation of every file's existence does not count)
    reads = Reads()
    real_load, real_check = validate.load, validate.check_files
    mp.setattr(validate, "load", lambda *a, **k: recording(real_load(*a, **k), reads))

    def check_files(*a, **k):
        reads.paused += 1
        try:
            return real_check(*a, **k)
        finally:
            reads.paused -= 1

    mp.setattr(validate, "check_files", check_files)

    # generate
    def open_pipeline(ckpt, family, config_dir, **kw):
        log("load_pipeline", checkpoint=ckpt.path, family=family, config_dir=config_dir, **kw)
        return FakePipe(ckpt.path.name)

    def open_flux(ckpt, cache, *, config_dir=None, clip_l=None, t5xxl=None, vae=None, t5_tokenizer=None, **kw):
        log("load_pipeline", checkpoint=ckpt.path, family=ckpt.family, config_dir=config_dir, clip_l=clip_l,
            t5xxl=t5xxl, vae=vae, t5_tokenizer=t5_tokenizer, **kw)
        return FakePipe(ckpt.path.name)

    def draw(pipe, family, requests, base_scheduler_config=None, batch_size=None):
        log("draw", family=family, requests=list(requests), batch_size=batch_size, threads=torch.get_num_threads())
        return [(dummy_image(pipe, r), []) for r in requests]

    def draw_flux(pipe, requests, batch_size=None):
        return draw(pipe, "flux", requests, batch_size=batch_size)

    real_sha, real_store, real_plan, real_key = gen.file_sha256, gen.ImageStore, gen.plan_jobs, gen.job_key

    def plan_jobs(*a, **k):
        jobs = real_plan(*a, **k)
        log("plan", jobs=[[j.task, j.item, j.seed, j.prompt] for j in jobs])
        return jobs

    def job_key(fields):
        key = real_key(fields)
        log("job_key", key=key)
        return key

    mp.setattr(gen, "plan_jobs", plan_jobs)
    mp.setattr(gen, "job_key", job_key)
    mp.setattr(worker, "open_pipeline", open_pipeline)
    mp.setattr(worker, "draw", draw)
    mp.setattr(worker, "open_flux_checkpoint", open_flux)
    mp.setattr(worker, "draw_flux", draw_flux)
    class FakeAdapters:  # worker.LoraAdapters: activating a batch's LoRAs logs them as apply_loras did
        def __init__(self, pipe, family):
            self.family = family

        def activate(self, specs):
            return log("apply_loras", family=self.family, loras=list(specs)) or {}  # every module got its delta

    mp.setattr(worker, "LoraAdapters", FakeAdapters)
    mp.setattr(worker, "FluxLoraAdapters", lambda pipe: FakeAdapters(pipe, "flux"))
    mp.setattr(gen, "file_sha256", lambda path, cache=None: log("file_sha256", path=path, cache=cache) or real_sha(
        path, cache))
    mp.setattr(gen, "ImageStore", lambda root, renditions=None: log("image_store", root=root, renditions=renditions)
                or real_store(root, renditions=renditions))

    class FakeRayEngine(local_engine.LocalEngine):
        def __init__(self, address, workers=0):
            log("ray_engine", address=address, workers=workers)

    mp.setattr(ray_cluster, "RayEngine", FakeRayEngine)

    # CLIP: open_clip's factory builds the tiny CLIP from the named weights file, on the CPU, whatever the arch
    real_create = open_clip.create_model_and_transforms
    mp.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    mp.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))

    def create(arch, pretrained=None, device="cpu", **kw):
        log("open_clip", arch=arch, pretrained=pretrained, device=device, config=open_clip.get_model_config(arch))
        factory._MODEL_CONFIGS["reach-tiny"] = project.clip_config
        model, train, preprocess = real_create("reach-tiny", pretrained=pretrained, device="cpu", **kw)
        for tower in ("encode_image", "encode_text"):
            real = getattr(model, tower)
            setattr(model, tower, lambda x, _real=real, _tower=tower: log(
                _tower, rows=len(x), threads=torch.get_num_threads()) or _real(x))
        return model, train, preprocess

    mp.setattr(open_clip, "create_model_and_transforms", create)

    real_head, real_scores = aesthetic.load_head, aesthetic.aesthetic_scores
    mp.setattr(aesthetic, "load_head", lambda path, *a, **k: log("load_head", path=path) or real_head(path, *a, **k))
    mp.setattr(aesthetic, "aesthetic_scores", lambda *a, **k: log("aesthetic_scores", threads=torch.get_num_threads())
               or real_scores(*a, **k))

    # VGG19: loaded for real; ``.to(device)`` is recorded and kept on the CPU
    real_vgg, real_grams = styleloss.load_vgg19_features, styleloss.style_grams

    def load_vgg(path):
        log("load_vgg", path=path)
        vgg = real_vgg(path)

        def to(*a, **k):
            log("vgg_to", args=list(a), kwargs=k)
            return torch.nn.Module.to(vgg, "cpu")

        vgg.to = to
        return vgg

    mp.setattr(styleloss, "load_vgg19_features", load_vgg)
    mp.setattr(styleloss, "style_grams", lambda vgg, images: log(
        "style_grams", shape=list(images.shape), threads=torch.get_num_threads()) or real_grams(vgg, images))
    # the preference judges: loaded for real, their loaders' arguments recorded
    import ghostreview.scoring.hpsv21 as hpsv21
    import ghostreview.scoring.pickscore as pickscore

    real_hps, real_pick = hpsv21.load_hpsv21, pickscore.load_pickscore

    def load_hps(weights, arch=hpsv21.ARCH, model_config=None, **k):
        log("load_hpsv21", weights=weights, arch=arch, model_config=model_config)
        return real_hps(weights, arch, model_config=model_config, **k)

    def load_pick(model_dir, processor_dir, **k):
        log("load_pickscore", model_dir=model_dir, processor_dir=processor_dir)
        return real_pick(model_dir, processor_dir, **k)

    mp.setattr(hpsv21, "load_hpsv21", load_hps)
    mp.setattr(pickscore, "load_pickscore", load_pick)
    # report: the plots' figures are not built (seconds of matplotlib; they show standardize's output, no setting)
    import ghostreview.analysis.report.plots as plots

    mp.setattr(plots, "figures", lambda result, data, models, shown: log("figures") or {})
    yield
    rec.reads = reads.keys


_STAGE_MODULES: dict[str, Any] = {}


def stage_module(script: str):
    """The stage script as a module (imported once; its ``main`` is called per run)."""
    if script not in _STAGE_MODULES:
        spec = importlib.util.spec_from_file_location(f"reach_stage_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _STAGE_MODULES[script] = module
    return _STAGE_MODULES[script]


def run_stage(stage: Stage, ws: Path, data: Mapping, project: Project, stop: str | None = None,
              gpus: int = 0) -> Record:
    """Run ``stage``'s script in ``ws`` with params ``data`` (written to ``ws/params.yaml``), up to the first call
    ``stop`` when given, on a machine where torch sees ``gpus`` CUDA GPUs."""
    (ws / "params.yaml").write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    rec = Record(stage, ws, stop, gpus)
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(ws)
            mp.setenv("HOME", str(ws / "home"))
            with spies(mp, rec, project):
                try:
                    stage_module(stage.script).main([*stage.argv, "--params", "params.yaml"])
                except StopRun:
                    pass
                except SystemExit as exc:
                    rec.error = norm(str(exc.code), ws)
                except Exception as exc:  # a bug, or a bad value the stage does not turn into an error line
                    rec.error = norm(f"{type(exc).__name__}: {exc}", ws)
    finally:
        torch.set_num_threads(threads)
    return rec


# ---------------------------------------------------------------------------------------------------- pipeline
# Images the scoring stages read (generate's output). They read no count, so a few images per task keep them fast
# under the full protocol's settings too.
SCORED_COUNTS = {"general": 1, "style": 1, "lora": 1}
_RUNS = itertools.count()


class Pipeline:
    """One params file's base run (every stage, lazily, in one workspace) and probe runs on top of it."""

    def __init__(self, project: Project, data: Mapping, label: str) -> None:
        self.project, self.data, self.label = project, data, label  # label: the params file's name
        self.stages = dvc_stages(data)
        self.ws = project.workspace("base-" + re.sub(r"\W+", "-", label))
        self.records: dict[str, Record] = {}
        self._references: dict[tuple, Record] = {}

    def upstream(self, name: str) -> list[str]:
        """Stage instances whose outputs ``name`` depends on, in dvc.yaml order."""
        deps = self.stages[name].deps
        return [n for n, s in self.stages.items() if n != name and any(overlaps(o, d) for o in s.outs for d in deps)]

    def base(self, name: str) -> Record:
        if name not in self.records:
            for up in self.upstream(name):
                self.base(up)
            stage = self.stages[name]
            self.records[name] = rec = run_stage(stage, self.ws, self.data, self.project)
            assert rec.error is None, f"{self.label} base run of {name}: {rec.error}"
            counts = self.data["benchmark"]["images_per_item"]
            if stage.group == "generate" and counts != SCORED_COUNTS:
                fewer = json.loads(json.dumps(self.data))
                fewer["benchmark"]["images_per_item"] = SCORED_COUNTS
                assert run_stage(stage, self.ws, fewer, self.project).error is None
        return self.records[name]

    def reference(self, names: list[str], data: Mapping, stop: str | None = None, gpus: int = 0) -> Record:
        """``probe`` for the unchanged side of a comparison, run once per (stages, params, stop, gpus)."""
        key = (tuple(names), stop, gpus, json.dumps(data, sort_keys=True))
        if key not in self._references:
            self._references[key] = self.probe(names, data, stop, gpus)
        return self._references[key]

    def probe(self, names: list[str], data: Mapping, stop: str | None = None, gpus: int = 0) -> Record:
        """Run stages ``names`` in order with params ``data`` in a new workspace whose other inputs are the base
        run's outputs (the last one up to its first call ``stop``); the last one's record (or the first failing
        one's)."""
        chain = set(names)
        ws = self.project.workspace(f"probe-{next(_RUNS)}")
        for up in {u for n in names for u in self.upstream(n)} - chain:
            for out in self.stages[up].outs:
                if (self.base(up).ws / out).exists():
                    (ws / out).parent.mkdir(parents=True, exist_ok=True)
                    (ws / out).symlink_to(self.ws / out)
        for i, name in enumerate(names):
            rec = run_stage(self.stages[name], ws, data, self.project, stop if i == len(names) - 1 else None, gpus)
            if rec.error:
                break
        return rec
