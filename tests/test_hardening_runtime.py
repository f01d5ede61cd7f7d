"""Issue 7, process-level cases through the real `dvc` CLI: `generate` killed with SIGKILL midway, two `dvc repro` at
once, a checkpoint replaced after its review; plus what a whole review records for odd inputs (a LyCORIS LoRA, an
HTML/unicode prompt, a 300-token prompt).

One module-scoped workspace (cut benchmark, two SD1.5 demo models, 100 bootstrap resamples). To keep the suite fast
the first, complete review is computed by running every stage command of `dvc repro --dry -f` in ONE Python process
(imports paid once) and recorded with `dvc commit -f`; `dvc status` must then report everything up to date, so the
lock file is exactly what `dvc repro` would have written. Everything after that goes through `dvc repro` itself.

The kill is made deterministic by fault injection: a sitecustomize module (only on the killed run's PYTHONPATH) lets
the image store finish HANG_AFTER images, then parks the stage until the test SIGKILLs the whole process group.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, small_benchmark
from PIL import Image

from ghostreview.generation.infotext import read_png_infotext

pytestmark = pytest.mark.dvc

MODELS = ("demo-sd15-a", "demo-sd15-b")
STAGES = ("generate", "score")
HOSTILE = "<script>window.pwned=1</script><img src=x onerror=alert`1`> café 🎨 ねこ, Ünïcödé ✨"
LONG = " ".join(["red", "blue", "green", "cat", "house", "tree"] * 50)  # 300 one-token words
HANG_AFTER = 2
SKIP = ("data/images", "data/scores", "data/refstats", "data/standardized", "reports/", "demo/",
        "dvc.lock")

BUILD = r'''
"""Build the demo kit, make the first sd15 LoRA a LyCORIS LoHa, then run every stage command in this process."""
import runpy, shlex, subprocess, sys
from pathlib import Path
from ghostreview.protocol import load_benchmark
from ghostreview.kit.demo import build_demo_kit
from ghostreview.kit.lora import write_tiny_lora

bench = load_benchmark(Path("data/benchmark/small"))
kit = build_demo_kit(Path("demo/kit"), bench)
write_tiny_lora(kit / "loras/sd15" / bench.loras["sd15"][0].file, "sd15", kit / "configs/sd15", seed=5, variant="loha")
dry = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry", "-f"], capture_output=True, text=True, check=True)
for cmd in [line[2:] for line in dry.stdout.splitlines() if line.startswith("> ")]:
    argv = shlex.split(cmd)
    assert argv[0] == "python", cmd
    sys.argv = argv[1:]
    runpy.run_path(argv[1], run_name="__main__")
'''

HANG = r'''
import os
if os.environ.get("GHOSTREVIEW_TEST_HANG_AFTER"):
    import time
    from pathlib import Path
    import ghostreview.generation.store as _store

    _put, _done = _store.ImageStore.put, []

    def put(self, *args, **kwargs):
        path = _put(self, *args, **kwargs)
        _done.append(path)
        if len(_done) >= int(os.environ["GHOSTREVIEW_TEST_HANG_AFTER"]):
            Path(os.environ["GHOSTREVIEW_TEST_MARKER"]).write_text("\n".join(map(str, _done)))
            time.sleep(3600)  # parked here until the test kills us
        return path

    _store.ImageStore.put = put
'''


def run(args: list[str], cwd: Path, env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, env, check)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def store_state(store: Path) -> dict[str, tuple[int, int, int]]:
    """{file name: (inode, mtime_ns, size)} of every file in the image store."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in store.rglob("*") if p.is_file()}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def prepare(ws: Path) -> None:
    files = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT, dict(os.environ)).stdout.splitlines()
    for rel in files:
        if rel.startswith(SKIP) or not (ROOT / rel).is_file():
            continue
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    bench = small_benchmark(ws / "data/benchmark/small", general=2, styles=1, loras=2)
    prompts = yaml.safe_load((bench / "prompts.yaml").read_text(encoding="utf-8"))
    prompts["prompts"][0]["prompt"], prompts["prompts"][1]["prompt"] = HOSTILE, LONG
    (bench / "prompts.yaml").write_text(yaml.safe_dump(prompts, sort_keys=False, allow_unicode=True), encoding="utf-8")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["benchmark"]["dir"] = "data/benchmark/small"
    params["paths"]["image_store"], params["paths"]["cache"] = str(ws / "store"), str(ws / "cache")
    params["standardize"]["bootstrap"] = 100
    params["benchmark"]["images_per_item"]["general"] = 1  # one image per prompt: the hostile one and the long one
    params["models"] = {m: params["models"][m] for m in MODELS}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (ws / "hang").mkdir()
    (ws / "hang" / "sitecustomize.py").write_text(HANG)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("hardening")
    prepare(ws)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(ws),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, ws, env)
    run([sys.executable, "-c", BUILD], ws, env)
    dvc("commit", "-f", cwd=ws, env=env)
    status = dvc("status", cwd=ws, env=env).stdout
    assert "up to date" in status, status
    seen = {  # what the first review recorded, read now (later tests change the workspace)
        "manifests": {m: read_rows(ws / "data/images" / m / "manifest.csv") for m in MODELS},
        "clipscore": {m: read_rows(ws / "data/scores" / m / "clipscore.csv") for m in MODELS},
        "md": (ws / "reports/leaderboard.md").read_text(encoding="utf-8"),
        "html": (ws / "reports/index.html").read_text(encoding="utf-8"),
        "infotext": {m: read_png_infotext(ws / "data/images" / m / r["image"])
                     for m in MODELS for r in read_rows(ws / "data/images" / m / "manifest.csv")[:1]},
    }
    return ws, env, seen


def test_first_review_records_flags_and_keeps_unicode_and_html_safe(workspace):
    ws, env, seen = workspace
    bench = yaml.safe_load((ws / "data/benchmark/small/loras_sd15.yaml").read_text())
    loha = bench["loras"][0]["name"]
    for model in MODELS:
        rows = seen["manifests"][model]
        lyco = [r for r in rows if r["item"] == loha]
        assert lyco and all(r["flags"] == "lora_unsupported" and r["image"] == "" for r in lyco)
        assert "LoHa" in lyco[0]["lora_status"]
        assert f"| {model} | {loha} | lora_unsupported | 1 |" in seen["md"]  # listed in the report
        general = [r for r in rows if r["task"] == "general"]
        assert [r["prompt"] for r in general] == [HOSTILE, LONG]  # unicode round trip through CSV
        assert seen["infotext"][model].splitlines()[0] == HOSTILE  # and through the PNG's iTXt chunk
        assert all(r["flags"] == "" for r in general)  # the long prompt is chunked for drawing, never cut
        flags = {r["image_hash"]: r["flags"] for r in seen["clipscore"][model]}
        assert [flags[r["image_hash"]] for r in general] == ["", "text_truncated"]  # CLIP's 77 tokens: flagged
        assert general[1]["image_hash"] in seen["md"].split("## Flagged images")[1]
    html = seen["html"]
    assert "<script>window.pwned" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html and "café 🎨 ねこ" in html


@pytest.fixture(scope="module")
def killed(workspace):
    """Replace model A's checkpoint, start `dvc repro`, let HANG_AFTER images finish, start a second `dvc repro`
    while the first holds the lock, SIGKILL the first (the whole process group), then `dvc repro` again."""
    ws, env, _ = workspace
    ckpt = ws / "demo/kit/models/tiny-sd15-a.safetensors"
    old_sha = sha256(ckpt)
    shutil.copyfile(ws / "demo/kit/models/tiny-sd15-c.safetensors", ckpt)  # a new version under the same name
    watched = ("data/images/demo-sd15-b", "data/scores/demo-sd15-b", "data/refstats")
    before = {d: tree(ws / d) for d in watched}
    store_before = store_state(ws / "store")

    marker = ws / "hang.marker"
    hang_env = dict(env, PYTHONPATH=f"{ws / 'hang'}{os.pathsep}{ws}", GHOSTREVIEW_TEST_HANG_AFTER=str(HANG_AFTER),
                    GHOSTREVIEW_TEST_MARKER=str(marker))
    with open(ws / "first-repro.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=hang_env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 500
        while not marker.exists():
            assert first.poll() is None, (ws / "first-repro.log").read_text()
            assert time.monotonic() < deadline, "generate never finished its first images"
            time.sleep(0.2)
        at_hang = {"store": store_state(ws / "store"), "lock": (ws / "dvc.lock").read_bytes()}
        second = dvc("repro", cwd=ws, env=env, check=False)
        after_second = {"store": store_state(ws / "store"), "lock": (ws / "dvc.lock").read_bytes()}
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # dvc, the shell and the stage: the whole process group
        first.wait()
    killed_store = store_state(ws / "store")
    rerun = dvc("repro", cwd=ws, env=env)
    return {
        "ws": ws, "env": env, "old_sha": old_sha, "new_sha": sha256(ckpt), "before": before, "watched": watched,
        "store_before": store_before, "at_hang": at_hang, "second": second, "after_second": after_second,
        "pid": first.pid, "returncode": first.returncode, "killed_store": killed_store,
        "rerun": rerun.stdout + rerun.stderr,
    }


def test_second_repro_at_once_refuses_through_dvc_lock_and_changes_nothing(killed):
    second = killed["second"]
    message = second.stderr + second.stdout
    assert second.returncode != 0
    # DVC releases its repository lock while a stage command runs and guards each stage's paths with its rwlock:
    # the second run stops at the first stage whose outputs the first run holds, before running anything: checkparams,
    # whose data/params the hanging generate stage reads (its settings file lies there).
    assert "failed to reproduce 'checkparams'" in message and "is busy, it is being blocked by" in message
    assert "data/params' is busy" in message
    assert f"(PID {killed['pid']}): " in message and "repro" in message and ".dvc/tmp/rwlock" in message
    assert ran_stages(second.stdout) == set()
    assert killed["after_second"] == killed["at_hang"]  # store and dvc.lock untouched by the refused run


def test_sigkill_midway_then_repro_reuses_every_finished_image(killed):
    ws = killed["ws"]
    assert killed["returncode"] == -signal.SIGKILL
    finished = {n for n in set(killed["killed_store"]) - set(killed["store_before"]) if n.endswith(".png")}
    assert len(finished) == HANG_AFTER  # midway: some images of the new checkpoint stored, the rest not drawn
    assert all(n.replace(".png", ".json") in killed["killed_store"] for n in finished)
    assert not [n for n in killed["killed_store"] if n.endswith(".tmp")]
    drawable = [r for r in read_rows(ws / "data/images/demo-sd15-a/manifest.csv") if r["image"]]
    match = re.search(r"generate@demo-sd15-a: (\d+) images \((\d+) drawn, (\d+) from the store", killed["rerun"])
    assert match, killed["rerun"]
    images, drawn, reused = map(int, match.groups())
    assert (images, reused, drawn) == (len(drawable), len(finished), len(drawable) - len(finished))
    assert "had been killed. Auto removed it from the lock file" in killed["rerun"]  # DVC clears the stale lock
    final = store_state(ws / "store")
    assert set(killed["store_before"]) <= set(final)  # the old checkpoint's images stay (reused if it comes back)
    for name in finished:  # reused as they were: same file, never rewritten
        assert final[name] == killed["killed_store"][name]
    for row in drawable:  # no corrupt image in the output
        with Image.open(ws / "data/images/demo-sd15-a" / row["image"]) as im:
            im.load()
            assert im.size == (int(row["width"]), int(row["height"]))
    for png in (ws / "store").rglob("*.png"):
        with Image.open(png) as im:
            im.load()


def test_replaced_checkpoint_reruns_only_its_model(killed):
    ws, env = killed["ws"], killed["env"]
    assert killed["new_sha"] != killed["old_sha"]
    assert ran_stages(killed["rerun"]) == {f"{s}@demo-sd15-a" for s in STAGES} | {"standardize", "arena", "report"}
    model = json.loads((ws / "data/images/demo-sd15-a/model.json").read_text())
    assert model["sha256"] == killed["new_sha"]
    for d in killed["watched"]:  # model B's images and scores, and the reference statistics: byte-identical
        assert tree(ws / d) == killed["before"][d], d
    assert killed["new_sha"][:10] in (ws / "reports/leaderboard.csv").read_text()
    assert "up to date" in dvc("status", cwd=ws, env=env).stdout
