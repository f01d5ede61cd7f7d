"""The drawing loop on tiny real-topology pipelines (CPU, float32, 64x64, 2-3 steps)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from ghostreview.generation.draw import (
    DrawRequest,
    Hires,
    check_requests,
    draw,
    draw_arrays,
    hires_schedule,
    image_flags,
    to_pil,
)
from ghostreview.kit.sd import tiny_pipeline

SIZE = 64


def make_pipe(family):
    pipe = tiny_pipeline(family, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15():
    return make_pipe("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return make_pipe("sdxl")


# "a BREAK house" has two chunks, so each batch is drawn as two sub-batches of equal conditioning length.
PROMPTS = ("a cat", "a (red:1.3) dog, grass", "a BREAK house", "a house")


def requests(n=4, prompts=PROMPTS, **kw):
    base = dict(negative_prompt="blurry", steps=2, cfg_scale=7.0, width=SIZE, height=SIZE, sampler="Euler a")
    return [DrawRequest(prompt=prompts[i % len(prompts)], seed=100 + i, **{**base, **kw}) for i in range(n)]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_batch_of_four_equals_four_single_draws(family, request):
    pipe = request.getfixturevalue(family)
    reqs = requests()
    batch = draw_arrays(pipe, family, reqs)
    singles = [draw_arrays(pipe, family, [r])[0] for r in reqs]
    for (img_b, flags_b), (img_s, flags_s) in zip(batch, singles):
        assert img_b.shape == (SIZE, SIZE, 3) and img_b.dtype == np.float32
        assert np.abs(img_b - img_s).max() <= 1e-5
        assert flags_b == flags_s
    assert np.abs(batch[0][0] - batch[3][0]).max() > 1e-3  # different seeds/prompts, different images


def test_matches_a_plain_diffusers_call(sd15):
    """Same seed, sampler and prompt through diffusers' own text encoding and latent sampling."""
    req = DrawRequest("a photo of a cat", "blurry", seed=7, steps=2, cfg_scale=5.0, width=SIZE, height=SIZE,
                      sampler="Euler")
    (ours, flags), = draw_arrays(sd15, "sd15", [req])
    scheduler = EulerDiscreteScheduler.from_config(sd15.scheduler.config, timestep_spacing="linspace")
    plain = StableDiffusionPipeline(**{**sd15.components, "scheduler": scheduler}, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    ref = plain("a photo of a cat", negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0,
                width=SIZE, height=SIZE, generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    assert np.abs(ours - ref).max() <= 1e-5


def test_to_pil_rounds_to_8_bits():
    arr = np.array([[[0.0, 0.5, 1.0], [0.001, 0.999, 1.5]]], np.float32)
    im = to_pil(arr)
    assert im.mode == "RGB" and im.size == (2, 1)
    assert np.asarray(im).tolist() == [[[0, 128, 255], [0, 255, 255]]]


def count_unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_latent_hires_size_and_step_count(sd15):
    hires = Hires(scale=1.5, steps=3, denoising_strength=0.7)
    calls, handle = count_unet_calls(sd15)
    try:
        (img, flags), = draw_arrays(sd15, "sd15", requests(1, sampler="Euler", hires=hires))
    finally:
        handle.remove()
    assert img.shape == (96, 96, 3) and np.isfinite(img).all()
    assert len(calls) == 2 + 3  # base steps + exactly the hires steps (A1111 runs Hires steps, not steps*strength)


def test_image_space_hires_sdxl(sdxl):
    hires = Hires(scale=1.5, steps=2, denoising_strength=0.5, upscaler="Lanczos")
    (img, flags), = draw_arrays(sdxl, "sdxl", requests(1, sampler="DPM++ 2M Karras", hires=hires))
    assert img.shape == (96, 96, 3) and np.isfinite(img).all()


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 28])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.35, 0.5, 0.7, 0.75, 0.9, 0.999, 1.0])
def test_hires_schedule_reproduces_a1111(steps, strength):
    # A1111 (explicit hires steps): a schedule of `total` steps, sampling from index total - steps to the end.
    total = int(steps / min(strength, 0.999))
    a1111_start = total - (steps - 1) - 1
    # diffusers img2img: init = min(int(N * strength), N) steps from index N - init.
    n, s = hires_schedule(steps, strength)
    init = min(int(n * s), n)
    assert n == total and init == steps and n - init == a1111_start
    assert 0 < s <= 1


def test_nan_vae_is_flagged_and_blacked_out(sd15, monkeypatch):
    real_decode = sd15.vae.decode

    def nan_decode(z, *args, **kwargs):
        out = real_decode(z, *args, **kwargs)
        sample = torch.full_like(out[0], float("nan"))
        return (sample,) if not kwargs.get("return_dict", True) else type(out)(sample=sample)

    monkeypatch.setattr(sd15.vae, "decode", nan_decode)
    (img, flags), = draw(sd15, "sd15", requests(1, steps=1))
    assert flags == ["nan"]
    assert img.mode == "RGB" and img.size == (SIZE, SIZE) and np.asarray(img).max() == 0


def test_image_flags():
    assert image_flags(np.full((4, 4, 3), 0.5, np.float32)) == []
    assert image_flags(np.zeros((4, 4, 3), np.float32)) == ["black"]
    dark = np.zeros((4, 4, 3), np.float32)
    dark[0, 0, 0] = 0.019
    assert image_flags(dark) == ["black"]
    dark[0, 0, 0] = 0.05  # one highlight is enough to not be black
    assert image_flags(dark) == []
    dark[1, 1, 1] = np.inf
    assert image_flags(dark) == ["nan"]


@pytest.mark.parametrize(
    "reqs, match",
    [
        ([], "at least one"),
        (requests(1) + requests(1, cfg_scale=5.0), "cfg_scale"),
        (requests(1) + requests(1, sampler="Euler"), "sampler"),
        (requests(1, width=60), "multiples of 8"),
        (requests(1, steps=0), "steps"),
        (requests(1, hires=Hires(1.3, 2, 0.5)), "hires size"),  # 64 * 1.3 = 83
        (requests(1, hires=Hires(2, 2, 0.0)), "denoising_strength"),
        (requests(1, hires=Hires(2, 2, 0.5, "ESRGAN")), "upscaler"),
    ],
)
def test_invalid_batches_fail_before_model_work(reqs, match):
    with pytest.raises(ValueError, match=match):
        check_requests(reqs)
    with pytest.raises(ValueError, match=match):
        draw(object(), "sd15", reqs, base_scheduler_config={})


def test_unknown_sampler_or_family_fails_before_model_work():
    with pytest.raises(ValueError, match="did you mean 'Euler a'"):
        draw(object(), "sd15", requests(1, sampler="Euler A"), base_scheduler_config={})
    with pytest.raises(ValueError, match="family"):
        draw(object(), "sd21", requests(1), base_scheduler_config={})
