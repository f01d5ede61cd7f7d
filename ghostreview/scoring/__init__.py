"""Scoring: one module per metric (a pure function, its ``INFO`` and the thin class that loads its weights), the
weights resolver, CLIP embeddings, the tidy score table and ``run`` (manifest rows in, score rows out).

May import ``ghostreview.protocol``, ``ghostreview.errors``, ``ghostreview.util`` and ``generation.manifest``;
never ``config``, ``analysis`` or ``kit``. A new judge is a module here plus one line in ``registry``.
"""
