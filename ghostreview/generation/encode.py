"""A1111-style text conditioning for diffusers SD1.5 and SDXL pipelines.

What A1111 does, and this module reproduces (from its documented behaviour):

- The prompt is parsed for emphasis (``generation.prompts.parse_prompt_attention``); each segment is tokenized on
  its own, without special tokens.
- Tokens are packed into chunks of 75. When a chunk is full and the next token is not a comma, the tokens after the
  last comma are moved to the next chunk if that comma lies within the last 20 tokens ("comma padding backtrack",
  A1111's default 20). ``BREAK`` closes the current chunk. Each chunk becomes BOS + 75 tokens + EOS, padded with the
  tokenizer's pad token after the EOS, is encoded on its own, and the chunk outputs are concatenated along the
  sequence: a prompt of k chunks gives k x 77 embeddings.
- Emphasis multiplies each token's output vector by its weight, then rescales the chunk so that its mean equals the
  unweighted mean (A1111's "Original" emphasis). A1111 takes that mean over the whole batch of a chunk; here it is
  taken per prompt, which is identical when a batch repeats one prompt and keeps an image independent of its
  batch-mates otherwise.
- SD1: "Clip skip N" takes ``hidden_states[-N]`` and applies the final layer norm (N = 1 is the last layer).
  SDXL: both encoders give their penultimate hidden state, without the final layer norm, concatenated along
  features; the pooled embedding is text_encoder_2's projected EOS state of the first chunk. A1111 ignores Clip
  skip for SDXL by default (it always uses the penultimate layer), so 1 and 2 are accepted and mean the same.
- SDXL: an empty negative prompt is all zeros, embeddings and pooled (A1111's ``force_zero_negative_prompt``,
  diffusers' ``force_zeros_for_empty_prompt``).
- Prompts in one call with different chunk counts (positive vs negative, or across a batch) are padded to the
  largest count with encoded empty-prompt chunks (A1111's "pad prompt/negative prompt to be same length").

diffusers' own ``clip_skip`` is not used: it crashes for SD1 with transformers >= 5.6 (diffusers issue 14124).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ghostreview.generation.families import FAMILIES
from ghostreview.generation.prompts import BREAK_MARKER, parse_prompt_attention

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20

Segment = tuple[list[int], float]  # token ids of one emphasis segment, its weight


@dataclass(frozen=True)
class TokenChunk:
    """One encoder input: ``ids`` and per-token emphasis ``weights``, both of length 77 (BOS + 75 + EOS)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass
class Conditioning:
    """Embeddings ready for a diffusers pipeline call.

    Shapes: ``prompt_embeds`` and ``negative_prompt_embeds`` [B, 77*k, D] (D = 768 for SD1.5, 2048 for SDXL);
    the pooled embeddings [B, P] (SDXL only, P = text_encoder_2's projection size). A prompt is never cut: as in
    A1111, a long prompt takes as many 75-token chunks as it needs.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def pipeline_kwargs(self) -> dict[str, torch.Tensor | None]:
        """The embedding keyword arguments of a diffusers SD/SDXL pipeline call (pooled ones only when set)."""
        kwargs: dict[str, torch.Tensor | None] = {"prompt_embeds": self.prompt_embeds,
                                                  "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


# ---------------------------------------------------------------------------------------------------- tokenization
def prompt_segments(tokenizer, prompt: str) -> list[Segment | None]:
    """The prompt's emphasis segments tokenized one by one (no BOS/EOS); None stands for a BREAK."""
    parsed = parse_prompt_attention(prompt)
    texts = [text for text, _ in parsed]
    ids = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
    return [None if seg == BREAK_MARKER else (list(tok), seg[1]) for tok, seg in zip(ids, parsed)]


def split_into_chunks(
    segments: Sequence[Segment | None],
    comma_id: int | None,
    chunk_tokens: int = CHUNK_TOKENS,
    backtrack: int = COMMA_BACKTRACK,
) -> list[tuple[list[int], list[float]]]:
    """Pack token segments into chunks of at most ``chunk_tokens`` tokens, by A1111's rules.

    A chunk closes when it is full and another token arrives, or at a BREAK (None). When a full chunk is followed
    by a token that is not a comma, and the chunk's last comma is at most ``backtrack`` tokens from its end, the
    tokens after that comma move to the next chunk. An empty prompt gives one empty chunk; a trailing BREAK adds
    no empty chunk.

    Returns:
        ``[(ids, weights), ...]``, each list of length <= ``chunk_tokens`` (not yet wrapped in BOS/EOS).
    """
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for segment in segments:
        if segment is None:
            close()
            continue
        tokens, weight = segment
        for token in tokens:
            if token == comma_id:
                last_comma = len(ids)
            elif len(ids) == chunk_tokens and last_comma != -1 and len(ids) - last_comma <= backtrack:
                moved_ids, moved_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == chunk_tokens:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def wrap_chunk(ids: Sequence[int], weights: Sequence[float], tokenizer, chunk_tokens: int = CHUNK_TOKENS) -> TokenChunk:
    """BOS + ids + EOS, then the tokenizer's pad token up to ``chunk_tokens + 2``; weight 1.0 outside ``ids``."""
    pad = chunk_tokens - len(ids)
    if pad < 0:
        raise ValueError(f"a chunk holds at most {chunk_tokens} tokens, got {len(ids)}")
    out_ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    out_weights = [1.0, *weights, 1.0] + [1.0] * pad
    return TokenChunk(tuple(out_ids), tuple(float(w) for w in out_weights))


_COMMA_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its comma token id (or None)


def comma_token_id(tokenizer) -> int | None:
    """The id of ``,</w>`` in ``tokenizer``'s vocabulary (None without one), looked up once per tokenizer object:
    ``get_vocab()`` builds a 49,408-entry dict on every call (17 ms idle, 134 ms under load, per prompt)."""
    try:
        return _COMMA_IDS[tokenizer]
    except KeyError:
        comma = _COMMA_IDS[tokenizer] = tokenizer.get_vocab().get(",</w>")
        return comma
    except TypeError:  # an object that takes no weak reference: looked up each time, as before
        return tokenizer.get_vocab().get(",</w>")


def prompt_chunks(tokenizer, prompt: str, backtrack: int = COMMA_BACKTRACK) -> list[TokenChunk]:
    """The encoder inputs of one prompt: one 77-token chunk per 75 prompt tokens (at least one)."""
    comma_id = comma_token_id(tokenizer)
    segments = prompt_segments(tokenizer, prompt)
    return [wrap_chunk(ids, w, tokenizer) for ids, w in split_into_chunks(segments, comma_id, backtrack=backtrack)]


def empty_chunk(tokenizer) -> TokenChunk:
    """The chunk of the empty prompt: BOS, EOS, then padding."""
    return wrap_chunk([], [], tokenizer)


# ---------------------------------------------------------------------------------------------------- encoding
def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis per row: ``z * w``, rescaled so each row keeps its unweighted mean.

    Args:
        z: [N, T, D] encoder outputs of N chunks.
        weights: [N, T] per-token weights.
    Returns:
        [N, T, D]; rows whose weights are all 1.0 come back bit-identical.
    """
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * weights.to(z.dtype).unsqueeze(-1)
    return weighted * (original_mean / weighted.mean(dim=(1, 2), keepdim=True))


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The final LayerNorm of a transformers ``CLIPTextModel`` or ``CLIPTextModelWithProjection``."""
    inner = getattr(text_encoder, "text_model", text_encoder)  # transformers >= 5.6 has no text_model on CLIPTextModel
    return inner.final_layer_norm


def run_text_encoder(text_encoder, ids: torch.Tensor, layer: int,
                     layer_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden state ``hidden_states[layer]`` ([N, 77, D]), optionally final-layer-normed, and ``text_embeds``
    ([N, P], the projected pooled EOS state) when the encoder has a projection, else None."""
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    hidden = out.hidden_states[layer]
    if layer_norm:
        hidden = final_layer_norm(text_encoder)(hidden)
    return hidden, getattr(out, "text_embeds", None)


@dataclass(frozen=True)
class _Encoder:
    tokenizer: object
    text_encoder: object
    layer: int
    layer_norm: bool


def _encoders(pipe, family: str, clip_skip: int) -> list[_Encoder]:
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    if family == "sd15":
        n_layers = pipe.text_encoder.config.num_hidden_layers
        if not 1 <= clip_skip <= n_layers:
            raise ValueError(f"clip_skip {clip_skip} out of range: 1 (last layer) .. {n_layers} for this text encoder")
        return [_Encoder(pipe.tokenizer, pipe.text_encoder, -clip_skip, True)]
    if clip_skip not in (1, 2):
        raise ValueError(f"clip_skip {clip_skip} is not supported for SDXL: A1111 always uses the penultimate layer "
                         "(Clip skip 1 or 2, which mean the same)")
    return [_Encoder(pipe.tokenizer, pipe.text_encoder, -2, False),
            _Encoder(pipe.tokenizer_2, pipe.text_encoder_2, -2, False)]


def _pad_chunks(per_prompt: list[list[TokenChunk]], n: int, tokenizer) -> list[TokenChunk]:
    """All prompts' chunks, each prompt padded with empty chunks to ``n``, flattened prompt by prompt."""
    empty = empty_chunk(tokenizer)
    return [c for chunks in per_prompt for c in chunks + [empty] * (n - len(chunks))]


def encode_prompts(
    pipe,
    family: str,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    clip_skip: int = 1,
) -> Conditioning:
    """Encode positive and negative prompts the way A1111 does (see the module docstring).

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (family "sd15") or ``StableDiffusionXLPipeline`` ("sdxl").
        prompts, negative_prompts: equal-length lists; A1111 emphasis and BREAK allowed, LoRA tags already removed.
        clip_skip: A1111 numbering, 1 = last layer (SD1); SDXL accepts 1 or 2 (penultimate either way).

    Returns:
        ``Conditioning`` with [B, 77*k, D] embeddings, k the largest chunk count among all the prompts.
    """
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts; give one negative "
                         "per prompt")
    if not prompts:
        raise ValueError("no prompts to encode")
    texts = [*prompts, *negative_prompts]
    encoders = _encoders(pipe, family, clip_skip)
    chunked = [[prompt_chunks(enc.tokenizer, t) for t in texts] for enc in encoders]
    counts = [[len(c) for c in per_prompt] for per_prompt in chunked]
    if any(c != counts[0] for c in counts[1:]):
        raise ValueError(f"the two SDXL tokenizers split the prompts into different chunk counts: {counts}")
    n = max(counts[0])
    hidden, pooled = [], None
    with torch.no_grad():
        for enc, per_prompt in zip(encoders, chunked, strict=True):
            chunks = _pad_chunks(per_prompt, n, enc.tokenizer)
            ids = torch.tensor([c.ids for c in chunks], dtype=torch.long)
            weights = torch.tensor([c.weights for c in chunks], dtype=torch.float32)
            z, text_embeds = run_text_encoder(enc.text_encoder, ids, enc.layer, enc.layer_norm)
            z = apply_emphasis(z, weights.to(z.device))
            hidden.append(z.reshape(len(texts), n * z.shape[1], z.shape[2]))
            if text_embeds is not None:
                pooled = text_embeds.reshape(len(texts), n, -1)[:, 0]  # first chunk's pooled EOS state
    embeds = torch.cat(hidden, dim=-1)
    if family == "sdxl":
        if pooled is None:  # the OpenCLIP-bigG encoder's projection: every SDXL text encoder 2 has one
            raise ValueError("the SDXL pipeline's text_encoder_2 returned no pooled text embedding")
        embeds, pooled = _zero_empty_negatives(embeds, pooled, texts, len(prompts))
    b = len(prompts)
    return Conditioning(
        prompt_embeds=embeds[:b],
        negative_prompt_embeds=embeds[b:],
        pooled_prompt_embeds=None if pooled is None else pooled[:b],
        negative_pooled_prompt_embeds=None if pooled is None else pooled[b:],
    )


def _zero_empty_negatives(embeds: torch.Tensor, pooled: torch.Tensor, texts: Sequence[str], n_pos: int):
    """SDXL: the rows of empty negative prompts become zeros (A1111 ``force_zero_negative_prompt``).

    Zero padding chunks are exact here: the UNet's cross-attention key/value projections have no bias, so any
    number of all-zero context tokens contributes nothing, like A1111's unpadded 77-token zero context.
    """
    empty = torch.tensor([i >= n_pos and t == "" for i, t in enumerate(texts)], device=embeds.device)
    embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
    pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    return embeds, pooled
