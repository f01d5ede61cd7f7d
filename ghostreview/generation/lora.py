"""LoRA compatibility checks (before any model work) and application to a diffusers pipeline.

``lora_status`` decides from the safetensors header (keys, shapes, kohya ``ss_*`` metadata), then by running
diffusers' own reading of the file, whether diffusers can apply a LoRA file to a checkpoint of a given family, before
any GPU work. ``apply_loras`` / ``remove_loras`` wrap diffusers' PEFT adapters: loading a kohya file, weighting
several at once, and unloading back to the exact base weights (adapters are never fused, so nothing is baked in).

A file can also name modules the model does not have, or hold deltas of other shapes than the model's weights
(PEFT then raises ``NoMatchingPeftModuleError`` or a size-mismatch ``RuntimeError``): given the model's modules
(:func:`model_modules`, from its config dir on the meta device), ``lora_status`` compares the file's header with them
(:func:`fit_status`) before anything is drawn.

diffusers can read a file and still drop part of it: its kohya key-format detection loses a text encoder's q/k/v
deltas when that encoder has ``fc1`` but no ``out_proj`` deltas (diffusers 0.42.1). ``apply_loras`` therefore
compares, after loading, the modules a file targets with the modules that received its adapter, and returns a status
for each LoRA that did not reach all of them, or that diffusers failed to load at all (never raised: the other LoRAs
stay applied); the drawn images carry a ``lora_partial`` flag with that status (:func:`partial_status`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ghostreview.generation.families import PIPELINE_CLASSES
from ghostreview.generation.ldm_keys import unet_key_to_ldm
from ghostreview.generation.loading import (
    CheckpointError,
    header_metadata,
    read_safetensors_header,
    tensor_shapes,
)
from ghostreview.generation.topology import CONFIGS_ROOT

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
DOWN, UP = ".lora_down.weight", ".lora_up.weight"
# status prefix -> the manifest flag of the images it keeps from being drawn as asked (report and standardize read it)
STATUS_FLAGS = {"incompatible": "lora_incompatible", "partial": PARTIAL_FLAG}
UNSUPPORTED_FLAG = "lora_unsupported"  # "unsupported: ..." and "error: ..."


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


def lora_status(path: Path, family: str, modules: Mapping[str, Sequence[int]] | None = None) -> str:
    """Whether the LoRA at ``path`` can be applied to a ``family`` checkpoint, from its header only.

    Args:
        modules: the model's modules (:func:`model_modules`); when given, the file must fit them (:func:`fit_status`).

    Returns:
        "ok"; "unsupported: <what>" for LyCORIS LoHa/LoKr/lora_mid, DoRA, non-kohya files, incomplete files and files
        diffusers' reader refuses; "incompatible: <why>" for a LoRA of another family or one that fits no module of
        the model (names or shapes); "partial: <file>: ..." when some of its modules are not in the model; or
        "error: <reason>" for unreadable files. :func:`status_flag` gives the manifest flag of each.
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
    misfit = fit_status(Path(path).name, shapes, family, modules) if modules is not None else None
    if misfit:
        return misfit
    refused = diffusers_read_error(Path(path), family)
    return f"unsupported: diffusers cannot read it ({refused})" if refused else "ok"


def status_flag(status: str) -> str:
    """The manifest flag of a LoRA status other than "ok": ``lora_incompatible``, ``lora_partial`` or
    ``lora_unsupported`` (unsupported files and unreadable ones)."""
    return STATUS_FLAGS.get(status.partition(":")[0], UNSUPPORTED_FLAG)


def fit_status(name: str, shapes: Mapping[str, Sequence[int]], family: str,
               modules: Mapping[str, Sequence[int]]) -> str | None:
    """Why the kohya LoRA ``name`` with header ``shapes`` cannot be applied in full to the model whose modules are
    ``modules`` (:func:`model_modules`), or None when every module it targets exists with the shapes it expects.

    A module's ``lora_down`` must be [r, in] for a linear weight [out, in] ([r, in, kh, kw] for a convolution) and
    its ``lora_up`` [out, r] ([out, r, 1, 1]), as PEFT builds the adapter from the base layer; anything else is
    PEFT's size-mismatch error at load time.
    """
    downs = {k.removesuffix(DOWN): list(s) for k, s in shapes.items() if k.endswith(DOWN)}
    ups = {k.removesuffix(UP): list(s) for k, s in shapes.items() if k.endswith(UP)}
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        return (f"unsupported: {len(unpaired)} modules have a lora_down or a lora_up weight but not both (e.g. "
                f"{unpaired[0]}); the file is incomplete, fetch it again")
    unknown = sorted(m for m in downs if m not in modules)
    if downs and len(unknown) == len(downs):
        return (f"incompatible: none of its {len(downs)} modules is in the {family} model (e.g. {unknown[0]}); "
                "a LoRA for another model or architecture")
    misfit = sorted(m for m in downs if m in modules and not _fits(downs[m], ups[m], list(modules[m])))
    if misfit:
        m = misfit[0]
        return (f"incompatible: {len(misfit)} of its {len(downs)} modules have other shapes than the {family} "
                f"model's (e.g. {m}: lora_down {downs[m]}, lora_up {ups[m]}, module weight {list(modules[m])}); "
                "a LoRA for another model size or architecture")
    return partial_status(name, unknown, f"not in the {family} model") if unknown else None


def _fits(down: list[int], up: list[int], weight: list[int]) -> bool:
    """Whether PEFT's adapter for a base ``weight`` takes lora_down ``down`` and lora_up ``up`` of a kohya file."""
    if len(weight) < 2 or len(down) != len(weight) or len(up) != len(weight):
        return False
    return down[1:] == weight[1:] and up[:2] == [weight[0], down[0]] and all(d == 1 for d in up[2:])


def model_modules(family: str, config_dir: Path) -> dict[str, tuple[int, ...]]:
    """{kohya name: weight shape} of every linear and convolution layer of the UNet and text encoders described by
    the diffusers config dir ``config_dir``, built on the meta device (no weights, under a second for SDXL)."""
    configs = {n: json.loads((Path(config_dir) / n / "config.json").read_text()) for n in KOHYA_COMPONENTS[family]}
    return dict(_model_modules(family, json.dumps(configs, sort_keys=True)))


@functools.lru_cache(maxsize=4)
def _model_modules(family: str, configs_json: str) -> tuple:
    import torch

    from ghostreview.generation.topology import build_component

    configs = json.loads(configs_json)
    with torch.device("meta"):
        components = {name: build_component(name, configs[name]) for name in KOHYA_COMPONENTS[family]}
    return tuple(module_shapes(components, family).items())


def module_shapes(components: Mapping, family: str) -> dict[str, tuple[int, ...]]:
    """{kohya name: weight shape} of the linear and convolution layers of ``components`` (unet, text_encoder[_2])."""
    import torch

    out = {}
    for component, prefix in KOHYA_COMPONENTS[family].items():
        model = components[component]
        for name, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            try:
                path = _kohya_path(family, component, name, model.config)
            except KeyError:  # an SDXL UNet layer without an SGM name: no kohya file can name it
                continue
            out[prefix + path.replace(".", "_")] = tuple(module.weight.shape)
    return out


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


def apply_loras(pipe, family: str, loras: Sequence[LoraSpec]) -> dict[str, str]:
    """Load each LoRA as a PEFT adapter and activate all of them with their weights.

    Checks every file with ``lora_status`` first, so nothing is loaded when one of them cannot be applied. Meant for
    a pipeline without adapters (or after :func:`remove_loras`); the generate stage keeps a :class:`LoraAdapters`
    per pipeline instead, which loads each file once. An empty ``loras`` is a no-op. Adapters get names of our own
    (``_adapter_name``): a LoRA called ``half`` or ``to`` would otherwise clash with torch module attributes.

    Returns:
        {LoRA name: status} for the LoRAs that do not reach every module their file targets ({} when all do): a
        file diffusers loaded in part (:func:`partial_status` naming the modules without a delta), or one it failed
        to load (its error; nothing of it stays in the pipeline, the other LoRAs are applied).

    Raises:
        ValueError: duplicate LoRA names, or a LoRA whose status is not "ok" (the status is in the message).
    """
    return LoraAdapters(pipe, family).activate(loras)


def _adapter_name(index: int) -> str:
    """The PEFT adapter name of the ``index``-th LoRA applied together (never a torch attribute name)."""
    return f"ghostreview_lora_{index}"


def targeted_modules(path: Path) -> set[str]:
    """kohya names of the modules the LoRA file at ``path`` holds a delta for (its ``lora_down`` / ``lora_up`` keys)."""
    keys = tensor_shapes(read_safetensors_header(Path(path)))
    return {k.removesuffix(suffix) for k in keys for suffix in (DOWN, UP) if k.endswith(suffix)}


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


def partial_status(name: str, missing: Sequence[str], reason: str | None = None) -> str:
    """``partial: <name>: no delta on <n> targeted modules[ (<reason>)]: <pattern> (<count>), ...``: the modules a LoRA
    file targets that received no delta, with layer and block numbers folded into ``*``."""
    patterns: dict[str, int] = {}
    for module in missing:
        pattern = re.sub(r"(?<=_)\d+(?=_|$)", "*", module)
        patterns[pattern] = patterns.get(pattern, 0) + 1
    listed = ", ".join(f"{p} ({n})" for p, n in sorted(patterns.items()))
    why = f" ({reason})" if reason else ""
    return f"partial: {name}: no delta on {len(missing)} targeted modules{why}: {listed}"


def remove_loras(pipe) -> None:
    """Remove every LoRA adapter from ``pipe`` (UNet and text encoders), restoring the base modules exactly."""
    pipe.unload_lora_weights()


MAX_LOADED_ADAPTERS = 16  # LoRA files kept loaded in one pipeline; beyond, the least recently used one is deleted


@dataclass(frozen=True)
class _Loaded:
    """One LoRA file as loaded: its adapter (None when diffusers failed to load it), and the modules it targets that
    received no delta with the reason (empty when it reached them all)."""

    adapter: str | None
    missing: tuple[str, ...]
    reason: str | None


def adapter_slots(loras: Sequence[LoraSpec]) -> list[tuple[Path, int]]:
    """(file, k) per LoRA: the k-th use of a file within one item gets an adapter of its own (a file named twice,
    under two names, adds its delta twice, as two adapters)."""
    seen: dict[Path, int] = {}
    out = []
    for spec in loras:
        path = Path(spec.path)
        out.append((path, seen.get(path, 0)))
        seen[path] = seen.get(path, 0) + 1
    return out


class LoraAdapters:
    """The LoRA files of one pipeline, each loaded once as its own PEFT adapter, and the adapters each item asks for
    activated with its weights (``set_adapters``); an item without LoRAs disables them (PEFT's layers then compute
    their base layer alone, exactly as the unloaded modules do).

    What an item computes does not depend on what was loaded before it: PEFT adds the active adapters' deltas in the
    order the item names them, each scaled by weight x alpha / rank from the file, and skips inactive ones, as
    :func:`apply_loras` on a fresh pipeline does (tests/test_lora_adapters.py compares them bit for bit). Each file
    is checked (:func:`lora_status`) and read once per pipeline instead of once per item.
    """

    def __init__(self, pipe, family: str, max_loaded: int = MAX_LOADED_ADAPTERS) -> None:
        self.pipe, self.family, self.max_loaded = pipe, family, max(1, max_loaded)
        self._files: dict[tuple[Path, int], _Loaded] = {}  # (file, slot) in order of last use
        self._serial = 0
        self._enabled: bool | None = None

    def activate(self, loras: Sequence[LoraSpec]) -> dict[str, str]:
        """Make ``loras`` (with their weights) the active set; returns :func:`apply_loras`' {name: status}.

        Raises:
            ValueError: duplicate LoRA names, or a LoRA whose status is not "ok" (nothing is loaded then).
        """
        names = [spec.name for spec in loras]
        if len(set(names)) != len(names):
            raise ValueError(f"LoRA adapter names must be unique, got {names}")
        slots = adapter_slots(loras)
        for spec, slot in zip(loras, slots):
            if slot not in self._files:
                status = lora_status(slot[0], self.family)
                if status != "ok":
                    raise ValueError(f"LoRA {spec.name!r} ({spec.path}): {status}")
        for slot in slots:
            self._use(slot, keep=slots)
        loaded = [(spec, self._files[s].adapter) for spec, s in zip(loras, slots) if self._files[s].adapter]
        if loaded:
            self._enable(True)
            self.pipe.set_adapters([a for _, a in loaded], adapter_weights=[float(s.weight) for s, _ in loaded])
        elif any(f.adapter for f in self._files.values()):
            self._enable(False)
        return {spec.name: partial_status(spec.name, self._files[s].missing, self._files[s].reason)
                for spec, s in zip(loras, slots) if self._files[s].missing}

    def _use(self, slot: tuple[Path, int], keep: Sequence[tuple[Path, int]]) -> None:
        """Load ``slot`` unless loaded (then mark it used last); make room first, never evicting ``keep``."""
        if slot in self._files:
            self._files[slot] = self._files.pop(slot)
            return
        while len(self._files) >= self.max_loaded and any(s not in keep for s in self._files):
            old = next(s for s in self._files if s not in keep)
            adapter = self._files.pop(old).adapter
            if adapter:
                with warnings.catch_warnings():  # "Adapter ... was active which is now deleted": the next set_adapters
                    warnings.filterwarnings("ignore", message=r"Adapter .* was active", category=UserWarning)
                    self.pipe.delete_adapters([adapter])
        self._files[slot] = self._load(slot[0])

    def _load(self, path: Path) -> _Loaded:
        adapter = _adapter_name(self._serial)
        self._serial += 1
        with _quiet_transformers():
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=adapter)
            except Exception as e:  # PEFT and diffusers raise many types; whatever it is, this LoRA is not applied
                self.pipe.delete_adapters([adapter])  # diffusers removes its partial adapter; make sure
                message = " ".join(str(e).split())
                message = message if len(message) <= 300 else message[:297] + "..."
                return _Loaded(None, tuple(sorted(targeted_modules(path))),
                               f"diffusers could not load it: {type(e).__name__}: {message}")
        self._enabled = None  # a new adapter's layers start enabled: set the state again
        missing = tuple(sorted(targeted_modules(path) - installed_modules(self.pipe, self.family, adapter)))
        return _Loaded(adapter, missing, None)

    def _enable(self, enabled: bool) -> None:
        """Turn every PEFT layer of the pipeline's LoRA components on or off (``BaseTunerLayer.enable_adapters``)."""
        if self._enabled is enabled:
            return
        for component in KOHYA_COMPONENTS[self.family]:
            for module in getattr(self.pipe, component).modules():
                if hasattr(module, "enable_adapters") and hasattr(module, "lora_A"):
                    module.enable_adapters(enabled)
        self._enabled = enabled
