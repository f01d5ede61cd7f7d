"""``generation.engine: ray``: draw one checkpoint's missing images on the actors of a Ray cluster.

The generate stage still plans every image, computes every key and rebuilds its output from the image store; only the
drawing moves. The work units (batches of missing images, :func:`generation.generate.work_units`) go to a pool of
:class:`DrawWorker` actors. Each actor loads the checkpoint once, draws unit after unit (LoRAs are swapped only when a
unit needs other ones) and puts every image in the store itself, so the driver never holds pixels.

Requirements, checked on each worker before it draws: the checkpoint, LoRA files, cache and image store are at the
same paths on every node (a shared filesystem), and the worker's torch/diffusers/transformers versions equal the
driver's (they are part of every image key; a mismatch would silently put different pixels under the same key).
Ray is an optional dependency: this module is imported only when ``generation.engine`` is ``ray``.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ghostreview.errors import UserError
from ghostreview.generation.store import ImageStore, StoreWriter
from ghostreview.generation.worker import (
    PipelineSpec,
    WorkUnit,
    draw_unit,
    image_runtime,
    load_spec_pipeline,
    pipeline_drawer,
)


class EngineError(UserError, ValueError):
    """The Ray engine cannot run as asked (Ray missing, no room for a worker); the message says the fix."""


INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray[default]>=2.9') on the driver and every node"


def import_ray():
    """The ``ray`` module, or an EngineError (the stage prints it without a traceback) saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"generation.engine is 'ray' but Ray is not installed: {INSTALL_HINT}, "
                          "or set generation.engine: local in params.yaml") from exc
    return ray


def worker_device(requested: str, cluster_gpus: float) -> str:
    """The device the actors draw on: ``auto`` is ``cuda`` when the cluster has GPUs, else ``cpu``.

    ``cuda:N`` becomes ``cuda``: Ray gives each actor its own GPU (it sets ``CUDA_VISIBLE_DEVICES``), and only the
    device type enters the image keys.
    """
    if requested == "auto":
        return "cuda" if cluster_gpus > 0 else "cpu"
    return requested.split(":")[0] if requested.startswith("cuda") else requested


def worker_count(requested: int, device: str, resources: dict, cpu_threads: int, units: int) -> int:
    """How many actors to start: ``requested`` (0 = as many as fit), never more than fit in the cluster at once
    (one per GPU, or per ``cpu_threads`` CPUs on the CPU) nor more than there are units.

    Raises:
        EngineError: not even one actor fits (an actor that can never be scheduled would wait forever).
    """
    if device.startswith("cuda"):
        slots, need = int(resources.get("GPU", 0)), "1 GPU"
    else:
        slots, need = int(resources.get("CPU", 0) // max(1, cpu_threads)), f"{max(1, cpu_threads)} CPUs"
    if slots < 1:
        raise EngineError(f"the Ray cluster ({resources}) has no room for one draw worker, which needs {need}; "
                           "add nodes, lower generation.cpu_threads, or set generation.device")
    return max(1, min(requested or slots, slots, units))


class DrawWorker:
    """A Ray actor: loads the checkpoint once, then draws units into the shared image store."""

    def __init__(self, spec: PipelineSpec, store_root: str, expected_runtime: dict[str, str],
                 renditions: str | None = None) -> None:
        from ghostreview.util.runtime import quiet_third_party, set_cpu_threads, stage_runtime

        stage_runtime()  # offline hub, flushed denormals: the same numerics as a local stage process
        quiet_third_party()  # as the local engine: the driver's bar over the images is the stage's only one
        set_cpu_threads(spec.cpu_threads)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._check(spec, expected_runtime)
        self.store = ImageStore(Path(store_root), None if renditions is None else Path(renditions))
        pipe = load_spec_pipeline(spec)
        pipe.set_progress_bar_config(disable=True)  # per-step bars of every worker would interleave in the log
        self.draw_batch = pipeline_drawer(pipe, spec.family, spec.batch_size)

    def _check(self, spec: PipelineSpec, expected: dict[str, str]) -> None:
        import torch

        if not spec.checkpoint.path.is_file():
            raise FileNotFoundError(f"Ray worker {self.name}: checkpoint {spec.checkpoint.path} not found; every "
                                    "node must see the checkpoint, LoRAs, cache and image store at the same paths")
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"Ray worker {self.name}: device {spec.device!r} but this node has no usable GPU")
        found = image_runtime(spec.device, getattr(torch, spec.dtype), spec.batch_size)
        if found != expected:
            diff = {k: (expected.get(k), found.get(k)) for k in expected.keys() | found.keys()
                    if expected.get(k) != found.get(k)}
            raise RuntimeError(f"Ray worker {self.name}: its runtime differs from the driver's (driver, worker): "
                               f"{diff}; it is part of every image key: install the same library versions on every "
                               f"node, and on CPUs set generation.cpu_threads (0 = each node's own core count)")

    def draw(self, unit: WorkUnit) -> tuple[str, int]:
        """Draw the unit's images the store still lacks (another worker or an earlier run may have drawn some)."""
        todo = [u for u in unit if not self.store.has(u[1])]
        if not todo:
            return self.name, 0
        with StoreWriter(self.store, max_pending=len(todo)) as writer:  # stored before the driver hears of them
            draw_unit(todo, writer, self.draw_batch)
        return self.name, writer.stored


class RayEngine:
    """Connects to (or starts) Ray on entry and disconnects on exit; ``per_worker`` holds the last draw's counts."""

    def __init__(self, address: str | None, workers: int = 0) -> None:
        self.address = address
        self.workers = workers
        self.per_worker: dict[str, int] = {}
        self._ray: Any = None  # the ray module, once connected
        self._started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def _connect(self):
        if self._ray is None:
            ray = import_ray()
            if not ray.is_initialized():  # a caller (a notebook, a test) may have connected already
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
                self._started = True
            self._ray = ray
        return self._ray

    def device(self, requested: str) -> str:
        gpus = self._connect().cluster_resources().get("GPU", 0) if requested == "auto" else 0
        return worker_device(requested, gpus)

    def draw(self, spec: PipelineSpec, units: Sequence[WorkUnit], store: ImageStore,
             progress: Callable[[int], None]) -> int:
        """Fan ``units`` out over the actors; returns how many images they drew (all land in ``store``)."""
        import torch
        from ray.util import ActorPool

        ray = self._connect()
        n = worker_count(self.workers, spec.device, ray.cluster_resources(), spec.cpu_threads, len(units))
        actor = ray.remote(num_cpus=max(1, spec.cpu_threads), num_gpus=1 if spec.device == "cuda" else 0)(DrawWorker)
        runtime = image_runtime(spec.device, getattr(torch, spec.dtype), spec.batch_size)
        renditions = None if store.renditions is None else str(store.renditions)
        actors = [actor.remote(spec, str(store.root), runtime, renditions) for _ in range(n)]
        counts: Counter[str] = Counter()
        try:
            for name, drawn in ActorPool(actors).map_unordered(lambda a, u: a.draw.remote(u), list(units)):
                counts[name] += drawn
                progress(drawn)
        finally:
            for a in actors:
                ray.kill(a)
        self.per_worker = dict(counts)
        return sum(counts.values())
