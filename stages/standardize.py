"""DVC stage standardize: per-item z-scores over all reviewed models, scores, paired bootstrap intervals and ranks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ghostreview import validate
from ghostreview.analysis.aggregate import UNDRAWN_COLUMNS, made_with_map, manifests, models_table, undrawn_rows
from ghostreview.analysis.reference import POOL, Reference, ReferenceError, load_for_review, review_meta
from ghostreview.analysis.standardize import protocol_pool, standardize
from ghostreview.config import Params
from ghostreview.errors import stage_main
from ghostreview.protocol import BaseProtocol, BaseSettings, Benchmark, base_protocol, benchmark_digest
from ghostreview.scoring.registry import REGISTRY
from ghostreview.scoring.table import VALUE_COLUMNS, read_scores
from ghostreview.util.runtime import progress_bar


def reference_set(directory: Path, name: str, benchmark: dict, params_path: Path) -> Reference | None:
    """None for ``pool``, else the named reference set (a problem names standardize.reference and the file)."""
    if name == POOL:
        return None
    try:
        return load_for_review(directory, name, benchmark)
    except ReferenceError as exc:
        raise ReferenceError(f"standardize.reference: {name!r} in {params_path}: {exc}") from exc


OVERRIDES = ("sampler", "schedule_type", "steps", "cfg_scale", "width", "height", "prose")  # clip_skip: per model


def model_protocol(images: Path, name: str, bench: Benchmark) -> str:
    """The z pool of ``name``'s general and style rows from the base and prediction generate wrote in its model.json
    (no base there: drawn before bases existed, the v1 protocol)."""
    info = json.loads((images / name / "model.json").read_text(encoding="utf-8"))
    base = info.get("base") or ""
    if not base:
        return protocol_pool(base, "", plain=True, v_settings=False)
    proto = base_protocol(bench, base)
    return protocol_pool(base, str(info.get("prediction") or ""), plain=proto == BaseProtocol(),
                         v_settings=proto.v_prediction != BaseSettings())


def warn_overrides(params: Params, names: list[str]) -> None:
    """A model entry's own settings stay in its base's pool (docs/standardize.md): say so, since its images then
    differ from its pool's in more than the checkpoint."""
    for name in names:
        own = [k for k in OVERRIDES if getattr(params.models[name], k) is not None]
        if own:
            print(f"standardize: note: {name} overrides its base's {', '.join(own)}; it is z-scored in its base's "
                  "pool all the same")


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", required=True, type=Path, help="generate outputs (for model.json)")
    ap.add_argument("--scores", required=True, type=Path, help="score directory: <model>/<metric>.csv")
    ap.add_argument("--references", required=True, type=Path, help="reference sets: <name>.json")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    args = ap.parse_args(argv)

    root = args.params.parent.resolve()
    params = validate.load(args.params)
    names = list(params.models)
    # three steps: read the scores, standardize and bootstrap, write (the standardizing is one vectorized call)
    with progress_bar(total=3, desc="standardize", unit="steps") as bar:
        models = models_table(args.images, names)
        bench = validate.benchmark(params, root, str(args.params))
        models["protocol"] = [model_protocol(args.images, n, bench) for n in names]  # issue 17: per-base pools
        warn_overrides(params, names)
        s = params.standardize
        digest = {"name": bench.name, "version": bench.version, "digest": benchmark_digest(bench)}
        ref = reference_set(args.references, s.reference, digest, args.params)
        # the review's judges only: a registered judge it does not compute gets no undrawn rows and no ranking
        judges = {n: REGISTRY[n] for n in params.scoring.judges}
        scores = read_scores(args.scores, names, VALUE_COLUMNS)  # what standardize reads of a score row
        # unusable LoRA pairs: flagged, not silent (only the manifest columns this needs: infotexts are most of it)
        undrawn = undrawn_rows(manifests(args.images, names, UNDRAWN_COLUMNS), judges)
        if not undrawn.empty:
            scores = pd.concat([scores, undrawn], ignore_index=True)
        bar.update()
        result = standardize(
            scores, models, judges, made_with_map(bench, models), n_boot=s.bootstrap, seed=s.seed, ci=s.confidence,
            good_threshold=params.scoring.aesthetic.good_threshold, combined=validate.combined_judges(params),
            reference=None if ref is None else ref.groups,
        )
        bar.update()
        # which benchmark the scores answer: reports are comparable only when name, version and digest match
        result.meta["benchmark"] = digest
        result.meta["reference"] = review_meta(ref, models)
        result.write(args.out)
        bar.update()
    print(f"standardize: {len(names)} models, {len(result.images)} score rows -> {args.out}")


if __name__ == "__main__":
    main()
