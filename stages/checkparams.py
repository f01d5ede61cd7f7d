"""DVC stage checkparams: the whole params file is valid, and each stage's inputs besides data are in one small file.

1. Valid. DVC runs a stage only when something it tracks has changed: a typo'd top-level key (``generaton:``) would
   change no stage, and ``dvc repro`` would report success. This stage tracks the whole params file (``params: -
   params.yaml:`` in dvc.yaml), so every edit of it reruns it, and ``dvc repro`` stops at its ``error:`` line.
2. Settings files. DVC re-reads a params file for every stage instance that lists keys of it, and params.yaml grows
   with the models: listed by every per-model stage, ``dvc status`` would parse an O(N) file O(N) times. Instead this
   stage writes the keys each per-model stage reads (:data:`SETTINGS`) to ``data/params/<stage>.json`` (generate's,
   which hold the model's own entry: ``data/params/generate/<model>.json``) and each instance depends on its file.
3. Code fingerprints. Each stage depends on ``data/params/code/<script>.json``, the sha256 of every file of its
   script's import closure and package data (``util.imports.fingerprint``), instead of forty code files one by one;
   this stage lists them all in dvc.yaml, so any code edit reruns it.

A file is rewritten only when its content changes (a stage whose inputs did not change is not stale), and files
nobody reads any more (a removed model's) are deleted: ``data/params`` is this stage's ``persist: true`` output.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from ghostreview import validate
from ghostreview.errors import stage_main
from ghostreview.util.atomic import write_text_atomic
from ghostreview.util.hashing import file_sha256
from ghostreview.util.imports import fingerprint
from ghostreview.util.yamlio import read_yaml

MODEL = "models.{model}"
# per-model stage -> the params keys its script reads (tests/test_settings_reach.py holds each stage to its list:
# every key it reads is here, and a change of each one reaches its output); MODEL makes the file per model
SETTINGS: dict[str, tuple[str, ...]] = {
    "generate": (MODEL, "benchmark", "generation"),
    "score": ("scoring.judges", "scoring.clip", "scoring.aesthetic.weights", "scoring.aesthetic.sha256",
              "scoring.style", "scoring.hpsv21", "scoring.pickscore", "scoring.device", "scoring.batch_size",
              "scoring.cpu_threads"),
}
# per-model stage -> the files it reads that dvc.yaml cannot list as deps, fingerprinted into its settings file:
# the judges' files, which exist only where the judge is listed (a dep on a missing path stops `dvc repro`)
FILES = {"score": "judge files"}
STAGES_DIR = Path(__file__).resolve().parent


def settings_file(stage: str, model: str) -> str:
    """Where ``stage``'s settings for ``model`` are, relative to the out directory."""
    return f"{stage}/{model}.json" if MODEL in SETTINGS[stage] else f"{stage}.json"


def lookup(data: Mapping, key: str) -> tuple[bool, object]:
    """(present, value) of a dotted key; an absent key is left out of the file, as DVC leaves it out of dvc.lock."""
    node: object = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def as_json(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def settings_texts(data: Mapping, files: Mapping[str, str] | None = None) -> dict[str, str]:
    """{file under the out directory: its text} for every per-model stage and model; ``files`` (path: sha256) goes
    into the files entry of the stages in :data:`FILES`."""
    texts = {}
    for stage, keys in SETTINGS.items():
        for model in data.get("models") or {}:
            values: dict[str, object] = {}
            for key in (k.format(model=model) for k in keys):
                present, value = lookup(data, key)
                if present:
                    values[key] = value
            if stage in FILES and files:
                values[FILES[stage]] = dict(files)
            texts[settings_file(stage, model)] = as_json(values)
    return texts


def judge_fingerprints(params: validate.Params, root: Path) -> dict[str, str]:
    """{path as params write it (a folder's files below it): sha256} of every file the listed judges read, through
    the hash cache (``<paths.cache>/sha256.json``: a file unchanged since it was last hashed is not read again).

    So a judge's weights replaced under another name (an edit of params.yaml) or its folder's files edited, then
    `dvc repro` (any params edit reruns this stage), reruns the score stages. A file replaced in place with no edit
    of params.yaml is not seen by `dvc status` (no stage tracks it): `dvc repro -f checkparams` then."""
    cache = validate.resolve(root, params.paths.cache) / "sha256.json"
    out = {}
    for _key, rel, _kind, _doc in validate.judge_files(params):
        path = validate.resolve(root, rel)
        if not path.exists():  # the score stage's validation names it, its key and the fix
            out[rel] = "missing"
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[rel if f == path else f"{rel}/{f.relative_to(path).as_posix()}"] = file_sha256(f, cache)
    return out


def code_texts(stages_dir: Path = STAGES_DIR) -> dict[str, str]:
    """{``code/<script>.json``: the fingerprint of every stage script}."""
    root = stages_dir.parent
    return {f"code/{s.stem}.json": as_json(fingerprint(s.relative_to(root).as_posix(), root))
            for s in sorted(stages_dir.glob("*.py"))}


def sync_dir(out: Path, texts: Mapping[str, str]) -> tuple[int, int]:
    """Make ``out`` hold exactly ``texts``: files whose content differs are written (atomically), others are left
    untouched, files not in ``texts`` are deleted. Returns (written, deleted)."""
    written = deleted = 0
    for rel, text in texts.items():
        path = out / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
            written += 1
    for path in sorted(out.rglob("*"), reverse=True) if out.is_dir() else []:
        if path.is_file() and path.relative_to(out).as_posix() not in texts:
            path.unlink()
            deleted += 1
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return written, deleted


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", required=True, type=Path, help="the params file dvc.yaml tracks as a whole")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the stages' settings and code fingerprints here (dvc.yaml: data/params)")
    args = ap.parse_args(argv)
    params = validate.load(args.params)
    print(f"checkparams: {args.params} is valid ({len(params.models)} models)")
    if args.out is not None:
        data = read_yaml(args.params)
        assert isinstance(data, Mapping)  # validate.load refused anything else
        files = judge_fingerprints(params, args.params.resolve().parent)
        written, deleted = sync_dir(args.out, {**settings_texts(data, files), **code_texts()})
        print(f"checkparams: {args.out}: {written} files written, {deleted} deleted")


if __name__ == "__main__":
    main()
