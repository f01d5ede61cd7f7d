"""Full-size stand-ins with random weights in the real file formats, for the rehearsal (``benchmarks/rehearsal.py``).

Where ``ghostreview.kit.sd`` shrinks widths so tests run in seconds, this module keeps the real architectures:

- SD1.5 and SDXL-base checkpoints from the shipped configs (``ghostreview/generation/configs/<family>``),
  single-file LDM/SGM layout, float16, the real parameter counts (SD1.5 1,066,235,307 = UNet 859.5 M + VAE 83.7 M
  + CLIP-L 123.1 M; SDXL 3,468,837,867 = UNet 2,567.5 M + VAE + CLIP-L + OpenCLIP-bigG 694.7 M). Values follow
  ``sd.random_tensor`` (unit activation scale, so float16 neither overflows nor underflows), drawn by one generator
  in the order ``sd.tiny_state_dicts`` uses, and renamed with ``ghostreview.generation.ldm_keys``: applied to the tiny
  configs, :func:`write_checkpoint` writes the same tensors as ``sd.write_tiny_checkpoint`` (tested).
  The file is written tensor by tensor (:func:`write_streaming_safetensors`): peak memory is one tensor, not 7 GB.
- OpenAI CLIP ViT-L/14 as open_clip's ``ViT-L-14-quickgelu`` (open_clip's own seeded init), a float16 state dict.
- The LAION aesthetic head: ``kit.scorers.write_tiny_laion_head`` already has the real shapes and keys.
- torchvision's whole ``vgg19()`` (features and classifier, 143.7 M parameters, torchvision's seeded init), saved as
  ``torch.save(state_dict)`` as ``vgg19-dcbb9e9d.pth`` is.
- kohya LoRAs at a real rank on every module ``kit.lora`` targets (UNet attention, feed-forward, proj_in/out,
  resnet conv1 as LoCon, text encoders), with smaller up weights than the tiny kit (a real LoRA's delta is a
  fraction of the base weight).

Files carry ``ghostreview.kit: fullsize-random-weights`` metadata: not the tiny marker, so loading uses the real
configs exactly as for a downloaded checkpoint.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import IO

import torch

from ghostreview.generation import ldm_keys
from ghostreview.generation.families import table_family
from ghostreview.generation.topology import CONFIGS_ROOT
from ghostreview.kit import sd
from ghostreview.util.atomic import create_dir_once, save_atomic, write_atomic, write_text_atomic

FULL_METADATA_VALUE = "fullsize-random-weights"
CLIP_ARCH = "ViT-L-14-quickgelu"
CLIP_POSITIONS = 77
TEXT_ENCODER_PREFIX = {"sd15": "cond_stage_model.transformer.text_model.",
                       "sdxl": "conditioner.embedders.0.transformer.text_model."}
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
LORA_RANK = {"sd15": 32, "sdxl": 16}  # common Civitai style-LoRA dims (kohya network_dim)
LORA_UP_STD = 0.1  # up weights N(0, (0.1/sqrt(r))^2): delta about a tenth of the base weight at alpha = r
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}
_OPEN_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.\d+\.")

# A factory for one tensor: (parameter name, shape) -> tensor (random values, or a meta tensor for a shape plan).
Make = Callable[[str, tuple[int, ...]], torch.Tensor]


def fullsize_metadata(family: str, seed: int) -> dict[str, str]:
    """safetensors ``__metadata__`` of a full-size stand-in (never the tiny marker that selects tiny configs)."""
    return {sd.KIT_METADATA_KEY: FULL_METADATA_VALUE, "ghostreview.family": family, "ghostreview.seed": str(seed)}


def component_shapes(family: str, configs: Mapping[str, dict]) -> dict[str, dict[str, tuple[int, ...]]]:
    """{component: {diffusers parameter name: shape}} of the weight-bearing components, built on the meta device."""
    models = sd.meta_models(family, configs)
    return {c: {k: tuple(v.shape) for k, v in models[c].state_dict().items()} for c in sorted(models)}


def parameter_counts(family: str, configs: Mapping[str, dict] | None = None) -> dict[str, int]:
    """Parameters per component of ``family`` (real configs by default), plus ``total``."""
    shapes = component_shapes(family, configs or sd.real_configs(family))
    counts = {c: sum(math.prod(s) for s in params.values()) for c, params in shapes.items()}
    return counts | {"total": sum(counts.values())}


# ---------------------------------------------------------------------------------------------------- checkpoints
def _group(component: str, key: str) -> str:
    """Keys renamed together: an OpenCLIP layer (q, k, v fuse into ``in_proj``), else the key alone."""
    if component == "text_encoder_2" and (m := _OPEN_CLIP_LAYER.match(key)):
        return m[0]
    return key


def _to_ldm(family: str, component: str, part: Mapping[str, torch.Tensor],
            configs: Mapping[str, dict]) -> dict[str, torch.Tensor]:
    """LDM/SGM entries of one group of diffusers entries (``ldm_keys`` does the renaming)."""
    if component == "unet":
        return ldm_keys.unet_to_ldm(part, configs["unet"])
    if component == "vae":
        return ldm_keys.vae_to_ldm(part, configs["vae"])
    if component == "text_encoder":
        return ldm_keys.clip_to_ldm(part, TEXT_ENCODER_PREFIX[family])
    return ldm_keys.open_clip_to_ldm(part, OPEN_CLIP_PREFIX)


def ldm_tensors(family: str, configs: Mapping[str, dict], make: Make) -> Iterator[tuple[str, torch.Tensor]]:
    """(LDM name, tensor) of every checkpoint entry, one group at a time.

    ``make`` is called for each diffusers parameter in ``sd.tiny_state_dicts``' order (components sorted, keys
    sorted), so one seeded generator gives the same values as the tiny kit for the same configs. The CLIP
    ``position_ids`` buffer follows the first text encoder, as real checkpoints carry it.
    """
    sd.check_family(family)
    for component, params in component_shapes(family, configs).items():
        group: str | None = None
        part: dict[str, torch.Tensor] = {}
        for key in sorted(params):
            if part and _group(component, key) != group:
                yield from _to_ldm(family, component, part, configs).items()
                part = {}
            group = _group(component, key)
            part[key] = make(key, params[key])
        yield from _to_ldm(family, component, part, configs).items()
        if component == "text_encoder":
            yield TEXT_ENCODER_PREFIX[family] + "embeddings.position_ids", torch.arange(CLIP_POSITIONS)[None]


def checkpoint_plan(family: str, configs: Mapping[str, dict] | None = None) -> dict[str, tuple[int, ...]]:
    """{LDM name: shape} of the checkpoint :func:`write_checkpoint` writes (meta tensors: no memory, seconds)."""
    plan = ldm_tensors(family, configs or sd.real_configs(family), lambda k, s: torch.empty(s, device="meta"))
    return {name: tuple(t.shape) for name, t in plan}


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """What a checkpoint stores: floats as float16 ("pruned fp16" files), integer buffers as they are."""
    return tensor.half() if tensor.is_floating_point() else tensor


def write_streaming_safetensors(path: Path, plan: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                                tensors: Iterator[tuple[str, torch.Tensor]], metadata: Mapping[str, str]) -> Path:
    """Write a safetensors file whose header is known up front, then its tensors one at a time, in ``plan`` order.

    ``plan`` maps name -> (dtype, shape) in the order ``tensors`` yields them (checked per tensor). The header is
    JSON with ``__metadata__`` first, space-padded to a multiple of 8 bytes; offsets follow the plan order. Written to
    a sibling temp file and renamed, so readers never see half a file. Returns ``path``.
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, (dtype, shape) in plan.items():
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)

    def write(f: IO[bytes]) -> None:
        expected = iter(plan.items())
        f.write(len(text).to_bytes(8, "little") + text)
        for name, tensor in tensors:
            want_name, (dtype, shape) = next(expected)
            if (name, tensor.dtype, tuple(tensor.shape)) != (want_name, dtype, tuple(shape)):
                raise RuntimeError(f"{path}: tensor {name} {tensor.dtype} {tuple(tensor.shape)} does not match the "
                                   f"planned {want_name} {dtype} {tuple(shape)}")
            f.write(tensor.contiguous().view(torch.uint8).numpy().tobytes())
        if next(expected, None) is not None:
            raise RuntimeError(f"{path}: fewer tensors than planned")

    return write_atomic(path, write)


def write_checkpoint(path: Path, family: str, seed: int, configs: Mapping[str, dict] | None = None) -> Path:
    """Write a random-weight ``family`` checkpoint (real configs by default) as one float16 LDM/SGM safetensors file.

    Peak memory is the largest group of tensors (an OpenCLIP layer, or the 49,408-token embedding), not the model.
    The same (family, seed, configs) always give a byte-identical file. Returns ``path``.
    """
    configs = configs or sd.real_configs(family)
    meta = ldm_tensors(family, configs, lambda k, s: torch.empty(s, device="meta"))
    plan = {name: (_stored(t).dtype, tuple(t.shape)) for name, t in meta}
    generator = torch.Generator().manual_seed(seed)
    values = ((name, _stored(t)) for name, t in
              ldm_tensors(family, configs, lambda k, s: sd.random_tensor(k, s, generator)))
    return write_streaming_safetensors(path, plan, values, fullsize_metadata(family, seed))


# ---------------------------------------------------------------------------------------------------- scorers
def write_clip(path: Path, seed: int) -> Path:
    """Random-init ``ViT-L-14-quickgelu`` (open_clip's built-in config and init, seeded) as a float16 state dict.

    The layout ``ghostreview convert-clip`` writes from OpenAI's ``ViT-L-14.pt``; load with ``load_clip(CLIP_ARCH,
    path)``. 427.6 M parameters; building it takes ~1.7 GB for a moment.
    """
    import open_clip

    from ghostreview.scoring.weights import write_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(CLIP_ARCH)
    return save_atomic(path, lambda tmp: write_state_dict({k: v.half() for k, v in model.state_dict().items()}, tmp))


def write_vgg19(path: Path, seed: int) -> Path:
    """torchvision's whole ``vgg19()`` with its own init, seeded, ``torch.save``'d as ``vgg19-dcbb9e9d.pth`` is
    (``features.*`` and ``classifier.*`` keys, float32)."""
    from torchvision.models import vgg19

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = vgg19(weights=None)
    return save_atomic(path, lambda tmp: torch.save(model.state_dict(), tmp))


def write_laion_head(path: Path, seed: int) -> Path:
    """The LAION v2 head layout (768-1024-128-64-16-1, keys ``layers.{0,2,4,6,7}``): the kit's writer is full size."""
    from ghostreview.kit.scorers import write_tiny_laion_head

    return save_atomic(path, lambda tmp: write_tiny_laion_head(tmp, seed))


# ---------------------------------------------------------------------------------------------------- LoRAs
def write_lora(path: Path, family: str, config_dir: Path, seed: int, rank: int | None = None) -> Path:
    """A kohya LoRA (``lora_unet_*``, ``lora_te*``, ``.alpha``) at ``rank`` (``LORA_RANK``) for the model of
    ``config_dir`` (a real-size config dir: ``loading.family_config_dir``), on every module ``kit.lora`` targets.

    Down weights N(0, 1/fan_in), up weights N(0, (LORA_UP_STD/sqrt(r))^2), alpha = r / 2 (kohya's usual alpha).
    Returns ``path``.
    """
    from ghostreview.kit import lora

    rank = rank or LORA_RANK[family]
    alpha = rank / 2
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (_, shape) in sorted(lora._target_shapes(family, config_dir).items()):
        part = lora._lora_tensors(name, shape, rank, alpha, g)
        part[f"{name}.lora_up.weight"] = (part[f"{name}.lora_up.weight"].float() * LORA_UP_STD).half()
        tensors.update(part)
    meta = lora.lora_metadata(family, seed, rank, alpha, "lora")
    meta |= fullsize_metadata(family, seed) | {"ss_output_name": f"fullsize-{family}-lora-{seed}"}
    return sd.save_safetensors_atomic(tensors, path, meta)


# ---------------------------------------------------------------------------------------------------- the kit
KIT_VERSION = "1"
STAMP = "fullsize-kit.json"
MODELS = {"sd15": ("fullsize-sd15.safetensors", 1), "sdxl": ("fullsize-sdxl.safetensors", 2)}
SCORERS = {"clip": "vit-l-14-quickgelu-random.bin", "aesthetic": "laion-head-random.pth", "vgg19": "vgg19-random.pth"}
IMAGE_SIZE = 512  # header and reference images: the size of a typical SD1.5 header; VGG resizes them anyway
REFS_PER_STYLE = 4


def kit_paths(dest: Path) -> dict[str, Path]:
    """Where :func:`build_fullsize_kit` puts things (keys: models/<family>, scorers/<name>, loras, lora_headers,
    style_refs)."""
    dest = Path(dest)
    out = {f"models/{f}": dest / "models" / name for f, (name, _) in MODELS.items()}
    out |= {f"scorers/{k}": dest / "scorers" / name for k, name in SCORERS.items()}
    return out | {"loras": dest / "loras", "lora_headers": dest / "lora_headers", "style_refs": dest / "style_refs"}


def build_fullsize_kit(dest: Path, bench, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, float]:
    """Write the full-size kit for benchmark ``bench`` (its LoRA files, header images and style references) into
    ``dest``; files already there are kept (every write is atomic, so a present file is complete).

    Returns {file: seconds spent writing it} for every file of the kit, kept in ``build-times.json`` across builds.
    Raises ``RuntimeError`` when ``dest`` holds a kit of another version or seed (delete it to rebuild).
    """
    from time import perf_counter

    from ghostreview.kit.demo import _seed
    from ghostreview.kit.images import write_lora_header, write_style_references

    dest = Path(dest)
    stamp = {"version": KIT_VERSION, "seed": seed}
    if (dest / STAMP).is_file() and json.loads((dest / STAMP).read_text()) != stamp:
        found = (dest / STAMP).read_text().strip()
        raise RuntimeError(f"{dest}: a full-size kit of another version or seed ({found}); "
                           f"delete the directory to rebuild it as {stamp}")
    dest.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest / STAMP, json.dumps(stamp) + "\n")
    paths, times = kit_paths(dest), dest / "build-times.json"
    spent = json.loads(times.read_text()) if times.is_file() else {}

    def once(path: Path, write: Callable[[Path], object]) -> None:
        if path.is_file():
            return
        log(f"  writing {path}")
        start = perf_counter()
        write(path)
        spent[str(path.relative_to(dest))] = round(perf_counter() - start, 1)
        write_text_atomic(times, json.dumps(spent, indent=1) + "\n")

    for family, (_, s) in MODELS.items():
        once(paths[f"models/{family}"], partial(write_checkpoint, family=family, seed=seed * 1000 + s))
    once(paths["scorers/clip"], lambda p: write_clip(p, seed))
    once(paths["scorers/aesthetic"], lambda p: write_laion_head(p, seed + 1))
    once(paths["scorers/vgg19"], lambda p: write_vgg19(p, seed + 2))
    for table, entries in bench.loras.items():
        family = table_family(table)  # a base's table (Pony, Illustrious) in its family's folders
        if family not in MODELS:  # Flux: no full-size stand-in here (a 12B transformer)
            continue
        for entry in entries:
            once(paths["loras"] / family / entry.file,
                 partial(write_lora, family=family, config_dir=CONFIGS_ROOT / family,
                         seed=_seed(seed, table, entry.name)))
            for header in entry.header_images:
                once(paths["lora_headers"] / family / entry.name / header,
                     partial(write_lora_header, name=entry.name, seed=_seed(seed, table, entry.name, header),
                             size=IMAGE_SIZE))
    for style in bench.styles:
        ref_dir = paths["style_refs"] / style.reference_dir
        if not ref_dir.is_dir():
            start = perf_counter()
            create_dir_once(ref_dir, partial(write_style_references, style=style.name, n=REFS_PER_STYLE,
                                             seed=_seed(seed, style.name), size=IMAGE_SIZE))
            spent[str(ref_dir.relative_to(dest))] = round(perf_counter() - start, 1)
            write_text_atomic(times, json.dumps(spent, indent=1) + "\n")
    return spent
