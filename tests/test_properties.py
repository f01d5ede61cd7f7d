"""Property tests (issue 12): random and mutated safetensors headers, params files and A1111 prompts / infotexts go
through the validators and parsers; every input either passes or gets a project error (``UserError``), nothing else
escapes. Example counts are bounded so the file runs in about a minute on one core (``GHOSTREVIEW_PROPERTY_EXAMPLES``
raises them for a longer hunt)."""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghostreview import validate
from ghostreview.errors import UserError
from ghostreview.generation.infotext import parse_infotext
from ghostreview.generation.loading import inspect_checkpoint, read_safetensors_header
from ghostreview.generation.prompts import extract_lora_tags, parse_prompt_attention, plain_text
from ghostreview.import_infotext import settings_from_fields

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("GHOSTREVIEW_PROPERTY_EXAMPLES", "150"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------------------- safetensors headers
DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "BOOL": 1}
JSON_ATOMS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = st.recursive(JSON_ATOMS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                          max_size=3), max_leaves=12)


@st.composite
def valid_header(draw) -> tuple[dict, int]:
    """A well-formed header (contiguous ranges from 0) and its data length."""
    header, offset = {}, 0
    for i in range(draw(st.integers(1, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = math.prod(shape) * DTYPES[dtype]
        header[f"model.diffusion_model.t{i}.weight"] = {"dtype": dtype, "shape": shape,
                                                        "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
    return header, offset


@st.composite
def mutated_header(draw) -> tuple[dict, int]:
    """A valid header with one entry's field replaced by arbitrary JSON, or an entry added or dropped."""
    header, length = draw(valid_header())
    header = copy.deepcopy(header)
    key = draw(st.sampled_from(sorted(header)))
    kind = draw(st.sampled_from(["field", "entry", "drop", "metadata", "length"]))
    if kind == "field" and isinstance(header[key], dict) and header[key]:
        header[key][draw(st.sampled_from(sorted(header[key])))] = draw(JSON)
    elif kind == "entry":
        header[draw(st.text(max_size=10))] = draw(JSON)
    elif kind == "drop":
        del header[key]
    elif kind == "metadata":
        header["__metadata__"] = draw(JSON)
    else:
        length = draw(st.integers(0, length + 16))
    return header, length


def write_safetensors(path: Path, header_bytes: bytes, data_length: int, declared: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header_bytes) if declared is None else declared) + header_bytes
                     + b"\0" * data_length)
    return path


def passes_or_user_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UserError:
        return None


@BOUNDED
@given(mutated_header())
def test_safetensors_headers_pass_or_get_a_project_error(case):
    header, length = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(Path(tmp) / "m.safetensors", json.dumps(header).encode(), length)
        passes_or_user_error(read_safetensors_header, path)
        passes_or_user_error(inspect_checkpoint, path)


@BOUNDED
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1) | st.none(), st.integers(0, 64))
def test_arbitrary_bytes_as_a_checkpoint_pass_or_get_a_project_error(header_bytes, declared, length):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(Path(tmp) / "m.safetensors", header_bytes, length, declared)
        passes_or_user_error(inspect_checkpoint, path)


@BOUNDED
@given(valid_header())
def test_a_valid_header_reads_back_its_tensors(case):
    header, length = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(Path(tmp) / "m.safetensors", json.dumps(header).encode(), length)
        got = read_safetensors_header(path)
    assert {k for k in got if k != "__metadata__"} == {k for k in header if k != "__metadata__"}


# ------------------------------------------------------------------------------------------------- params files
DEMO_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
FULL_PARAMS = yaml.safe_load((ROOT / "examples" / "params.full-v1.yaml").read_text())
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["auto", "cuda", "cpu", "../x", "DPM++ 2M Karras", "1e999", "nan"]))


def leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaf_paths(v, (*prefix, k))
    yield prefix


@st.composite
def mutated_params(draw) -> dict:
    params = copy.deepcopy(draw(st.sampled_from([DEMO_PARAMS, FULL_PARAMS])))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in leaf_paths(params) if p]
        where = draw(st.sampled_from(paths))
        parent = params
        for k in where[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        if action == "replace":
            parent[where[-1]] = draw(SCALARS)
        elif action == "delete":
            del parent[where[-1]]
        elif action == "add":
            parent[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
        else:
            parent[where[-1]] = draw(st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=5), SCALARS,
                                                                                      max_size=3))
        if not isinstance(params, dict):
            break
    return params


@BOUNDED
@given(mutated_params())
def test_mutated_params_files_validate_or_get_a_project_error(params):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        passes_or_user_error(validate.load, path)


@BOUNDED
@given(st.text(max_size=200))
def test_arbitrary_text_as_params_gets_a_project_error_or_passes(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        passes_or_user_error(validate.load, path)


# ------------------------------------------------------------------------------------------ prompts and infotext
PROMPT_ALPHABET = st.sampled_from(list("abc ,:()[]<>\\|.0123456789-\n") + ["BREAK", "lora", ":1.2", "<lora:x:0.5>"])
PROMPTS = st.lists(PROMPT_ALPHABET, max_size=40).map("".join) | st.text(max_size=60)


@BOUNDED
@given(PROMPTS)
def test_a1111_prompts_parse_or_get_a_project_error(prompt):
    for fn in (parse_prompt_attention, extract_lora_tags, plain_text):
        passes_or_user_error(fn, prompt)


@BOUNDED
@given(PROMPTS, PROMPTS, st.dictionaries(st.sampled_from(["Steps", "Seed", "CFG scale", "Size", "Sampler",
                                                          "Schedule type", "Clip skip", "Denoising strength",
                                                          "Hires upscale", "RNG", "Lora hashes"]),
                                         st.text(max_size=12) | st.sampled_from(["1e999", "-1", "nan", "20", "512x768",
                                                                                 "7.5", "Karras"]), max_size=6))
def test_infotexts_parse_and_import_or_get_a_project_error(prompt, negative, fields):
    line = ", ".join(f"{k}: {v}" for k, v in fields.items())
    for text in (f"{prompt}\nNegative prompt: {negative}\n{line}", f"{prompt}\n{line}", prompt):
        parsed = parse_infotext(text)  # any text is an infotext: at worst all prompt
        passes_or_user_error(settings_from_fields, parsed[2], Path("in.png"))


def test_the_property_tests_can_fail():
    """The helper re-raises what is not a project error: a property test here can catch an escaping exception."""
    with pytest.raises(ZeroDivisionError):
        passes_or_user_error(lambda: 1 / 0)
