"""Load Stable Diffusion single-file checkpoints (as Civitai distributes them) fully offline.

* ``read_safetensors_header`` / ``detect_family`` look only at the safetensors header (8-byte little-endian
  length + JSON): no tensor data is read, so checking a 7 GB file is instant.
* ``family_config_dir`` materializes the shipped real-size diffusers configs (``ghostreview/configs/<family>``)
  plus generated CLIP tokenizers, so ``from_single_file(config=...)`` never looks for a hub.
* ``load_pipeline`` builds the diffusers pipeline. Pickle checkpoints (.ckpt/.pt) are refused unless the caller
  opts in, and even then are read only with ``torch.load(weights_only=True)``.
* ``inspect_checkpoint`` is the one place that decides what a checkpoint file is (``checkpoint_format``) and reads
  it once into a :class:`CheckpointFile` (format, tensor shapes, metadata); family, tiny-kit marker and config dir are
  answered from that record, for safetensors and (opted-in) pickle files alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ghostreview.errors import UserError
from ghostreview.kit.sd import KIT_METADATA_KEY, KIT_METADATA_VALUE  # the tiny kit's marker: tiny configs
from ghostreview.kit.tokenizer import TOKENIZER_PADS, open_clip_bpe_path, write_clip_tokenizer

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"
CONFIG_FAMILIES = ("sd15", "sd2", "sdxl")
PIPELINE_CLASSES = {
    "sd15": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
PREDICTION_TYPES = ("epsilon", "v_prediction")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
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
    "cond_stage_model.model.* (SD2.x) or conditioner.embedders.0/1.* (SDXL)"
)


class CheckpointError(UserError, ValueError):
    """A checkpoint, VAE or config that cannot be used; the message names the file, what is wrong and the fix."""


# ---------------------------------------------------------------------------------------------------- headers


def read_safetensors_header(path: Path) -> dict:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Returns:
        The header JSON: ``{tensor_name: {"dtype", "shape", "data_offsets"}, ..., "__metadata__": {...}}``
        (``__metadata__`` only when the file has one).

    Raises:
        CheckpointError: missing, zero-byte, truncated, or not a safetensors file (bad length, non-JSON header,
            malformed entries, tensor data past the end of the file or trailing bytes after it).
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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e}); fetch it again") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    _check_entries(path, header, data_len=size - 8 - n)
    return header


def _check_entries(path: Path, header: Mapping, data_len: int) -> None:
    """Validate tensor entries and that their byte ranges exactly cover the data section."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        ok = (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
              and 0 <= offsets[0] <= offsets[1] and isinstance(entry.get("shape"), list) and "dtype" in entry)
        if not ok:
            raise CheckpointError(f"{path}: malformed safetensors entry {name!r}: {entry!r}; the file is corrupt")
        end = max(end, offsets[1])
    if end > data_len:
        raise CheckpointError(
            f"{path}: truncated: tensors need {end} data bytes but the file holds {data_len}; fetch it again"
        )
    if end < data_len:
        raise CheckpointError(f"{path}: {data_len - end} unexpected bytes after the tensor data; the file is corrupt")


def tensor_shapes(header: Mapping) -> dict[str, list[int]]:
    """{tensor name: shape} of a parsed safetensors header (``__metadata__`` dropped)."""
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def header_metadata(header: Mapping) -> dict[str, str]:
    """The ``__metadata__`` string map of a parsed safetensors header ({} when absent)."""
    meta = header.get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------------- families


def family_from_shapes(shapes: Mapping[str, list[int]], name: str = "checkpoint") -> str:
    """Decide "sd15" | "sd2" | "sdxl" from tensor names (and the UNet input shape) of a single-file checkpoint.

    Rules: the UNet must be present with 4 input channels; SDXL base has OpenCLIP-bigG as
    ``conditioner.embedders.1.model.*`` (we key on its ``positional_embedding``, not on diffusers' ``resblocks.9``
    probe, so depth does not matter); SD2 has OpenCLIP-H under ``cond_stage_model.model.``; SD1 has CLIP-L under
    ``cond_stage_model.transformer.text_model.``.

    Raises:
        CheckpointError: naming ``name``, for LoRA/VAE/diffusers-component files, inpainting/pix2pix UNets, the
            SDXL refiner, or anything else, listing the expected layout.
    """
    keys = shapes.keys()
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
        """"sd15" | "sd2" | "sdxl" (``family_from_shapes``; raises CheckpointError for anything else)."""
        return family_from_shapes(self.shapes, str(self.path))

    @property
    def is_tiny_kit(self) -> bool:
        """Written by ``ghostreview.kit.sd`` (random weights, tiny topology), for tests and CI."""
        return self.metadata.get(KIT_METADATA_KEY) == KIT_METADATA_VALUE


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
    """Family of the single-file checkpoint at ``path``: "sd15" | "sdxl" | "sd2", from tensor names and shapes.

    Raises:
        CheckpointError: see ``inspect_checkpoint``; and files that are not SD checkpoints (the message lists what
            was expected).
    """
    return inspect_checkpoint(path, allow_pickle=allow_pickle).family


def is_tiny_kit_file(path: Path, *, allow_pickle: bool = False) -> bool:
    """True when the checkpoint at ``path`` was written by ``ghostreview.kit`` (random weights, for tests/CI)."""
    return inspect_checkpoint(path, allow_pickle=allow_pickle).is_tiny_kit


# ---------------------------------------------------------------------------------------------------- configs


def _config_source_digest(family: str) -> str:
    """sha256 over the shipped config files of ``family``, the tokenizer source and their layout version."""
    src = CONFIGS_ROOT / family
    digest = hashlib.sha256(f"format={CONFIG_DIR_FORMAT};pads={TOKENIZER_PADS[family]}".encode())
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(src)).encode() + b"\0" + file.read_bytes())
    digest.update(open_clip_bpe_path().read_bytes())
    return digest.hexdigest()


def _materialize(dest: Path, build) -> Path:
    """Create directory ``dest`` once: ``build(tmp_dir)`` fills a sibling temp dir, which is renamed to ``dest``.

    A concurrent builder that loses the race discards its copy; readers never see a half-written ``dest``.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def family_config_dir(family: str, cache_root: Path) -> Path:
    """Local diffusers config dir of the real-size ``family`` ("sd15" | "sd2" | "sdxl"), built once.

    Copies ``ghostreview/configs/<family>/`` and writes the CLIP tokenizer(s) into
    ``cache_root/<family>-<12 hex of the contents' sha256>/`` (atomic; reused while the shipped files are unchanged).
    """
    if family not in CONFIG_FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(CONFIG_FAMILIES)}")
    dest = Path(cache_root) / f"{family}-{_config_source_digest(family)[:12]}"

    def build(tmp: Path) -> None:
        shutil.copytree(CONFIGS_ROOT / family, tmp, dirs_exist_ok=True)
        for name, pad in TOKENIZER_PADS[family].items():
            write_clip_tokenizer(tmp / name, pad_token=pad)

    return _materialize(dest, build)


def tiny_config_dir(family: str, cache_root: Path) -> Path:
    """Config dir of the tiny test topology of ``family`` (``ghostreview.kit.sd``), built once under ``cache_root``."""
    from ghostreview.kit import sd

    text = json.dumps(sd.tiny_configs(family), sort_keys=True) + _config_source_digest(family)
    dest = Path(cache_root) / f"{family}-tiny-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return _materialize(dest, lambda tmp: sd.write_tiny_config_dir(tmp, family))


def pipeline_config_dir(checkpoint: Path, family: str, cache_root: Path, *, allow_pickle: bool = False) -> Path:
    """The config dir to load ``checkpoint`` with: the tiny topology for tiny-kit files, else the real one."""
    if is_tiny_kit_file(checkpoint, allow_pickle=allow_pickle):
        return tiny_config_dir(family, cache_root)
    return family_config_dir(family, cache_root)


# ---------------------------------------------------------------------------------------------------- pickle


def _pickle_refusal(path: Path) -> str:
    return (
        f"{path}: a pickle checkpoint ({path.suffix}); unpickling can run arbitrary code, so it is refused by "
        "default. Prefer the model's .safetensors download, or convert it once with "
        "ghostreview.loading.convert_pickle_checkpoint(src, dest), or opt in with allow_pickle: true for this "
        "model (read with torch.load(weights_only=True): tensors only, never code)"
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    save_file(_dedupe_storage(tensors), str(tmp), metadata=metadata or None)
    os.replace(tmp, dest)
    return dest


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


def _check_config_dir(config_dir: Path, family: str) -> None:
    """Fail early when ``config_dir`` is not a diffusers config dir for ``family``'s pipeline class."""
    index = Path(config_dir) / "model_index.json"
    if not index.is_file():
        raise CheckpointError(
            f"{config_dir}: no model_index.json; build the config dir with "
            f"ghostreview.loading.family_config_dir({family!r}, cache_root)"
        )
    cls = json.loads(index.read_text()).get("_class_name")
    if cls != PIPELINE_CLASSES[family]:
        raise CheckpointError(f"{config_dir}: a {cls} config, but family {family!r} needs {PIPELINE_CLASSES[family]}")


def _load_vae(vae: Path, config_dir: Path, dtype: torch.dtype, allow_pickle: bool):
    """``AutoencoderKL`` from a standalone single-file VAE (LDM keys with or without ``first_stage_model.``)."""
    from diffusers import AutoencoderKL

    with _as_safetensors(vae, allow_pickle) as st:
        shapes = tensor_shapes(read_safetensors_header(st))
        if not any(k in shapes for k in VAE_KEYS):
            raise CheckpointError(f"{vae}: not a VAE file (no encoder.conv_in.weight; {_what_is_it(shapes)})")
        return AutoencoderKL.from_single_file(
            str(st), config=str(config_dir), subfolder="vae", torch_dtype=dtype, local_files_only=True
        )


def load_pipeline(checkpoint: Path, family: str, config_dir: Path, *, vae: Path | None = None,
                  prediction_type: str | None = None, allow_pickle: bool = False,
                  dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a single-file SD checkpoint into a diffusers pipeline, offline.

    Args:
        checkpoint: ``.safetensors`` (or, with ``allow_pickle``, ``.ckpt``/``.pt``) in the original LDM/SGM layout.
        family: "sd15" | "sd2" | "sdxl"; checked against the file's header before any tensor is read.
        config_dir: diffusers config dir (``family_config_dir`` / ``pipeline_config_dir``).
        vae: optional standalone VAE file replacing the checkpoint's own (required when the checkpoint has none).
        prediction_type: None keeps the config's scheduler; "epsilon" or "v_prediction" overrides it.
        allow_pickle: read pickle files with ``torch.load(weights_only=True)`` (via a temporary safetensors copy).
        dtype, device: torch dtype and device of the returned pipeline.

    Returns:
        ``StableDiffusionPipeline`` (sd15, sd2) or ``StableDiffusionXLPipeline`` (sdxl), without safety checker or
        watermarker.

    Raises:
        CheckpointError: refused pickle, corrupt file, family mismatch, missing VAE, wrong config dir.
    """
    import diffusers

    if family not in PIPELINE_CLASSES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(PIPELINE_CLASSES)}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES} (or None)")
    _check_config_dir(config_dir, family)
    extra = {"add_watermarker": False} if family == "sdxl" else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    with _as_safetensors(checkpoint, allow_pickle) as st:
        shapes = tensor_shapes(read_safetensors_header(st))
        found = family_from_shapes(shapes, str(checkpoint))
        if found != family:
            raise CheckpointError(
                f"{checkpoint}: an {found} checkpoint, but family {family!r} was given; set family: {found}"
            )
        if vae is not None:
            extra["vae"] = _load_vae(vae, config_dir, dtype, allow_pickle)
        elif not any(k.startswith("first_stage_model.") for k in shapes):
            raise CheckpointError(f"{checkpoint}: has no VAE (no first_stage_model.* keys); give the model a vae file")
        cls = getattr(diffusers, PIPELINE_CLASSES[family])
        pipe = cls.from_single_file(str(st), config=str(config_dir), torch_dtype=dtype, local_files_only=True, **extra)
    if prediction_type is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    # Components load on the CPU; skip a no-op .to("cpu"), which only makes diffusers warn about dtype casting.
    return pipe if torch.device(device) == torch.device("cpu") else pipe.to(device)
