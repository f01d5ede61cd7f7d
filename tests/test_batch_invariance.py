"""An image's pixels and each of its scores are bit-identical whatever else is in its batch and wherever its batch
ends (issue 11, item 1). Equality here is exact: a difference in the last bit is the finding, never a tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_benchmark
from PIL import Image

from ghostreview.generation.draw import DrawRequest, Hires, draw_arrays
from ghostreview.generation.generate import GenerateSettings, run_generate
from ghostreview.generation.loading import inspect_checkpoint
from ghostreview.generation.manifest import read_manifest
from ghostreview.generation.plan import DrawSettings
from ghostreview.kit.scorers import write_tiny_clip, write_tiny_laion_head, write_tiny_vgg19
from ghostreview.kit.sd import tiny_pipeline, write_tiny_checkpoint, write_tiny_config_dir
from ghostreview.protocol import load_benchmark
from ghostreview.scoring import aesthetic, styleloss
from ghostreview.scoring import clip as gclip
from ghostreview.scoring.batching import map_rows


def images(n: int, seed: int = 0, size: int = 72) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    arch, weights, config = write_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)
    return gclip.load_clip(arch, weights, model_config=config)


def test_an_image_embedding_is_the_same_in_a_full_batch_and_in_a_short_last_batch(clip):
    ims = images(7)
    together = gclip.image_embeddings(clip, ims, batch_size=4)  # images 4..6 end up in a batch of 3
    moved = gclip.image_embeddings(clip, [ims[6], ims[4], ims[0], ims[5]], batch_size=4)  # a full batch, other mates
    alone = gclip.image_embeddings(clip, [ims[5]], batch_size=4)
    np.testing.assert_array_equal(moved, together[[6, 4, 0, 5]])
    np.testing.assert_array_equal(alone[0], together[5])


def test_a_text_embedding_does_not_depend_on_the_other_prompts(clip):
    texts = [f"a painting of a lighthouse number {i}" for i in range(6)]
    together, _ = gclip.text_embeddings(clip, texts, batch_size=4)  # texts 4, 5 in a batch of 2
    alone, _ = gclip.text_embeddings(clip, [texts[5]], batch_size=4)
    reordered, _ = gclip.text_embeddings(clip, [texts[5], texts[1], texts[4], texts[0]], batch_size=4)
    np.testing.assert_array_equal(alone[0], together[5])
    np.testing.assert_array_equal(reordered, together[[5, 1, 4, 0]])


def test_an_aesthetic_score_does_not_depend_on_how_many_images_its_model_has(tmp_path):
    head = aesthetic.load_head(write_tiny_laion_head(tmp_path / "head.pth", seed=0))
    emb = np.random.default_rng(1).standard_normal((300, 768)).astype(np.float32)
    every = aesthetic.aesthetic_scores(emb, head)  # 300 rows: a full forward of 256 and a short one of 44
    for subset in ([3], [0, 1, 2], list(range(5, 260))):
        np.testing.assert_array_equal(aesthetic.aesthetic_scores(emb[subset], head), every[subset])


def test_map_rows_pads_every_forward_to_the_same_shape():
    shapes = []
    out = map_rows(lambda x: shapes.append(tuple(x.shape)) or x * 2, torch.arange(10.0)[:, None], 4)
    assert shapes == [(4, 1)] * 3 and out[:, 0].tolist() == [2.0 * i for i in range(10)]
    assert map_rows(lambda x: x, torch.zeros(0, 3), 4).shape == (0, 3)


def test_a_style_loss_does_not_depend_on_the_batch(tmp_path):
    vgg = styleloss.load_vgg19_features(write_tiny_vgg19(tmp_path / "vgg.safetensors", seed=0))
    refs = styleloss.ref_stats(vgg, images(3, seed=5), size=32)
    ims = images(6, seed=2)
    together, layers = styleloss.image_style_losses(vgg, ims, refs, batch_size=4)
    alone, alone_layers = styleloss.image_style_losses(vgg, [ims[5]], refs, batch_size=4)
    moved, _ = styleloss.image_style_losses(vgg, [ims[5], ims[0], ims[4], ims[1]], refs, batch_size=4)
    assert alone[0] == together[5] and (alone_layers[0] == layers[5]).all()
    np.testing.assert_array_equal(moved, together[[5, 0, 4, 1]])


def _requests(prompts: list[str], seeds: list[int]) -> list[DrawRequest]:
    return [DrawRequest(p, "lowres, watermark", s, 3, 7.0, 64, 64, "DPM++ 2M Karras", hires=Hires(1.5, 2, 0.5))
            for p, s in zip(prompts, seeds)]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_pixels_do_not_depend_on_batch_mates_or_a_short_batch(family):
    pipe = tiny_pipeline(family, seed=3)
    pipe.set_progress_bar_config(disable=True)
    reqs = _requests([f"a lighthouse at dusk, detail {i}" for i in range(4)], [11, 12, 13, 14])
    full = draw_arrays(pipe, family, reqs, batch_size=4)
    alone = draw_arrays(pipe, family, [reqs[2]], batch_size=4)
    long_mate = _requests([" ".join(["ornate"] * 90)], [99])[0]  # 2 chunks: drawn in a group of its own
    mixed = draw_arrays(pipe, family, [reqs[3], long_mate, reqs[0]], batch_size=4)
    assert (alone[0][0] == full[2][0]).all()
    assert (mixed[0][0] == full[3][0]).all() and (mixed[2][0] == full[0][0]).all()


@pytest.mark.parametrize("sampler", ["DPM++ SDE Karras", "DPM++ 3M SDE"])
def test_an_sde_samplers_noise_depends_only_on_the_images_own_seed(sampler):
    """DPM++ SDE's Brownian tree grows from the image's seed (one tree per image, as A1111 seeds it), not from
    torch's global generator: an image drawn in a batch of 2 equals the same image drawn alone, whatever the global
    generator holds, and two seeds give two images. DPM++ 3M SDE draws from the image's generator."""
    pipe = tiny_pipeline("sd15", seed=3)
    pipe.set_progress_bar_config(disable=True)
    reqs = [DrawRequest("a lighthouse at dusk", "lowres", seed, 3, 7.0, 64, 64, sampler,
                        hires=Hires(1.5, 1, 0.5) if sampler == "DPM++ SDE Karras" else None) for seed in (21, 22)]
    torch.manual_seed(0)
    pair = draw_arrays(pipe, "sd15", reqs, batch_size=2)
    torch.manual_seed(12345)
    alone = draw_arrays(pipe, "sd15", [reqs[1]], batch_size=2)  # padded with a copy of itself: other batch-mates
    assert (alone[0][0] == pair[1][0]).all()
    assert not (pair[0][0] == pair[1][0]).all()  # same prompt, other seed: other noise


def test_an_image_redrawn_alone_is_byte_identical_to_the_one_drawn_in_a_full_batch(tmp_path):
    """The DVC case: after a change, the images a model still lacks are drawn in short batches."""
    bench = load_benchmark(small_benchmark(tmp_path / "bench", general=2, styles=1, loras=1))
    write_tiny_config_dir(tmp_path / "configs", "sd15")
    write_tiny_checkpoint(tmp_path / "model.safetensors", "sd15", seed=7)
    gen = DrawSettings(sampler="DPM++ 2M Karras", steps=3, cfg_scale=7.0, width=64, height=64, batch_size=3,
                       hires=Hires(scale=1.5, steps=2, denoising_strength=0.5), cpu_threads=1)

    def run(store: Path, out: Path) -> dict[str, bytes]:
        s = GenerateSettings(model_name="m", checkpoint=inspect_checkpoint(tmp_path / "model.safetensors"),
                             config_dir=tmp_path / "configs",
                             vae=None, clip_skip=1, prediction="epsilon", allow_pickle=False,
                             lora_dirs={"sd15": tmp_path, "sdxl": tmp_path}, counts={"general": 2, "style": 1},
                             tasks=("general", "style"), generation=gen, store=store, cache=tmp_path / "cache")
        run_generate(bench, s, out, progress=False)
        return {r["image_hash"]: (out / r["image"]).read_bytes() for r in read_manifest(out)}

    store = tmp_path / "store"
    first = run(store, tmp_path / "a")  # 5 images: a batch of 3 and one of 2
    keys = list(first)
    assert len(keys) == 5
    for missing, out in (([0, 3], "b"), ([1], "c")):  # redrawn with other batch-mates, then alone in a short batch
        for i in missing:
            for part in store.rglob(f"{keys[i]}.*"):
                part.unlink()
        assert run(store, tmp_path / out) == first


def test_the_cpu_thread_count_is_part_of_every_cpu_image_key():
    """1 vs 2 torch threads changed a few 8-bit values of the same tiny images: the key must tell them apart."""
    from ghostreview.generation.worker import image_runtime

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = image_runtime("cpu", torch.float32, 4)
        torch.set_num_threads(2)
        two = image_runtime("cpu", torch.float32, 4)
        gpu = image_runtime("cuda:1", torch.float16, 4)
    finally:
        torch.set_num_threads(before)
    assert one["threads"] == "1" and two["threads"] == "2" and {**one, "threads": "2"} == two
    assert "threads" not in gpu and gpu["device"] == "cuda" and gpu["batch"] == "4"
    assert image_runtime("cpu", torch.float32, 2)["batch"] == "2"
