"""Images/s of each judge at full size, and the seconds one v1 review (1,568 images per checkpoint) spends scoring.

``python -m benchmarks.judges [--device cuda] [--batch-sizes 1,8] [--repeats 2] [--quick] [--json PATH]``

Each judge runs through the project's own loading and scoring functions, on full-size random-weight stand-ins in
the real file formats (the cost of a forward does not depend on the values; nothing downloads):
- clip (aesthetic + CLIPScore share its image tower): open_clip ``ViT-L-14-quickgelu`` written by
  ``kit.fullsize.write_clip``, loaded by ``clip.load_clip``; timed call = ``image_embeddings`` +
  ``text_embeddings`` + both heads (``aesthetic_scores``, ``clip_scores``), as the score stage runs them.
- hpsv21: open_clip ``ViT-H-14`` (``create_model(arch, pretrained=None)``), saved as ``{"state_dict": fp16}`` like
  ``HPS_v2.1_compressed.pt``; ``hpsv21.load_hpsv21`` + ``hpsv21_scores``.
- pickscore: a transformers ``CLIPModel`` with ViT-H-14's sizes (:func:`pick_config`), ``save_pretrained`` (fp32
  safetensors, as PickScore_v1 ships), the kit's processor folder resized to 224; ``load_pickscore`` +
  ``pickscore_scores``.
- styleloss (StyleLoss and LoRALoss): torchvision ``vgg19()`` written by ``kit.fullsize.write_vgg19``,
  ``load_vgg19_features``; ``image_style_losses`` at ``StyleParams().image_size`` (512) against 2 references.
- diversity: no model (``seed_diversity`` on stored embeddings), timed on 32 seeds x 768-d per prompt.
Inputs are 512x512 RGB images (the demo protocol's size), one prompt. A call at batch 1 scores 2 images (two
forwards), at batch b > 1 b images (one forward) (:func:`images_for`); the calls at each batch size are interleaved
with each other and with the text forward alone. Images/s counts the whole call; the review figure separates text
(per distinct prompt: 30 general prompts) from images (per image: clip every image, the preference judges the 960
general ones, StyleLoss the 288 style + 320 LoRA ones; counts read from ``data/benchmark/v1``). FLOPs of one
batch-1 call are counted with ``torch.utils.flop_counter`` during the warm-up. Each call's wall time and the
process's CPU time (all threads: ``time.process_time``) are recorded; on a loaded machine both grow (OpenMP threads
spin while they wait for each other), so record the load with the figures. Models are loaded one at a time and
freed (ViT-H-14 in float32 is ~4 GB). ``--quick`` uses the tiny kit stand-ins: it checks the code path, its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import header, interleaved, machine_line, row, timed, versions
from benchmarks.scoring_clip import PROMPT, test_images

NAME = "judges"
IMAGE_SIZE = 512
V1 = Path(__file__).resolve().parents[1] / "data" / "benchmark" / "v1"
GENERAL_PROMPTS = 30  # distinct prompts whose text the prompt judges encode once per review (checked in review_counts)


@dataclass(frozen=True)
class Judge:
    """How to build, load and call one judge: ``load(tmp, quick, device) -> (model, label)``; ``score(model,
    images, batch)`` is the timed call; ``text(model, batch)`` its text forward alone (None: no text)."""

    name: str
    task_images: tuple[str, ...]  # the v1 tasks whose images this judge's image forwards see
    load: Callable[[Path, bool, str], tuple[Any, str]]
    score: Callable[[Any, list, int], Any]
    text: Callable[[Any, int], Any] | None


# ---------------------------------------------------------------------------------------------------- clip
def load_clip_judge(tmp: Path, quick: bool, device: str) -> tuple[Any, str]:
    from ghostreview.kit import fullsize
    from ghostreview.kit.scorers import write_tiny_clip, write_tiny_laion_head
    from ghostreview.scoring.aesthetic import load_head
    from ghostreview.scoring.clip import load_clip

    head = load_head(write_tiny_laion_head(tmp / "head.pth", seed=1))  # the kit's head has the real shapes
    if quick:
        arch, weights, config = write_tiny_clip(tmp / "clip", seed=0)
        return (load_clip(arch, weights, model_config=config, device=device), head), "tiny kit CLIP"
    weights = fullsize.write_clip(tmp / "clip.bin", seed=0)
    clip = load_clip(fullsize.CLIP_ARCH, weights, device=device)
    return (clip, head), f"open_clip {fullsize.CLIP_ARCH} + LAION head"


def score_clip(model: Any, images: list, batch: int) -> Any:
    from ghostreview.scoring.aesthetic import aesthetic_scores
    from ghostreview.scoring.clip import image_embeddings, text_embeddings
    from ghostreview.scoring.clipscore import clip_scores

    clip, head = model
    emb = image_embeddings(clip, images, batch)
    text, _ = text_embeddings(clip, [PROMPT] * len(images), batch)
    return aesthetic_scores(emb, head), clip_scores(emb, text)


def text_clip(model: Any, batch: int) -> Any:
    from ghostreview.scoring.clip import text_embeddings

    return text_embeddings(model[0], [PROMPT], batch)


# ---------------------------------------------------------------------------------------------------- HPSv2.1
def write_full_hps(path: Path, seed: int) -> Path:
    """Random-init open_clip ``ViT-H-14`` (its own init, seeded) saved as ``{"state_dict": float16 tensors}``."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model("ViT-H-14", pretrained=None)
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path


def load_hps_judge(tmp: Path, quick: bool, device: str) -> tuple[Any, str]:
    from ghostreview.kit.judges import write_tiny_hps
    from ghostreview.scoring.hpsv21 import ARCH, load_hpsv21

    if quick:
        arch, weights, config = write_tiny_hps(tmp / "hps", seed=0)
        return load_hpsv21(weights, arch, model_config=config, device=device), "tiny kit HPSv2.1"
    weights = write_full_hps(tmp / "HPS_v2.1_compressed.pt", seed=0)
    return load_hpsv21(weights, ARCH, device=device), f"open_clip {ARCH} (fp16 file, fp32 model)"


def score_hps(model: Any, images: list, batch: int) -> Any:
    from ghostreview.scoring.hpsv21 import hpsv21_scores

    return hpsv21_scores(model, images, [PROMPT] * len(images), batch)


def text_hps(model: Any, batch: int) -> Any:
    from ghostreview.scoring.hpsv21 import prompt_features

    return prompt_features(model, [PROMPT], batch)


# ---------------------------------------------------------------------------------------------------- PickScore
def pick_config():
    """``CLIPConfig`` with laion/CLIP-ViT-H-14-laion2B-s32B-b79K's sizes (PickScore_v1's architecture): vision 32
    layers x 1280 (MLP 5120, 16 heads, patch 14, 224 px), text 24 x 1024 (MLP 4096, 16 heads), projection 1024."""
    from transformers import CLIPConfig

    text = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu", "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
              "image_size": 224, "patch_size": 14, "hidden_act": "gelu"}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)


def write_full_pickscore(dir: Path, seed: int) -> tuple[Path, Path]:
    """``dir/model`` (config.json + fp32 model.safetensors) and ``dir/processor`` (the kit's folder at 224 px)."""
    from transformers import CLIPModel

    from ghostreview.kit.judges import write_tiny_pick_processor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(pick_config()).eval()
    model.save_pretrained(str(dir / "model"))
    del model
    processor = write_tiny_pick_processor(dir / "processor")
    config_path = processor / "preprocessor_config.json"
    config = json.loads(config_path.read_text()) | {"size": 224, "crop_size": 224}  # laion's ViT-H-14 sizes
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return dir / "model", processor


def load_pick_judge(tmp: Path, quick: bool, device: str) -> tuple[Any, str]:
    from ghostreview.kit.judges import write_tiny_pickscore
    from ghostreview.scoring.pickscore import load_pickscore

    if quick:
        return load_pickscore(*write_tiny_pickscore(tmp / "pick", seed=0), device=device), "tiny kit PickScore"
    model_dir, processor = write_full_pickscore(tmp / "pick", seed=0)
    return load_pickscore(model_dir, processor, device=device), "transformers CLIPModel, ViT-H-14 sizes (fp32)"


def score_pick(model: Any, images: list, batch: int) -> Any:
    from ghostreview.scoring.pickscore import pickscore_scores

    return pickscore_scores(model, images, [PROMPT] * len(images), batch)


def text_pick(model: Any, batch: int) -> Any:
    from ghostreview.scoring.pickscore import prompt_embeds

    return prompt_embeds(model, [PROMPT], batch)


# ---------------------------------------------------------------------------------------------------- StyleLoss
def load_vgg_judge(tmp: Path, quick: bool, device: str) -> tuple[Any, str]:
    from ghostreview.config import StyleParams
    from ghostreview.kit import fullsize
    from ghostreview.kit.scorers import write_tiny_vgg19
    from ghostreview.scoring.styleloss import load_vgg19_features, ref_stats

    size = 64 if quick else StyleParams().image_size
    path = write_tiny_vgg19(tmp / "vgg.pth", seed=0) if quick else fullsize.write_vgg19(tmp / "vgg.pth", seed=0)
    vgg = load_vgg19_features(path).to(device)
    refs = ref_stats(vgg, test_images(2, IMAGE_SIZE, seed=5), size)  # once per reference set, not per image
    return (vgg, refs), f"torchvision VGG19 features at {size} px" + (" (tiny kit)" if quick else "")


def score_vgg(model: Any, images: list, batch: int) -> Any:
    from ghostreview.scoring.styleloss import image_style_losses

    vgg, refs = model
    return image_style_losses(vgg, images, refs, batch)


JUDGES = (
    Judge("clip", ("general", "style", "lora"), load_clip_judge, score_clip, text_clip),
    Judge("hpsv21", ("general",), load_hps_judge, score_hps, text_hps),
    Judge("pickscore", ("general",), load_pick_judge, score_pick, text_pick),
    Judge("styleloss", ("style", "lora"), load_vgg_judge, score_vgg, None),
)


# ---------------------------------------------------------------------------------------------------- measuring
def review_counts() -> Counter:
    """Images per task of one v1 checkpoint (960 general, 288 style, 320 LoRA), from the shipped benchmark."""
    from ghostreview.protocol import benchmark_items, load_benchmark

    bench = load_benchmark(V1)
    if len(bench.general) != GENERAL_PROMPTS:
        raise AssertionError(f"v1 has {len(bench.general)} general prompts, GENERAL_PROMPTS says {GENERAL_PROMPTS}")
    return Counter(r.task for r in benchmark_items(bench, "sd15"))


def device_sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def images_for(batch: int) -> int:
    """Images per timed call at ``batch``: at least two forwards at batch 1, one full forward otherwise."""
    return 2 if batch == 1 else batch


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (torch's FlopCounterMode: matmuls, convolutions, attention); also the warm-up.

    nn.MultiheadAttention's inference fast path (open_clip's towers) is one fused op the counter does not see (it
    would miss the attention projections, a third of a ViT's FLOPs), so it is off while counting.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


def review_seconds(judge: Judge, per_image_s: float, text_s: float, batch: int, counts: Counter) -> float:
    """Seconds one v1 checkpoint's images cost this judge: image forwards per image, text per distinct prompt."""
    images = sum(counts[t] for t in judge.task_images)
    text = math.ceil(GENERAL_PROMPTS / batch) * text_s if judge.text else 0.0
    return images * per_image_s + text


def cpu_timed(fn: Callable[[], Any], log: list[float]) -> Callable[[], Any]:
    """``fn``, appending the process's CPU seconds (all threads) per call to ``log``: what the call cost the
    machine, next to the wall time it took (on a loaded machine both grow)."""
    def call() -> Any:
        start = time.process_time()
        result = fn()
        log.append(time.process_time() - start)
        return result

    return call


def batch_figures(judge: Judge, batch: int, t: Any, cpu: dict[str, list[float]], counts: Counter) -> dict:
    """Medians at one batch size, the image share of a call (the call minus its text forward) and the review."""
    n, name, text_name = images_for(batch), f"b{batch}", f"text b{batch}"
    call, call_cpu = t.median(name), statistics.median(cpu[name])
    text = t.median(text_name) if judge.text else 0.0
    text_cpu = statistics.median(cpu[text_name]) if judge.text else 0.0
    per_image, per_image_cpu = max(call - text, 0.0) / n, max(call_cpu - text_cpu, 0.0) / n
    return {"images": n, "call_s": call, "text_s": text, "images_per_s": n / call, "image_s_per_image": per_image,
            "call_cpu_s": call_cpu, "text_cpu_s": text_cpu, "image_cpu_s_per_image": per_image_cpu,
            "review_s": review_seconds(judge, per_image, text, batch, counts),
            "review_cpu_s": review_seconds(judge, per_image_cpu, text_cpu, batch, counts)}


def param_count(model: Any) -> int:
    """Parameters of the judge's network (the first of a (network, extras) pair; a loaded judge's ``.model``)."""
    net = model[0] if isinstance(model, tuple) else model
    net = net.model if hasattr(net, "model") else net
    return sum(p.numel() for p in net.parameters())


def measure(judge: Judge, tmp: Path, quick: bool, device: str, batches: tuple[int, ...], repeats: int,
            counts: Counter) -> dict:
    """Load the judge, warm it up (counting FLOPs), time its calls at each batch size interleaved; free it."""
    sync = device_sync(device)
    load_s, (model, label) = timed(lambda: judge.load(tmp, quick, device), sync)
    params = param_count(model)
    row(f"{judge.name}: model", f"{label}, {params / 1e6:.1f} M params, written + loaded in {load_s:.1f} s")
    images = test_images(max(map(images_for, batches)), IMAGE_SIZE)
    flops = count_flops(partial(judge.score, model, images[:1], 1))
    cpu: dict[str, list[float]] = {}
    paths: dict[str, Callable[[], Any]] = {f"b{b}": partial(judge.score, model, images[:images_for(b)], b)
                                           for b in batches}
    if judge.text:
        paths |= {f"text b{b}": partial(judge.text, model, b) for b in batches}
    t = interleaved({k: cpu_timed(fn, cpu.setdefault(k, [])) for k, fn in paths.items()}, repeats=repeats,
                    warmup=0, sync=sync)
    out: dict[str, Any] = {"model": label, "params_m": params / 1e6, "load_s": load_s, "flops_b1_call": flops,
                           "seconds": t.seconds, "cpu_seconds": cpu}
    for b in batches:
        out[f"b{b}"] = batch_figures(judge, b, t, cpu, counts)
        f = out[f"b{b}"]
        row(f"{judge.name} batch {b}: {f['images']} images, median s (min..max)",
            f"{f['call_s']:.2f} ({t.spread(f'b{b}')}) = {f['images_per_s']:.3f} images/s; text {f['text_s']:.2f} s;"
            f" CPU s {f['call_cpu_s']:.2f}; review {f['review_s']:.0f} s, {f['review_cpu_s']:.0f} CPU s")
    row(f"{judge.name}: FLOPs of one batch-1 call (1 image + prompt)", f"{flops / 1e9:.1f} GFLOP")
    del model, paths
    gc.collect()
    if str(device).startswith("cuda"):
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def measure_diversity(counts: Counter, repeats: int) -> dict:
    """seed_diversity over the v1 general prompts (30 x 32 seeds of 768-d embeddings): no forward pass."""
    from ghostreview.scoring.diversity import seed_diversity

    seeds = counts["general"] // GENERAL_PROMPTS
    emb = np.random.default_rng(0).standard_normal((GENERAL_PROMPTS, seeds, 768)).astype(np.float32)
    t = interleaved({"diversity": lambda: [seed_diversity(e) for e in emb]}, repeats=repeats, warmup=1)
    row("diversity: 30 prompts x 32 seeds, median s", f"{t.median('diversity'):.4f} (= the review's)")
    return {"review_s": t.median("diversity"), "seconds": t.seconds}


def run(quick: bool = False, device: str = "cpu", batches: tuple[int, ...] = (1, 8), repeats: int = 2,
        only: tuple[str, ...] = ()) -> dict:
    """Every judge (or ``only`` these) in turn; returns the figures, printed as they come."""
    counts = review_counts()
    header(f"{NAME}: images/s per judge at {IMAGE_SIZE}x{IMAGE_SIZE}, batches {batches}, device {device}, "
           f"{repeats} interleaved repeats" + (" (--quick: tiny stand-ins, figures mean nothing)" if quick else ""))
    row("v1 images per checkpoint", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    out: dict[str, Any] = {"device": device, "batches": list(batches), "repeats": repeats, "counts": dict(counts)}
    for judge in JUDGES:
        if only and judge.name not in only:
            continue
        with tempfile.TemporaryDirectory(prefix=f"gr-bench-{judge.name}-") as tmp:
            out[judge.name] = measure(judge, Path(tmp), quick, device, batches, repeats, counts)
    out["diversity"] = measure_diversity(counts, repeats)
    for b in batches:
        total = sum(out[j.name][f"b{b}"]["review_s"] for j in JUDGES if j.name in out) + out["diversity"]["review_s"]
        total_cpu = sum(out[j.name][f"b{b}"]["review_cpu_s"] for j in JUDGES if j.name in out)
        out[f"review_s_b{b}"], out[f"review_cpu_s_b{b}"] = total, total_cpu + out["diversity"]["review_s"]
        row(f"scoring one v1 checkpoint (1,568 images) at batch {b}",
            f"{total:.0f} s = {total / 60:.1f} min wall; {out[f'review_cpu_s_b{b}']:.0f} CPU s")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.judges", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (no fallback: a missing GPU is an error)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats per batch size (default 2)")
    p.add_argument("--only", action="append", choices=[j.name for j in JUDGES], help="only this judge (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, all cores)")
    p.add_argument("--quick", action="store_true", help="tiny stand-ins: check the code path in seconds")
    p.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download (transformers is imported later)
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    figures = run(args.quick, args.device, tuple(int(b) for b in args.batch_sizes.split(",")), args.repeats,
                  tuple(args.only or ()))
    figures |= {"machine": machine_line(), "versions": versions(), "wall_s": time.perf_counter() - start,
                "command": " ".join(["python -m benchmarks.judges", *(argv if argv is not None else sys.argv[1:])])}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
