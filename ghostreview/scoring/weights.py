"""Scorer weights: the one place that names, resolves and verifies weight files. Nothing here downloads.

Weights are dependencies with hashes: a stage resolves a file with :func:`resolve_weights` (known files in a weights
directory) or verifies an explicit path with :func:`verify_weights`, and records the returned sha256 in every score row.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ghostreview.errors import UserError
from ghostreview.util.hashing import file_sha256

if TYPE_CHECKING:
    import torch


class OnDevice:
    """What every loaded scoring model (CLIP, the judges) answers: the device its weights sit on, read from the model
    itself so that it can never disagree with where ``.to()`` put them."""

    model: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class WeightsError(UserError, RuntimeError):
    """A weights file is missing or is not the expected file."""


@dataclass(frozen=True)
class WeightsSpec:
    """A known weights file: its file name in a weights directory, its sha256 (None: not pinned) and where to get it."""

    key: str
    filename: str
    sha256: str | None
    source: str


KNOWN: dict[str, WeightsSpec] = {
    spec.key: spec
    for spec in (
        WeightsSpec(
            "laion-aesthetic-v2",
            "sac+logos+ava1-l14-linearMSE.pth",
            "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
            "LAION improved aesthetic predictor v2, file sac+logos+ava1-l14-linearMSE.pth (3,714,759 bytes) from "
            "https://github.com/christophschuhmann/improved-aesthetic-predictor",
        ),
        WeightsSpec(
            "clip-vit-l-14-openai-jit",
            "ViT-L-14.pt",
            # OpenAI's own loader checks the file's sha256 against this URL segment.
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            "OpenAI CLIP TorchScript file https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        ),
        WeightsSpec(
            "clip-vit-l-14",
            "ViT-L-14-quickgelu.safetensors",
            None,  # produced locally by convert_openai_clip; its bytes depend on the converter, so not pinned
            "convert the OpenAI TorchScript ViT-L-14.pt (key 'clip-vit-l-14-openai-jit') with "
            "ghostreview.scoring.clip.convert_openai_clip(src, dst)",
        ),
        WeightsSpec(
            "vgg19",
            "vgg19-dcbb9e9d.pth",
            None,  # torchvision pins only the sha256 prefix dcbb9e9d (in the file name)
            "torchvision VGG19_Weights.IMAGENET1K_V1: https://download.pytorch.org/models/vgg19-dcbb9e9d.pth "
            "(full-model state dict; its 'features.*' keys are used)",
        ),
    )
}


SAFETENSORS_FIX = "Use the .safetensors file of these weights (see README, 'Scorer weights')"


def read_state_dict(path: Path) -> dict:
    """A state dict from ``.safetensors`` or a torch file, the latter through ``torch.load(weights_only=True)``
    (which refuses pickled code: the payload never runs).

    Raises:
        WeightsError: naming the file, what is wrong (a pickle that holds more than tensors, a corrupt or truncated
            file, something other than a state dict) and the fix (the .safetensors file).
    """
    return _read(Path(path), mmap=False)


def check_state_dict_file(path: Path) -> None:
    """Raise what :func:`read_state_dict` would, reading as little as possible: a safetensors header only; a torch
    zip file memory-mapped (its pickle is unpickled and refused exactly as on load, no tensor data is read); an old
    non-zip torch file in full (it cannot be mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}); fetch it again.") from None
    _read(path, mmap=zipfile.is_zipfile(path))


def _read(path: Path, mmap: bool) -> dict:
    import torch
    from safetensors import SafetensorError

    if path.suffix != ".safetensors" and not zipfile.is_zipfile(path) and not _starts_like_pickle(path):
        raise WeightsError(f"{path}: not a weights file (neither safetensors, nor a torch zip or pickle file); fetch "
                           f"it again. {SAFETENSORS_FIX}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message is a page of advice on turning weights_only off; keep its one line of diagnosis
        found = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please|\n|$)", str(exc))
        why = found.group(1) if found else str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise WeightsError(f"{path}: refused by torch.load(weights_only=True): {why[:300]} (the file holds objects "
                           f"other than tensors, possibly code; none of it ran). {SAFETENSORS_FIX}.") from None
    except (SafetensorError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: not a readable weights file ({str(exc)[:300]}); fetch it again. "
                           f"{SAFETENSORS_FIX}.") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}. {SAFETENSORS_FIX}.")
    return dict(state)


def _starts_like_pickle(path: Path) -> bool:
    """Old (non-zip) torch files are pickles; pickle protocols 2+ open with the PROTO opcode, 0x80."""
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def write_state_dict(state: Mapping, path: Path) -> Path:
    """Write ``state`` as safetensors when ``path`` ends in ``.safetensors``, else with ``torch.save``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(dict(state), path)
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (the one hashing of the project: ``ghostreview.util.hashing.file_sha256``)."""
    return file_sha256(path)


def verify_weights(path: Path, expected_sha256: str | None = None, source: str = "",
                   cache_file: Path | None = None) -> str:
    """Check that ``path`` exists (and matches ``expected_sha256`` when given); return its sha256.

    ``cache_file``: the hash cache (``util.hashing.file_sha256``), so that a multi-GB file unchanged since its last
    hash (size and mtime) is not read again.

    Raises WeightsError naming the file, the expected and the actual hash and where to get the right file.
    """
    path = Path(path)
    where = f" Get it from: {source}." if source else ""
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}.{where}")
    got = file_sha256(path, cache_file)
    if expected_sha256 is not None and got != expected_sha256.lower():
        raise WeightsError(
            f"Weights file {path} has sha256 {got}, expected {expected_sha256.lower()}: wrong or corrupt file.{where}"
        )
    return got


def weights_spec(key: str) -> WeightsSpec:
    """The known weights file ``key``; unknown keys fail with the valid keys."""
    if key not in KNOWN:
        raise WeightsError(f"Unknown weights key {key!r}. Known: {sorted(KNOWN)}")
    return KNOWN[key]


def resolve_weights(weights_dir: Path, key: str) -> tuple[Path, str]:
    """Path and verified sha256 of the known weights file ``key`` inside ``weights_dir``."""
    spec = weights_spec(key)
    path = Path(weights_dir) / spec.filename
    return path, verify_weights(path, spec.sha256, spec.source)
