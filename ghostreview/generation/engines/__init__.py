"""Where the generate stage draws the images its store lacks (``generation.engine`` in params.yaml).

- ``local`` (:class:`ghostreview.generation.generate.LocalEngine`): the stage's own process loads the checkpoint once and draws
  every missing image.
- ``ray`` (:class:`ghostreview.generation.engines.ray.RayEngine`, optional extra ``pip install -e '.[ray]'``): the
  missing images, in batches, are fanned out to the actors of a Ray cluster; each actor loads the checkpoint once and
  draws many batches straight into the shared image store.

Both have the same interface (``device(requested) -> str``, ``draw(spec, units, store, progress) -> int``, used as a
context manager), and both fill the same content-addressed store with the same keys, so the stage output they lead to
is byte-identical: DVC cannot tell a cluster run from a local one. Importing ``ghostreview`` never imports Ray.
"""

ENGINES = ("local", "ray")
