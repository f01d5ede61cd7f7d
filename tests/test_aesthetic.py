"""LAION aesthetic v2 head: against the MLP written out by hand in numpy, loading, normalization, weights hashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghostreview.kit.scorers import write_tiny_laion_head
from ghostreview.scoring import aesthetic
from ghostreview.scoring.weights import KNOWN, WeightsError, resolve_weights, sha256_file, verify_weights


def numpy_head(x: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
    """The head as five affine maps (Dropouts are identity at inference, no activations), in float64."""
    h = x @ s["layers.0.weight"].T + s["layers.0.bias"]  # 768 -> 1024
    h = h @ s["layers.2.weight"].T + s["layers.2.bias"]  # 1024 -> 128
    h = h @ s["layers.4.weight"].T + s["layers.4.bias"]  # 128 -> 64
    h = h @ s["layers.6.weight"].T + s["layers.6.bias"]  # 64 -> 16
    h = h @ s["layers.7.weight"].T + s["layers.7.bias"]  # 16 -> 1
    return h[:, 0]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return aesthetic.load_head(write_tiny_laion_head(tmp_path_factory.mktemp("head") / "head.pth", seed=3))


def as_np(state):
    return {k: v.double().numpy() for k, v in state.items()}


def test_head_matches_numpy_mlp(head):
    x = np.random.default_rng(0).normal(size=(5, 768))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = aesthetic.laion_head(torch.from_numpy(x).float(), head).numpy()
    np.testing.assert_allclose(got, numpy_head(x, as_np(head)), rtol=1e-4, atol=1e-5)
    assert got.shape == (5,)


def test_scores_normalize_embeddings_first(head):
    emb = np.random.default_rng(1).normal(size=(4, 768)).astype(np.float32) * 9.0
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = aesthetic.aesthetic_scores(emb, head)
    np.testing.assert_allclose(scores, numpy_head(unit.astype(np.float64), as_np(head)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aesthetic.aesthetic_scores(emb * 0.01, head), scores, rtol=1e-5, atol=1e-6)
    assert scores.dtype == np.float32
    # Without normalization the head would see a 9x larger input: the result must differ (it is affine, not linear).
    raw = numpy_head(emb.astype(np.float64), as_np(head))
    assert not np.allclose(raw, scores, atol=1e-3)


def test_zero_embedding_fails(head):
    emb = np.ones((3, 768), np.float32)
    emb[1] = 0
    with pytest.raises(ValueError, match=r"\[1\]"):
        aesthetic.aesthetic_scores(emb, head)


def test_load_head_rejects_wrong_files(tmp_path, head):
    bad = dict(head)
    bad.pop("layers.7.bias")
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*layers\.7\.bias"):
        aesthetic.load_head(tmp_path / "missing.pth")
    bad = dict(head, **{"layers.2.weight": torch.zeros(128, 1000)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"layers\.2\.weight.*\(128, 1024\)"):
        aesthetic.load_head(tmp_path / "shape.pth")


def test_info_direction():
    assert aesthetic.INFO.name == "aesthetic" and aesthetic.INFO.higher_is_better
    assert aesthetic.INFO.grouped_by == "prompt"


def test_known_hash_of_the_real_head():
    spec = KNOWN["laion-aesthetic-v2"]
    assert spec.filename == "sac+logos+ava1-l14-linearMSE.pth"
    assert spec.sha256 == "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


def test_verify_weights(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert sha256_file(f) == good
    assert verify_weights(f, good.upper()) == good
    assert verify_weights(f) == good
    with pytest.raises(WeightsError) as e:
        verify_weights(f, "0" * 64, source="https://example.org/w.bin")
    assert str(f) in str(e.value) and good in str(e.value) and "0" * 64 in str(e.value)
    assert "example.org" in str(e.value)
    with pytest.raises(WeightsError, match="not found"):
        verify_weights(tmp_path / "nope.bin")


def test_resolve_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*improved-aesthetic-predictor"):
        resolve_weights(tmp_path, "laion-aesthetic-v2")
    (tmp_path / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"not the head")
    with pytest.raises(WeightsError, match="expected 21dd590f"):
        resolve_weights(tmp_path, "laion-aesthetic-v2")
    (tmp_path / "vgg19-dcbb9e9d.pth").write_bytes(b"x")  # unpinned: resolves and reports its hash
    path, sha = resolve_weights(tmp_path, "vgg19")
    assert path.name == "vgg19-dcbb9e9d.pth" and sha == sha256_file(path)
    with pytest.raises(WeightsError, match="Known"):
        resolve_weights(tmp_path, "vgg16")
