"""Shared test setup: offline hub, one torch thread (tiny models gain nothing from two and lose much under load)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def small_benchmark(dest: Path, general: int = 2, styles: int = 2, loras: int = 2) -> Path:
    """The v1 benchmark cut to a few items per task (same files, same schema), for fast pipeline tests.

    LoRA entries whose header prompt pulls in other LoRAs are left out so the cut table stays self-contained.
    """
    shutil.copytree(ROOT / "data" / "benchmark" / "v1", dest)
    prompts = yaml.safe_load((dest / "prompts.yaml").read_text())
    prompts["prompts"] = prompts["prompts"][:general]
    (dest / "prompts.yaml").write_text(yaml.safe_dump(prompts, sort_keys=False))
    table = yaml.safe_load((dest / "styles.yaml").read_text())
    table["styles"] = table["styles"][:styles]
    (dest / "styles.yaml").write_text(yaml.safe_dump(table, sort_keys=False))
    for family in ("sd15", "sdxl"):
        path = dest / f"loras_{family}.yaml"
        table = yaml.safe_load(path.read_text())
        table["loras"] = [e for e in table["loras"] if "<lora:" not in e["prompt"]][:loras]
        path.write_text(yaml.safe_dump(table, sort_keys=False))
    protocol = yaml.safe_load((dest / "protocol.yaml").read_text())
    protocol["name"] += "-cut"
    for task, n in (("general", general), ("style", styles), ("lora", loras)):
        protocol["counts"][task]["items"] = n
    c = protocol["counts"]
    protocol["images_per_checkpoint"] = sum(c[t]["items"] * c[t]["batch_size"] * c[t]["n_iter"] for t in c)
    (dest / "protocol.yaml").write_text(yaml.safe_dump(protocol, sort_keys=False))
    return dest
