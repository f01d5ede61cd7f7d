"""Generation: from a checkpoint and the benchmark protocol to images in the content-addressed store.

Owns checkpoint inspection and loading (``loading``), LoRAs, prompt parsing and encoding, samplers, the drawing
loop, the image store, manifests, A1111 infotexts and the engines that draw. May import ``ghostreview.protocol``,
``ghostreview.errors`` and ``ghostreview.util``; never ``config``, ``scoring``, ``analysis`` or ``kit``.
"""
