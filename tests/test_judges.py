"""HPSv2.1 and PickScore judges on their tiny stand-ins, each against an independent computation.

The references below call the model libraries directly (open_clip's own checkpoint reader and tokenizer; a plain
``CLIPModel.from_pretrained`` and tokenizer call as in PickScore's model card) and preprocess images with their own
code, written from the published definitions: HPSv2's ``preprocess_val`` (tensor first, bicubic antialiased resize
of the longest side, zero pad, OpenAI mean/std) and the PIL CLIP processor (shortest side, center crop).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from ghostreview import config
from ghostreview.kit.judges import TINY_PICK_IMAGE, tiny_hps_config, write_tiny_hps, write_tiny_pickscore
from ghostreview.scoring import hpsv21, pickscore
from ghostreview.scoring.batching import paired_batches
from ghostreview.scoring.weights import WeightsError, read_state_dict, sha256_file, write_state_dict

# HPSv2's and PickScore's published normalization (OpenAI CLIP's), typed here on purpose: the library code reads
# them from open_clip / the processor config, so a wrong source shows up as a mismatch.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
LONG = "a watercolor painting of " + "a very detailed lighthouse on a cliff " * 12
PROMPTS = ["a cat wearing a hat", LONG, "a cat wearing a hat", "Portrait, oil paint; (dramatic) light!"]


def pictures() -> list[Image.Image]:
    """Exact size, larger square, landscape and portrait with odd padding: every branch of both transforms."""
    rng = np.random.default_rng(0)
    sizes = [(56, 56), (112, 112), (80, 61), (41, 100)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


# ---------------------------------------------------------------- HPSv2.1


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    return write_tiny_hps(tmp_path_factory.mktemp("hps"), seed=0)


@pytest.fixture(scope="module")
def hps(hps_files):
    arch, weights, config = hps_files
    return hpsv21.load_hpsv21(weights, arch, model_config=config)


def reference_hps_pixels(image: Image.Image, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    h, w = x.shape[1:]
    scale = size / max(h, w)
    if scale != 1:
        nh, nw = round(h * scale), round(w * scale)  # Python round(), as HPSv2
        x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas = torch.zeros(3, size, size)
        canvas[:, top : top + nh, left : left + nw] = x
        x = canvas
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x.double() - mean) / std).float()


def reference_hps(hps_files, images, prompts) -> np.ndarray:
    """open_clip reads the .pt itself (it unwraps 'state_dict'), open_clip's tokenizer cuts long text."""
    arch, weights, config = hps_files
    open_clip.add_model_config(config)
    model = open_clip.create_model(arch, pretrained=str(weights)).eval()
    size = tiny_hps_config()["vision_cfg"]["image_size"]
    model.output_dict = True
    with torch.no_grad():  # HPSv2's call: the model's forward, normalized features, no logit_scale
        out = model(torch.stack([reference_hps_pixels(im, size) for im in images]),
                    open_clip.get_tokenizer(arch)(prompts))
    return torch.diagonal(out["image_features"] @ out["text_features"].T).numpy()


def test_hps_equals_open_clip_direct(hps, hps_files):
    scores, flags = hpsv21.hpsv21_scores(hps, pictures(), PROMPTS, batch_size=3)
    np.testing.assert_allclose(scores, reference_hps(hps_files, pictures(), PROMPTS), rtol=0, atol=1e-5)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert flags == [False, True, False, False]
    assert len(set(np.round(scores, 4))) == 4  # the stand-in separates images: a constant score would pass nothing


def test_hps_preprocess_pads_with_black_and_skips_exact_sizes(hps):
    cfg = hps.preprocess_cfg
    wide = Image.new("RGB", (112, 56), (255, 255, 255))
    x = hpsv21.hps_preprocess(wide, cfg)
    assert x.shape == (3, 56, 56)
    black = torch.tensor(-MEAN / STD, dtype=torch.float32).view(3, 1)
    white = torch.tensor((1 - MEAN) / STD, dtype=torch.float32).view(3, 1)
    torch.testing.assert_close(x[:, :14].reshape(3, -1), black.expand(3, 14 * 56))
    torch.testing.assert_close(x[:, 42:].reshape(3, -1), black.expand(3, 14 * 56))
    torch.testing.assert_close(x[:, 14:42].reshape(3, -1), white.expand(3, 28 * 56), atol=1e-5, rtol=0)
    exact = pictures()[0]
    torch.testing.assert_close(hpsv21.hps_preprocess(exact, cfg), reference_hps_pixels(exact, 56), atol=1e-6, rtol=0)


def test_hps_score_does_not_depend_on_batch_mates(hps):
    ims = pictures()
    alone, _ = hpsv21.hpsv21_scores(hps, ims[2:3], PROMPTS[2:3], batch_size=4)
    together, _ = hpsv21.hpsv21_scores(hps, ims, PROMPTS, batch_size=4)
    assert alone[0] == together[2]


def test_hps_loads_offline(hps_files, no_network):
    arch, weights, config = hps_files
    judge = hpsv21.load_hpsv21(weights, arch, model_config=config, expected_sha256=sha256_file(weights))
    assert judge.weights_sha256 == sha256_file(weights) and judge.arch == arch


def test_hps_safetensors_conversion_scores_the_same(hps, hps_files, tmp_path):
    arch, weights, config = hps_files
    converted = write_state_dict(read_state_dict(weights)["state_dict"], tmp_path / "HPS_v2.1.safetensors")
    judge = hpsv21.load_hpsv21(converted, arch, model_config=config)
    ims = pictures()[:2]
    got, want = (hpsv21.hpsv21_scores(j, ims, PROMPTS[:2])[0] for j in (judge, hps))
    assert np.array_equal(got, want)


def test_hps_wrong_sha256_refused(hps_files):
    arch, weights, config = hps_files
    with pytest.raises(WeightsError, match=rf"{weights.name} has sha256 [0-9a-f]{{64}}, expected 0{{64}}.*xswu/HPSv2"):
        hpsv21.load_hpsv21(weights, arch, model_config=config, expected_sha256="0" * 64)


def test_hps_pickled_whole_model_refused(hps_files, tmp_path):
    arch, _, config = hps_files
    whole = tmp_path / "HPS_v2.1_whole.pt"
    torch.save(open_clip.model.CLIP(**tiny_hps_config()), whole)
    with pytest.raises(WeightsError, match=r"HPS_v2.1_whole.pt: refused by torch.load\(weights_only=True\)"):
        hpsv21.load_hpsv21(whole, arch, model_config=config)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.update({"visual.proj": torch.zeros(64, 16)}),
     r"visual.proj has shape \(64, 16\), .* expects \(64, 32\)"),
    (lambda s: s.pop("ln_final.weight"), r"missing 1 keys, first \['ln_final.weight'\]"),
    (lambda s: s.update({"module.extra": torch.zeros(1)}), r"unexpected 1, first \['module.extra'\]"),
])
def test_hps_wrong_tensors_refused(hps_files, tmp_path, edit, message):
    arch, weights, config = hps_files
    state = torch.load(weights, weights_only=True)["state_dict"]
    edit(state)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(WeightsError, match=rf"bad.pt: .*{message}"):
        hpsv21.load_hpsv21(bad, arch, model_config=config)


def test_hps_non_tensor_state_refused(hps_files, tmp_path):
    arch, _, config = hps_files
    bad = tmp_path / "odd.pt"
    torch.save({"state_dict": {"visual.proj": [1, 2]}}, bad)
    with pytest.raises(WeightsError, match=r"odd.pt: not an HPSv2 state dict .*'visual.proj'"):
        hpsv21.load_hpsv21(bad, arch, model_config=config)


def test_hps_needs_one_prompt_per_image(hps):
    with pytest.raises(ValueError, match="more images than the 1 prompts"):
        hpsv21.hpsv21_scores(hps, pictures()[:2], PROMPTS[:1])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        hpsv21.hpsv21_scores(hps, pictures()[:1], PROMPTS[:2])


def test_paired_batches_streams_images():
    seen = []

    def stream():
        for i, im in enumerate(pictures()):
            seen.append(i)
            yield im

    batches = paired_batches(stream(), PROMPTS, 3)
    first, prompts = next(batches)
    assert len(first) == 3 and list(prompts) == PROMPTS[:3] and seen == [0, 1, 2]
    assert [list(p) for _, p in batches] == [PROMPTS[3:]]


def test_tiny_hps_is_deterministic_and_in_the_published_layout(tmp_path, hps_files):
    again = write_tiny_hps(tmp_path / "a", seed=0)[1]
    other = write_tiny_hps(tmp_path / "b", seed=1)[1]
    assert sha256_file(again) == sha256_file(hps_files[1]) != sha256_file(other)
    raw = torch.load(again, weights_only=True)
    assert list(raw) == ["state_dict"] and raw["state_dict"]["token_embedding.weight"].shape == (49408, 64)


# ---------------------------------------------------------------- PickScore


@pytest.fixture(scope="module")
def pick_dirs(tmp_path_factory):
    return write_tiny_pickscore(tmp_path_factory.mktemp("pick"), seed=0)


@pytest.fixture(scope="module")
def pick(pick_dirs):
    return pickscore.load_pickscore(*pick_dirs)


def reference_pick_pixels(image: Image.Image, size: int) -> torch.Tensor:
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    resized = image.convert("RGB").resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    a = np.asarray(resized, dtype=np.float64) / 255.0
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    a = (a[top : top + size, left : left + size] - MEAN) / STD
    return torch.from_numpy(a).permute(2, 0, 1).float()


def reference_pick(pick_dirs, images, prompts) -> np.ndarray:
    """PickScore's scores (the model card's, before its softmax) through CLIPModel's forward on the same folders,
    the model card's tokenizer call and this test's own image preprocessing."""
    model_dir, processor_dir = pick_dirs
    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
    text = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = torch.stack([reference_pick_pixels(im, TINY_PICK_IMAGE) for im in images])
    with torch.no_grad():  # CLIPModel's own forward: logit_scale.exp() * cosine of the projected embeddings
        logits = model(**text, pixel_values=pixels).logits_per_image
    return torch.diagonal(logits).numpy()


def test_pick_equals_transformers_direct(pick, pick_dirs):
    scores, flags = pickscore.pickscore_scores(pick, pictures(), PROMPTS, batch_size=3)
    np.testing.assert_allclose(scores, reference_pick(pick_dirs, pictures(), PROMPTS), rtol=0, atol=1e-5)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert flags == [False, True, False, False]
    assert len(set(np.round(scores, 3))) == 4


def test_pick_logit_scale_is_applied(pick):
    img, txt = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])
    got = pickscore.paired_logits(img, txt, torch.tensor(np.log(100.0)))
    assert got.item() == pytest.approx(100.0, rel=1e-6)
    assert pick.model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's init in the stand-in


def test_pick_truncation_keeps_eos_and_flags(pick):
    ids, mask, flags = pickscore.text_ids(pick.tokenizer, ["short text", LONG])
    assert flags == [False, True] and ids.shape == (2, 77)
    eos = pick.tokenizer.eos_token_id
    assert ids[1, -1].item() == eos and int(mask[1].sum()) == 77
    assert ids[0, int(mask[0].sum()) - 1].item() == eos


def test_pick_score_does_not_depend_on_batch_mates(pick):
    ims = pictures()
    alone, _ = pickscore.pickscore_scores(pick, ims[3:], PROMPTS[3:], batch_size=4)
    together, _ = pickscore.pickscore_scores(pick, ims, PROMPTS, batch_size=4)
    assert alone[0] == together[3]


def plain_judge_sha256(model_dir, processor_dir) -> str:
    """The documented provenance hash, written out: weights, model config, then the processor files present."""
    lines = f"weights {sha256_file(model_dir / 'model.safetensors')}\n"
    lines += f"model/config.json {sha256_file(model_dir / 'config.json')}\n"
    for name in ("preprocessor_config.json", "tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json", "added_tokens.json"):
        if (processor_dir / name).is_file():
            lines += f"processor/{name} {sha256_file(processor_dir / name)}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def test_pick_loads_offline(pick_dirs, no_network):
    model_dir, processor_dir = pick_dirs
    sha = sha256_file(model_dir / "model.safetensors")
    judge = pickscore.load_pickscore(model_dir, processor_dir, expected_sha256=sha)
    assert judge.weights_sha256 == plain_judge_sha256(model_dir, processor_dir) != sha


def test_pick_provenance_covers_the_config_and_processor_files(pick_dirs, tmp_path):
    """The weights pin (params' sha256) is the weights file's; the score rows' hash also changes with an edited
    processor or model config, which change scores with the same weights."""
    model_dir, processor_dir = pick_dirs
    sha = sha256_file(model_dir / "model.safetensors")
    base = pickscore.judge_sha256(sha, model_dir, processor_dir)
    edited = tmp_path / "processor"
    shutil.copytree(processor_dir, edited)
    config_file = edited / "preprocessor_config.json"
    config_file.write_text(config_file.read_text().replace('"resample": 3', '"resample": 2'))
    assert pickscore.judge_sha256(sha, model_dir, edited) != base
    (edited / "preprocessor_config.json").write_text((processor_dir / "preprocessor_config.json").read_text())
    assert pickscore.judge_sha256(sha, model_dir, edited) == base
    (edited / "merges.txt").unlink()
    assert pickscore.judge_sha256(sha, model_dir, edited) != base
    model_copy = tmp_path / "model"
    shutil.copytree(model_dir, model_copy)
    (model_copy / "config.json").write_text((model_dir / "config.json").read_text().replace('"gelu"', '"quick_gelu"'))
    assert pickscore.judge_sha256(sha, model_copy, processor_dir) != base


def test_pick_wrong_sha256_refused(pick_dirs):
    with pytest.raises(WeightsError, match=r"model.safetensors has sha256 [0-9a-f]{64}, expected f{64}.*PickScore_v1"):
        pickscore.load_pickscore(*pick_dirs, expected_sha256="f" * 64)


def copy_config(pick_dirs, dest):
    dest.mkdir()
    (dest / "config.json").write_text((pick_dirs[0] / "config.json").read_text())
    return dest


def test_pick_pickled_whole_model_refused(pick_dirs, tmp_path):
    model_dir = copy_config(pick_dirs, tmp_path / "whole")
    torch.save(CLIPModel.from_pretrained(str(pick_dirs[0])), model_dir / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"pytorch_model.bin: refused by torch.load\(weights_only=True\)"):
        pickscore.load_pickscore(model_dir, pick_dirs[1])


def test_pick_folder_needs_a_weights_file_and_prefers_safetensors(pick_dirs, tmp_path):
    empty = copy_config(pick_dirs, tmp_path / "empty")
    with pytest.raises(WeightsError, match=r"empty: none of .*have \['config.json'\]"):
        pickscore.load_pickscore(empty, pick_dirs[1])
    (empty / "model.safetensors").write_bytes((pick_dirs[0] / "model.safetensors").read_bytes())
    (empty / "pytorch_model.bin").write_bytes(b"\x80 not even a pickle")  # as published: both files in the repo
    assert pickscore.weights_file(empty).name == "model.safetensors"
    assert pickscore.load_pickscore(empty, pick_dirs[1]).weights_sha256 == plain_judge_sha256(empty, pick_dirs[1])
    with pytest.raises(WeightsError, match="no config.json"):
        pickscore.load_pickscore(tmp_path, pick_dirs[1])
    with pytest.raises(WeightsError, match="no preprocessor_config.json.*laion/CLIP-ViT-H-14"):
        pickscore.load_pickscore(pick_dirs[0], tmp_path)


def test_pick_bin_converted_to_safetensors_scores_the_same(pick, pick_dirs, tmp_path):
    """docs/judges.md's conversion of a pytorch_model.bin (read_state_dict -> write_state_dict .safetensors)."""
    model_dir = copy_config(pick_dirs, tmp_path / "converted")
    torch.save(read_state_dict(pick_dirs[0] / "model.safetensors"), model_dir / "pytorch_model.bin")
    write_state_dict(read_state_dict(model_dir / "pytorch_model.bin"), model_dir / "model.safetensors")
    judge = pickscore.load_pickscore(model_dir, pick_dirs[1])
    assert pickscore.weights_file(model_dir).name == "model.safetensors"
    got, want = (pickscore.pickscore_scores(j, pictures(), PROMPTS)[0] for j in (judge, pick))
    assert np.array_equal(got, want)


def test_tiny_pick_is_deterministic(tmp_path, pick_dirs):
    again = write_tiny_pickscore(tmp_path / "a", seed=0)[0] / "model.safetensors"
    other = write_tiny_pickscore(tmp_path / "b", seed=1)[0] / "model.safetensors"
    assert sha256_file(again) == sha256_file(pick_dirs[0] / "model.safetensors") != sha256_file(other)


def test_judges_declare_their_metadata():
    for info, name in ((hpsv21.INFO, "hpsv21"), (pickscore.INFO, "pickscore")):
        assert info.name == name and info.higher_is_better and info.grouped_by == "prompt" and info.version


# ---------------------------------------------------------------- specs (what params turn into) and the params copies


def test_hps_spec_loads_on_the_picked_device_and_checks_the_hash(hps_files):
    arch, weights, config_path = hps_files
    judge = hpsv21.HpsSpec(weights, arch, config_path, sha256_file(weights), "auto").load()
    assert judge.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert judge.weights_sha256 == sha256_file(weights) and judge.arch == arch
    with pytest.raises(WeightsError, match="expected 0{64}"):
        hpsv21.HpsSpec(weights, arch, config_path, "0" * 64).load()


def test_pick_spec_loads_on_the_picked_device_and_checks_the_hash(pick_dirs):
    model_dir, processor_dir = pick_dirs
    sha = sha256_file(model_dir / "model.safetensors")
    judge = pickscore.PickSpec(model_dir, processor_dir, sha, "auto").load()
    assert judge.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert judge.weights_sha256 == plain_judge_sha256(model_dir, processor_dir)
    with pytest.raises(WeightsError, match="expected f{64}"):
        pickscore.PickSpec(model_dir, processor_dir, "f" * 64).load()


def test_a_spec_refuses_an_unusable_device_before_reading_weights(tmp_path):
    """The device is checked first: the weights path does not even exist here."""
    from ghostreview.util.runtime import DeviceError

    for spec in (hpsv21.HpsSpec(tmp_path / "absent.pt", device="cuda:99"),
                 pickscore.PickSpec(tmp_path / "absent", tmp_path / "absent", device="cuda:99")):
        with pytest.raises(DeviceError, match="cuda:99"):
            spec.load()


def test_the_params_defaults_are_the_published_files():
    """config (a leaf) copies the arch and the published hashes; these are the copies' owners."""
    hps, pick = config.HpsParams(), config.PickParams()
    assert (hps.arch, hps.sha256) == (hpsv21.ARCH, hpsv21.PUBLISHED_SHA256)
    assert hps.weights.endswith("/" + hpsv21.WEIGHTS_FILE) and hps.model_config is None
    assert pick.sha256 == pickscore.PUBLISHED_SHA256
