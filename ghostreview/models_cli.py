"""``ghostreview add-model`` / ``remove-model``: edit the ``models:`` section of params.yaml safely.

add-model checks the checkpoint before anything is written (a readable safetensors header of a family the benchmark
covers; pickles refused unless asked for; a ``--vae`` that is a VAE, not a full checkpoint), hashes it (sha256 +
Civitai AutoV2, through the hash cache generation uses, so the first ``dvc repro`` does not hash it again), names the
models already in params with the same file (a warning: the same checkpoint with other settings may be meant), and
adds one entry, keeping the file's comments, order and formatting (ruamel round trip; written atomically, and only
when the whole new file validates).

remove-model takes the entry out and cleans what DVC leaves behind when a ``foreach`` key disappears: the instance's
outputs (``data/images/<name>``, ``data/scores/<name>/...``), their lines in the ``.gitignore`` files DVC wrote, and
the stale ``<stage>@<name>`` entries of ``dvc.lock``. The outputs deleted are the ones ``dvc.yaml`` declares for the
model's ``foreach`` instances, resolved by DVC itself; ``dvc.lock`` only says which instances ran, never what to
delete (a lock is data anyone can edit: ``outs: [{path: .git}]`` in it must not delete ``.git``). Standardize and the
report read only the models params lists, so the next ``dvc repro`` reruns those two and the model is gone from the
report. Its images stay in the image store and DVC's cache (``dvc gc`` frees them), so adding it back restores from
the run cache instead of recomputing.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from ghostreview import validate
from ghostreview.errors import UserError
from ghostreview.generation.bases import BaseError, ModelBase, bases_of, read_file_base, resolve_base
from ghostreview.generation.loading import PICKLE_SUFFIXES, CheckpointError, CheckpointFile, inspect_checkpoint
from ghostreview.generation.plan import ModelIdentity
from ghostreview.util.atomic import write_text_atomic
from ghostreview.util.hashing import file_sha256
from ghostreview.util.names import model_slug

HASH_CACHE_NAME = "sha256.json"  # under paths.cache: the same file ghostreview.generation.generate reads


class ModelsError(UserError, ValueError):
    """A model cannot be added or removed; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class AddedModel(ModelIdentity):
    """What add-model did: the model's identity, as its generate stage will record it (``plan.ModelIdentity``: name,
    family, hashes, AutoV2), and the checkpoint path written to its params entry."""

    checkpoint: str = ""  # as written to params (relative to the project root when inside it)
    same_file_as: tuple[str, ...] = ()  # models already in params whose checkpoint has the same sha256


@dataclass(frozen=True)
class RemovedModel:
    name: str
    in_params: bool  # False when only leftovers of an earlier removal were cleaned
    lock_entries: tuple[str, ...]
    outputs: tuple[str, ...]  # paths that existed and were deleted


# ------------------------------------------------------------------------------------------------ pure helpers


def slug_from_filename(path: Path | str) -> str:
    """A model name from a checkpoint file name: ``DreamShaper_8.safetensors`` -> ``dreamshaper_8``.

    Lower case; runs of anything but ``[a-z0-9_-]`` become one ``-``; leading/trailing ``-``/``_`` dropped.
    Raises ModelsError when nothing usable is left (e.g. ``+++.safetensors``).
    """
    slug = model_slug(Path(path).stem)
    if not slug or not validate.is_model_name(slug):
        raise ModelsError(f"{path}: cannot derive a model name from the file name; pass --name SLUG")
    return slug


def params_path(path: Path, root: Path) -> str:
    """``path`` as written in params: relative to ``root`` (POSIX) when inside it, else absolute.

    Relative paths keep DVC stage definitions free of machine-specific prefixes (run-cache sharing needs that).
    """
    absolute = Path(os.path.abspath(path))
    root = Path(os.path.abspath(root))
    return absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else absolute.as_posix()


def model_entry(checkpoint: str, *, vae: str | None = None, clip_skip: int | None = None,
                allow_pickle: bool = False, title: str | None = None, base: str | None = None) -> dict[str, Any]:
    """The params entry of one model, in the order the README shows; keys left at their default are omitted."""
    entry: dict[str, Any] = {"checkpoint": checkpoint}
    if vae is not None:
        entry["vae"] = vae
    if base is not None:
        entry["base"] = base
    if clip_skip is not None:
        entry["clip_skip"] = clip_skip
    if allow_pickle:
        entry["allow_pickle"] = True
    if title is not None:
        entry["title"] = title
    return entry


def model_base(ckpt: CheckpointFile, base: str | None) -> ModelBase:
    """The base add-model reviews ``ckpt`` under: ``base`` checked against the file, or the file's own
    (``bases.resolve_base``). A v-prediction file with no ``base`` is refused with the choices: its base's settings
    decide how it is drawn (NoobAI's v-pred versions sample with Euler only), and the file cannot say which it is."""
    told = read_file_base(ckpt)
    if base is None and told.prediction == "v_prediction":
        raise ModelsError(f"{ckpt.path}: a v-prediction {ckpt.family} checkpoint ({told.prediction_source}); its base "
                          f"decides the prompts and settings it is drawn with: pass --base, one of "
                          f"{', '.join(bases_of(ckpt.family))} (noobai for NoobAI-XL V-Pred and its merges)")
    try:
        return resolve_base(ckpt, base)
    except BaseError as exc:
        raise ModelsError(f"--base: {exc}") from exc


def check_vae_file(path: Path, allow_pickle: bool) -> None:
    """A VAE must be a readable safetensors file (or, with ``allow_pickle``, a pickle) holding VAE weights and no
    UNet or text encoder (``validate.check_vae``: a full checkpoint given as ``--vae`` is refused)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelsError(f"{path}: a pickle VAE ({path.suffix}) can run code when loaded; convert it to "
                              "safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)")
        if not path.is_file():
            raise ModelsError(f"{path}: no such VAE file")
    try:
        validate.check_vae(path, allow_pickle=allow_pickle, key="--vae")
    except CheckpointError as exc:
        raise ModelsError(str(exc)) from exc


def same_checkpoint(params: validate.Params, root: Path, checkpoint: Path, sha256: str, cache: Path) -> list[str]:
    """Names of the models in ``params`` whose checkpoint file has this ``sha256`` (only files of the same size are
    hashed, through the hash cache). A missing checkpoint is left to ``validate``."""
    size = checkpoint.stat().st_size
    same = []
    for name, m in params.models.items():
        path = validate.resolve(root, m.checkpoint)
        if path.is_file() and path.stat().st_size == size and file_sha256(path, cache) == sha256:
            same.append(name)
    return same


# ------------------------------------------------------------------------------------------------ YAML round trip


def _params_yaml() -> YAML:
    """Round trip for params.yaml: comments, key order and quoting survive; long lines are never re-wrapped."""
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    # ruamel writes a null as an empty value; keep the "null" the files spell out
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _lock_yaml() -> YAML:
    """dvc.lock is written the way DVC writes it (ruamel's round-trip defaults, block style)."""
    y = YAML()
    y.default_flow_style = False
    return y


def load_roundtrip(path: Path, lock: bool = False) -> Any:
    """The YAML document at ``path`` with its comments (ruamel round-trip types); duplicate keys refused."""
    try:
        return (_lock_yaml() if lock else _params_yaml()).load(Path(path).read_text(encoding="utf-8"))
    except Exception as exc:  # ruamel raises several unrelated error types
        raise ModelsError(f"{path}: not valid YAML ({exc}); fix the file first") from exc


def dump_text(doc: Any, lock: bool = False) -> str:
    out = io.StringIO()
    (_lock_yaml() if lock else _params_yaml()).dump(doc, out)
    return out.getvalue()


def _last_leaf(node: CommentedMap) -> tuple[CommentedMap, Any]:
    """The innermost last key of a nested mapping: ruamel hangs the comment lines that follow an entry on it."""
    key = list(node)[-1]
    while isinstance(node[key], CommentedMap) and len(node[key]):
        node, key = node[key], list(node[key])[-1]
    return node, key


def _take_following_lines(node: CommentedMap) -> Any:
    """Detach the comment/blank lines after ``node``'s last entry (its end-of-line comment stays); None if none."""
    leaf, key = _last_leaf(node)
    slot = leaf.ca.items.get(key)
    token = slot[2] if slot and len(slot) > 2 else None
    if token is None:
        return None
    # The token's first line ends the entry's own line (its end-of-line comment, if any); the rest follows it.
    first, _, rest = token.value.partition("\n")
    if not rest:
        return None
    moved = copy.copy(token)
    moved.value = "\n" + rest
    if first:
        token.value = first + "\n"
    else:
        slot[2] = None
    return moved


def _put_following_lines(node: CommentedMap, token: Any) -> None:
    """Hang lines taken by :func:`_take_following_lines` after ``node``'s last entry (after its own comment)."""
    leaf, key = _last_leaf(node)
    slot = leaf.ca.items.setdefault(key, [None, None, None, None])
    if slot[2] is None:
        slot[2] = token
    else:  # both end the entry's line with their first newline: keep one
        slot[2].value += token.value[1:]


def _as_commented(entry: dict[str, Any]) -> CommentedMap:
    out = CommentedMap()
    out.update(entry)
    return out


def add_entry(doc: CommentedMap, name: str, entry: dict[str, Any], source: str = "params.yaml") -> None:
    """Append ``models.<name>`` to a round-trip document; the lines that followed the section stay after it."""
    models = doc.get("models")
    if models is None:
        doc["models"] = models = CommentedMap()
    if not isinstance(models, CommentedMap):
        raise ModelsError(f"{source}: models must be a mapping of name -> entry")
    if name in models:
        raise ModelsError(f"{source}: models.{name} already exists ({models[name].get('checkpoint')}); choose another "
                          "name with --name, or remove it first: ghostreview remove-model " + name)
    trailing = _take_following_lines(models) if len(models) else None
    models[name] = _as_commented(entry)
    if trailing is not None:
        _put_following_lines(models, trailing)


def remove_entry(doc: CommentedMap, name: str) -> bool:
    """Delete ``models.<name>`` (False when absent); comment lines that followed it move to the new last entry."""
    models = doc.get("models")
    if not isinstance(models, CommentedMap) or name not in models:
        return False
    was_last = list(models)[-1] == name
    trailing = _take_following_lines(models) if was_last else None
    del models[name]
    if trailing is not None and len(models):
        _put_following_lines(models, trailing)
    return True


def validated(doc: Any, source: str) -> validate.Params:
    """The typed params of a document about to be written: nothing invalid is ever written."""
    return validate.parse(yaml.safe_load(dump_text(doc)) or {}, source)


# ------------------------------------------------------------------------------------------------ dvc.lock leftovers


def lock_entries(lock: Any, name: str) -> list[str]:
    """Stage names ``<stage>@<name>`` in a dvc.lock document (foreach instances of model ``name``)."""
    stages = (lock or {}).get("stages") or {}
    return [s for s in stages if "@" in s and s.split("@", 1)[1] == name]


def recorded_entry(lock: Any, name: str) -> dict[str, Any]:
    """The ``models.<name>`` params value a lock recorded for the model's instances ({} when none is recorded).

    Used only to resolve ``dvc.yaml`` for a model already gone from params (its templates may read ``${item.x}``);
    what is deleted is still what ``dvc.yaml`` declares.
    """
    stages = (lock or {}).get("stages") or {}
    for stage in lock_entries(lock, name):
        for values in ((stages[stage] or {}).get("params") or {}).values():
            entry = (values or {}).get(f"models.{name}") if isinstance(values, dict) else None
            if isinstance(entry, dict):
                return json.loads(json.dumps(entry, default=str))  # plain types, as DVC's context takes them
    return {}


def declared_outputs(root: Path, name: str, entry: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{"<stage>@<name>": [output, ...]}`` for model ``name``'s ``foreach`` instances, as DVC resolves ``dvc.yaml``.

    The stages are the ``foreach`` groups over the params' models; outputs are paths relative to ``root``. DVC resolves
    only the keys it finds in ``params.yaml``, so a model missing there is resolved with ``entry`` put back. DVC's own
    check that no two stages' outputs overlap runs over the whole pipeline, so nothing another stage owns comes back.

    Raises:
        ModelsError: no ``dvc.yaml`` in ``root``, or DVC cannot resolve it with this model.
    """
    from dvc.dvcfile import ProjectFile
    from dvc.exceptions import DvcException
    from dvc.parsing import ForeachDefinition
    from dvc.repo import Repo
    from dvc.repo.trie import build_outs_trie
    from dvc.stage.loader import StageLoader

    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise ModelsError(f"{dvc_yaml}: no such file; remove-model deletes only what dvc.yaml declares, so run it in "
                          "the project (where dvc.yaml and params.yaml live)")
    try:
        with Repo(str(root), uninitialized=True) as repo:  # reads only; a folder without .dvc/ is fine too
            dvcfile = ProjectFile(repo, str(dvc_yaml))
            resolver = dvcfile.resolver
            models = resolver.context.get("models", {})
            if name not in models:
                models[name] = dict(entry)
            groups = [g for g, d in resolver.definitions.items()
                      if isinstance(d, ForeachDefinition) and set(d.normalized_iterable) == set(models)]
            # every stage, resolved without the lock (its hashes do not matter here, and it may be garbled)
            stages = [StageLoader.load_stage(dvcfile, n, resolver.resolve_one(n)[n]) for n in resolver.get_keys()]
            build_outs_trie(stages)  # DVC's OverlappingOutputPathsError / OutputDuplicationError
            mine = {f"{g}@{name}" for g in groups}
            return {s.name: [Path(os.path.relpath(o.fs_path, root)).as_posix() for o in s.outs]
                    for s in stages if s.name in mine}
    except DvcException as exc:
        raise ModelsError(f"{dvc_yaml}: DVC cannot resolve the stages of model {name!r}: {exc}") from exc


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelsError(f"dvc.yaml: output {rel!r} is outside the project {root}; not deleting it")
    return path


def _unignore(path: Path) -> None:
    """Drop ``/<name>`` from the ``.gitignore`` DVC wrote next to an output; delete that file once it is empty."""
    gitignore = path.parent / ".gitignore"
    if not gitignore.is_file():
        return
    lines = gitignore.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() != f"/{path.name}"]
    if kept == lines:
        return
    if any(line.strip() for line in kept):
        write_text_atomic(gitignore, "\n".join(kept) + "\n")
    else:
        gitignore.unlink()


def remove_outputs(root: Path, rels: list[str]) -> list[str]:
    """Delete these outputs under ``root`` (files or directories), their .gitignore lines, and parents left empty."""
    root = Path(root).resolve()
    removed = []
    for rel in rels:
        path = _inside(root, rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(rel)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(rel)
        _unignore(path)
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed


# ------------------------------------------------------------------------------------------------ the two commands


def _hash_cache(params: validate.Params, root: Path) -> Path:
    return validate.resolve(root, params.paths.cache) / HASH_CACHE_NAME


def add_model(params_file: Path, checkpoint: Path, *, name: str | None = None, vae: Path | None = None,
              clip_skip: int | None = None, allow_pickle: bool = False, title: str | None = None,
              base: str | None = None) -> AddedModel:
    """Validate ``checkpoint`` (and ``vae``), hash it, and add ``models.<name>`` to ``params_file``.

    ``base`` (checked against the file: :func:`model_base`) is written when given; without it the entry names none
    and the generate stage reads the base from the file (the family's plain base: sd15, sdxl).

    Raises:
        ModelsError / CheckpointError / validate.ParamsError: unreadable or unsupported files, a bad or duplicate
            name, or a params file that would not validate afterwards. Nothing is written then.
    """
    params_file, checkpoint = Path(params_file), Path(checkpoint)
    root = params_file.parent.resolve()
    source = str(params_file)
    ckpt = inspect_checkpoint(checkpoint, allow_pickle=allow_pickle)  # read once
    family = ckpt.family  # refuses what GhostReview cannot review (SD2)
    resolved = model_base(ckpt, base)
    if vae is not None:
        check_vae_file(Path(vae), allow_pickle)
    name = name if name is not None else slug_from_filename(checkpoint)
    pickles = [p for p in (checkpoint, vae) if p is not None and Path(p).suffix.lower() in PICKLE_SUFFIXES]
    entry = model_entry(params_path(checkpoint, root), vae=params_path(vae, root) if vae is not None else None,
                        clip_skip=clip_skip, allow_pickle=allow_pickle and bool(pickles), title=title, base=base)
    doc = load_roundtrip(params_file)
    add_entry(doc, name, entry, source)
    params = validated(doc, source)
    cache = _hash_cache(params, root)
    sha = file_sha256(checkpoint, cache)
    vae_sha = file_sha256(Path(vae), cache) if vae is not None else None
    same = [n for n in same_checkpoint(params, root, checkpoint, sha, cache) if n != name]
    write_text_atomic(params_file, dump_text(doc))
    return AddedModel(name, family, checkpoint.stem, sha, vae_sha, clip_skip=clip_skip or 1,
                      random_weights=ckpt.random_weights, vae_file=Path(vae).name if vae else None,
                      checkpoint=entry["checkpoint"], same_file_as=tuple(same), base=resolved.base,
                      prediction=resolved.prediction, ztsnr=resolved.ztsnr)


def remove_model(params_file: Path, name: str, lock_file: Path | None = None) -> RemovedModel:
    """Remove ``models.<name>`` from ``params_file``, its outputs and its ``dvc.lock`` entries.

    ``lock_file`` defaults to ``dvc.lock`` next to the params file. The outputs deleted are those ``dvc.yaml`` declares
    for the model's stage instances (:func:`declared_outputs`), never paths read from the lock; a model no longer in
    params is cleaned only when the lock records instances of it that ``dvc.yaml`` declares. Outputs go first, params
    last, so an interrupted removal can simply be run again.

    Raises:
        ModelsError: a name that is no slug, an unknown name with no leftovers (the message lists the known models),
            the last model, or a ``dvc.yaml`` DVC cannot resolve. Nothing is deleted then.
    """
    params_file = Path(params_file)
    root = params_file.parent.resolve()
    lock_file = Path(lock_file) if lock_file is not None else root / "dvc.lock"
    doc = load_roundtrip(params_file)
    models = doc.get("models") or {}
    if not validate.is_model_name(name):
        raise ModelsError(f"{params_file}: {name!r} is not a model name (a slug of lower-case letters, digits, '-' and "
                          f"'_'); pass one of the names under models: {', '.join(models) or 'none'}")
    lock = load_roundtrip(lock_file, lock=True) if lock_file.is_file() else None
    recorded = lock_entries(lock, name)
    in_params = name in models
    unknown = f"{params_file}: no model {name!r} under models (known: {', '.join(models) or 'none'})"
    if not in_params and not recorded:
        raise ModelsError(unknown)
    if in_params and len(models) == 1:
        raise ModelsError(f"{params_file}: {name!r} is the only model; add another first (ghostreview add-model PATH)")
    entry = json.loads(json.dumps(models[name], default=str)) if in_params else recorded_entry(lock, name)
    leftovers = f"{unknown}; {lock_file} has entries for it ({', '.join(recorded)}), but"
    try:
        declared = declared_outputs(root, name, entry)
    except ModelsError as exc:
        if in_params:
            raise ModelsError(f"{exc}; nothing was deleted. Fix dvc.yaml (`dvc status` shows it too)") from exc
        raise ModelsError(f"{leftovers} {exc}; nothing was deleted. If they are a removed model's leftovers, put its "
                          f"entry back under models in {params_file} and remove it again") from exc
    stages = [s for s in declared if s in recorded]  # instances that ran: their lock entries go
    if not in_params and not stages:
        raise ModelsError(f"{leftovers} dvc.yaml declares no such stage instance; nothing was deleted")
    removed = remove_outputs(root, list(dict.fromkeys(o for outs in declared.values() for o in outs)))
    if stages:
        assert lock is not None  # stages are among ``recorded``, which lock_entries finds only in a lock it read
        for stage in stages:
            del lock["stages"][stage]
        write_text_atomic(lock_file, dump_text(lock, lock=True))
    if in_params:
        remove_entry(doc, name)
        validated(doc, str(params_file))
        write_text_atomic(params_file, dump_text(doc))
    return RemovedModel(name, in_params, tuple(stages), tuple(removed))
