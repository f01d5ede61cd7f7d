"""A1111-style conditioning against diffusers' own encode_prompt and against plain re-computations in the test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ghostreview.generation.encode import (
    COMMA_BACKTRACK,
    apply_emphasis,
    encode_prompts,
    prompt_chunks,
    split_into_chunks,
)
from ghostreview.kit.sd import tiny_pipeline

TOL = 1e-6


@pytest.fixture(scope="module")
def sd15():
    return tiny_pipeline("sd15", seed=0)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_pipeline("sdxl", seed=0)


def plain_sd15(pipe, prompt: str) -> torch.Tensor:
    """[1, 77, D] via diffusers for a prompt under 75 tokens."""
    embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    return embeds


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and float((a - b).abs().max().detach()) <= tol


# ------------------------------------------------------------------------------------------- agreement with diffusers
def test_sd15_plain_prompt_equals_diffusers(sd15):
    cond = encode_prompts(sd15, "sd15", ["a photo of a cat, best quality!"], ["blurry, lowres"])
    pos, neg = sd15.encode_prompt("a photo of a cat, best quality!", "cpu", 1, True, negative_prompt="blurry, lowres")
    assert close(cond.prompt_embeds, pos) and close(cond.negative_prompt_embeds, neg)
    assert cond.pooled_prompt_embeds is None


@pytest.mark.parametrize("negative", ["", "blurry, lowres"])
def test_sdxl_plain_prompt_equals_diffusers(sdxl, negative):
    cond = encode_prompts(sdxl, "sdxl", ["a photo of a cat!"], [negative])
    # diffusers zeroes the negative when negative_prompt is None (force_zeros_for_empty_prompt), as A1111 does for ""
    pos, neg, pooled, neg_pooled = sdxl.encode_prompt(
        "a photo of a cat!", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=negative or None)
    assert close(cond.prompt_embeds, pos) and close(cond.negative_prompt_embeds, neg)
    assert close(cond.pooled_prompt_embeds, pooled) and close(cond.negative_pooled_prompt_embeds, neg_pooled)
    assert bool((cond.negative_prompt_embeds == 0).all()) == (negative == "")


# ------------------------------------------------------------------------------------------- emphasis
def test_weight_one_is_identity(sd15):
    a = encode_prompts(sd15, "sd15", ["a red (cat:1.0) on grass"], [""]).prompt_embeds
    b = encode_prompts(sd15, "sd15", ["a red cat on grass"], [""]).prompt_embeds
    assert torch.equal(a, b)


def test_emphasis_scales_tokens_and_restores_the_mean(sd15):
    got = encode_prompts(sd15, "sd15", ["a red (cat:1.5) on grass"], [""]).prompt_embeds[0]
    ids = sd15.tokenizer("a red cat on grass", padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    cat = sd15.tokenizer("cat", add_special_tokens=False).input_ids
    assert len(cat) == 1
    weights = torch.where(ids == cat[0], 1.5, 1.0)
    z0 = plain_sd15(sd15, "a red cat on grass")[0]
    expected = z0 * weights[:, None]
    expected = expected * (z0.mean() / expected.mean())  # A1111 "Original": restore the unweighted mean
    assert close(got, expected)
    assert abs(float((got.mean() - z0.mean()).detach())) < 1e-6
    assert not close(got, z0, 1e-3)


def test_apply_emphasis_is_per_row():
    z = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    w = torch.ones(3, 5)
    w[1, 2] = 2.0
    out = apply_emphasis(z, w)
    assert torch.equal(out[0], z[0]) and torch.equal(out[2], z[2])
    assert torch.allclose(out[1].mean(), z[1].mean(), atol=1e-6)
    ratio = out[1] / z[1]
    assert torch.allclose(ratio[2] / ratio[0], torch.full((4,), 2.0), atol=1e-5)


# ------------------------------------------------------------------------------------------- chunks
def test_120_token_prompt_gives_two_chunks(sd15):
    prompt = "cat " * 120  # one token per word
    cond = encode_prompts(sd15, "sd15", [prompt], [""])
    assert cond.prompt_embeds.shape[1] == 2 * 77
    assert close(cond.prompt_embeds[:, :77], plain_sd15(sd15, "cat " * 75))
    assert close(cond.prompt_embeds[:, 77:], plain_sd15(sd15, "cat " * 45))
    # the negative was padded with an encoded empty chunk
    assert close(cond.negative_prompt_embeds[:, :77], plain_sd15(sd15, ""))
    assert close(cond.negative_prompt_embeds[:, 77:], plain_sd15(sd15, ""))


def test_chunk_count_mismatch_negative_longer(sd15):
    cond = encode_prompts(sd15, "sd15", ["a cat"], ["dog " * 80])
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 154, 24)
    assert close(cond.prompt_embeds[:, :77], plain_sd15(sd15, "a cat"))
    assert close(cond.prompt_embeds[:, 77:], plain_sd15(sd15, ""))


def test_sdxl_empty_negative_is_zero_at_every_length(sdxl):
    cond = encode_prompts(sdxl, "sdxl", ["cat " * 100], [""])
    assert cond.negative_prompt_embeds.shape == cond.prompt_embeds.shape == (1, 154, 32)
    assert not cond.negative_prompt_embeds.any() and not cond.negative_pooled_prompt_embeds.any()
    # the pooled embedding is the first chunk's
    first = encode_prompts(sdxl, "sdxl", ["cat " * 75], ["x"])
    assert close(cond.pooled_prompt_embeds, first.pooled_prompt_embeds)
    assert close(cond.prompt_embeds[:, :77], first.prompt_embeds)


def test_batch_pads_to_the_longest_prompt(sd15):
    cond = encode_prompts(sd15, "sd15", ["a cat", "cat " * 100], ["", "ugly"])
    assert cond.prompt_embeds.shape == (2, 154, 24)
    assert close(cond.prompt_embeds[0:1, :77], plain_sd15(sd15, "a cat"))
    assert close(cond.prompt_embeds[0:1, 77:], plain_sd15(sd15, ""))
    assert close(cond.negative_prompt_embeds[1:2, :77], plain_sd15(sd15, "ugly"))


def test_break_starts_a_new_chunk(sd15):
    cond = encode_prompts(sd15, "sd15", ["a red cat BREAK on grass"], [""])
    assert cond.prompt_embeds.shape[1] == 154
    assert close(cond.prompt_embeds[:, :77], plain_sd15(sd15, "a red cat"))
    assert close(cond.prompt_embeds[:, 77:], plain_sd15(sd15, "on grass"))


COMMA = 9


def seg(ids, w=1.0):
    return (list(ids), w)


def test_split_backtracks_to_a_recent_comma():
    # 70 words, a comma, then 10 words: the chunk fills at 75 with the comma 5 tokens back -> break after the comma
    tokens = list(range(100, 170)) + [COMMA] + list(range(200, 210))
    chunks = split_into_chunks([seg(tokens)], COMMA)
    assert [ids for ids, _ in chunks] == [tokens[:71], tokens[71:]]


def test_split_ignores_a_comma_too_far_back():
    far = 75 - COMMA_BACKTRACK - 2  # comma at index 53: 22 tokens before the end of a full chunk
    tokens = list(range(100, 100 + far)) + [COMMA] + list(range(300, 330))
    chunks = split_into_chunks([seg(tokens)], COMMA)
    assert [ids for ids, _ in chunks] == [tokens[:75], tokens[75:]]


def test_split_weights_travel_with_tokens_and_break_rules():
    chunks = split_into_chunks([seg(range(100, 170)), seg([COMMA]), seg(range(200, 210), 1.5)], COMMA)
    assert chunks[0][1] == [1.0] * 71 and chunks[1][1] == [1.5] * 10
    assert split_into_chunks([], COMMA) == [([], [])]  # empty prompt: one empty chunk
    assert split_into_chunks([seg([1, 2]), None], COMMA) == [([1, 2], [1.0, 1.0])]  # trailing BREAK adds nothing
    assert len(split_into_chunks([seg([1]), None, seg([2])], COMMA)) == 2
    assert [len(c[0]) for c in split_into_chunks([seg(range(150))], COMMA)] == [75, 75]
    assert [len(c[0]) for c in split_into_chunks([seg(range(151))], COMMA)] == [75, 75, 1]


def test_prompt_chunks_with_the_real_tokenizer(sd15):
    tok = sd15.tokenizer
    prompt = "cat " * 70 + ", " + "dog " * 10
    chunks = prompt_chunks(tok, prompt)
    cat, dog, comma = (tok(w, add_special_tokens=False).input_ids[0] for w in ("cat", "dog", ","))
    assert len(chunks) == 2 and all(len(c.ids) == 77 for c in chunks)
    assert list(chunks[0].ids) == [tok.bos_token_id] + [cat] * 70 + [comma] + [tok.eos_token_id] * 5
    assert list(chunks[1].ids[:12]) == [tok.bos_token_id] + [dog] * 10 + [tok.eos_token_id]


def test_the_comma_token_is_looked_up_once_per_tokenizer(sd15, monkeypatch):
    """get_vocab() builds the 49,408-entry dict on every call: one call per tokenizer, not one per prompt."""
    import copy

    tok = copy.deepcopy(sd15.tokenizer)  # a tokenizer object no earlier test looked its comma up in
    calls = []
    real = type(tok).get_vocab
    monkeypatch.setattr(type(tok), "get_vocab", lambda self: calls.append(self) or real(self))
    first = [prompt_chunks(tok, "cat " * 70 + ", " + "dog " * 10) for _ in range(5)]
    assert len(calls) == 1 and all(c == first[0] for c in first)
    comma = tok(",", add_special_tokens=False).input_ids[0]
    assert first[0][0].ids[71] == comma  # the comma that moves the dogs to the next chunk was found


def test_sdxl_second_tokenizer_pads_with_its_own_pad(sdxl):
    chunk = prompt_chunks(sdxl.tokenizer_2, "a cat")[0]
    assert sdxl.tokenizer_2.pad_token_id == 0
    assert chunk.ids[4:] == (0,) * 73 and chunk.ids[3] == sdxl.tokenizer_2.eos_token_id


# ------------------------------------------------------------------------------------------- clip skip
def test_clip_skip_2_is_penultimate_layer_plus_final_norm(sd15):
    ids = sd15.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = sd15.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = sd15.text_encoder.final_layer_norm(hidden[-2])
    got = encode_prompts(sd15, "sd15", ["a photo of a cat"], [""], clip_skip=2).prompt_embeds
    assert close(got, expected)
    assert not close(got, plain_sd15(sd15, "a photo of a cat"), 1e-3)


def test_clip_skip_validation(sd15, sdxl):
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd15, "sd15", ["a"], [""], clip_skip=0)
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd15, "sd15", ["a"], [""], clip_skip=13)
    with pytest.raises(ValueError, match="SDXL"):
        encode_prompts(sdxl, "sdxl", ["a"], [""], clip_skip=3)
    a = encode_prompts(sdxl, "sdxl", ["a cat"], ["x"], clip_skip=1).prompt_embeds
    assert torch.equal(a, encode_prompts(sdxl, "sdxl", ["a cat"], ["x"], clip_skip=2).prompt_embeds)


def test_argument_errors(sd15):
    with pytest.raises(ValueError, match="negative"):
        encode_prompts(sd15, "sd15", ["a", "b"], [""])
    with pytest.raises(ValueError, match="family"):
        encode_prompts(sd15, "sd2", ["a"], [""])
