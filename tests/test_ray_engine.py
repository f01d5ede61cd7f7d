"""generation.engine: ray on a local Ray cluster started by the test (2 CPUs), with a tiny random-weight checkpoint.

A Ray run must give the stage output a local run gives, byte for byte (same store keys, same pixels), with the work
spread over several actors that each load the checkpoint once; a second run draws nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import small_benchmark

ray = pytest.importorskip("ray", reason="Ray is the optional extra `.[ray]`: pip install -e '.[ray]'")

from ghostreview.config import ConfigError, parse_params  # noqa: E402
from ghostreview.generation import generate as gen  # noqa: E402
from ghostreview.generation.engines.ray import (  # noqa: E402
    EngineError,  # noqa: E402
    import_ray,
    worker_count,
    worker_device,
)
from ghostreview.generation.generate import (  # noqa: E402
    EngineChoice,  # noqa: E402
    GenerateSettings,
    run_generate,
)
from ghostreview.generation.loading import inspect_checkpoint  # noqa: E402
from ghostreview.generation.manifest import read_manifest  # noqa: E402
from ghostreview.generation.plan import DrawSettings  # noqa: E402
from ghostreview.kit.lora import write_tiny_lora  # noqa: E402
from ghostreview.kit.sd import write_tiny_checkpoint, write_tiny_config_dir  # noqa: E402
from ghostreview.protocol import load_benchmark  # noqa: E402

GENERATION = DrawSettings(sampler="Euler a", steps=2, cfg_scale=7.0, width=64, height=64, batch_size=2, hires=None,
                          device="cpu", cpu_threads=1)
LOCAL, RAY = EngineChoice("local"), EngineChoice("ray", None, 2)
COUNTS = {"general": 2, "style": 1, "lora": 1}  # 2 prompts x 2 seeds + 1 style + 1 LoRA image = 6 images, 4 batches


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("raykit")
    bench = load_benchmark(small_benchmark(root / "bench", general=2, styles=1, loras=1))
    write_tiny_config_dir(root / "configs" / "sd15", "sd15")
    write_tiny_checkpoint(root / "model.safetensors", "sd15", seed=11)
    for i, entry in enumerate(bench.loras["sd15"]):
        write_tiny_lora(root / "loras" / "sd15" / entry.file, "sd15", root / "configs" / "sd15", seed=i)
    return root, bench


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of this process (2 CPUs: two actors of one CPU each), shut down after the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def settings(root: Path, store: Path, engine: EngineChoice) -> GenerateSettings:
    return GenerateSettings(
        model_name="tiny", checkpoint=inspect_checkpoint(root / "model.safetensors"),
        config_dir=root / "configs" / "sd15", vae=None,
        clip_skip=1, prediction="epsilon", allow_pickle=False,
        lora_dirs={"sd15": root / "loras" / "sd15", "sdxl": root / "loras" / "sdxl"},
        counts=COUNTS, tasks=("general", "style", "lora"), generation=GENERATION, store=store,
        cache=root / "cache", engine=engine,
    )


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_ray_run_gives_the_local_output_byte_for_byte_with_actors_sharing_the_work(kit, cluster, tmp_path, monkeypatch):
    root, bench = kit
    local = run_generate(bench, settings(root, tmp_path / "store-local", LOCAL), tmp_path / "local", progress=False)

    engines = []
    open_engine = gen.open_engine
    monkeypatch.setattr(gen, "open_engine", lambda *a: engines.append(open_engine(*a)) or engines[-1])
    on_ray = run_generate(bench, settings(root, tmp_path / "store-ray", RAY), tmp_path / "ray", progress=False)

    assert local == on_ray == {"images": 6, "drawn": 6, "reused": 0, "skipped": 0}
    assert type(engines[0]).__name__ == "RayEngine"
    per_worker = engines[0].per_worker
    assert len(per_worker) == 2 and sum(per_worker.values()) == 6  # two actors, 4 batches: one drew several
    assert all(n >= 1 for n in per_worker.values())
    assert not any(name.endswith(f":{os.getpid()}") for name in per_worker)  # drawn in the actors, not here
    local_files, ray_files = tree(tmp_path / "local"), tree(tmp_path / "ray")
    assert sorted(local_files) == sorted(ray_files) and len(local_files) == 6 + 2  # PNGs + manifest + model.json
    for name, data in local_files.items():
        assert ray_files[name] == data, name
    rows = read_manifest(tmp_path / "ray")
    assert [r["task"] for r in rows] == ["general"] * 4 + ["style", "lora"] and rows[-1]["lora_status"] == "ok"

    again = run_generate(bench, settings(root, tmp_path / "store-ray", RAY), tmp_path / "ray2", progress=False)
    assert again == {"images": 6, "drawn": 0, "reused": 6, "skipped": 0}
    assert engines[-1].per_worker == {}  # nothing missing: no actor was started


def test_device_and_worker_count_follow_the_cluster():
    assert worker_device("auto", 0) == "cpu" and worker_device("auto", 2) == "cuda"
    assert worker_device("cuda:1", 2) == "cuda" and worker_device("cpu", 2) == "cpu"
    assert worker_count(0, "cuda", {"GPU": 8.0, "CPU": 64.0}, 1, 100) == 8
    assert worker_count(0, "cpu", {"CPU": 16.0}, 4, 100) == 4
    assert worker_count(3, "cpu", {"CPU": 16.0}, 1, 2) == 2  # never more actors than units
    assert worker_count(8, "cpu", {"CPU": 2.0}, 1, 100) == 2  # nor more than fit: the others would never start
    with pytest.raises(EngineError, match=r"no room for one draw worker, which needs 1 GPU"):
        worker_count(0, "cuda", {"CPU": 8.0}, 1, 5)
    with pytest.raises(EngineError, match=r"which needs 4 CPUs.*lower generation.cpu_threads"):
        worker_count(0, "cpu", {"CPU": 2.0}, 4, 5)


def test_engine_settings_are_checked():
    models = {"a": {"checkpoint": "a.safetensors"}}
    assert parse_params({"models": models, "generation": {"engine": "ray", "ray_address": "10.0.0.1:6379"}})
    with pytest.raises(ConfigError, match=r"generation.engine = 'dask' is not allowed; use one of 'local', 'ray'"):
        parse_params({"models": models, "generation": {"engine": "dask"}})
    with pytest.raises(ConfigError, match=r"ray_address/ray_workers are set but generation.engine is 'local'"):
        parse_params({"models": models, "generation": {"ray_address": "10.0.0.1:6379"}})
    with pytest.raises(ConfigError, match=r"generation.ray_workers = -1"):
        parse_params({"models": models, "generation": {"engine": "ray", "ray_workers": -1}})


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(EngineError, match=r"Ray is not installed: pip install -e '.\[ray\]'.*engine: local"):
        import_ray()
