"""Shared test setup: offline hub, one torch thread (tiny models gain nothing from two and lose much under load)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
