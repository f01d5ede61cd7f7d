"""StyleLoss: Gram, RefStats identity vs a pairwise loop, VGG19 loader parity with torchvision, image handling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from ghostreview.kit.images import write_style_references
from ghostreview.kit.scorers import write_tiny_vgg19
from ghostreview.scoring import styleloss as sl
from ghostreview.scoring.weights import sha256_file


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return sl.load_vgg19_features(write_tiny_vgg19(tmp_path_factory.mktemp("vgg") / "vgg.pth", seed=0))


def plain_gram(f: torch.Tensor) -> torch.Tensor:
    """G[i, j] = sum over positions of F_i * F_j, divided by the number of positions, by explicit loops over i, j."""
    n, h, w = f.shape
    flat = f.reshape(n, h * w).double()
    return torch.tensor([[float((flat[i] * flat[j]).sum()) / (h * w) for j in range(n)] for i in range(n)],
                        dtype=torch.float64)


def pairwise_loss(gen: list[torch.Tensor], refs: list[list[torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: mean over references of mean over layers of sum((G - A_r)^2) / (4 N^2), computed by a loop."""
    batch = gen[0].shape[0]
    per_layer = np.zeros((batch, len(gen)))
    for b in range(batch):
        for layer, g in enumerate(gen):
            n = g.shape[-1]
            per_layer[b, layer] = np.mean(
                [float(((g[b].double() - r[layer].reshape(n, n).double()) ** 2).sum()) / (4 * n * n) for r in refs])
    return per_layer.mean(axis=1), per_layer


def test_gram_matches_loops():
    f = torch.randn(2, 5, 3, 4)
    got = sl.gram(f)
    assert got.shape == (2, 5, 5)
    for b in range(2):
        torch.testing.assert_close(got[b].double(), plain_gram(f[b]), rtol=1e-5, atol=1e-6)


def test_refstats_equal_pairwise_mean_on_random_grams():
    gen = torch.Generator().manual_seed(0)
    widths = (3, 4, 5, 6, 7)
    refs = [[torch.randn(n, n, generator=gen) * (1 + r) for n in widths] for r in range(4)]
    images = [torch.randn(2, n, n, generator=gen) for n in widths]
    stats = sl.stats_from_grams(refs, size=64)
    loss, per_layer = sl.style_loss(images, stats)
    want_loss, want_layers = pairwise_loss(images, refs)
    np.testing.assert_allclose(per_layer.numpy(), want_layers, rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    assert stats.count == 4 and loss.shape == (2,) and per_layer.shape == (2, 5)


def test_refstats_equal_pairwise_mean_with_tiny_vgg(vgg):
    rng = np.random.default_rng(1)
    ref_images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
                  ((40, 32), (32, 48), (36, 36))]
    stats = sl.ref_stats(vgg, ref_images, size=32)
    ref_grams = [sl.style_grams(vgg, sl.resize_shorter(im, 32)[None]) for im in ref_images]
    gen_batch = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    grams = sl.style_grams(vgg, gen_batch)
    loss, per_layer = sl.style_loss(grams, stats)
    want_loss, want_layers = pairwise_loss(grams, ref_grams)
    np.testing.assert_allclose(per_layer.numpy(), want_layers, rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    assert (per_layer > 0).all()


def test_loss_of_an_image_against_itself_is_zero(vgg):
    im = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    stats = sl.ref_stats(vgg, [im, im, im], size=32)  # a constant group: zero spread
    assert float(stats.spreads.abs().max()) == 0.0
    loss, per_layer = sl.image_style_losses(vgg, [im], stats)
    assert per_layer.shape == (1, 5) and np.abs(per_layer).max() <= 1e-12 and abs(loss[0]) <= 1e-12
    other = Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    assert sl.image_style_losses(vgg, [other], stats)[0][0] > 1e-6


def test_spread_is_mean_squared_distance_to_mean():
    a = [[torch.full((2, 2), float(v))] * 5 for v in (1.0, 3.0)]
    stats = sl.stats_from_grams(a, size=8)
    torch.testing.assert_close(stats.means[0], torch.full((2, 2), 2.0, dtype=torch.float64))
    torch.testing.assert_close(stats.spreads, torch.full((5,), 4.0, dtype=torch.float64))  # 4 entries * 1^2


def test_real_shape_vgg19_loads_and_matches_torchvision(tmp_path):
    """torchvision's own VGG19 `features` (make_layers(cfgs['E']) is exactly vgg19().features) with random weights."""
    torch.manual_seed(0)
    ref = make_layers(cfgs["E"]).eval()
    torch.save(ref.state_dict(), tmp_path / "features.pth")
    torch.save({f"features.{k}": v for k, v in ref.state_dict().items()} | {"classifier.0.weight": torch.zeros(2, 2)},
               tmp_path / "full.pth")  # the layout of torchvision's downloadable vgg19-*.pth
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
    for name in ("features.pth", "full.pth"):
        mine = sl.load_vgg19_features(tmp_path / name)
        assert [type(m) for m in mine] == [type(m) for m in ref]
        assert [m.out_channels for m in mine if isinstance(m, torch.nn.Conv2d)] == [v for v in cfgs["E"] if v != "M"]
        with torch.no_grad():
            torch.testing.assert_close(mine(x), want, rtol=1e-5, atol=1e-6)


def test_captured_layers_and_inplace_relus(vgg):
    """Grams from torchvision's in-place module equal Grams from hooks that clone each relu*_1 output."""
    torch.manual_seed(1)
    tv = make_layers(cfgs["E"]).eval()
    for idx, width in zip(sl.LAYER_INDICES, (64, 128, 256, 512, 512)):
        assert isinstance(tv[idx], torch.nn.ReLU) and tv[idx].inplace and tv[idx - 1].out_channels == width
    captured = {}
    hooks = [tv[i].register_forward_hook(lambda m, inp, out, i=i: captured.__setitem__(i, out.clone()))
             for i in sl.LAYER_INDICES]
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(sl.IMAGENET_MEAN)[:, None, None], torch.tensor(sl.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        tv((x - mean) / std)
    for h in hooks:
        h.remove()
    grams = sl.style_grams(tv, x)
    for i, g in zip(sl.LAYER_INDICES, grams):
        torch.testing.assert_close(g, sl.gram(captured[i]).double(), rtol=1e-5, atol=1e-7)
    assert pytest.approx((0.485, 0.456, 0.406)) == sl.IMAGENET_MEAN and pytest.approx(
        (0.229, 0.224, 0.225)) == sl.IMAGENET_STD


def test_loader_rejects_wrong_files(tmp_path):
    state = torch.load(write_tiny_vgg19(tmp_path / "v.pth", seed=0), weights_only=True)
    broken = dict(state)
    broken.pop("10.weight")
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*'10\.weight'"):
        sl.load_vgg19_features(tmp_path / "missing.pth")
    broken = dict(state, **{"2.weight": torch.zeros(8, 5, 3, 3)})
    torch.save(broken, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"2\.weight.*\[\*, 8, 3, 3\]"):
        sl.load_vgg19_features(tmp_path / "shape.pth")
    with pytest.raises(FileNotFoundError):
        sl.load_vgg19_features(tmp_path / "none.pth")


def png(array: np.ndarray, mode: str | None = None) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(array).save(buf, "PNG")
    buf.seek(0)
    return Image.open(buf)


def test_image_modes():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255  # red, with alpha 0 / 128 / 255 in three columns
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2:, 3] = 0, 128, 255
    x = sl.to_rgb_tensor(png(rgba))
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(x[:, 0, 2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(x[:, 0, 1], torch.tensor([1.0, 1 - 128 / 255, 1 - 128 / 255]))
    gray = sl.to_rgb_tensor(png(np.full((3, 5), 51, np.uint8)))
    assert gray.shape == (3, 3, 5) and torch.allclose(gray, torch.full_like(gray, 0.2))
    deep = np.array([[0, 32768, 65535]], np.uint16)
    img16 = png(deep)
    assert img16.mode.startswith("I")
    torch.testing.assert_close(sl.to_rgb_tensor(img16)[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))
    pal = png(np.arange(12, dtype=np.uint8).reshape(3, 4)).convert("P")
    assert sl.to_rgb_tensor(pal).shape == (3, 3, 4)


@pytest.mark.parametrize(("w", "h", "out"), [(200, 100, (3, 32, 64)), (90, 180, (3, 64, 32)), (33, 33, (3, 32, 32)),
                                             (10, 20, (3, 64, 32))])
def test_resize_shorter_keeps_aspect(w, h, out):
    t = sl.resize_shorter(Image.new("RGB", (w, h), (10, 200, 30)), 32)
    assert tuple(t.shape) == out and t.dtype == torch.float32
    torch.testing.assert_close(t.mean(dim=(1, 2)), torch.tensor([10, 200, 30]) / 255, rtol=0, atol=1e-3)


def test_refstats_save_load_roundtrip(tmp_path, vgg):
    refs = write_style_references(tmp_path / "Watercolor", "Watercolor", n=3, seed=0, size=40)
    stats = sl.ref_stats_from_dir(vgg, tmp_path / "Watercolor", size=32)
    assert stats.sha256s == tuple(sha256_file(p) for p in refs) and stats.count == 3 and stats.size == 32
    path = sl.save_ref_stats(stats, tmp_path / "out" / "Watercolor.safetensors")
    back = sl.load_ref_stats(path)
    assert back.sha256s == stats.sha256s and back.count == 3 and back.size == 32
    for a, b in zip(back.means, stats.means):
        assert torch.equal(a, b) and a.dtype == torch.float64
    assert torch.equal(back.spreads, stats.spreads)
    assert sl.read_ref_stats_meta(path)["layers"] == list(sl.LAYERS)
    images = [Image.open(p) for p in refs]
    np.testing.assert_array_equal(sl.image_style_losses(vgg, images, back)[1],
                                  sl.image_style_losses(vgg, images, stats)[1])


def test_validate_reference_dir(tmp_path):
    d = tmp_path / "refs"
    write_style_references(d, "Line_Art", n=2, seed=0, size=32)
    (d / ".gitignore").write_text("x\n")
    (d / "sub").mkdir()
    assert [p.name for p in sl.validate_reference_dir(d)] == ["Line_Art_000.png", "Line_Art_001.png"]
    good = (d / "Line_Art_000.png").read_bytes()
    (d / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"broken\.png"):
        sl.validate_reference_dir(d)
    (d / "broken.png").unlink()
    (d / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"Not an image file: .*notes\.txt"):
        sl.validate_reference_dir(d)
    (d / "notes.txt").unlink()
    (d / "fake.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"fake\.png"):
        sl.validate_reference_dir(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        sl.validate_reference_dir(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        sl.validate_reference_dir(tmp_path / "missing")


def test_gram_shape_mismatch_fails(vgg):
    stats = sl.stats_from_grams([[torch.eye(n) for n in (2, 2, 2, 2, 2)]], size=8)
    with pytest.raises(ValueError, match="other VGG"):
        sl.style_loss([torch.zeros(1, 3, 3)] * 5, stats)


def test_info():
    assert sl.INFO.name == "styleloss" and not sl.INFO.higher_is_better and sl.INFO.grouped_by == "style"
    assert sl.LORA_INFO.name == "loraloss" and not sl.LORA_INFO.higher_is_better and sl.LORA_INFO.grouped_by == "lora"
