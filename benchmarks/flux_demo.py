"""What a Flux stand-in costs the demo: the kit's write, loading, and its 69 images (v1's 30 general prompts x 2 seeds
+ 9 styles; no LoRA table for Flux yet) at the demo's 64x64, 4 steps, batch 4, through the worker's path.

Run: ``nice .venv/bin/python -m benchmarks.flux_demo --threads 1`` (results: benchmarks/RESULTS.md section 15).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMAGES, SIZE, STEPS, BATCH = 69, 64, 4, 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from ghostreview.generation.draw import DrawRequest
    from ghostreview.generation.loading import inspect_checkpoint
    from ghostreview.generation.plan import ImageJob
    from ghostreview.generation.worker import PipelineSpec, load_spec_pipeline, pipeline_drawer
    from ghostreview.kit import flux

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="flux-demo-"))
    t0 = time.perf_counter()
    path = flux.write_all_in_one(root / "tiny-flux-dev.safetensors", "flux1-dev", 5)
    t1 = time.perf_counter()
    spec = PipelineSpec(inspect_checkpoint(path), None, None, False, "epsilon", "cpu", "float32", args.threads,
                        root / "cache", BATCH)
    drawer = pipeline_drawer(load_spec_pipeline(spec), "flux", BATCH)
    t2 = time.perf_counter()
    prompts = [f"a photo of a cat number {i}, detailed, golden light" for i in range(IMAGES)]
    jobs = [ImageJob("general", f"p{i}", 1000 + i, p, "", (), (), "ok",
                     DrawRequest(p, "", 1000 + i, STEPS, 3.5, SIZE, SIZE, "Euler")) for i, p in enumerate(prompts)]
    for k in range(0, IMAGES, BATCH):
        drawer(jobs[k:k + BATCH])
    t3 = time.perf_counter()
    print(f"threads {args.threads}: kit write {t1 - t0:.1f} s, load {t2 - t1:.1f} s, {IMAGES} images "
          f"{t3 - t2:.1f} s ({(t3 - t2) / IMAGES:.3f} s/image), load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
