"""``generation.engine: local``: draw in the generate stage's own process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ghostreview.generation.store import ImageStore
from ghostreview.generation.worker import PipelineSpec, WorkUnit, draw_unit, load_spec_pipeline, pipeline_drawer
from ghostreview.util.runtime import pick_device, quiet_third_party


class LocalEngine:
    """Draws in this process: the checkpoint is loaded once, then every unit is drawn in turn."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def device(self, requested: str) -> str:
        return pick_device(requested)

    def draw(self, spec: PipelineSpec, units: Sequence[WorkUnit], store: ImageStore,
             progress: Callable[[int], None]) -> int:
        quiet_third_party()  # before loading: diffusers' "Loading pipeline components" bar and dtype notices
        pipe = load_spec_pipeline(spec)
        pipe.set_progress_bar_config(disable=True)  # its per-step bars: the stage shows one bar over the images
        draw_batch = pipeline_drawer(pipe, spec.family, spec.batch_size)
        drawn = 0
        for unit in units:
            drawn += draw_unit(unit, store, draw_batch)
            progress(len(unit))
        return drawn
