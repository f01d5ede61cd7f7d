"""Flux.1 LoRAs in the two formats people share, checked against the model before drawing and applied as PEFT
adapters (never fused, so unloading restores the base weights exactly, as ``generation.lora`` does for SD).

Formats (recognised from the safetensors header):

* **kohya** (sd-scripts ``train_network.py --network_module networks.lora_flux``, most Civitai Flux LoRAs):
  ``lora_unet_<BFL module with _ for .>.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r], ``.alpha``;
  fused BFL modules (``img_attn_qkv``, the single blocks' ``linear1``) carry one delta for q, k, v (and the MLP
  input). Text-encoder parts (``lora_te1_*``, CLIP-L) are reported, not applied.
* **diffusers** (ai-toolkit, diffusers' own training scripts): ``transformer.<diffusers module>.lora_A.weight``
  [r, in] and ``.lora_B.weight`` [out, r], optionally ``.alpha``.

Both are converted here to diffusers' PEFT names with the scale ``alpha / r`` folded into ``lora_A`` (what
diffusers' own kohya converter does), then handed to ``FluxPipeline.load_lora_weights`` as a state dict. Our
conversion reads the split sizes from the tensors (``flux_keys.split_sizes``); diffusers' kohya converter
hard-codes the real model's (``dims=[3072, 3072, 3072, 12288]``), which no narrow stand-in has.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ghostreview.generation.flux_keys import module_table, split_sizes
from ghostreview.generation.loading import CheckpointError, read_safetensors_header, tensor_shapes
from ghostreview.generation.lora import LoraSpec, adapter_slots, partial_status

FORMATS = ("kohya", "diffusers")
KOHYA_UNET = "lora_unet_"
KOHYA_TE = ("lora_te1_", "lora_te_")
KOHYA_DOWN, KOHYA_UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
PEFT_PREFIX = "transformer."
PEFT_A, PEFT_B = ".lora_A.weight", ".lora_B.weight"
SD_KOHYA_PREFIXES = ("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_input_blocks", "lora_unet_mid")


def flux_lora_format(shapes: Mapping[str, object]) -> str | None:
    """"kohya" | "diffusers" for a Flux LoRA's tensor names, None when it is neither."""
    if any(k.startswith((KOHYA_UNET + "double_blocks_", KOHYA_UNET + "single_blocks_")) for k in shapes):
        return "kohya"
    if any(k.startswith(PEFT_PREFIX) and k.endswith((PEFT_A, PEFT_B)) for k in shapes):
        return "diffusers"
    return None


def transformer_modules(config: Mapping) -> dict[str, tuple[int, ...]]:
    """{diffusers module: weight shape} of every Linear of the transformer ``config`` (meta device, no weights)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(dict(config))
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _kohya_names(config: Mapping) -> dict[str, tuple[str, ...]]:
    """{kohya module name: diffusers modules} of the transformer ``config``."""
    table = module_table(config["num_layers"], config["num_single_layers"])
    return {KOHYA_UNET + bfl.replace(".", "_"): targets for bfl, targets in table.items()}


def _pairs(shapes: Mapping[str, Sequence[int]], down: str, up: str) -> tuple[dict, dict, list[str]]:
    downs = {k.removesuffix(down): list(s) for k, s in shapes.items() if k.endswith(down)}
    ups = {k.removesuffix(up): list(s) for k, s in shapes.items() if k.endswith(up)}
    return downs, ups, sorted(set(downs) ^ set(ups))


def _targets(fmt: str, module: str, names: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    if fmt == "kohya":
        return names.get(module)
    return (module.removeprefix(PEFT_PREFIX),)


def flux_lora_status(path: Path, config: Mapping) -> str:
    """Whether the LoRA at ``path`` fits the Flux transformer of ``config``, from its header only.

    Returns:
        "ok"; "unsupported: ..." (another format, LyCORIS, incomplete pairs); "incompatible: ..." (no module of
        the model, or other shapes: a LoRA for SD or another model); "partial: ..." (some modules not in the model,
        or CLIP-L deltas, which are not applied); "error: ..." (unreadable file).
    """
    try:
        shapes = tensor_shapes(read_safetensors_header(Path(path)))
    except CheckpointError as e:
        return f"error: {e}"
    fmt = flux_lora_format(shapes)
    if fmt is None:
        sd = any(k.startswith(SD_KOHYA_PREFIXES) for k in shapes)
        what = "an SD/SDXL LoRA" if sd else "not a Flux LoRA"
        return (f"{'incompatible' if sd else 'unsupported'}: {what} (expected lora_unet_double_blocks_* (kohya) or "
                "transformer.*.lora_A/lora_B (diffusers/ai-toolkit) keys)")
    if any(k.endswith((".hada_w1_a", ".lokr_w1", ".dora_scale")) for k in shapes):
        return "unsupported: LyCORIS/DoRA Flux LoRA"
    down, up = (KOHYA_DOWN, KOHYA_UP) if fmt == "kohya" else (PEFT_A, PEFT_B)
    downs, ups, unpaired = _pairs(shapes, down, up)
    if unpaired:
        return f"unsupported: {len(unpaired)} modules lack their other half (e.g. {unpaired[0]}); fetch it again"
    return _fit(Path(path).name, fmt, downs, ups, config, te=[k for k in downs if k.startswith(KOHYA_TE)])


def _fit(name: str, fmt: str, downs: Mapping, ups: Mapping, config: Mapping, te: Sequence[str]) -> str:
    modules, names = transformer_modules(config), _kohya_names(config)
    unknown, misfit = [], []
    for module, d in downs.items():
        if module in te:
            continue
        targets = _targets(fmt, module, names)
        if not targets or any(t not in modules for t in targets):
            unknown.append(module)
            continue
        rows = sum(modules[t][0] for t in targets)
        if d[1:] != list(modules[targets[0]][1:]) or ups[module] != [rows, d[0]]:
            misfit.append(module)
    transformer = [m for m in downs if m not in te]
    if transformer and len(unknown) == len(transformer):
        return f"incompatible: none of its {len(transformer)} modules is in this Flux transformer (e.g. {unknown[0]})"
    if misfit:
        return (f"incompatible: {len(misfit)} of its modules have other shapes than this Flux transformer's (e.g. "
                f"{misfit[0]}); a LoRA for another model size")
    missing = unknown + list(te)
    return partial_status(name, missing, "not in the transformer (CLIP-L deltas are not applied)") if missing else "ok"


def peft_state_dict(tensors: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A Flux LoRA's tensors (either format) -> diffusers PEFT names (``transformer.<module>.lora_A/B.weight``),
    ``alpha / r`` folded into lora_A, fused kohya deltas split into their diffusers modules (lora_A shared)."""
    fmt = flux_lora_format(tensors)
    if fmt is None:
        raise ValueError(f"not a Flux LoRA (valid formats: {', '.join(FORMATS)}); check flux_lora_status first")
    down, up = (KOHYA_DOWN, KOHYA_UP) if fmt == "kohya" else (PEFT_A, PEFT_B)
    names, hidden = _kohya_names(config), config["num_attention_heads"] * config["attention_head_dim"]
    out = {}
    for key in tensors:
        if not key.endswith(down) or key.startswith(KOHYA_TE):
            continue
        module = key.removesuffix(down)
        a, b = tensors[key].float(), tensors[module + up].float()
        alpha = tensors.get(module + ALPHA)
        a = a * (float(alpha) / a.shape[0]) if alpha is not None else a
        targets = _targets(fmt, module, names) or ()
        parts = b.split(split_sizes(len(targets), b.shape[0], hidden), dim=0) if len(targets) > 1 else (b,)
        for target, part in zip(targets, parts, strict=True):
            out[f"{PEFT_PREFIX}{target}{PEFT_A}"] = a
            out[f"{PEFT_PREFIX}{target}{PEFT_B}"] = part.contiguous()
    return out


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class FluxLoraAdapters:
    """The Flux LoRAs of one pipeline, each file loaded once as its own PEFT adapter, and the adapters each item
    asks for activated with their weights; an item without LoRAs disables them (the base layers alone run, exactly
    as unloaded). Same interface as ``generation.lora.LoraAdapters``."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.config = dict(pipe.transformer.config)
        self._adapters: dict[tuple[Path, int], str] = {}
        self._status: dict[Path, str] = {}

    def activate(self, loras: Sequence[LoraSpec]) -> dict[str, str]:
        """Make ``loras`` the active set; returns {name: partial status} for those applied in part.

        Raises:
            ValueError: duplicate names, or a LoRA whose status is neither "ok" nor partial (nothing is loaded).
        """
        names = [s.name for s in loras]
        if len(set(names)) != len(names):
            raise ValueError(f"LoRA adapter names must be unique, got {names}")
        for spec in loras:
            status = self.status(Path(spec.path))
            if status != "ok" and not status.startswith("partial"):
                raise ValueError(f"LoRA {spec.name!r} ({spec.path}): {status}")
        slots = adapter_slots(loras)
        adapters = [self._adapter(slot) for slot in slots]
        if adapters:
            self.pipe.enable_lora()
            self.pipe.set_adapters(adapters, adapter_weights=[float(s.weight) for s in loras])
        elif self._adapters:
            self.pipe.disable_lora()
        return {s.name: self._status[Path(s.path)] for s in loras if self._status[Path(s.path)] != "ok"}

    def status(self, path: Path) -> str:
        if path not in self._status:
            self._status[path] = flux_lora_status(path, self.config)
        return self._status[path]

    def _adapter(self, slot: tuple[Path, int]) -> str:
        if slot not in self._adapters:
            name = f"ghostreview_flux_lora_{len(self._adapters)}"
            # several adapters are the point, and the file has no CLIP-L part by design: diffusers' warning about
            # each (through its logger, once per LoRA file) says nothing here
            lora_log = logging.getLogger("diffusers.loaders.lora_base")
            level = lora_log.level
            lora_log.setLevel(logging.ERROR)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"Already found a `peft_config`", category=UserWarning)
                    self.pipe.load_lora_weights(peft_state_dict(read_lora(slot[0]), self.config), adapter_name=name)
            finally:
                lora_log.setLevel(level)
            self._adapters[slot] = name
        return self._adapters[slot]


def remove_flux_loras(pipe) -> None:
    """Remove every LoRA adapter from ``pipe``, restoring the base transformer exactly."""
    pipe.unload_lora_weights()


def transformer_config(config_dir: Path) -> dict:
    """The transformer config of a Flux config dir (``flux.flux_config_dir``), for checks before loading."""
    return json.loads((Path(config_dir) / "transformer" / "config.json").read_text())
