"""``generation.engine: local``: draw in the generate stage's own process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ghostreview.generation.store import ImageStore, StoreWriter
from ghostreview.generation.worker import PipelineSpec, WorkUnit, draw_unit, load_spec_pipeline, pipeline_drawer
from ghostreview.util.runtime import pick_device, quiet_third_party

WRITE_QUEUE_BATCHES = 2  # images drawn but not yet stored, at most, in batches: bounds the memory the queue holds


def _show(progress: Callable[[int], None], stored: int, shown: int) -> int:
    """``progress`` the images stored since ``shown``; returns how many are shown now."""
    if stored > shown:
        progress(stored - shown)
    return max(stored, shown)


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
        shown = 0
        # PNG encoding, hashing and fsyncs on the writer's thread, while the next unit is drawn; the bar counts the
        # images in the store (acknowledged), which trail the drawn ones by at most the queue
        with StoreWriter(store, max_pending=WRITE_QUEUE_BATCHES * spec.batch_size) as writer:
            for unit in units:
                draw_unit(unit, writer, draw_batch)
                shown = _show(progress, writer.stored, shown)
        _show(progress, writer.stored, shown)
        return writer.stored
