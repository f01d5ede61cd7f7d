"""The generate stage's pipeline runs with the speed options the GPU benchmark times, on an accelerator only: on the
CPU the pipeline is left exactly as loaded (the image store's CPU keys and tests/test_dvc_deps.py's DRAW_VERSION
depend on bit-identical pixels there)."""

import pytest
import torch

from ghostreview.generation.loading import DEVICE_OPTIMIZATIONS, device_optimizations, optimize_pipeline
from ghostreview.generation.worker import image_runtime
from ghostreview.kit import sd

torch.set_num_threads(1)


def unet_out(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(x, 500, ctx).sample


def test_the_cpu_pipeline_is_left_as_loaded():
    pipe = sd.tiny_pipeline("sd15", seed=3)
    before, processors = unet_out(pipe), {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    assert optimize_pipeline(pipe, "cpu") is pipe
    assert torch.equal(unet_out(pipe), before)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors
    assert all(p.is_contiguous() for p in pipe.unet.parameters())


def test_an_accelerator_gets_the_options_and_they_are_in_the_image_key():
    assert device_optimizations("cpu") == ()
    assert device_optimizations("cuda:1") == device_optimizations("cuda") == DEVICE_OPTIMIZATIONS
    gpu = image_runtime("cuda", torch.float16, 4)
    assert gpu["optimizations"] == ",".join(DEVICE_OPTIMIZATIONS)
    assert "optimizations" not in image_runtime("cpu", torch.float32, 4)


def test_the_benchmark_only_options_run_and_unknown_ones_are_refused():
    pipe = sd.tiny_pipeline("sd15", seed=3)
    before = unet_out(pipe)
    optimize_pipeline(pipe, "cpu", extra=("sdpa", "channels_last", "fuse_qkv"))
    assert torch.allclose(unet_out(pipe), before, atol=1e-5)  # the same maths, other rounding
    with pytest.raises(ValueError, match="unknown pipeline optimizations"):
        optimize_pipeline(pipe, "cpu", extra=("turbo",))
