"""Load Stable Diffusion single-file checkpoints (as Civitai distributes them) fully offline.

* ``read_safetensors_header`` / ``detect_family`` look only at the safetensors header (8-byte little-endian
  length + JSON): no tensor data is read, so checking a 7 GB file is instant. The header is validated as the
  safetensors loader validates it (dtypes, shapes, byte ranges tiling the data), so a file that passes also loads.
* ``family_config_dir`` materializes the shipped real-size diffusers configs (``generation/configs/<family>``)
  plus generated CLIP tokenizers, so ``from_single_file(config=...)`` never looks for a hub.
* ``load_pipeline`` builds the diffusers pipeline. Pickle checkpoints (.ckpt/.pt) are refused unless the caller
  opts in, and even then are read only with ``torch.load(weights_only=True)``.
* ``check_config_dir`` refuses a config dir (shipped, generated or the user's ``config:``) that could make diffusers
  import a module or class other than the family's own, or point at a hub repository, before anything loads.
* ``inspect_checkpoint`` is the one place that decides what a checkpoint file is (``checkpoint_format``) and reads
  it once into a :class:`CheckpointFile` (format, tensor shapes, metadata); family, tiny-kit marker and config dir are
  answered from that record, for safetensors and (opted-in) pickle files alike.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import pickle
import reprlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ghostreview.errors import UserError
from ghostreview.generation import topology
from ghostreview.generation.families import CONFIG_FAMILIES, FLUX_FAMILY, PIPELINE_CLASSES
from ghostreview.generation.families import FAMILIES as REVIEWABLE_FAMILIES
from ghostreview.generation.flux_keys import EXPECTED_LAYOUT as FLUX_LAYOUT
from ghostreview.generation.flux_keys import flux_layout
from ghostreview.generation.tokenizer import TOKENIZER_PADS, open_clip_bpe_path, write_clip_tokenizer
from ghostreview.generation.topology import CONFIGS_ROOT, KIT_METADATA_KEY, KIT_METADATA_VALUE
from ghostreview.util.atomic import create_dir_once, save_atomic

PREDICTION_TYPES = ("epsilon", "v_prediction")
ZTSNR_KEY = "ztsnr"  # the zero-terminal-SNR marker key; generation.bases reads it (and v_pred) for the base
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
# safetensors dtypes (those safetensors.torch reads) -> bytes per element
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
               "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
               "C64": 8}
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; a legacy pickle's PROTO opcode
CONFIG_DIR_FORMAT = 1  # bump when the layout written by family_config_dir changes

UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SDXL_OPEN_CLIP_KEY = "conditioner.embedders.1.model.positional_embedding"
SDXL_CLIP_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.positional_embedding"
SD1_CLIP_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
VAE_KEYS = ("first_stage_model.encoder.conv_in.weight", "vae.encoder.conv_in.weight", "encoder.conv_in.weight")
EXPECTED_LAYOUT = (
    "model.diffusion_model.* (UNet) with a text encoder: cond_stage_model.transformer.text_model.* (SD1.x), "
    "cond_stage_model.model.* (SD2.x) or conditioner.embedders.0/1.* (SDXL); or " + FLUX_LAYOUT
)


class CheckpointError(UserError, ValueError):
    """A checkpoint, VAE or config that cannot be used; the message names the file, what is wrong and the fix."""


# ---------------------------------------------------------------------------------------------------- headers


def read_safetensors_header(path: Path) -> dict:
    """Parse and validate the header of a safetensors file without reading tensor data: the one reader of
    safetensors headers here (checkpoints, VAEs, LoRAs).

    Checks what the safetensors loader checks later, so that a file passing here also loads: a header length within
    the format's 100 MB bound, JSON without duplicate keys (nesting depth cannot blow the stack: see
    :func:`_parse_header_json`), ``__metadata__`` a str -> str object, and :func:`_check_entries`.

    Returns:
        The header JSON: ``{tensor_name: {"dtype", "shape", "data_offsets"}, ..., "__metadata__": {...}}``
        (``__metadata__`` only when the file has one).

    Raises:
        CheckpointError: missing, zero-byte, truncated, or not a safetensors file (bad length, non-JSON header,
            malformed entries, tensor data past the end of the file, overlapping or unused bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path (relative paths are from the repository root)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or copy failed, fetch it again")
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file; fetch it again")
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little")
        if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            if head.startswith(PICKLE_MAGIC):
                raise CheckpointError(
                    f"{path}: a pickle (torch.save) file named {path.suffix or 'without a suffix'}, not a safetensors "
                    "file; rename it to .ckpt and set allow_pickle: true for its model (read with "
                    "torch.load(weights_only=True)), or get the model's .safetensors download"
                )
            raise CheckpointError(
                f"{path}: not a safetensors file or truncated (header length field {n}, file size {size}); "
                "expected a .safetensors checkpoint, fetch it again or convert it"
            )
        raw = f.read(n)
    header = _parse_header_json(path, raw)
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(
            f"{path}: malformed safetensors header: __metadata__ must map strings to strings, got "
            f"{_short(meta)}; the file is corrupt or was not written by a safetensors library, fetch it again"
        )
    _check_entries(path, header, data_len=size - 8 - n)
    return header


def _parse_header_json(path: Path, raw: bytes) -> dict:
    """The header's JSON object; duplicate keys refused (JSON parsers disagree on which one wins)."""

    def no_duplicates(pairs: list) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            dup = next(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
            raise CheckpointError(f"{path}: malformed safetensors header: key {_short(dup)} appears twice; the file "
                                  "is corrupt, fetch it again")
        return out

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except RecursionError as e:  # a header nested thousands of levels deep: no safetensors file is
        raise CheckpointError(f"{path}: not a safetensors file (header JSON nested too deeply); fetch it again") from e
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e}); fetch it again") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


def _check_entries(path: Path, header: Mapping, data_len: int) -> None:
    """Every tensor entry well formed (:func:`_entry_range`), and the byte ranges, sorted, tiling the data section
    exactly: no overlap, no gap, nothing past its end or after the last tensor (as the safetensors loader demands)."""
    ranges = sorted((_entry_range(path, name, entry), name) for name, entry in header.items() if name != "__metadata__")
    end, previous = 0, None
    for (begin, stop), name in ranges:
        if begin < end:
            raise CheckpointError(f"{path}: malformed safetensors header: the bytes of {_short(name)} "
                                  f"[{begin}, {stop}) overlap those of {_short(previous)}; the file is corrupt, fetch "
                                  "it again")
        if begin > end:
            raise CheckpointError(f"{path}: malformed safetensors header: {begin - end} data bytes before "
                                  f"{_short(name)} belong to no tensor; the file is corrupt, fetch it again")
        end, previous = stop, name
    if end > data_len:
        raise CheckpointError(
            f"{path}: truncated: tensors need {end} data bytes but the file holds {data_len}; fetch it again"
        )
    if end < data_len:
        raise CheckpointError(f"{path}: {data_len - end} unexpected bytes after the tensor data; the file is corrupt")


def _entry_range(path: Path, name: str, entry: object) -> tuple[int, int]:
    """The ``[begin, end)`` of a tensor entry whose dtype is known (``DTYPE_SIZES``), whose shape is a list of
    non-negative ints, and whose ``data_offsets`` span exactly numel x itemsize bytes (the loader's own checks)."""
    problem = None
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        problem = "an entry must hold dtype, shape and data_offsets"  # other fields: ignored, as the loader does
    elif not isinstance(entry["dtype"], str) or entry["dtype"] not in DTYPE_SIZES:
        problem = f"unknown dtype (known: {', '.join(DTYPE_SIZES)})"
    elif not _int_list(entry["shape"], None) or min(entry["shape"], default=0) < 0:
        problem = "shape must be a list of non-negative integers"
    elif not _int_list(entry["data_offsets"], 2) or not 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1]:
        problem = "data_offsets must be [begin, end] with 0 <= begin <= end"
    else:
        begin, end = entry["data_offsets"]
        need = math.prod(entry["shape"]) * DTYPE_SIZES[entry["dtype"]]
        if end - begin == need:
            return begin, end
        problem = f"shape {entry['shape']} of {entry['dtype']} needs {need} bytes, data_offsets give {end - begin}"
    raise CheckpointError(f"{path}: malformed safetensors entry {_short(name)}: {_short(entry)}: {problem}; the file "
                          "is corrupt, fetch it again")


def _int_list(value: object, length: int | None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 100, 100, 6, 6, 3


def _short(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (and 3 nesting levels), for messages about hostile input."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tensor_shapes(header: Mapping) -> dict[str, list[int]]:
    """{tensor name: shape} of a parsed safetensors header (``__metadata__`` dropped)."""
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def header_metadata(header: Mapping) -> dict[str, str]:
    """The ``__metadata__`` string map of a parsed safetensors header ({} when absent)."""
    meta = header.get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------------- families


def family_from_shapes(shapes: Mapping[str, list[int]], name: str = "checkpoint") -> str:
    """Decide "sd15" | "sd2" | "sdxl" from tensor names (and the UNet input shape) of a single-file checkpoint, or
    "flux" for a Flux.1 layout (``flux_keys.flux_layout``; loaded by ``generation.flux``).

    Rules: the UNet must be present with 4 input channels; SDXL base has OpenCLIP-bigG as
    ``conditioner.embedders.1.model.*`` (we key on its ``positional_embedding``, not on diffusers' ``resblocks.9``
    probe, so depth does not matter); SD2 has OpenCLIP-H under ``cond_stage_model.model.``; SD1 has CLIP-L under
    ``cond_stage_model.transformer.text_model.``.

    Raises:
        CheckpointError: naming ``name``, for LoRA/VAE/diffusers-component files, inpainting/pix2pix UNets, the
            SDXL refiner, or anything else, listing the expected layout.
    """
    keys = shapes.keys()
    if flux_layout(shapes) is not None:  # loaded and drawn by generation/flux.py
        return FLUX_FAMILY
    if UNET_IN_KEY not in shapes:
        raise CheckpointError(
            f"{name}: not a Stable Diffusion checkpoint ({_what_is_it(keys)}); expected {EXPECTED_LAYOUT}"
        )
    in_channels = shapes[UNET_IN_KEY][1] if len(shapes[UNET_IN_KEY]) > 1 else None
    if in_channels != 4:
        raise CheckpointError(
            f"{name}: UNet takes {in_channels} input channels (9 = inpainting, 8 = instruct-pix2pix); only "
            "text-to-image checkpoints with 4 latent channels can be reviewed: use the model's base version"
        )
    if SDXL_OPEN_CLIP_KEY in shapes and SDXL_CLIP_KEY in shapes:
        return "sdxl"
    if SDXL_REFINER_KEY in shapes:
        raise CheckpointError(
            f"{name}: an SDXL refiner checkpoint (refines latents, cannot generate alone); use an SDXL base model"
        )
    if any(k.startswith(SD2_OPEN_CLIP_PREFIX) for k in keys):
        return "sd2"
    if SD1_CLIP_KEY in shapes:
        return "sd15"
    raise CheckpointError(
        f"{name}: has a UNet but no text encoder this tool recognises; expected {EXPECTED_LAYOUT}. "
        "Use the full (not UNet-only) checkpoint file"
    )


def _what_is_it(keys) -> str:
    """A short guess of what a non-checkpoint safetensors file is, for error messages."""
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "it looks like a LoRA (lora_unet_*/lora_te* keys): list it under loras, not as a checkpoint"
    if any(k in keys for k in VAE_KEYS):
        return "it looks like a standalone VAE: pass it as the model's vae"
    if any(k.startswith(("down_blocks.", "unet.", "text_model.")) for k in keys):
        return "it looks like a diffusers-format component, not a single-file checkpoint"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f"{len(keys)} tensors such as {sample}"


def checkpoint_format(path: Path) -> str:
    """"pickle" for .ckpt/.pt/.pth/.bin files, else "safetensors": how every reader here opens ``path``.

    Decided by the suffix, as A1111 and diffusers' ``from_single_file`` decide; a pickle under a .safetensors name
    is reported as one by ``read_safetensors_header``.
    """
    return "pickle" if Path(path).suffix.lower() in PICKLE_SUFFIXES else "safetensors"


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file read once: its format, tensor shapes and string metadata (no tensor data is kept).

    ``metadata`` is the safetensors ``__metadata__``, or a pickle's top-level string entries (where the tiny kit
    writes its marker).
    """

    path: Path
    format: str  # "safetensors" | "pickle" (checkpoint_format)
    shapes: Mapping[str, list[int]]
    metadata: Mapping[str, str]

    @property
    def family(self) -> str:
        """"sd15" | "sdxl" | "flux": the family of a checkpoint this tool can review (``family_from_shapes``).

        Raises:
            CheckpointError: for SD2.x checkpoints (recognised, but prompt encoding, drawing and the benchmark's LoRA
                tables cover SD1.x and SDXL only) and for anything that is not an SD checkpoint.
        """
        family = family_from_shapes(self.shapes, str(self.path))
        if family not in (*REVIEWABLE_FAMILIES, FLUX_FAMILY):
            raise CheckpointError(
                f"{self.path}: an SD2.x checkpoint (OpenCLIP-H text encoder, cond_stage_model.model.* keys); "
                f"GhostReview reviews {' and '.join(REVIEWABLE_FAMILIES)} checkpoints only (its prompt encoding, "
                "drawing and LoRA tables cover SD1.x and SDXL): review an SD1.5 or SDXL model instead"
            )
        return family

    @property
    def is_tiny_kit(self) -> bool:
        """Written by the tiny kit (random weights, ``topology.TINY_OVERRIDES``), for tests and CI."""
        return self.metadata.get(KIT_METADATA_KEY) == KIT_METADATA_VALUE

    @property
    def ztsnr(self) -> bool:
        """Carries the ``ztsnr`` marker key (an empty tensor; NoobAI-XL V-Pred and its merges): A1111 (PR 16569),
        Forge and ComfyUI then sample on the zero-terminal-SNR schedule, and so does :func:`open_pipeline`."""
        return ZTSNR_KEY in self.shapes

    @property
    def random_weights(self) -> bool:
        """Written by ``ghostreview.kit`` (any stand-in: tiny, or full-size for the rehearsal): every report made
        from it says its weights are random."""
        return KIT_METADATA_KEY in self.metadata


def inspect_checkpoint(path: Path, *, allow_pickle: bool = False) -> CheckpointFile:
    """Read the checkpoint at ``path`` once: for safetensors only the header; pickles (refused unless
    ``allow_pickle``) with ``torch.load(weights_only=True)`` onto the meta device.

    Raises:
        CheckpointError: refused or unsafe pickles, unreadable/corrupt files (the message names the file and the fix).
    """
    path = Path(path)
    if checkpoint_format(path) == "pickle":
        if not allow_pickle:
            raise CheckpointError(_pickle_refusal(path))
        tensors, metadata = _load_pickle(path, map_location="meta")
        return CheckpointFile(path, "pickle", {k: list(v.shape) for k, v in tensors.items()}, metadata)
    header = read_safetensors_header(path)
    return CheckpointFile(path, "safetensors", tensor_shapes(header), header_metadata(header))


def detect_family(path: Path, *, allow_pickle: bool = False) -> str:
    """Family of the single-file checkpoint at ``path``: "sd15" | "sdxl", from tensor names and shapes.

    Raises:
        CheckpointError: see ``inspect_checkpoint``; SD2.x checkpoints and files that are not SD checkpoints (the
            message lists what was expected; see :attr:`CheckpointFile.family`).
    """
    return inspect_checkpoint(path, allow_pickle=allow_pickle).family


def is_tiny_kit_file(path: Path, *, allow_pickle: bool = False) -> bool:
    """True when the checkpoint at ``path`` was written by ``ghostreview.kit`` (random weights, for tests/CI)."""
    return inspect_checkpoint(path, allow_pickle=allow_pickle).is_tiny_kit


def check_vae_file(path: Path, *, allow_pickle: bool = False) -> None:
    """Read a standalone VAE file's header (or opted-in pickle) as ``inspect_checkpoint`` does and check it holds a VAE.

    Raises:
        CheckpointError: unreadable, corrupt or refused files (see ``inspect_checkpoint``), or no VAE encoder in it.
    """
    shapes = inspect_checkpoint(path, allow_pickle=allow_pickle).shapes
    if not any(k in shapes for k in VAE_KEYS):
        raise CheckpointError(_not_a_vae(path, shapes))


def _not_a_vae(path: Path, shapes: Mapping) -> str:
    return f"{path}: not a VAE file (no encoder.conv_in.weight; {_what_is_it(shapes)})"


# ---------------------------------------------------------------------------------------------------- configs


def _config_source_digest(family: str) -> str:
    """sha256 over the shipped config files of ``family``, the tokenizer source and their layout version."""
    src = CONFIGS_ROOT / family
    digest = hashlib.sha256(f"format={CONFIG_DIR_FORMAT};pads={TOKENIZER_PADS[family]}".encode())
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(src)).encode() + b"\0" + file.read_bytes())
    digest.update(open_clip_bpe_path().read_bytes())
    return digest.hexdigest()


def family_config_dir(family: str, cache_root: Path) -> Path:
    """Local diffusers config dir of the real-size ``family`` ("sd15" | "sd2" | "sdxl"), built once.

    Copies ``ghostreview/generation/configs/<family>/`` and writes the CLIP tokenizer(s) into
    ``cache_root/<family>-<12 hex of the contents' sha256>/`` (atomic; reused while the shipped files are unchanged).
    """
    if family not in CONFIG_FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(CONFIG_FAMILIES)}")
    dest = Path(cache_root) / f"{family}-{_config_source_digest(family)[:12]}"

    def build(tmp: Path) -> None:
        shutil.copytree(CONFIGS_ROOT / family, tmp, dirs_exist_ok=True)
        for name, pad in TOKENIZER_PADS[family].items():
            write_clip_tokenizer(tmp / name, pad_token=pad)

    return create_dir_once(dest, build)


def tiny_config_dir(family: str, cache_root: Path) -> Path:
    """Config dir of the tiny test topology of ``family`` (``topology.tiny_configs``), built once in ``cache_root``."""
    text = json.dumps(topology.tiny_configs(family), sort_keys=True) + _config_source_digest(family)
    dest = Path(cache_root) / f"{family}-tiny-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return create_dir_once(dest, lambda tmp: topology.write_tiny_config_dir(tmp, family))


def pipeline_config_dir(checkpoint: Path, family: str, cache_root: Path, *, allow_pickle: bool = False) -> Path:
    """The config dir to load ``checkpoint`` with: the tiny topology for tiny-kit files, else the real one."""
    return checkpoint_config_dir(inspect_checkpoint(checkpoint, allow_pickle=allow_pickle), family, cache_root)


def checkpoint_config_dir(ckpt: CheckpointFile, family: str, cache_root: Path) -> Path:
    """``pipeline_config_dir`` of a checkpoint already read (``inspect_checkpoint``)."""
    return tiny_config_dir(family, cache_root) if ckpt.is_tiny_kit else family_config_dir(family, cache_root)


# ---------------------------------------------------------------------------------------------------- config dirs

# What a config dir may name, per family: diffusers imports the library of every (library, class) pair of
# model_index.json (importlib.import_module) and loads each component with that class, so any other pair would let
# the config dir choose code. Components we pass as None (safety checker, feature extractor) may keep the pairs
# hub configs carry for them: they are never loaded.
_SD_COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
}
PIPELINE_COMPONENTS = {
    "sd15": _SD_COMPONENTS,
    "sd2": _SD_COMPONENTS,
    "sdxl": {**_SD_COMPONENTS, "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
             "tokenizer_2": ("transformers", "CLIPTokenizer")},
}
SCHEDULER_CLASSES = (  # diffusers schedulers that build from an SD scheduler config without extra packages
    "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "PNDMScheduler",
    "UniPCMultistepScheduler",
)
_NULL = [None, None]
# component -> the pairs accepted besides [null, null]; load_pipeline passes None for these
_UNLOADED: dict[str, tuple[list[str], ...]] = {
    "safety_checker": (["stable_diffusion", "StableDiffusionSafetyChecker"],),
    "feature_extractor": (["transformers", "CLIPImageProcessor"], ["transformers", "CLIPFeatureExtractor"]),
    "image_encoder": (),
}
# model_index.json keys that are pipeline arguments, not components: allowed value types
PIPELINE_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "sd15": {"requires_safety_checker": (bool,)},
    "sd2": {"requires_safety_checker": (bool,)},
    "sdxl": {"force_zeros_for_empty_prompt": (bool,), "add_watermarker": (bool, type(None))},
}
# Keys that make transformers or diffusers fetch or run code from elsewhere (auto_map + trust_remote_code: a module
# shipped with the config; _name_or_path: a hub id): refused in every JSON file of a config dir.
FOREIGN_KEYS = ("auto_map", "_name_or_path", "name_or_path", "trust_remote_code", "custom_pipeline")
DATA_JSON = ("vocab.json", "added_tokens.json")  # {token: id} maps: their keys are tokens, not settings
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
CLIP_TEXT_MODEL_TYPE = "clip_text_model"
MAX_CONFIG_JSON_BYTES = 64_000_000  # a CLIP tokenizer.json is ~3.6 MB


def check_config_dir(config_dir: Path, family: str) -> None:
    """Refuse a diffusers config dir that could choose code, point elsewhere, or is not ``family``'s pipeline.

    Reads every ``*.json`` file of ``config_dir`` and its component folders (no model is loaded, nothing is
    imported) and checks:
    ``model_index.json`` names ``PIPELINE_CLASSES[family]`` and exactly the (library, class) pairs of
    ``PIPELINE_COMPONENTS[family]``, a scheduler of ``SCHEDULER_CLASSES``, no other component and no unknown key;
    each component's own config names the same class (``_class_name``; ``architectures`` and ``model_type`` of the
    text encoders; ``tokenizer_class``) and no JSON file holds a key of ``FOREIGN_KEYS``.

    Raises:
        CheckpointError: naming the file, the key and the fix.
    """
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise CheckpointError(f"{config_dir}: not a directory; point config: at a diffusers config directory "
                              "(model_index.json + one folder per component), or remove config: to use the shipped "
                              "one")
    index_path = config_dir / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(
            f"{config_dir}: no model_index.json; build the config dir with "
            f"ghostreview.generation.loading.family_config_dir({family!r}, cache_root)"
        )
    # what diffusers and transformers read: model_index.json and the files of each component's folder
    found = sorted({*config_dir.glob("*.json"), *config_dir.glob("*/*.json")})
    docs = {p: _read_config_json(p) for p in found if p.is_file()}
    for path, doc in docs.items():
        for key in () if path.name in DATA_JSON else FOREIGN_KEYS:
            if key in doc:
                raise CheckpointError(
                    f"{path}: key {key!r} = {_short(doc[key])}: a config dir must describe the model itself, never "
                    f"point at other code or a hub repository; remove the key"
                )
    components = _check_model_index(index_path, docs[index_path], family)
    for name, (library, cls) in components.items():
        _check_component(config_dir / name, name, library, cls, docs)


def _read_config_json(path: Path) -> dict:
    """A config file's JSON object (size bounded, nesting that would blow the stack refused)."""
    try:
        if path.stat().st_size > MAX_CONFIG_JSON_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than any diffusers config file "
                                  f"({MAX_CONFIG_JSON_BYTES}); remove it from the config dir")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); give this user read access") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e}); fix or replace the file") from e
    try:
        doc = json.loads(text)
    except RecursionError as e:
        raise CheckpointError(f"{path}: JSON nested too deeply; not a diffusers config file, replace it") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); fix or replace the file") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: a JSON {type(doc).__name__}, not an object; fix or replace the file")
    return doc


def _check_model_index(path: Path, index: Mapping, family: str) -> dict[str, tuple[str, str]]:
    """The components ``model_index.json`` names, checked against ``family``'s pipeline: {name: (library, class)}."""
    expected, options = PIPELINE_COMPONENTS[family], PIPELINE_OPTIONS[family]
    if index.get("_class_name") != PIPELINE_CLASSES[family]:
        raise CheckpointError(f"{path}: key '_class_name' = {_short(index.get('_class_name'))}, but family {family!r} "
                              f"needs {PIPELINE_CLASSES[family]}; use that family's config dir")
    components = {"scheduler": _pair(path, "scheduler", index.get("scheduler"))}
    if components["scheduler"][0] != "diffusers" or components["scheduler"][1] not in SCHEDULER_CLASSES:
        raise CheckpointError(f"{path}: key 'scheduler' = {_short(index['scheduler'])}; the scheduler must be "
                              f"[\"diffusers\", one of {', '.join(SCHEDULER_CLASSES)}]")
    for key, value in index.items():
        if key in ("_class_name", "_diffusers_version", "scheduler"):
            continue
        if key in expected:
            if _pair(path, key, value) != expected[key]:
                raise CheckpointError(f"{path}: key {key!r} = {_short(value)}; {PIPELINE_CLASSES[family]} needs "
                                      f"{list(expected[key])} there")
            components[key] = expected[key]
        elif key in _UNLOADED:
            if value != _NULL and value not in _UNLOADED[key]:
                raise CheckpointError(f"{path}: key {key!r} = {_short(value)}; this component is not loaded, write "
                                      f"[null, null]")
        elif key in options:
            if not isinstance(value, options[key]):
                raise CheckpointError(f"{path}: key {key!r} = {_short(value)}; it must be true or false")
        else:
            valid = ["_class_name", "_diffusers_version", "scheduler", *expected, *_UNLOADED, *options]
            raise CheckpointError(f"{path}: unknown key {_short(key)}; valid keys for {PIPELINE_CLASSES[family]}: "
                                  f"{', '.join(valid)}. Remove it")
    missing = [k for k in expected if k not in components]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)}; {PIPELINE_CLASSES[family]} needs "
                              + ", ".join(f"{k}: {list(expected[k])}" for k in missing))
    return components


def _pair(path: Path, key: str, value: object) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise CheckpointError(f"{path}: key {key!r} = {_short(value)}; expected [library, class], e.g. "
                              f"[\"diffusers\", \"UNet2DConditionModel\"]")
    return value[0], value[1]


def _check_component(folder: Path, name: str, library: str, cls: str, docs: Mapping[Path, dict]) -> None:
    """The component's own config file exists and names the class model_index.json names for it."""
    is_model = library == "transformers" and cls not in TOKENIZER_CLASSES
    allowed: tuple
    if cls in TOKENIZER_CLASSES:
        file, field, allowed = "tokenizer_config.json", "tokenizer_class", TOKENIZER_CLASSES
    elif is_model:
        file, field, allowed = "config.json", "architectures", ([cls],)
    else:
        file, field, allowed = "scheduler_config.json" if name == "scheduler" else "config.json", "_class_name", (cls,)
    path = folder / file
    if path not in docs:
        raise CheckpointError(f"{path}: missing; the {name} component of the config dir needs it")
    doc = docs[path]
    if field in doc and doc[field] not in allowed:
        raise CheckpointError(f"{path}: key {field!r} = {_short(doc[field])}; model_index.json makes {name} a {cls}, "
                              f"write {_short(allowed[0])} (or remove the key)")
    if is_model and doc.get("model_type", CLIP_TEXT_MODEL_TYPE) != CLIP_TEXT_MODEL_TYPE:
        raise CheckpointError(f"{path}: key 'model_type' = {_short(doc['model_type'])}; a {cls} config has "
                              f"model_type {CLIP_TEXT_MODEL_TYPE!r}")


# ---------------------------------------------------------------------------------------------------- pickle


def _pickle_refusal(path: Path) -> str:
    return (
        f"{path}: a pickle checkpoint ({path.suffix}); unpickling can run arbitrary code, so it is refused by "
        "default. Prefer the model's .safetensors download, or convert it once with "
        "ghostreview.generation.loading.convert_pickle_checkpoint(src, dest), or opt in with allow_pickle: true for "
        "this model (read with torch.load(weights_only=True): tensors only, never code)"
    )


def _dedupe_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no shared storage (safetensors refuses aliases, which pickles often contain)."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr()
        value = value.contiguous()
        out[key] = value.clone() if ptr in seen and value.numel() else value
        seen.add(ptr)
    return out


def _load_pickle(path: Path, map_location: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a pickle checkpoint, read with ``torch.load(weights_only=True)`` only.

    Nested ``state_dict`` entries are unwrapped (as diffusers does); the string entries met on the way are the
    metadata; other non-tensor entries (``global_step``...) are dropped.

    Raises:
        CheckpointError: when the pickle holds anything but tensors and plain containers (possible code), is
            corrupt, or holds no tensors at all.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True): it holds objects other than tensors (possibly "
            f"code) or is corrupt: {e}. Use the model's .safetensors download instead"
        ) from e
    metadata: dict[str, str] = {}
    while isinstance(obj, dict):
        metadata.update({k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str)})
        if not isinstance(obj.get("state_dict"), dict):
            break
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path}: the pickle holds no tensor state dict; not a checkpoint")
    return tensors, metadata


def convert_pickle_checkpoint(src: Path, dest: Path) -> Path:
    """Convert a pickle checkpoint to safetensors (atomically), reading it with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: see ``_load_pickle``.
    """
    from safetensors.torch import save_file

    src, dest = Path(src), Path(dest)
    tensors, metadata = _load_pickle(src)
    return save_atomic(dest, lambda tmp: save_file(_dedupe_storage(tensors), str(tmp), metadata=metadata or None))


@contextlib.contextmanager
def _as_safetensors(path: Path, allow_pickle: bool) -> Iterator[Path]:
    """Yield a safetensors path for ``path``: itself, or (pickle, opted in) a temporary converted copy."""
    path = Path(path)
    if checkpoint_format(path) == "safetensors":
        yield path
        return
    if not allow_pickle:
        raise CheckpointError(_pickle_refusal(path))
    with tempfile.TemporaryDirectory(prefix="ghostreview-pickle-") as tmp:
        yield convert_pickle_checkpoint(path, Path(tmp) / (path.stem + ".safetensors"))


# ---------------------------------------------------------------------------------------------------- pipelines


def _load_vae(vae: Path, config_dir: Path, dtype: torch.dtype, allow_pickle: bool):
    """``AutoencoderKL`` from a standalone single-file VAE (LDM keys with or without ``first_stage_model.``)."""
    from diffusers import AutoencoderKL

    with _as_safetensors(vae, allow_pickle) as st:
        shapes = tensor_shapes(read_safetensors_header(st))
        if not any(k in shapes for k in VAE_KEYS):
            raise CheckpointError(_not_a_vae(vae, shapes))
        return AutoencoderKL.from_single_file(
            str(st), config=str(config_dir), subfolder="vae", torch_dtype=dtype, local_files_only=True
        )


def load_pipeline(checkpoint: Path, family: str, config_dir: Path, *, vae: Path | None = None,
                  prediction_type: str | None = None, allow_pickle: bool = False,
                  dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a single-file SD checkpoint into a diffusers pipeline, offline: :func:`open_pipeline` of the file read
    once (:func:`inspect_checkpoint`), after checking that it holds a ``family`` checkpoint.

    Args:
        checkpoint: ``.safetensors`` (or, with ``allow_pickle``, ``.ckpt``/``.pt``) in the original LDM/SGM layout.
        family: "sd15" | "sd2" | "sdxl"; checked against the file's header before any tensor is read.
        config_dir, vae, prediction_type, allow_pickle, dtype, device: as for :func:`open_pipeline`.

    Raises:
        CheckpointError: refused pickle, corrupt file, family mismatch, missing VAE, wrong config dir.
    """
    ckpt = inspect_checkpoint(checkpoint, allow_pickle=allow_pickle)
    found = family_from_shapes(ckpt.shapes, str(checkpoint))
    if family in PIPELINE_CLASSES and found != family:
        raise CheckpointError(f"{checkpoint}: an {found} checkpoint, but family {family!r} was given; "
                              f"set family: {found}")
    return open_pipeline(ckpt, family, config_dir, vae=vae, prediction_type=prediction_type, allow_pickle=allow_pickle,
                         dtype=dtype, device=device)


def open_pipeline(ckpt: CheckpointFile, family: str, config_dir: Path, *, vae: Path | None = None,
                  prediction_type: str | None = None, allow_pickle: bool = False,
                  dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load the checkpoint ``ckpt`` (read once by :func:`inspect_checkpoint`; its family decided once) into a
    diffusers pipeline, offline.

    Args:
        ckpt: the inspected checkpoint file; its shapes say whether it carries a VAE.
        family: "sd15" | "sd2" | "sdxl": the family decided when it was inspected (``CheckpointFile.family``).
        config_dir: diffusers config dir (``family_config_dir`` / ``checkpoint_config_dir``).
        vae: optional standalone VAE file replacing the checkpoint's own (required when the checkpoint has none).
        prediction_type: None keeps the config's scheduler; "epsilon" or "v_prediction" overrides it. A checkpoint
            with the ``ztsnr`` marker (``CheckpointFile.ztsnr``) gets the zero-terminal-SNR schedule.
        allow_pickle: read pickle files with ``torch.load(weights_only=True)`` (via a temporary safetensors copy).
        dtype, device: torch dtype and device of the returned pipeline.

    Returns:
        ``StableDiffusionPipeline`` (sd15, sd2) or ``StableDiffusionXLPipeline`` (sdxl), without safety checker or
        watermarker.

    Raises:
        CheckpointError: refused pickle, missing VAE, wrong config dir.
    """
    import diffusers

    from ghostreview.generation.samplers import ZERO_SNR_KEY  # imports diffusers: only where a pipeline loads

    if family not in PIPELINE_CLASSES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(PIPELINE_CLASSES)}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES} (or None)")
    check_config_dir(config_dir, family)
    extra = {"add_watermarker": False} if family == "sdxl" else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if vae is None and not any(k.startswith("first_stage_model.") for k in ckpt.shapes):
        raise CheckpointError(f"{ckpt.path}: has no VAE (no first_stage_model.* keys); give the model a vae file")
    with _as_safetensors(ckpt.path, allow_pickle) as st:
        if vae is not None:
            extra["vae"] = _load_vae(vae, config_dir, dtype, allow_pickle)
        cls = getattr(diffusers, PIPELINE_CLASSES[family])
        pipe = cls.from_single_file(str(st), config=str(config_dir), torch_dtype=dtype, local_files_only=True, **extra)
    if prediction_type is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    if ckpt.ztsnr:  # every sampler built from this config draws on A1111's zero-SNR schedule (samplers.make_scheduler)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **{ZERO_SNR_KEY: True})
    # Components load on the CPU; skip a no-op .to("cpu"), which only makes diffusers warn about dtype casting.
    return pipe if torch.device(device) == torch.device("cpu") else pipe.to(device)


# The speed options the generate stage applies on an accelerator, by name (part of every image key there: they
# change the rounding, within benchmarks/generation_gpu.py's draw-parity tolerance). None on the CPU, where the
# drawing stays bit-identical to the plain pipeline. Not among them: fused QKV projections, which LoRA adapters cannot
# coexist with (PEFT puts its deltas on to_q/to_k/to_v; the fused processor reads to_qkv and would skip them), and
# torch.compile, which recompiles the UNet whenever the active adapters change; the benchmark times both on their own.
DEVICE_OPTIMIZATIONS = ("sdpa", "channels_last")


def device_optimizations(device: str) -> tuple[str, ...]:
    """The speed options :func:`optimize_pipeline` applies on ``device`` (none on the CPU)."""
    return () if torch.device(device).type == "cpu" else DEVICE_OPTIMIZATIONS


def optimize_pipeline(pipe, device: str, extra: tuple[str, ...] = ()):
    """Apply :func:`device_optimizations` of ``device`` to ``pipe`` in place (the generate stage's path); returns it.

    ``sdpa``: torch's scaled_dot_product_attention processor on the UNet and VAE (diffusers' default with torch 2,
    set explicitly); ``channels_last``: NHWC memory format for the UNet and VAE convolutions. ``extra`` adds the
    options the stage does not use, for the benchmark alone: ``fuse_qkv`` (no LoRA afterwards) and ``compile``.
    """
    options = (*device_optimizations(device), *extra)
    unknown = sorted(set(options) - {*DEVICE_OPTIMIZATIONS, "fuse_qkv", "compile"})
    if unknown:
        raise ValueError(f"unknown pipeline optimizations {unknown}; valid: sdpa, channels_last, fuse_qkv, compile")
    if "sdpa" in options:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    if "fuse_qkv" in options:
        pipe.fuse_qkv_projections()
    if "channels_last" in options:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if "compile" in options:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    return pipe
