"""DVC stage checkparams: the whole params file is valid (no unknown key, no wrong type, no bad value).

DVC runs a stage only when something it tracks has changed, and every other stage tracks only the params it reads: a
typo'd top-level key (``generaton:``) changes none of them, so in an up-to-date workspace no stage would ever read it
and ``dvc repro`` would report success. This stage tracks the whole params file (``params: - params.yaml:`` in
dvc.yaml), so every edit of it, a new key included, reruns it, and ``dvc repro`` stops at its ``error:`` line. It has no
outputs, and nothing depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ghostreview import validate
from ghostreview.errors import stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", required=True, type=Path, help="the params file dvc.yaml tracks as a whole")
    args = ap.parse_args(argv)
    params = validate.load(args.params)
    print(f"checkparams: {args.params} is valid ({len(params.models)} models)")


if __name__ == "__main__":
    main()
