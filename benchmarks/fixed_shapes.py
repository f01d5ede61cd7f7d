"""What fixed forward shapes cost: one image drawn alone in a forward of 1 vs padded to a forward of 4.

Every forward runs at ``batch_size`` images (``ghostreview.generation.draw``; the scorers likewise,
``ghostreview.scoring.registry.batching``) so that an image's pixels and scores never depend on its batch-mates. The
cost is the padding of short batches. Tiny kit SD1.5 at 64 px with hires x1.5, 4 + 2 steps, one torch thread,
interleaved repeats, median.
Command: ``python -m benchmarks.fixed_shapes``.
"""

import statistics
import time

import torch

torch.set_num_threads(1)
torch.set_flush_denormal(True)
# The torch thread count and denormal flushing are set before the project's modules are imported (hence E402).
from ghostreview.generation.draw import DrawRequest, Hires, draw_arrays  # noqa: E402 (torch settings first)
from ghostreview.kit.sd import tiny_pipeline  # noqa: E402 (torch settings first)

pipe = tiny_pipeline("sd15", 1)
pipe.set_progress_bar_config(disable=True)
r = DrawRequest("a photo of a lighthouse", "lowres", 100, 4, 7.0, 64, 64, "DPM++ 2M Karras", 1, Hires(1.5,2,0.5))
draw_arrays(pipe, "sd15", [r], batch_size=4)
draw_arrays(pipe, "sd15", [r], batch_size=1)
t = {1: [], 4: []}
for i in range(6):
    for b in ((1, 4) if i % 2 == 0 else (4, 1)):
        s = time.perf_counter()
        draw_arrays(pipe, "sd15", [r], batch_size=b)
        t[b].append(time.perf_counter() - s)
print({b: round(statistics.median(v), 3) for b, v in t.items()}, "ratio padded/alone",
      round(statistics.median(t[4]) / statistics.median(t[1]), 3))
