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
from typing import Any, cast

import numpy as np
import torch

from ghostreview.generation.draw import DrawRequest, check_requests, image_flags, to_pil
from ghostreview.generation.flux_keys import (
    BFL_PROBE,
    CLIP_PREFIX,
    EXPECTED_LAYOUT,
    T5_PREFIX,
    TRANSFORMER_PREFIX,
    VAE_PREFIX,
    VARIANTS,
    bfl_to_diffusers,
    flux_layout,
    flux_variant,
)
from ghostreview.generation.loading import CheckpointError, read_safetensors_header
from ghostreview.generation.samplers import check_flow_sampler
from ghostreview.generation.tokenizer import write_clip_tokenizer
from ghostreview.generation.topology import CONFIGS_ROOT, KIT_METADATA_KEY, KIT_METADATA_VALUE
from ghostreview.util.atomic import create_dir_once

FP8_DTYPES = ("F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ")
SCALED_FP8_MARKERS = ("scaled_fp8",)
T5_MAX_TOKENS = 512  # T5 positions of dev (BFL's reference sampler: 512 for dev, 256 for schnell)
T5_MAX_TOKENS_SCHNELL = 256
SEPARATE_FILES = ("clip_l", "t5xxl", "vae")

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

# The tiny stand-in topology: narrow widths and shallow stacks (2 double + 4 single blocks, 2 T5 layers; CLIP-L keeps
# its 12). Depth is not part of the format (block counts are read from the keys), and every forward carries T5's
# 512 positions: at the real 19 + 38 blocks a 4-image batch took 3.6 s per 4 steps on this CPU, at 2 + 4 about a
# tenth. in_channels stays 64 (16 latent channels x 2x2 patches); axes_dims_rope sums to the head width as
# (16, 56, 56) sums to 128; pooled_projection_dim is CLIP's width, joint_attention_dim T5's.
TINY_OVERRIDES: dict[str, dict] = {
    "transformer": {"attention_head_dim": 8, "num_attention_heads": 2, "axes_dims_rope": [2, 2, 4],
                    "joint_attention_dim": 16, "pooled_projection_dim": 24, "num_layers": 2, "num_single_layers": 4},
    "vae": {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 8, "sample_size": 64},
    "text_encoder": {"hidden_size": 24, "projection_dim": 24, "intermediate_size": 64, "num_attention_heads": 2},
    "text_encoder_2": {"d_model": 16, "d_kv": 4, "d_ff": 32, "num_heads": 4, "num_layers": 2},
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


def transformer_config(ckpt, config_dir: Path | None = None) -> dict:
    """The transformer config of an inspected Flux checkpoint (``loading.CheckpointFile``), without loading it: the
    model entry's ``config_dir`` if given, else the shipped one of its variant (the kit's tiny topology for kit
    files), as :func:`open_flux_checkpoint` builds the pipeline. What its LoRAs are checked against before drawing."""
    if config_dir is not None:
        return json.loads((Path(config_dir) / "transformer" / "config.json").read_text(encoding="utf-8"))
    configs = real_configs(flux_variant(ckpt.shapes))
    if ckpt.metadata.get(KIT_METADATA_KEY) == KIT_METADATA_VALUE:
        configs["transformer"].update(TINY_OVERRIDES["transformer"])
    return configs["transformer"]


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
    from transformers import T5Tokenizer  # the tokenizers-backed class (T5TokenizerFast is its alias)

    tok = Tokenizer(models.Unigram(tiny_t5_vocab(), unk_id=2))
    tok.normalizer = normalizers.Replace(" {2,}", " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5Tokenizer(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
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
        tokenizer_dir = Path(t5_tokenizer)
        files = sorted(p for p in tokenizer_dir.iterdir() if p.is_file())
        source = json.dumps(configs, sort_keys=True) + "".join(hashlib.sha256(p.read_bytes()).hexdigest()
                                                               for p in files)
    dest = Path(cache_root) / f"{variant}{'-tiny' if tiny else ''}-{_digest(source)}"

    def build(tmp: Path) -> None:
        write_configs(tmp, configs)
        write_clip_tokenizer(tmp / "tokenizer")
        if tiny:
            write_tiny_t5_tokenizer(tmp / "tokenizer_2")
        else:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer_2")

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
    own = set(module.state_dict())
    extra = [k for k in state if k not in own and not k.endswith(tuple(may_extra))]
    missing, _ = module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=True)
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
        try:
            state = bfl_to_diffusers(state)
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from e
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
    from transformers import CLIPTokenizer, T5Tokenizer

    configs = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(config_dir).glob("*/*config.json"))}
    src = files.sources()
    pipe = FluxPipeline(
        transformer=load_transformer(*src["transformer"], configs["transformer"], dtype),
        text_encoder=load_clip_l(*src["text_encoder"], configs["text_encoder"], dtype),
        text_encoder_2=load_t5(*src["text_encoder_2"], configs["text_encoder_2"], dtype),
        vae=load_vae(*src["vae"], config_dir, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(configs["scheduler"]),
        tokenizer=CLIPTokenizer.from_pretrained(str(Path(config_dir) / "tokenizer"), local_files_only=True),
        tokenizer_2=T5Tokenizer.from_pretrained(str(Path(config_dir) / "tokenizer_2"), local_files_only=True),
    )
    return pipe if torch.device(device) == torch.device("cpu") else cast(Any, pipe).to(device)


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


# ---------------------------------------------------------------------------------------------------- drawing


def check_flux_requests(requests: Sequence[DrawRequest]) -> DrawRequest:
    """Validate a Flux batch before any model work (as :func:`generation.draw.check_requests`, plus Flux's rules);
    returns the first request.

    Raises:
        ValueError: a negative prompt (Flux.1 dev/schnell are guidance-distilled and drawn at CFG 1: there is no
            unconditional pass to read one), hires fix, clip skip other than 1 (Forge and ComfyUI ignore it for
            Flux), a sampler without a flow-matching equivalent (the list of those that have one), a size that is
            not a multiple of 16 (the VAE's 8 x the transformer's 2x2 patches).
    """
    first = check_requests(requests)
    check_flow_sampler(first.sampler)
    if first.hires is not None:
        raise ValueError("hires fix is not drawn for Flux models; set generation.hires.enabled: false for them")
    if first.width % 16 or first.height % 16:
        raise ValueError(f"Flux draws sizes that are multiples of 16, got {first.width}x{first.height}")
    for i, req in enumerate(requests):
        if req.negative_prompt:
            raise ValueError(f"request {i} has a negative prompt ({req.negative_prompt[:40]!r}); Flux.1 is drawn "
                             "with distilled guidance at CFG 1 and reads none: give Flux models no negative prompt")
        if req.clip_skip != 1:
            raise ValueError(f"request {i} has clip skip {req.clip_skip}; Flux models take clip_skip: 1")
    return first


def draw_flux(pipe, requests: Sequence[DrawRequest], batch_size: int | None = None) -> list:
    """Draw requests on a loaded ``FluxPipeline``; returns (8-bit RGB image, flags) per request, in order.

    ``cfg_scale`` is the distilled guidance (Forge's "Distilled CFG Scale"; schnell has no guidance embedder and
    ignores it); the scheduler is the pipeline's FlowMatchEuler with the config's shift (dev: dynamic, mu from the
    image size, :func:`shift_of`). One CPU generator per image seeded with its seed; every forward holds
    ``batch_size`` images (short batches padded with copies that are dropped), as :func:`generation.draw.draw`.
    Flags: ``nan`` / ``black`` as for SD, ``text_truncated`` when T5 cuts the prompt (:func:`t5_max_tokens`).
    """
    first = check_flux_requests(requests)
    size = batch_size or len(requests)
    tokens = t5_max_tokens(pipe)
    out = []
    for start in range(0, len(requests), size):
        chunk = list(requests[start:start + size])
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        images = pipe(prompt=[r.prompt for r in padded], guidance_scale=first.cfg_scale,
                      num_inference_steps=first.steps, width=first.width, height=first.height,
                      generator=[torch.Generator("cpu").manual_seed(int(r.seed)) for r in padded],
                      max_sequence_length=tokens, output_type="np").images
        out += [_flux_flags(pipe, req, image, tokens) for req, image in zip(chunk, images, strict=False)]
    return out


def t5_max_tokens(pipe) -> int:
    """T5 positions a Flux pipeline is drawn with: 512 for dev, 256 for schnell (no guidance embedder)."""
    return T5_MAX_TOKENS if pipe.transformer.config.guidance_embeds else T5_MAX_TOKENS_SCHNELL


def _flux_flags(pipe, req: DrawRequest, image, tokens: int):
    flags = image_flags(image)
    if "nan" in flags:  # replaced by black and flagged, never silently (as generation.draw does)
        image = np.zeros_like(image)
    if t5_token_count(pipe.tokenizer_2, req.prompt) > tokens:
        flags.append("text_truncated")
    return to_pil(image), flags


def guidance_and_shift(request: DrawRequest, variant: str, scheduler_config: Mapping) -> tuple[float | None, float]:
    """What a Flux image's infotext records besides SD's fields (``infotext.flux_fields``): the distilled guidance
    (None for schnell, which has no guidance embedder) and the shift its sigmas were drawn with (:func:`shift_of`)."""
    guidance = request.cfg_scale if variant == "flux1-dev" else None
    return guidance, shift_of(scheduler_config, request.width, request.height)


def open_flux_checkpoint(ckpt, cache: Path, *, config_dir: Path | None = None, clip_l: Path | None = None,
                         t5xxl: Path | None = None, vae: Path | None = None, t5_tokenizer: Path | None = None,
                         dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The ``FluxPipeline`` of an inspected checkpoint (``loading.CheckpointFile`` of family flux) and the model
    entry's separate files: the generate stage's path (``worker.load_spec_pipeline``). ``config_dir`` None: the
    shipped configs of its variant (the tiny topology for kit files), built once under ``cache``."""
    files = flux_files(ckpt.path, ckpt.shapes, ckpt.metadata, clip_l=clip_l, t5xxl=t5xxl, vae=vae)
    if config_dir is None:
        config_dir = flux_config_dir(files.variant, cache, tiny=files.is_tiny_kit, t5_tokenizer=t5_tokenizer)
    return open_flux_pipeline(files, config_dir, dtype=dtype, device=device)
