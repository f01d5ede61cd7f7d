"""LoRA compatibility checks (before any model work) and application to a diffusers pipeline.

``lora_status`` decides from the safetensors header (keys, shapes, kohya ``ss_*`` metadata), then by running
diffusers' own reading of the file, whether diffusers can apply a LoRA file to a checkpoint of a given family, before
any GPU work. ``apply_loras`` / ``remove_loras`` wrap diffusers' PEFT adapters: loading a kohya file, weighting
several at once, and unloading back to the exact base weights (adapters are never fused, so nothing is baked in).

diffusers can read a file and still drop part of it: its kohya key-format detection loses a text encoder's q/k/v
deltas when that encoder has ``fc1`` but no ``out_proj`` deltas (diffusers 0.42.1). ``apply_loras`` therefore
compares, after loading, the modules a file targets with the modules that received its adapter, and returns the
ones that did not; the drawn images carry a ``lora_partial`` flag naming them (:func:`partial_status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ghostreview.kit.ldm_keys import unet_key_to_ldm
from ghostreview.loading import (
    CONFIGS_ROOT,
    PIPELINE_CLASSES,
    CheckpointError,
    header_metadata,
    read_safetensors_header,
    tensor_shapes,
)

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
SGM_UNET_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
# (key fragment, status) checked in order: LyCORIS algorithms and DoRA that diffusers' kohya converter rejects
# ("not correctly renamed") or silently drops (dora_scale).
UNSUPPORTED_MARKERS = (
    (".hada_", "unsupported: LyCORIS LoHa (hada_*)"),
    (".lokr_", "unsupported: LyCORIS LoKr (lokr_*)"),
    (".lora_mid.", "unsupported: LyCORIS lora_mid (Tucker-decomposed conv)"),
    (".dora_scale", "unsupported: DoRA (dora_scale)"),
)
# kohya ss_base_model_version prefixes of SD1-style (non-SDXL) LoRAs -> family
BASE_VERSION_FAMILY = (("sd_v2", "sd2"), ("sd_v1", "sd15"))
SD2_CONTEXT_DIM = 1024
# Pipeline component -> the kohya prefix of its modules. kohya names UNet modules after the diffusers UNet for SD1/SD2
# and after the original SGM UNet for SDXL (lora_unet_input_blocks_4_1_...), text-encoder modules after transformers'
# CLIPTextModel with its text_model level.
KOHYA_COMPONENTS = {
    "sd15": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
    "sd2": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
    "sdxl": {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
}
PARTIAL_FLAG = "lora_partial"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: adapter ``name`` (unique per pipeline), file ``path`` and ``weight`` (A1111 multiplier)."""

    name: str
    path: Path
    weight: float


def a1111_lora_hash(path: Path) -> str:
    """The hash A1111 writes for a LoRA in an infotext's ``Lora hashes`` and finds it by when the infotext is pasted
    (a ``<lora:alias:w>`` tag whose alias no local file has): the first 12 hex digits of the sha256 of a safetensors
    file's bytes after its header (kohya's "addnet" hash, which ignores metadata edits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def lora_family(shapes: Mapping[str, list[int]], metadata: Mapping[str, str]) -> str:
    """"sd15" | "sd2" | "sdxl": the base family a kohya LoRA was trained for.

    SDXL is recognised structurally (``lora_te1_``/``lora_te2_`` text-encoder keys, or SGM UNet names such as
    ``lora_unet_input_blocks_4_1_…``). Among SD1-style files, SD2 is told apart by kohya metadata
    (``ss_v2`` / ``ss_base_model_version``) or, without it, by a 1024-wide text encoder / cross-attention input.
    """
    keys = shapes.keys()
    if any(k.startswith(("lora_te1_", "lora_te2_", *SGM_UNET_PREFIXES)) for k in keys):
        return "sdxl"
    version = metadata.get("ss_base_model_version", "")
    for prefix, family in BASE_VERSION_FAMILY:
        if version.startswith(prefix):
            return family
    if metadata.get("ss_v2") == "True":
        return "sd2"
    context_dims = {shape[1] for k, shape in shapes.items() if len(shape) > 1 and k.endswith(".lora_down.weight")
                    and (k.startswith("lora_te_") or "_attn2_to_k." in k)}
    return "sd2" if SD2_CONTEXT_DIM in context_dims else "sd15"


def lora_status(path: Path, family: str) -> str:
    """Whether the LoRA at ``path`` can be applied to a ``family`` checkpoint, from its header only.

    Returns:
        "ok"; "unsupported: <what>" for LyCORIS LoHa/LoKr/lora_mid, DoRA, non-kohya files and files diffusers'
        reader refuses; "incompatible: <lora family> LoRA on <family> checkpoint"; or "error: <reason>" for
        unreadable files.
    """
    try:
        header = read_safetensors_header(Path(path))
    except CheckpointError as e:
        return f"error: {e}"
    shapes, metadata = tensor_shapes(header), header_metadata(header)
    for fragment, status in UNSUPPORTED_MARKERS:
        if any(fragment in k for k in shapes):
            return status
    if not shapes or not all(k.startswith(KOHYA_PREFIXES) for k in shapes):
        other = sorted(k for k in shapes if not k.startswith(KOHYA_PREFIXES))[:2]
        return f"unsupported: not a kohya/A1111 LoRA (expected lora_unet_*/lora_te*_ keys, found {other or 'none'})"
    found = lora_family(shapes, metadata)
    if found != family:
        return f"incompatible: {found} LoRA on {family} checkpoint"
    refused = diffusers_read_error(Path(path), family)
    return f"unsupported: diffusers cannot read it ({refused})" if refused else "ok"


def diffusers_read_error(path: Path, family: str) -> str | None:
    """Why diffusers' LoRA loader refuses the kohya file at ``path`` (its own error), or None when it reads it.

    Runs the steps ``load_lora_weights`` (diffusers 0.42.1) takes before it touches a model, on the CPU and without
    one: the kohya conversion (``lora_state_dict``; SDXL with the UNet config, as the SDXL pipeline passes it), then
    for each text encoder the key-format detection, which raises "Could not automatically infer state dict type" on
    a text-encoder part with only q/k/v projections. tests/test_lora.py checks that the loader agrees.
    """
    import diffusers
    from diffusers.configuration_utils import FrozenDict
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    cls = getattr(diffusers, PIPELINE_CLASSES[family])
    extra = {}
    if family == "sdxl":
        extra["unet_config"] = FrozenDict(json.loads((CONFIGS_ROOT / family / "unet" / "config.json").read_text()))
    try:
        with _quiet_transformers():
            state_dict, _ = cls.lora_state_dict(str(path), **extra)
            for component in KOHYA_COMPONENTS[family]:
                part = {k.removeprefix(f"{component}."): v for k, v in state_dict.items()
                        if k.startswith(f"{component}.")}
                if part and component != "unet":
                    convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    except Exception as e:  # whatever the reader raises means it cannot read the file; the type goes in the status
        return f"{type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers while adapters load into the text encoders.

    transformers 5 prints a "LOAD REPORT" listing every base weight as MISSING / "newly initialized" when an
    adapter is loaded; the base weights are in fact untouched (tests/test_lora.py checks), so the report only
    misleads. peft warns that a second adapter makes "multiple adapters": several LoRAs per prompt are exactly that.
    Verbosity, progress bars and warning filters are restored afterwards.
    """
    from transformers.utils import logging as tf_logging

    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # a second adapter is how several LoRAs are applied: peft's warning is moot
            warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def apply_loras(pipe, family: str, loras: Sequence[LoraSpec]) -> dict[str, tuple[str, ...]]:
    """Load each LoRA as a PEFT adapter named ``spec.name`` and activate all of them with their weights.

    Checks every file with ``lora_status`` first, so nothing is loaded when one of them cannot be applied.
    Replaces any previously active set of adapters. An empty ``loras`` is a no-op.

    Returns:
        {LoRA name: kohya names of the modules its file targets that received no delta}, for the LoRAs that were
        applied in part only ({} when every file was applied in full).

    Raises:
        ValueError: duplicate adapter names, or a LoRA whose status is not "ok" (the status is in the message).
    """
    names = [spec.name for spec in loras]
    if len(set(names)) != len(names):
        raise ValueError(f"LoRA adapter names must be unique, got {names}")
    for spec in loras:
        status = lora_status(spec.path, family)
        if status != "ok":
            raise ValueError(f"LoRA {spec.name!r} ({spec.path}): {status}")
    if not loras:
        return {}
    with _quiet_transformers():
        for spec in loras:
            pipe.load_lora_weights(str(spec.path), adapter_name=spec.name)
    pipe.set_adapters(names, adapter_weights=[float(spec.weight) for spec in loras])
    missing = {spec.name: tuple(sorted(targeted_modules(spec.path) - installed_modules(pipe, family, spec.name)))
               for spec in loras}
    return {name: modules for name, modules in missing.items() if modules}


def targeted_modules(path: Path) -> set[str]:
    """kohya names of the modules the LoRA file at ``path`` holds a delta for (its ``*.lora_down.weight`` keys)."""
    keys = tensor_shapes(read_safetensors_header(Path(path)))
    return {k.removesuffix(".lora_down.weight") for k in keys if k.endswith(".lora_down.weight")}


def installed_modules(pipe, family: str, adapter: str) -> set[str]:
    """kohya names of the modules of ``pipe`` that carry PEFT adapter ``adapter`` (a ``lora_A`` entry of that name)."""
    out = set()
    for component, prefix in KOHYA_COMPONENTS[family].items():
        model = getattr(pipe, component)
        for name, module in model.named_modules():
            if adapter in getattr(module, "lora_A", {}):
                out.add(prefix + _kohya_path(family, component, name, model.config).replace(".", "_"))
    return out


def _kohya_path(family: str, component: str, name: str, config) -> str:
    """The module path a kohya name spells (dots still in) for diffusers module ``name`` of ``component``."""
    if component != "unet":  # transformers >= 5.6 dropped CLIPTextModel's text_model level; kohya names keep it
        return "text_model." + name.removeprefix("text_model.")
    return unet_key_to_ldm(name + ".weight", config).removesuffix(".weight") if family == "sdxl" else name


def partial_status(name: str, missing: Sequence[str]) -> str:
    """``partial: <name>: no delta on <n> targeted modules: <pattern> (<count>), ...``: the modules a LoRA file
    targets that received no delta, with layer and block numbers folded into ``*``."""
    patterns: dict[str, int] = {}
    for module in missing:
        pattern = re.sub(r"(?<=_)\d+(?=_|$)", "*", module)
        patterns[pattern] = patterns.get(pattern, 0) + 1
    listed = ", ".join(f"{p} ({n})" for p, n in sorted(patterns.items()))
    return f"partial: {name}: no delta on {len(missing)} targeted modules: {listed}"


def remove_loras(pipe) -> None:
    """Remove every LoRA adapter from ``pipe`` (UNet and text encoders), restoring the base modules exactly."""
    pipe.unload_lora_weights()
