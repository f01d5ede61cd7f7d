"""CLIP embeddings through open_clip with the tiny stand-in: offline loading, shapes, truncation, conversion."""

from __future__ import annotations

import json
import warnings

import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

from ghostreview.kit.scorers import tiny_clip_config, write_tiny_clip
from ghostreview.scoring import clip as gclip
from ghostreview.scoring.weights import WeightsError, sha256_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="module")
def model(tiny):
    arch, weights, config = tiny
    return gclip.load_clip(arch, weights, model_config=config)


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (80, 64), (50, 90), (64, 64), (33, 47)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def test_loads_offline_and_embeds(tiny, no_network):
    arch, weights, config = tiny
    clip = gclip.load_clip(arch, weights, model_config=config)
    emb = gclip.image_embeddings(clip, images(5), batch_size=2)
    assert emb.shape == (5, 768) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert clip.weights_sha256 == sha256_file(weights) and clip.arch == arch
    assert gclip.image_embeddings(clip, []).shape == (0, 768)


def test_embeddings_use_the_file_weights_and_openclip_transform(model, tiny):
    """Independent path: build the CLIP from the config JSON, load the file by hand, preprocess with torchvision."""
    _, weights, config = tiny
    ref = CLIP(**json.loads(config.read_text())).eval()
    ref.load_state_dict(load_file(str(weights)))
    ims = images(3)
    pre = transforms.Compose([
        transforms.Resize(64, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(64),
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])
    with torch.no_grad():
        want = ref.encode_image(torch.stack([pre(im.convert("RGB")) for im in ims])).numpy()
    got = gclip.image_embeddings(model, ims, batch_size=16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # batch size does not change the result
    np.testing.assert_allclose(gclip.image_embeddings(model, ims, batch_size=1), got, rtol=1e-4, atol=1e-5)


def test_quickgelu_and_eval_mode(model):
    assert isinstance(model.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not model.model.training


def test_tokenize_matches_openclip_and_flags_truncation(model):
    tok = model.tokenizer
    long_text = " ".join(f"word{i}" for i in range(100))
    texts = ["a photo of a cat", long_text, ""]
    ids, flags = gclip.tokenize(tok, texts)
    assert flags == [False, True, False]
    assert torch.equal(ids, tok(texts))
    assert ids.shape == (3, 77)
    assert ids[1, 0] == tok.sot_token_id and ids[1, -1] == tok.eot_token_id  # EOT kept as the last token
    assert int(ids[1].argmax()) == 76  # open_clip pools at argmax(ids) = the EOT position
    n = int((ids[0] != 0).sum())  # SOT + 5 words + EOT, then zero padding
    assert n == 7 and ids[0, n - 1] == tok.eot_token_id and ids[0, n:].sum() == 0
    exactly = " ".join(["cat"] * 75)  # SOT + 75 + EOT = 77: fits
    assert gclip.tokenize(tok, [exactly])[1] == [False]
    assert gclip.tokenize(tok, [exactly + " cat"])[1] == [True]


def test_text_embeddings_once_per_distinct_text(model, monkeypatch):
    calls = []
    real = model.model.encode_text

    def counting(ids, *a, **k):
        calls.append(ids.shape[0])
        return real(ids, *a, **k)

    monkeypatch.setattr(model.model, "encode_text", counting)
    long_text = " ".join(["word"] * 100)
    texts = ["a cat", "a dog", "a cat", long_text, "a dog"]
    emb, flags = gclip.text_embeddings(model, texts, batch_size=3)
    assert sum(calls) == 3  # three distinct texts encoded (one forward of exactly batch_size rows)
    assert emb.shape == (5, 768) and emb.dtype == np.float32
    assert flags == [False, False, False, True, False]
    np.testing.assert_array_equal(emb[0], emb[2])
    assert not np.allclose(emb[0], emb[1])
    with torch.no_grad():
        want = real(model.tokenizer(["a dog", long_text])).numpy()
    np.testing.assert_allclose(emb[[1, 3]], want, rtol=1e-4, atol=1e-5)


def test_convert_openai_torchscript(tmp_path, tiny, model, no_network):
    """A scripted CLIP carrying OpenAI's three extra entries converts into a file load_clip reads identically."""
    arch, weights, config = tiny
    m = CLIP(**tiny_clip_config()).eval()
    m.load_state_dict(load_file(str(weights)))
    for key, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(m, key):
            delattr(m, key)  # open_clip keeps some as plain ints; OpenAI's file stores all three as tensors
        m.register_buffer(key, torch.tensor(value))
    mask = m._buffers.pop("attn_mask")  # OpenAI's model keeps its causal mask as a plain attribute, not in state_dict
    m.attn_mask = mask
    src = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; OpenAI's files are TorchScript anyway
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(m), str(src))
    for dst in (tmp_path / "converted.pt", tmp_path / "converted.safetensors"):
        gclip.convert_openai_clip(src, dst)
        state = load_file(str(dst)) if dst.suffix == ".safetensors" else torch.load(dst, weights_only=True)
        assert not {"input_resolution", "context_length", "vocab_size"} & set(state)
        assert set(state) == set(load_file(str(weights)))
        clip = gclip.load_clip(arch, dst, model_config=config)
        ims = images(2)
        np.testing.assert_array_equal(gclip.image_embeddings(clip, ims), gclip.image_embeddings(model, ims))


def test_load_errors(tmp_path, tiny):
    arch, weights, config = tiny
    with pytest.raises(WeightsError, match="not found"):
        gclip.load_clip(arch, tmp_path / "missing.safetensors", model_config=config)
    with pytest.raises(WeightsError, match="expected " + "0" * 64):
        gclip.load_clip(arch, weights, model_config=config, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="rename the file"):
        gclip.load_clip("other-name", weights, model_config=config)
    with pytest.raises(ValueError, match="Unknown CLIP arch"):
        gclip.load_clip("no-such-arch", weights)
    with pytest.raises(ValueError, match="schema"):
        gclip.load_clip("hf-hub:openai/clip", weights)
    assert "ViT-L-14-quickgelu" in open_clip.list_models()  # the real arch is built in


def test_file_weights_get_the_openai_tag_preprocessing():
    """With a file path as `pretrained`, open_clip uses PreprocessCfg defaults; they must equal the 'openai' tag's."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    tag = open_clip.get_pretrained_cfg("ViT-L-14-quickgelu", "openai")
    default = asdict(PreprocessCfg())
    assert tag["quick_gelu"] is True
    for key in ("mean", "std", "interpolation", "resize_mode"):
        assert tuple(np.atleast_1d(tag[key])) == tuple(np.atleast_1d(default[key])), key


def test_clip_weights_with_a_pickle_payload_are_refused_naming_the_file(tmp_path, tiny):
    import pickle

    from ghostreview.errors import UserError

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    bad = tmp_path / "clip.bin"
    bad.write_bytes(pickle.dumps({"w": Payload()}))
    arch, _, config = tiny
    with pytest.raises(UserError, match=r"clip\.bin"):
        gclip.load_clip(arch, bad, model_config=config)
