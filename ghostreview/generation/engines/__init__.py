"""Where the generate stage draws the images its store lacks: one :class:`Engine` contract, one registry line each.

- ``local`` (:class:`ghostreview.generation.engines.local.LocalEngine`): the stage's own process loads the
  checkpoint once and draws every missing image.
- ``ray`` (:class:`ghostreview.generation.engines.ray.RayEngine`, optional extra ``pip install -e '.[ray]'``): the
  missing images, in batches, are fanned out to the actors of a Ray cluster; each actor loads the checkpoint once and
  draws many batches straight into the shared image store.

Both fill the same content-addressed store with the same keys, so the stage output they lead to is byte-identical:
DVC cannot tell a cluster run from a local one. Importing ``ghostreview`` never imports Ray. A new engine is a module
here with a class that satisfies :class:`Engine`, and one line in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol

from ghostreview.generation.store import ImageStore
from ghostreview.generation.worker import PipelineSpec, WorkUnit


class Engine(Protocol):
    """What the generate stage asks of an engine, used as a context manager around one model's run."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def device(self, requested: str) -> str:
        """The device the images will be drawn on (``auto`` resolved): part of every image's key."""
        ...

    def draw(self, spec: PipelineSpec, units: Sequence[WorkUnit], store: ImageStore,
             progress: Callable[[int], None]) -> int:
        """Draw every unit into ``store`` (``progress(n)`` after each ``n`` images); returns how many were drawn."""
        ...


# name -> (module, class): an engine's module is imported only when it is asked for (ray imports Ray). The names are
# literals, never read from a file: no params value chooses code beyond this table.
ENGINES: dict[str, tuple[str, str]] = {
    "local": ("ghostreview.generation.engines.local", "LocalEngine"),
    "ray": ("ghostreview.generation.engines.ray", "RayEngine"),
}


def open_engine(name: str, address: str | None = None, workers: int = 0) -> Engine:
    """The engine ``name`` (a key of :data:`ENGINES`); ``address`` and ``workers`` are a cluster engine's."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    module, cls = ENGINES[name]
    engine = getattr(importlib.import_module(module), cls)
    return engine() if name == "local" else engine(address, workers)
