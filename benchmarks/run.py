"""Run the benchmarks: ``python -m benchmarks.run [--only NAME ...] [--quick] [--device DEV] [--json PATH]``.

``--quick`` shrinks every benchmark to seconds (tiny models, fewer repeats) to exercise the code paths; figures
worth recording come from the default run. ``--json`` writes every benchmark's figures to one file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

from benchmarks.common import header, machine_line, versions

BENCHMARKS = ("scoring_clip", "styleloss_refs", "incremental", "generation_gpu", "scale")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only this benchmark (repeatable); one of {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes: exercise the code paths in seconds")
    p.add_argument("--device", default="cpu", help="device for the benchmarks that take one (cpu, cuda)")
    p.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    args = parse_args(argv)
    header("GhostReview benchmarks" + (" (--quick: code-path check, not figures)" if args.quick else ""))
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    results = {"machine": machine_line(), "versions": versions(), "quick": args.quick,
               "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])}
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        results[name] = module.run(quick=args.quick, device=args.device)
        results[name]["wall_s"] = time.perf_counter() - start
        print(f"  ({name} took {results[name]['wall_s']:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
