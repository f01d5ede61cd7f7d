"""GhostReview: reproducible reviews of Stable Diffusion checkpoints."""

__version__ = "0.1.0"
