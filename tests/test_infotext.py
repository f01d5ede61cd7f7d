"""A1111 infotext: format, parse, round trips, PNG chunks."""

import pytest
from PIL import Image

from ghostreview.generation.infotext import (
    format_infotext,
    format_lora_hashes,
    format_value,
    parse_infotext,
    pnginfo,
    read_png_infotext,
)

PARAMS = {
    "Steps": 25,
    "Sampler": "DPM++ 2M Karras",
    "CFG scale": 7.0,
    "Seed": 1,
    "Size": "512x512",
    "Model hash": "abcdef1234",
    "Model": "name",
    "Clip skip": 2,
    "Denoising strength": 0.5,
    "Hires upscale": 2,
    "Hires steps": 10,
    "Hires upscaler": "Latent",
    "Lora hashes": format_lora_hashes({"a": "0123456789", "b": "fedcba9876"}),
    "Version": "ghostreview-x",
}


def test_format_matches_a1111_layout():
    text = format_infotext("a cat, (masterpiece:1.2)", "blurry", PARAMS)
    assert text == (
        "a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: abcdef1234, "
        "Model: name, Clip skip: 2, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, "
        'Hires upscaler: Latent, Lora hashes: "a: 0123456789, b: fedcba9876", Version: ghostreview-x'
    )


def test_empty_negative_prompt_line_is_omitted():
    text = format_infotext("a cat", "", {"Steps": 20, "Seed": 3})
    assert text == "a cat\nSteps: 20, Seed: 3"
    assert parse_infotext(text) == ("a cat", "", {"Steps": "20", "Seed": "3"})


@pytest.mark.parametrize(
    "prompt, negative",
    [
        ("a cat", "blurry"),
        ("line one,\n(line two:1.3)\n\nline four: with colon", "bad hands,\nextra fingers"),
        ("Steps: 20, Seed: 3, Size: 1x1", ""),  # a prompt that looks like parameters is still the prompt
        ("ünïcödé 猫 <lora:x:1>", "negative: with colon"),
        ("", ""),
    ],
)
def test_round_trip(prompt, negative):
    params = {**PARAMS, "Odd": 'say "hi", ok', "Multi": "a\nb", "Empty": "", "Float": 0.1 + 0.2, "Flag": True}
    p, n, got = parse_infotext(format_infotext(prompt, negative, params))
    assert (p, n) == (prompt, negative)
    assert got == {k: v if isinstance(v, str) else format_value(v) for k, v in params.items()}
    assert got["Float"] == repr(0.1 + 0.2) and float(got["Float"]) == 0.1 + 0.2
    assert got["Flag"] == "True" and got["CFG scale"] == "7"


def test_parse_a1111_written_text():
    text = (
        "masterpiece, 1girl, (red hair:1.2)\n"
        "Negative prompt: (worst quality:1.4), lowres\n"
        "Steps: 30, Sampler: DPM++ 2M SDE Karras, CFG scale: 6.5, Seed: 12345, Size: 512x768, "
        'Model hash: 7f96a1a9ca, Model: anything, Lora hashes: "add_detail: 7c6bad76eb54, x: 1", '
        "TI hashes: \"easyneg: c74b4e810b03\", Version: v1.7.0"
    )
    prompt, negative, params = parse_infotext(text)
    assert prompt == "masterpiece, 1girl, (red hair:1.2)"
    assert negative == "(worst quality:1.4), lowres"
    assert params["Sampler"] == "DPM++ 2M SDE Karras" and params["CFG scale"] == "6.5"
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54, x: 1"
    assert params["TI hashes"] == "easyneg: c74b4e810b03" and params["Version"] == "v1.7.0"


def test_text_without_parameters_is_all_prompt():
    assert parse_infotext("just a prompt, style: anime") == ("just a prompt, style: anime", "", {})


def test_value_quoting():
    assert format_value("plain value") == "plain value"
    assert format_value("a, b") == '"a, b"'
    assert format_value("a: b") == '"a: b"'
    assert format_value('x "y"') == '"x \\"y\\""'
    assert format_value(7.0) == "7" and format_value(7.5) == "7.5" and format_value(3) == "3"
    assert format_lora_hashes({"we:ird,name": "abc"}) == "weirdname: abc"


@pytest.mark.parametrize(
    "prompt, params, match",
    [
        ("a", {"Seed": 1}, "Steps first"),
        ("a", {"Bad, key": 1, "Steps": 2, "Seed": 3}, "key"),
        ("a", {"x": 1, "Steps": 2, "Seed": 3}, "key"),
        ("a\nNegative prompt: b", {"Steps": 2}, "Negative prompt"),
    ],
)
def test_format_rejects_unreadable_input(prompt, params, match):
    with pytest.raises(ValueError, match=match):
        format_infotext(prompt, "", params)


def test_none_values_are_skipped():
    assert format_infotext("a", "", {"Steps": 2, "Hires upscale": None}) == "a\nSteps: 2"


def test_png_chunk_round_trip(tmp_path):
    text = format_infotext("ünïcödé 猫\nsecond line", "bad", PARAMS)
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, pnginfo=pnginfo(text))
    assert read_png_infotext(path) == text
    latin = format_infotext("plain ascii", "", PARAMS)
    Image.new("RGB", (4, 4)).save(path, pnginfo=pnginfo(latin))
    assert read_png_infotext(path) == latin
    Image.new("RGB", (4, 4)).save(path)
    assert read_png_infotext(path) is None


def test_every_sampler_name_round_trips_through_a1111s_split_form():
    from ghostreview.generation.infotext import a1111_sampler_fields, combined_sampler_name, read_a1111_sampler
    from ghostreview.generation.samplers import SAMPLERS

    for name in SAMPLERS:
        sampler, schedule = a1111_sampler_fields(name)
        assert "Karras" not in sampler and schedule != "Automatic" or sampler in ("DDIM", "PLMS", "UniPC"), name
        assert combined_sampler_name(*read_a1111_sampler(sampler, schedule)) == name
        assert combined_sampler_name(*read_a1111_sampler(name, None)) == name  # the old combined form
    assert a1111_sampler_fields("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert a1111_sampler_fields("DPM++ 2M") == ("DPM++ 2M", "Uniform")  # "Automatic" would be Karras in A1111 1.9+
    assert read_a1111_sampler("DPM++ 2M", "Automatic") == ("DPM++ 2M", "Karras")
    assert read_a1111_sampler("Euler a Karras", "Uniform") == ("Euler a", "Karras")  # the name's schedule wins


def test_lora_hashes_are_a1111s_addnet_hash_of_the_tensor_data(tmp_path):
    """A1111 (extensions-builtin/Lora) writes ``Lora hashes: "alias: <12 hex>"``: the first 12 hex digits of the
    sha256 of a safetensors file's tensor data (kohya's "addnet" hash, Civitai's AutoV3), which a metadata edit
    leaves alone. Computed here independently: the tensors' raw bytes in the order of their header offsets."""
    import hashlib
    import json

    import torch
    from safetensors.torch import save_file

    from ghostreview.generation.lora import a1111_lora_hash

    g = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(4, 8, generator=g),
               "lora_unet_x.lora_up.weight": torch.randn(8, 4, generator=g).half(),
               "lora_unet_x.alpha": torch.tensor(2.0)}
    plain, tagged = tmp_path / "plain.safetensors", tmp_path / "tagged.safetensors"
    save_file(tensors, str(plain))
    save_file(tensors, str(tagged), metadata={"ss_output_name": "my lora", "ss_network_dim": "4"})

    def tensor_data_sha(path):
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
        body = data[8 + n :]
        assert spans[0][0] == 0 and spans[-1][1] == len(body)  # the data section is the tensors, back to back
        return hashlib.sha256(b"".join(body[a:b] for a, b in spans)).hexdigest()[:12]

    assert a1111_lora_hash(plain) == tensor_data_sha(plain) == a1111_lora_hash(tagged)  # metadata is not hashed
    assert plain.read_bytes() != tagged.read_bytes()
    assert a1111_lora_hash(plain) != hashlib.sha256(plain.read_bytes()).hexdigest()[:12]  # not the file's sha256
    tensors["lora_unet_x.alpha"] = torch.tensor(3.0)
    save_file(tensors, str(plain))
    assert a1111_lora_hash(plain) != a1111_lora_hash(tagged)  # any tensor byte is
    # A1111 drops ":" and "," from an alias (its remove_symbols) and joins "alias: hash" pairs with ", "
    assert format_lora_hashes({"a:b,c": "0123456789ab", "d": "ba9876543210"}) == "abc: 0123456789ab, d: ba9876543210"
