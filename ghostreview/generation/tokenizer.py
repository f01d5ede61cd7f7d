"""Write a Hugging Face ``CLIPTokenizer`` directory without any hub access.

The OpenAI CLIP BPE tokenizer (used by SD1, SD2 and both SDXL text encoders) is fully defined by the BPE merge
list that ``open_clip`` ships in its wheel (``bpe_simple_vocab_16e6.txt.gz``). OpenAI's layout, which both
open_clip and Hugging Face follow, builds the 49,408-entry vocabulary as:

    ids 0..255        the 256 byte-to-unicode characters
    ids 256..511      the same characters with the end-of-word marker ``</w>``
    ids 512..49405    the 48,894 merges, each merged pair joined
    ids 49406, 49407  ``<|startoftext|>``, ``<|endoftext|>``

Writing that vocabulary as ``vocab.json`` and the merges as ``merges.txt`` gives a tokenizer whose ids equal
open_clip's ``SimpleTokenizer`` once the text has been cleaned the way open_clip cleans it (ftfy, HTML unescape,
whitespace collapse, lower case).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

# Line 0 of the gzip is a header; OpenAI's CLIP uses the next 49152 - 256 - 2 lines as merges.
N_MERGES = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Pad token of each tokenizer directory per family, as in the original diffusers repositories: SD1 pads with
# <|endoftext|>; SD2 and SDXL's second tokenizer pad with "!" (id 0).
TOKENIZER_PADS = {
    "sd15": {"tokenizer": EOS_TOKEN},
    "sd2": {"tokenizer": "!"},
    "sdxl": {"tokenizer": EOS_TOKEN, "tokenizer_2": "!"},
}


def open_clip_bpe_path() -> Path:
    """Path of the BPE merges file shipped inside the installed ``open_clip`` package.

    Found through the package spec rather than by importing ``open_clip`` (which takes seconds: it imports torch
    and its model zoo).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip (it ships the CLIP BPE vocabulary) is missing: "
                                  "pip install open_clip_torch")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open_clip install; reinstall open_clip_torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode character table (256 entries, in vocabulary order).

    Printable Latin-1 bytes map to themselves; the remaining bytes (controls, space, ...) map to code points
    256, 257, ... in byte order. Re-implemented from the published definition (OpenAI CLIP, MIT).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


@lru_cache(maxsize=2)
def read_merges(bpe_path: Path) -> tuple[tuple[str, str], ...]:
    """The 48,894 BPE merges (pairs of symbols) in rank order, read from the gzip'd merges file."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : N_MERGES + 1])
    bad = [m for m in merges if len(m) != 2]
    if len(merges) != N_MERGES or bad:
        raise ValueError(f"{bpe_path}: expected {N_MERGES} two-symbol merge lines, got {len(merges)} ({len(bad)} bad)")
    return merges  # type: ignore[return-value]


def build_vocab(merges: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """OpenAI CLIP's token -> id vocabulary (49,408 entries) from the merge list."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the CLIP vocabulary: the merges file is not OpenAI's")
    return vocab


def tokenizer_config(pad_token: str) -> dict:
    """``tokenizer_config.json`` contents for a CLIP tokenizer padding with ``pad_token``."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
    }


def write_clip_tokenizer(dest: Path, pad_token: str = EOS_TOKEN) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``dest``.

    Args:
        dest: directory to create (parents included); existing files of the same names are overwritten.
        pad_token: ``"<|endoftext|>"`` for SD1 and SDXL's first tokenizer; ``"!"`` (id 0) for SD2 and SDXL's
            second tokenizer, as in the original diffusers repositories.

    Returns:
        ``dest``, loadable with ``transformers.CLIPTokenizer.from_pretrained(dest)`` offline.
    """
    merges = read_merges(open_clip_bpe_path())
    vocab = build_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not a CLIP vocabulary token; use '<|endoftext|>' or '!'")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = "\n".join(" ".join(m) for m in merges)
    (dest / "merges.txt").write_text("#version: 0.2\n" + merge_lines + "\n", encoding="utf-8")
    config = tokenizer_config(pad_token)
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True), encoding="utf-8")
    return dest
