"""Build the demo's offline kit: tiny random-weight checkpoints, LoRAs, scorer and judge stand-ins, reference images.

Everything is in the real file formats (single-file LDM checkpoints, kohya LoRAs, an open_clip state dict, the LAION
head layout, torchvision's VGG19 layout, HPSv2.1's ``{"state_dict": ...}`` .pt, PickScore's model and processor
folders: ``kit.judges``), so the review runs the same loading code it runs on real weights. The judges' files lie
at ``scorers/hpsv21`` and ``scorers/pickscore``, where the demo params name them (params.yaml's ``scoring.hpsv21``
and ``scoring.pickscore``, commented out until the score stage computes judges). The build is deterministic: the
same seed gives byte-identical files, so DVC sees a rebuilt kit as unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ghostreview.generation.families import FAMILIES, FLUX_FAMILY, table_family
from ghostreview.protocol import Benchmark
from ghostreview.util.atomic import replace_dir
from ghostreview.util.runtime import progress_bar, quiet_third_party

# name -> (family, seed). The fourth SD1.5 model is spare: tests add it to params to show incremental reruns.
DEMO_MODELS = {
    "tiny-sd15-a": ("sd15", 1),
    "tiny-sd15-b": ("sd15", 2),
    "tiny-sdxl-a": ("sdxl", 3),
    "tiny-sd15-c": ("sd15", 4),
}
# name -> seed: tiny v-prediction SDXL stand-ins with the v_pred and ztsnr markers (kit/vpred.py; NoobAI-XL V-Pred)
# (two: the demo reviews both, so that its noobai-vpred pool has a z-score; a model alone in its pool has none)
VPRED_MODELS = {"tiny-vpred-a": 5, "tiny-vpred-b": 6}
# 2: HPSv2.1 and PickScore stand-ins; 3: Flux; 4: the v-pred SDXL stand-in; 5: a second of each; 6: the Flux LoRA
# table's LoRAs and headers; 7: the Pony and Illustrious tables'
KIT_VERSION = "7"
STAMP = "kit.json"
REFS_PER_STYLE = 4


def _seed(*parts: object) -> int:
    """A stable seed from names (Python's hash() is salted per process)."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def build_demo_kit(dest: Path, bench: Benchmark, seed: int = 0, image_size: int = 96) -> Path:
    """Write the whole kit under ``dest`` (skipped when a complete kit of this version and seed is already there).

    The kit is built in a temporary sibling and swapped in whole (:func:`ghostreview.util.atomic.replace_dir`).
    """
    stamp = {"version": KIT_VERSION, "seed": seed, "benchmark": bench.name, "image_size": image_size}
    if _stamp_matches(dest, stamp):
        return dest
    return replace_dir(Path(dest), lambda tmp: _write_kit(tmp, bench, seed, image_size, stamp))


def _write_kit(tmp: Path, bench: Benchmark, seed: int, image_size: int, stamp: dict) -> None:
    """Every file of the demo kit, under the (empty) directory ``tmp``; one progress bar over the files."""
    from ghostreview.kit.images import write_lora_header, write_style_references
    from ghostreview.kit.judges import write_tiny_judges
    from ghostreview.kit.scorers import write_tiny_clip, write_tiny_laion_head, write_tiny_vgg19
    from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir

    steps: list[Callable[[], object]] = []  # each writes one file (or one directory of a few)
    for family in FAMILIES:
        steps.append(partial(write_tiny_config_dir, tmp / "configs" / family, family))
    for name, (family, s) in DEMO_MODELS.items():
        steps.append(partial(write_tiny_checkpoint, tmp / "models" / f"{name}.safetensors", family, seed * 1000 + s))
    steps += vpred_steps(tmp, seed)
    for table, entries in bench.loras.items():  # a base's table (Pony, Illustrious) in its family's folders
        family = table_family(table)
        for i, entry in enumerate(entries):
            steps.append(lora_step(tmp, family, entry.file, i, _seed(seed, table, entry.name)))
            for header in entry.header_images:
                path = tmp / "lora_headers" / family / entry.name / header
                steps.append(partial(write_lora_header, path, entry.name, _seed(seed, table, entry.name, header),
                                     image_size))
    for style in bench.styles:
        steps.append(partial(write_style_references, tmp / "style_refs" / style.reference_dir, style.name,
                             REFS_PER_STYLE, _seed(seed, style.name), image_size))
    steps += flux_steps(tmp, seed)
    steps += [partial(write_tiny_clip, tmp / "scorers" / "clip", seed),
              partial(write_tiny_laion_head, tmp / "scorers" / "laion_head.pth", seed),
              partial(write_tiny_vgg19, tmp / "scorers" / "vgg19_features.safetensors", seed),
              partial(write_tiny_judges, tmp / "scorers", seed)]
    quiet_third_party()
    for step in progress_bar(steps, desc="kit", unit="files"):
        step()
    (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")


def lora_step(tmp: Path, family: str, file: str, index: int, seed: int) -> Callable[[], object]:
    """Writes the tiny LoRA of a table entry at ``loras/<family>/<file>``: kohya's format for SD, for the Flux table
    kohya's and ai-toolkit's (diffusers names) in turn, as Civitai's Flux LoRAs come in both (flux1-dev's
    transformer: a dev LoRA fits schnell's too, which lacks only the guidance embedder no LoRA here targets)."""
    from ghostreview.kit import flux
    from ghostreview.kit.lora import write_tiny_lora

    path = tmp / "loras" / family / file
    if family == FLUX_FAMILY:
        return partial(flux.write_diffusers_lora if index % 2 else flux.write_kohya_lora, path, "flux1-dev", seed)
    return partial(write_tiny_lora, path, family, tmp / "configs" / family, seed=seed)


def vpred_steps(tmp: Path, seed: int) -> list[Callable[[], object]]:
    """The v-pred SDXL stand-ins (:data:`VPRED_MODELS`), under ``models/`` next to the others."""
    from ghostreview.kit.vpred import write_tiny_vpred_checkpoint

    return [partial(write_tiny_vpred_checkpoint, tmp / "models" / f"{name}.safetensors", seed * 1000 + s)
            for name, s in VPRED_MODELS.items()]


def flux_steps(tmp: Path, seed: int) -> list[Callable[[], object]]:
    """The Flux stand-ins (kit/flux.py, docs/flux.md): an all-in-one dev file, the same model as a transformer-only
    file with separate CLIP-L, T5 and VAE files (``models/tiny-flux-dev-split/``), a second all-in-one dev model
    with other weights (``tiny-flux-dev-b``: the demo reviews two, so that its flux1-dev pool has a z-score), and a
    LoRA in each format."""
    from ghostreview.kit import flux

    s = seed * 1000 + 5
    return [partial(flux.write_all_in_one, tmp / "models" / "tiny-flux-dev.safetensors", "flux1-dev", s),
            partial(flux.write_all_in_one, tmp / "models" / "tiny-flux-dev-b.safetensors", "flux1-dev", s + 1),
            partial(flux.write_transformer_only, tmp / "models" / "tiny-flux-dev-split", "flux1-dev", s),
            partial(flux.write_kohya_lora, tmp / "loras" / "flux" / "tiny-flux-kohya.safetensors", "flux1-dev",
                    _seed(seed, "flux", "kohya")),
            partial(flux.write_diffusers_lora, tmp / "loras" / "flux" / "tiny-flux-aitoolkit.safetensors",
                    "flux1-dev", _seed(seed, "flux", "kohya"))]


def _stamp_matches(dest: Path, stamp: dict) -> bool:
    try:
        return json.loads((dest / STAMP).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False
