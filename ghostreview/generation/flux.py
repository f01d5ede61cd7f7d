"""Flux.1 checkpoints as people share them: recognise the layout from tensor names, load fully offline, draw.

Layouts (read from the safetensors header only, never from a file name):

* **all-in-one** (ComfyUI / Forge "checkpoint"): the transformer under ``model.diffusion_model.`` in BFL's names
  (``double_blocks.*``, ``single_blocks.*``), CLIP-L under ``text_encoders.clip_l.transformer.``, T5-XXL under
  ``text_encoders.t5xxl.transformer.`` and the 16-channel VAE under ``vae.``;
* **bfl** (Black Forest Labs' own ``flux1-dev.safetensors``, most Civitai fine-tunes): the transformer alone, BFL
  names without prefix; CLIP-L, T5-XXL and the VAE come from the model entry's separate files;
* **diffusers**: a transformer saved by diffusers (``transformer_blocks.*``, ``single_transformer_blocks.*``),
  with the same separate files.

dev vs schnell: dev has the distilled-guidance embedder (``guidance_in.*``, diffusers
``time_text_embed.guidance_embedder.*``); schnell has none. The transformer is converted to diffusers' names by
:func:`bfl_to_diffusers`, written here from one table (:data:`DOUBLE_BLOCK`, :data:`SINGLE_BLOCK`, :data:`TOP`) that
the kit inverts to write stand-ins; diffusers' own converter hard-codes the real width (``inner_dim = 3072``), so it
cannot read a narrow stand-in, and ours reads both. Every component is built from the local configs
(``generation/configs/flux1-dev|flux1-schnell``, or the tiny topology for kit files): nothing reaches a hub.

fp8 (``F8_E4M3`` / ``F8_E5M2``, as Civitai's "fp8" files ship): plain fp8 tensors are upcast on load to the
pipeline's dtype (the values are exact in float16/bfloat16/float32). ComfyUI's *scaled* fp8 files
(``*.scale_weight`` tensors or a ``scaled_fp8`` marker) are refused with the file named: their weights mean
``weight * scale`` and a plain upcast would draw garbage silently.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ghostreview.generation.loading import CheckpointError, read_safetensors_header
from ghostreview.generation.tokenizer import write_clip_tokenizer
from ghostreview.generation.topology import CONFIGS_ROOT, KIT_METADATA_KEY, KIT_METADATA_VALUE
from ghostreview.util.atomic import create_dir_once

FAMILY = "flux"
VARIANTS = ("flux1-dev", "flux1-schnell")
LAYOUTS = ("all-in-one", "bfl", "diffusers")
TRANSFORMER_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
VAE_PREFIX = "vae."
BFL_PROBE = "double_blocks.0.img_attn.norm.key_norm.scale"
DIFFUSERS_PROBE = "transformer_blocks.0.attn.norm_added_k.weight"
GUIDANCE_KEYS = ("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight")
FP8_DTYPES = ("F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ")
SCALED_FP8_MARKERS = ("scaled_fp8",)
T5_MAX_TOKENS = 512  # FluxPipeline's max_sequence_length for dev and schnell (schnell was trained with 256)
SEPARATE_FILES = ("clip_l", "t5xxl", "vae")
EXPECTED_LAYOUT = (
    "Flux: model.diffusion_model.double_blocks.* with text_encoders.clip_l.*, text_encoders.t5xxl.* and vae.* "
    "(all-in-one), double_blocks.* (BFL transformer-only) or transformer_blocks.* + single_transformer_blocks.* "
    "(diffusers transformer)"
)

# ---------------------------------------------------------------------------------------------------- key table

# BFL module name -> the diffusers module names it holds, in order along dim 0 (fused q/k/v, and the single
# blocks' q/k/v/mlp input projection). RMSNorm gains are ``.scale`` in BFL and ``.weight`` in diffusers.
TOP = {
    "img_in": ("x_embedder",), "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),  # BFL (shift, scale) vs diffusers (scale, shift)
}
DOUBLE_BLOCK = {
    "img_mod.lin": ("norm1.linear",), "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
    "txt_attn.norm.query_norm": ("attn.norm_added_q",), "txt_attn.norm.key_norm": ("attn.norm_added_k",),
    "img_attn.proj": ("attn.to_out.0",), "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",),
}
SINGLE_BLOCK = {
    "modulation.lin": ("norm.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "norm.query_norm": ("attn.norm_q",), "norm.key_norm": ("attn.norm_k",),
    "linear2": ("proj_out",),
}
SWAPPED_HALVES = ("final_layer.adaLN_modulation.1",)


def module_table(num_layers: int, num_single_layers: int) -> dict[str, tuple[str, ...]]:
    """{BFL module: diffusers modules} of a transformer with these block counts (the whole key table)."""
    table = dict(TOP)
    for i in range(num_layers):
        table.update({f"double_blocks.{i}.{k}": tuple(f"transformer_blocks.{i}.{p}" for p in v)
                      for k, v in DOUBLE_BLOCK.items()})
    for i in range(num_single_layers):
        table.update({f"single_blocks.{i}.{k}": tuple(f"single_transformer_blocks.{i}.{p}" for p in v)
                      for k, v in SINGLE_BLOCK.items()})
    return table


def _block_count(keys, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def split_sizes(parts: int, rows: int, hidden: int) -> list[int]:
    """Row counts of the ``parts`` diffusers tensors of a fused BFL tensor with ``rows`` rows (``hidden`` = model
    width): the single blocks' linear1 is q, k, v (``hidden`` each) then the MLP input (the rest); qkv is thirds."""
    if parts == 4:
        return [hidden, hidden, hidden, rows - 3 * hidden]
    return [rows // parts] * parts


def _split_key(key: str) -> tuple[str, str]:
    module, param = key.rsplit(".", 1)
    return module, param


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def bfl_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-named Flux transformer (prefix already removed) -> diffusers ``FluxTransformer2DModel`` names.

    Raises:
        CheckpointError: a tensor the table does not know (another architecture, or a Flux variant we do not load).
    """
    table = module_table(_block_count(state_dict, "double_blocks."), _block_count(state_dict, "single_blocks."))
    hidden = state_dict["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, param = _split_key(key)
        if module not in table:
            raise CheckpointError(f"Flux transformer tensor {key!r} is not in the Flux.1 layout; expected "
                                  f"{EXPECTED_LAYOUT}")
        if module in SWAPPED_HALVES:
            value = _swap_halves(value)
        targets = table[module]
        parts = value.split(split_sizes(len(targets), value.shape[0], hidden), dim=0) if len(targets) > 1 \
            else (value,)
        for target, part in zip(targets, parts, strict=True):
            out[f"{target}.{'weight' if param == 'scale' else param}"] = part
    return out


def diffusers_to_bfl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`bfl_to_diffusers` (the kit writes BFL-layout stand-ins with it)."""
    keys = list(state_dict)
    table = module_table(_block_count(keys, "transformer_blocks."), _block_count(keys, "single_transformer_blocks."))
    out: dict[str, torch.Tensor] = {}
    for module, targets in table.items():
        for param in ("weight", "bias"):
            parts = [state_dict.get(f"{t}.{param}") for t in targets]
            if parts[0] is None:
                continue
            value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            is_norm = module.endswith(("query_norm", "key_norm"))
            out[f"{module}.{'scale' if is_norm else param}"] = _swap_halves(value) if module in SWAPPED_HALVES else value
    return out


# ---------------------------------------------------------------------------------------------------- recognising


def flux_layout(shapes: Mapping[str, list[int]]) -> str | None:
    """"all-in-one" | "bfl" | "diffusers" for a Flux.1 checkpoint's tensor names, None when it is not Flux."""
    if TRANSFORMER_PREFIX + BFL_PROBE in shapes:
        return "all-in-one" if any(k.startswith(T5_PREFIX) for k in shapes) else "bfl-prefixed"
    if BFL_PROBE in shapes:
        return "bfl"
    if DIFFUSERS_PROBE in shapes and "single_transformer_blocks.0.proj_mlp.weight" in shapes:
        return "diffusers"
    return None


def flux_variant(shapes: Mapping[str, list[int]]) -> str:
    """"flux1-dev" (distilled-guidance embedder present) or "flux1-schnell" (none)."""
    has_guidance = any(k in shapes or TRANSFORMER_PREFIX + k in shapes for k in GUIDANCE_KEYS)
    return "flux1-dev" if has_guidance else "flux1-schnell"


def check_flux_layout(shapes: Mapping[str, list[int]], name: str) -> str:
    """The layout of a Flux file (see :func:`flux_layout`); "bfl-prefixed" is a transformer saved under ComfyUI's
    prefix without the encoders, loaded like "bfl".

    Raises:
        CheckpointError: the file is not a Flux.1 checkpoint, or its image input is not plain text-to-image (Fill,
            Depth and Canny variants widen ``img_in``).
    """
    layout = flux_layout(shapes)
    if layout is None:
        raise CheckpointError(f"{name}: not a Flux.1 checkpoint; expected {EXPECTED_LAYOUT}")
    img_in = shapes.get("img_in.weight") or shapes.get(TRANSFORMER_PREFIX + "img_in.weight") \
        or shapes.get("x_embedder.weight")
    if img_in is not None and len(img_in) == 2 and img_in[1] != 64:
        raise CheckpointError(f"{name}: a Flux transformer taking {img_in[1]} input channels (384 = Fill, 128 = "
                              "Depth/Canny); only text-to-image Flux.1 dev/schnell checkpoints (64) can be reviewed")
    return layout


# ---------------------------------------------------------------------------------------------------- tensors


def _check_fp8(path: Path, header: Mapping) -> None:
    meta = header.get("__metadata__") or {}
    scaled = [k for k in header if k.endswith(".scale_weight") or k in SCALED_FP8_MARKERS]
    if scaled or any(m in meta for m in SCALED_FP8_MARKERS):
        raise CheckpointError(
            f"{path}: a scaled-fp8 file (ComfyUI's {scaled[0] if scaled else 'scaled_fp8'}): its weights only mean "
            "something multiplied by their scale_weight, which diffusers does not apply; use the fp16/bf16 or plain "
            "fp8 (float8_e4m3fn) download of this model"
        )


def read_tensors(path: Path, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names start with ``prefix`` (prefix removed), cast to ``dtype``: fp8 upcast,
    scaled fp8 refused (module docstring). Integer buffers (``position_ids``) keep their dtype."""
    from safetensors import safe_open

    header = read_safetensors_header(path)
    _check_fp8(path, header)
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            if key.startswith(prefix):
                value = f.get_tensor(key)
                out[key[len(prefix):]] = value.to(dtype) if value.is_floating_point() else value
    if not out:
        raise CheckpointError(f"{path}: no tensors under {prefix or 'the top level'!r}; expected {EXPECTED_LAYOUT}")
    return out


def fp8_tensor_count(path: Path) -> int:
    """How many tensors of ``path`` are stored as fp8 (upcast on load; recorded in the load log)."""
    return sum(1 for k, v in read_safetensors_header(path).items() if k != "__metadata__" and v["dtype"] in FP8_DTYPES)


# ---------------------------------------------------------------------------------------------------- configs

# The tiny stand-in topology: real depths (19 double + 38 single blocks, 12 CLIP-L layers, 24 T5 layers, 4 VAE
# levels), narrow widths. in_channels stays 64 (16 latent channels x 2x2 patches); axes_dims_rope sums to the head
# width as (16, 56, 56) sums to 128; pooled_projection_dim is CLIP's width, joint_attention_dim T5's.
TINY_OVERRIDES: dict[str, dict] = {
    "transformer": {"attention_head_dim": 8, "num_attention_heads": 2, "axes_dims_rope": [2, 2, 4],
                    "joint_attention_dim": 16, "pooled_projection_dim": 24},
    "vae": {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 8, "sample_size": 64},
    "text_encoder": {"hidden_size": 24, "projection_dim": 24, "intermediate_size": 64, "num_attention_heads": 2},
    "text_encoder_2": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_heads": 4},
}
COMPONENT_FILES = {"scheduler": "scheduler_config.json"}


def real_configs(variant: str) -> dict[str, dict]:
    """The shipped real-size configs of ``variant``: {"model_index": ..., "transformer": ..., ...}."""
    check_variant(variant)
    root = CONFIGS_ROOT / variant
    configs = {"model_index": json.loads((root / "model_index.json").read_text())}
    for cfg in sorted(root.glob("*/*.json")):
        configs[cfg.parent.name] = json.loads(cfg.read_text())
    return configs


def tiny_configs(variant: str, vocab_size: int) -> dict[str, dict]:
    """``real_configs`` with :data:`TINY_OVERRIDES`; T5's vocabulary is the tiny tokenizer's (``vocab_size``)."""
    configs = copy.deepcopy(real_configs(variant))
    for component, overrides in TINY_OVERRIDES.items():
        configs[component].update(overrides)
    configs["text_encoder_2"]["vocab_size"] = vocab_size
    return configs


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown Flux variant {variant!r}; valid: {', '.join(VARIANTS)}")


def write_configs(dest: Path, configs: Mapping[str, dict]) -> None:
    """Write model_index.json and one folder per component config (no tokenizers, no weights)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model_index.json").write_text(json.dumps(configs["model_index"], indent=2, sort_keys=True))
    for component, config in configs.items():
        if component != "model_index":
            (dest / component).mkdir(exist_ok=True)
            name = COMPONENT_FILES.get(component, "config.json")
            (dest / component / name).write_text(json.dumps(config, indent=2, sort_keys=True))


# The tiny T5 tokenizer: a Unigram model in the real tokenizer.json format (T5's specials <pad>=0, </s>=1,
# <unk>=2, SentencePiece's "▁" word marker), built without training (the tokenizers library's Unigram trainer
# gave a different vocabulary from run to run on our small corpus): every printable ASCII character, alone and
# word-initial, plus the words of TINY_T5_WORDS, with log-frequency scores so that known words win over spellings.
TINY_T5_WORDS = (
    "a an the of in on with and photo portrait painting landscape city cat dog woman man girl boy old young red "
    "blue green golden light night sunset forest mountain river sea street house room detailed best quality "
    "masterpiece style art oil watercolor anime sketch close up view standing sitting"
)


def tiny_t5_vocab() -> list[tuple[str, float]]:
    """[(piece, log-probability score)] of the tiny T5 tokenizer, ids in list order (deterministic)."""
    chars = [chr(c) for c in range(33, 127)]
    words = TINY_T5_WORDS.split()
    pieces = ["▁" + w for w in words] + ["▁"] + ["▁" + c for c in chars] + chars
    scores = [-2.0 - 0.01 * i for i in range(len(words))] + [-6.0] + [-8.0] * len(chars) + [-9.0] * len(chars)
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *zip(pieces, scores, strict=True)]


def write_tiny_t5_tokenizer(dest: Path) -> Path:
    """Save the tiny T5 tokenizer as ``T5TokenizerFast`` files (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram(tiny_t5_vocab(), unk_id=2))
    tok.normalizer = normalizers.Replace(" {2,}", " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                           model_max_length=T5_MAX_TOKENS)
    fast.save_pretrained(str(dest))
    return dest


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def flux_config_dir(variant: str, cache_root: Path, *, tiny: bool, t5_tokenizer: Path | None = None) -> Path:
    """A local diffusers config dir for ``variant`` (configs, CLIP-L tokenizer, T5 tokenizer), built once.

    ``tiny``: the kit's topology and tiny T5 tokenizer. Otherwise the shipped real configs, and the T5 tokenizer is
    copied from ``t5_tokenizer`` (the ``tokenizer_2`` folder of FLUX.1-dev/schnell: tokenizer.json or spiece.model
    with its tokenizer_config.json): T5's 32k SentencePiece vocabulary is not something we can rebuild.

    Raises:
        CheckpointError: a real-size model without ``t5_tokenizer``, or one that is not a folder.
    """
    if tiny:
        configs = tiny_configs(variant, len(tiny_t5_vocab()))
        source = json.dumps(configs, sort_keys=True) + TINY_T5_WORDS
    else:
        if t5_tokenizer is None or not Path(t5_tokenizer).is_dir():
            raise CheckpointError(f"Flux model: t5_tokenizer {t5_tokenizer} is not a folder; point t5_tokenizer: at "
                                  "the tokenizer_2 folder of black-forest-labs/FLUX.1-dev (tokenizer.json or "
                                  "spiece.model with tokenizer_config.json)")
        configs = real_configs(variant)
        files = sorted(p for p in Path(t5_tokenizer).iterdir() if p.is_file())
        source = json.dumps(configs, sort_keys=True) + "".join(hashlib.sha256(p.read_bytes()).hexdigest()
                                                               for p in files)
    dest = Path(cache_root) / f"{variant}{'-tiny' if tiny else ''}-{_digest(source)}"

    def build(tmp: Path) -> None:
        write_configs(tmp, configs)
        write_clip_tokenizer(tmp / "tokenizer")
        if tiny:
            write_tiny_t5_tokenizer(tmp / "tokenizer_2")
        else:
            shutil.copytree(t5_tokenizer, tmp / "tokenizer_2")

    return create_dir_once(dest, build)


# ---------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FluxFiles:
    """Where a Flux model's parts come from: ``checkpoint`` (its layout read from its header once) and, for a
    transformer-only checkpoint, the separate CLIP-L, T5-XXL and VAE files of the model entry."""

    checkpoint: Path
    shapes: Mapping[str, list[int]]
    metadata: Mapping[str, str]
    clip_l: Path | None = None
    t5xxl: Path | None = None
    vae: Path | None = None

    @property
    def layout(self) -> str:
        return check_flux_layout(self.shapes, str(self.checkpoint))

    @property
    def variant(self) -> str:
        return flux_variant(self.shapes)

    @property
    def is_tiny_kit(self) -> bool:
        return self.metadata.get(KIT_METADATA_KEY) == KIT_METADATA_VALUE

    def sources(self) -> dict[str, tuple[Path, str]]:
        """{component: (file, tensor prefix)}: all from the checkpoint when it is all-in-one, else the transformer
        from the checkpoint and the rest from the separate files (a file the entry names overrides the
        checkpoint's own copy, as a model's ``vae:`` does for SD).

        Raises:
            CheckpointError: a transformer-only checkpoint without the separate files, naming the missing fields.
        """
        layout = self.layout
        prefix = TRANSFORMER_PREFIX if layout in ("all-in-one", "bfl-prefixed") else ""
        out = {"transformer": (self.checkpoint, prefix)}
        own = {"clip_l": CLIP_PREFIX, "t5xxl": T5_PREFIX, "vae": VAE_PREFIX} if layout == "all-in-one" else {}
        missing = [f for f in SEPARATE_FILES if getattr(self, f) is None and f not in own]
        if missing:
            raise CheckpointError(
                f"{self.checkpoint}: a transformer-only Flux checkpoint ({layout} layout): it holds no "
                f"{', '.join(missing)}; give the model entry {', '.join(f'{m}: <file>' for m in missing)} (e.g. "
                "clip_l.safetensors, t5xxl_fp16.safetensors and ae.safetensors as ComfyUI ships them)"
            )
        for name, component in (("clip_l", "text_encoder"), ("t5xxl", "text_encoder_2"), ("vae", "vae")):
            path = getattr(self, name)
            out[component] = (path, "") if path is not None else (self.checkpoint, own[name])
        return out


def flux_files(checkpoint: Path, shapes: Mapping[str, list[int]], metadata: Mapping[str, str], *,
               clip_l: Path | None = None, t5xxl: Path | None = None, vae: Path | None = None) -> FluxFiles:
    """:class:`FluxFiles` of an inspected checkpoint; its layout checked at once."""
    files = FluxFiles(Path(checkpoint), shapes, metadata, clip_l, t5xxl, vae)
    _ = files.layout
    return files


# ---------------------------------------------------------------------------------------------------- loading


def _empty(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module whose parameters are on the meta device (buffers real), to be filled with ``assign=True``: a 12B
    transformer is never initialised at random first."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _fill(module: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str,
          may_miss: Sequence[str] = (), may_extra: Sequence[str] = ()) -> torch.nn.Module:
    """Load ``state`` into ``module`` (assign), refusing missing or unknown tensors beyond the listed ones."""
    extra = [k for k in state if k not in module.state_dict() and not k.endswith(tuple(may_extra))]
    missing, _ = module.load_state_dict({k: v for k, v in state.items() if k in module.state_dict()},
                                        strict=False, assign=True)
    missing = [k for k in missing if k not in may_miss]
    if missing or extra:
        raise CheckpointError(f"{name}: does not match the model's config: missing {missing[:3]} "
                              f"({len(missing)}), unexpected {extra[:3]} ({len(extra)}); is it the right file?")
    return module


def load_transformer(path: Path, prefix: str, config: Mapping, dtype: torch.dtype):
    """``FluxTransformer2DModel`` from a BFL- or diffusers-named file (our converter, :func:`bfl_to_diffusers`)."""
    from diffusers import FluxTransformer2DModel

    state = read_tensors(path, prefix, dtype)
    if BFL_PROBE in state:
        state = bfl_to_diffusers(state)
    model = _empty(lambda: FluxTransformer2DModel.from_config(dict(config)))
    return _fill(model, state, f"{path} (Flux transformer)").eval()


def load_clip_l(path: Path, prefix: str, config: Mapping, dtype: torch.dtype):
    """``CLIPTextModel`` from HF-named tensors (``text_model.`` prefix optional: transformers 5 dropped it)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = read_tensors(path, prefix, dtype)
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    model = _empty(lambda: CLIPTextModel(CLIPTextConfig(**config)))
    return _fill(model, state, f"{path} (CLIP-L)", may_miss=("embeddings.position_ids",),
                 may_extra=("position_ids", "text_projection.weight", "logit_scale")).to(dtype).eval()


def load_t5(path: Path, prefix: str, config: Mapping, dtype: torch.dtype):
    """``T5EncoderModel`` from HF-named tensors (``shared.weight`` ties ``encoder.embed_tokens.weight``)."""
    from transformers import T5Config, T5EncoderModel

    state = read_tensors(path, prefix, dtype)
    if "shared.weight" in state:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    model = _empty(lambda: T5EncoderModel(T5Config(**config)))
    return _fill(model, state, f"{path} (T5-XXL)", may_miss=("shared.weight",)).eval()


def load_vae(path: Path, prefix: str, config_dir: Path, dtype: torch.dtype):
    """The 16-channel ``AutoencoderKL`` from LDM-named tensors (BFL's ae.safetensors, or ``vae.*``) through
    diffusers' ``from_single_file`` with the local config."""
    from diffusers import AutoencoderKL

    state = {VAE_PREFIX + k: v for k, v in read_tensors(path, prefix, dtype).items()}
    return AutoencoderKL.from_single_file(state, config=str(config_dir), subfolder="vae", torch_dtype=dtype,
                                          local_files_only=True)


def open_flux_pipeline(files: FluxFiles, config_dir: Path, *, dtype: torch.dtype = torch.float32,
                       device: str = "cpu"):
    """A diffusers ``FluxPipeline`` of ``files``, built from the local ``config_dir`` only (no hub, no network).

    Raises:
        CheckpointError: missing separate files, scaled fp8, tensors that do not fit the config.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    configs = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(config_dir).glob("*/*config.json"))}
    src = files.sources()
    pipe = FluxPipeline(
        transformer=load_transformer(*src["transformer"], configs["transformer"], dtype),
        text_encoder=load_clip_l(*src["text_encoder"], configs["text_encoder"], dtype),
        text_encoder_2=load_t5(*src["text_encoder_2"], configs["text_encoder_2"], dtype),
        vae=load_vae(*src["vae"], config_dir, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(configs["scheduler"]),
        tokenizer=CLIPTokenizer.from_pretrained(str(Path(config_dir) / "tokenizer"), local_files_only=True),
        tokenizer_2=T5TokenizerFast.from_pretrained(str(Path(config_dir) / "tokenizer_2"), local_files_only=True),
    )
    return pipe if torch.device(device) == torch.device("cpu") else pipe.to(device)


def t5_token_count(tokenizer, prompt: str) -> int:
    """Tokens of ``prompt`` for T5 including the closing ``</s>`` (FluxPipeline truncates at :data:`T5_MAX_TOKENS`)."""
    return len(tokenizer(prompt, truncation=False).input_ids)


def scheduler_mu(config: Mapping, width: int, height: int) -> float:
    """The dynamic-shift ``mu`` FluxPipeline uses: linear in the packed image sequence length ((h/16)*(w/16))
    between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift); the sigmas become
    ``e^mu / (e^mu + (1/t - 1))``. Written here to record the schedule in the infotext."""
    seq = (height // 16) * (width // 16)
    lo, hi = config["base_image_seq_len"], config["max_image_seq_len"]
    slope = (config["max_shift"] - config["base_shift"]) / (hi - lo)
    return seq * slope + config["base_shift"] - slope * lo


def shift_of(config: Mapping, width: int, height: int) -> float:
    """The shift Forge writes as ``Shift``: e^mu with dynamic shifting, else the config's fixed ``shift``."""
    if config.get("use_dynamic_shifting"):
        return round(math.exp(scheduler_mu(config, width, height)), 4)
    return float(config["shift"])
