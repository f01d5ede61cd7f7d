"""The whole review and the DVC workflow through the real ``dvc`` CLI on the tiny kit, every process with its network
sockets blocked: models in and out, incremental reruns, experiments, publishing reports from a remote, and machines
that share only a DVC remote.

One module-scoped workspace ``review`` (a git repo made from the project, benchmark cut to 2 prompts, 1 style and
1 LoRA, images 64 px) reviews one model with the workers' command, then the tests below run IN ORDER on it, each
starting from the state the previous one left. Clones ``reader`` and ``coordinator`` sit next to it, with the
committed default remote ``../ghostreview-dvc-remote`` between them. Every stage process costs ~7 s of CPU here
(imports), so the tests make each stage run count (checkparams, which imports no torch, reruns on every params.yaml
edit), and the prompt/seed change reruns only the stages whose outputs it compares (``dvc repro score@...``). Scores
go through the score store (``cache/scores.sqlite`` of the workspace): the score stage's summary line says how many
values of each metric it computed and how many it read back.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import small_benchmark
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.dvc

A, B = "demo-sd15-a", "demo-sdxl-a"  # one model of each family
C = "demo-sd15-b"  # a third, added to a review against a reference set of A and B
PER_MODEL = ("generate", "score")
# the report's metrics files kept in git (cache: false in dvc.yaml): DVC prints no `git add` hint for them
GIT_METRICS = tuple(path for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
                    for entry in stage.get("metrics", []) for path, opts in entry.items()
                    if opts.get("cache") is False)
SKIP = ("data/images", "data/scores", "data/refstats", "data/standardized", "reports/", "demo/",
        "dvc.lock", ".dvc/config.local")

# Blocks every network socket for the process and its children (DVC runs stages as subprocesses of the shell).
SITECUSTOMIZE = '''
import socket
_connect = socket.socket.connect
def _guard(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("network blocked by the GhostReview test: " + repr(address))
    return _connect(self, address)
socket.socket.connect = _guard
'''


def run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def dvc(ws: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], ws, env_for(ws))


def git(ws: Path, *args: str) -> str:
    return run(["git", *args], ws, env_for(ws))


def ghostreview(ws: Path, *args: str) -> str:
    return run([sys.executable, "-m", "ghostreview.cli", *args], ws, env_for(ws))


def env_for(ws: Path) -> dict:
    guard = ws.parent / "netguard"
    return dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=f"{guard}{os.pathsep}{ws}",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def ran(output: str) -> set[str]:
    """Stages that ran (``dvc repro --dry`` also prints "Running" for stages it would restore from the run cache)."""
    return set(re.findall(r"Running stage '([^']+)'", output)) - restored(output)


def restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run, checking out outputs", output))


def unchanged(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def scored(output: str) -> dict[str, dict[str, tuple[int, int]]]:
    """model -> {metric: (values computed, values read from the store)}, from the score stage's summary line."""
    out = {}
    for model, counts in re.findall(r"score: .* -> data/scores/(\S+) \(([^)]*)\)", output):
        out[model] = {name: (int(c), int(r)) for name, c, r in
                      re.findall(r"([\w ]+?) (\d+) computed, (\d+) from the store(?:; |$)", counts)}
    return out


def drawn(output: str) -> dict[str, int]:
    """model -> images drawn, from the generate stage's summary line."""
    return {m: int(n) for m, n in re.findall(r"generate@(\S+): \d+ images \((\d+) drawn", output)}


def hinted(output: str) -> list[str]:
    """The paths of DVC's "To track the changes with git, run: git add ..." hints in ``output`` (dvc.lock and the
    .gitignore files it writes next to outputs)."""
    return list(dict.fromkeys(p for line in re.findall(r"^\s*git add (.+)$", output, re.M) for p in shlex.split(line)))


def instances(model: str, stages=PER_MODEL) -> set[str]:
    return {f"{s}@{model}" for s in stages}


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".gitignore"}


def store_pngs(ws: Path) -> int:
    return len(list((ws / "store").rglob("*.png")))


def csv_rows(path: Path, key=("task", "item", "seed")) -> dict[tuple, dict]:
    """Rows by (task, item, seed[, metric]) with every value as written (so equality is bit-for-bit)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {tuple(r[k] for k in key): r for r in csv.DictReader(fh)}


FOUR = ("aesthetic", "clipscore", "styleloss", "loraloss")


def set_judges(path: Path, judges) -> None:
    """Rewrite the ``judges: [...]`` line of params.yaml in place (its flow style kept, as a user edits it)."""
    text = path.read_text()
    new, n = re.subn(r"(?m)^(  judges: )\[[^\]]*\]", lambda m: m.group(1) + "[" + ", ".join(judges) + "]", text)
    assert n == 1, "params.yaml has no one-line scoring.judges list"
    path.write_text(new)


def edit_yaml(path: Path, change) -> None:
    """Round-trip edit (comments kept), as a user would edit by hand."""
    y = YAML()
    y.width = 4096
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = y.load(path.read_text())
    change(doc)
    out = io.StringIO()
    y.dump(doc, out)
    path.write_text(out.getvalue())


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def in_remote(remote: Path, digest: str) -> bool:
    return (remote / "files" / "md5" / digest[:2] / digest[2:]).is_file()


SNAPSHOT: dict[str, dict] = {}  # outputs before the prompt/seed change, for the revert test


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    """A workspace that reviewed one model (A) the way a worker does, then ran `dvc repro`; B is added by the tests."""
    base = tmp_path_factory.mktemp("dvcflow")
    ws = base / "review"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(SKIP) or not (ROOT / rel).is_file():
            continue
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    shutil.rmtree(ws / "data" / "benchmark" / "small", ignore_errors=True)
    small_benchmark(ws / "data" / "benchmark" / "small", general=2, styles=1, loras=1)

    def cut(params):
        params["benchmark"]["dir"] = "data/benchmark/small"
        params["paths"]["image_store"] = "store"  # relative: each clone has its own store, nothing is shared
        params["paths"]["cache"] = "cache"
        params["standardize"]["bootstrap"] = 100
        params["benchmark"]["images_per_item"]["general"] = 1  # test_one_prompt_and_a_second_seed adds the second
        for name in list(params["models"]):
            if name != A:
                del params["models"][name]

    edit_yaml(ws / "params.yaml", cut)
    # the article's four judges (as a user writes the line): test_adding_a_judge_... adds the others to the review
    set_judges(ws / "params.yaml", FOUR)
    (base / "netguard").mkdir()
    (base / "netguard" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    git(ws, "init", "-q")
    git(ws, "config", "user.name", "GhostReview test")  # commits here and `dvc exp run`'s experiment commits
    git(ws, "config", "user.email", "test@ghostreview.invalid")
    (ws / ".git" / "info" / "exclude").write_text("/store/\n/cache/\n")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "review of one model")
    ghostreview(ws, "kit", "demo/kit", "--benchmark", "data/benchmark/small")
    worker = dvc(ws, "repro", "--pull", *sorted(instances(A)))  # the remote is still empty: nothing to pull
    return ws, worker, dvc(ws, "repro")


def test_review_of_one_model(review):
    ws, worker, rest = review
    # the workers' command: one model's stages and their inputs (checkparams writes their settings and code files)
    assert ran(worker) == instances(A) | {"checkparams", "refstats"}
    assert drawn(worker) == {A: 4}  # 2 prompts + 1 style + 1 LoRA, one seed each
    assert ran(rest) == {"standardize", "arena", "report"}
    assert A in (ws / "reports" / "leaderboard.csv").read_text()
    assert "random" in (ws / "reports" / "leaderboard.md").read_text().lower()  # the demo says what it is
    assert "random weights" in (ws / "reports" / "index.html").read_text().lower()
    assert list((ws / "reports" / "plots").glob("*.png"))
    assert "up to date" in dvc(ws, "status").lower()


def test_dvc_gitignore_files_are_not_ignored_and_dvcs_git_add_hint_works(review):
    """DVC writes a .gitignore next to every output and asks for it to be committed: the project ignores none of
    them, so the `git add` DVC prints works and a clone sees its outputs (pulled or reproduced) as ignored."""
    ws, worker, rest = review
    files = hinted(worker + rest)
    gitignores = {p for p in files if Path(p).name == ".gitignore"}
    assert {"data/.gitignore", "data/images/.gitignore", "data/scores/.gitignore", "reports/.gitignore"} <= \
        gitignores
    status = git(ws, "status", "--porcelain", "--ignored", "--untracked-files=all")
    state = {line[3:]: line[:2] for line in status.splitlines()}
    assert not {p for p, s in state.items() if s == "!!" and Path(p).name == ".gitignore"}
    assert all(state.get(p) == "??" for p in gitignores), status
    git(ws, "add", *files)  # DVC's hint as printed (git refuses an ignored path)
    git(ws, "add", *GIT_METRICS)  # the report's metrics live in git (cache: false): no hint for them
    git(ws, "commit", "-qm", f"review of {A}: dvc.lock and DVC's .gitignore files")
    assert git(ws, "status", "--porcelain").strip() == ""  # every output ignored by a committed DVC .gitignore


def test_a_queued_experiment_on_the_demo_kit_runs_and_records_its_metrics(review):
    """`dvc exp run --queue` runs in a copy under .dvc/tmp/exps made from the commit, without git-ignored files: the
    demo kit (checkpoints, style references, scorer weights) is copied in with `-C demo/kit`, as the README says.
    Without it the experiment fails, and `dvc exp run --run-all` still exits 0 (DVC 3.67): the queue status tells."""
    ws, _, _ = review
    try:
        dvc(ws, "exp", "run", "--queue", "-n", "nokit", "-S", "standardize.bootstrap=60")
        queued = dvc(ws, "exp", "run", "--queue", "-C", "demo/kit", "-n", "boot50", "-S", "standardize.bootstrap=50")
        assert "Queued experiment 'boot50'" in queued
        out = dvc(ws, "exp", "run", "--run-all")  # (rc 0 although one failed: `dvc` raises on a non-zero rc)
        assert "Failed to reproduce experiment(s) 'nokit'" in out
        status = dvc(ws, "queue", "status")
        assert re.search(r"\bnokit\s.*Failed", status) and re.search(r"\bboot50\s.*Success", status), status
        logs = dvc(ws, "queue", "logs", "boot50")
    finally:
        dvc(ws, "queue", "stop")  # the worker would otherwise idle on for a minute
        dvc(ws, "queue", "remove", "--failed")
    # in the copy (outputs checked out of the cache, kit inputs copied in) only what the setting reaches runs
    assert ran(logs) == {"checkparams", "standardize", "arena", "report"}, logs
    assert unchanged(logs) == instances(A) | {"refstats"}, logs
    shown = json.loads(dvc(ws, "exp", "show", "--json"))
    exp = next(e["revs"][0] for base in shown for e in base["experiments"] or [] if e["revs"][0]["name"] == "boot50")
    assert exp["error"] is None and exp["data"]["params"]["params.yaml"]["data"]["standardize"]["bootstrap"] == 50
    # its metrics file, as its report stage wrote it: the same figures as the commit's (the number of bootstrap
    # resamples moves only the intervals, which metrics.json leaves to the leaderboard)
    workspace = next(base for base in shown if base["rev"] == "workspace")["data"]["metrics"]
    assert "error" not in exp["data"]["metrics"]["reports/metrics.json"]
    assert exp["data"]["metrics"] == workspace
    assert git(ws, "status", "--porcelain").strip() == ""  # the workspace is untouched


def test_add_model_keeps_params_comments_and_runs_only_its_stages(review):
    ws, _, _ = review
    before = (ws / "params.yaml").read_text()
    out = ghostreview(ws, "add-model", "demo/kit/models/tiny-sdxl-a.safetensors", "--name", B, "--clip-skip", "2")
    after = (ws / "params.yaml").read_text()
    assert f"added models.{B}" in out and "sdxl" in out
    changes = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]
    assert changes == [f"+   {B}:", "+     checkpoint: demo/kit/models/tiny-sdxl-a.safetensors", "+     clip_skip: 2"]
    assert "# key: a slug used in stage names" in after  # comments kept
    stale = json.loads(dvc(ws, "status", "--json"))  # (`dvc repro --dry` cannot plan stages whose deps are missing)
    assert set(stale) == instances(B) | {"checkparams", "standardize", "arena", "report"}

    out = dvc(ws, "repro")
    assert ran(out) == instances(B) | {"checkparams", "standardize", "arena", "report"}  # nothing of A, not refstats
    assert drawn(out) == {B: 4}
    board = (ws / "reports" / "leaderboard.csv").read_text()
    assert A in board and B in board
    assert "dvc.lock" in hinted(out) and "data/scores/.gitignore" in hinted(out)
    git(ws, "add", "params.yaml", *GIT_METRICS, *hinted(out))  # what a user commits: DVC's hint + the rest
    git(ws, "commit", "-qm", f"review of {A} and {B}")
    assert git(ws, "status", "--porcelain").strip() == ""


def test_one_prompt_and_a_second_seed_draw_only_the_new_images_and_keep_other_scores(review):
    ws, _, _ = review
    SNAPSHOT.update({m: tree(ws / "data" / "scores" / m) | tree(ws / "data" / "images" / m) for m in (A, B)})
    old = {m: (csv_rows(ws / "data" / "images" / m / "manifest.csv"),
               csv_rows(ws / "data" / "scores" / m / "aesthetic.csv")) for m in (A, B)}
    pngs = store_pngs(ws)
    prompts = yaml.safe_load((ws / "data" / "benchmark" / "small" / "prompts.yaml").read_text())
    first, changed = prompts["prompts"][0]["id"], prompts["prompts"][1]["id"]
    edit_yaml(ws / "data" / "benchmark" / "small" / "prompts.yaml",
              lambda d: d["prompts"][1].__setitem__("prompt", "best quality, an old lighthouse at dusk"))
    edit_yaml(ws / "params.yaml", lambda d: d["benchmark"]["images_per_item"].__setitem__("general", 2))

    out = dvc(ws, "repro", f"score@{A}", f"score@{B}")
    # checkparams: upstream of every stage, it writes their settings files; refstats: it reads the benchmark folder
    assert ran(out) == instances(A) | instances(B) | {"checkparams", "refstats"}
    # per model: the changed prompt's two seeds, and the new second seed of the other prompt
    assert drawn(out) == {A: 3, B: 3} and store_pngs(ws) == pngs + 6
    for m in (A, B):
        manifest = csv_rows(ws / "data" / "images" / m / "manifest.csv")
        scores = csv_rows(ws / "data" / "scores" / m / "aesthetic.csv")
        old_manifest, old_scores = old[m]
        seed0, seed1 = sorted({k[2] for k in manifest if k[0] == "general"}, key=int)
        assert set(manifest) == set(old_manifest) | {("general", first, seed1), ("general", changed, seed1)}
        redrawn = {k for k in old_manifest if manifest[k]["image_hash"] != old_manifest[k]["image_hash"]}
        assert redrawn == {("general", changed, seed0)}
        for key in set(old_manifest) - redrawn:
            assert scores[key] == old_scores[key]  # same image, same score row, bit for bit
        assert set(scores) == set(manifest)
        assert scored(out)[m]["aesthetic"] == (3, len(manifest) - 3)  # only the new images' values computed


def test_reverting_restores_every_output_from_the_run_cache(review):
    ws, _, _ = review
    git(ws, "checkout", "--", "params.yaml", "data/benchmark/small/prompts.yaml")
    out = dvc(ws, "repro")
    assert ran(out) == {"checkparams"}  # persist: true, never from the run cache; it writes the old files back
    assert restored(out) == instances(A) | instances(B) | {"refstats"}
    assert "up to date" in dvc(ws, "status").lower()
    assert git(ws, "status", "--porcelain").strip() == ""  # dvc.lock is the committed one again
    for m in (A, B):  # images, manifests and scores byte-identical to before the change
        assert tree(ws / "data" / "scores" / m) | tree(ws / "data" / "images" / m) == SNAPSHOT[m]


def test_scoring_setting_experiment_rescores_without_generating_and_shows_per_model_columns(review):
    ws, _, _ = review
    pngs = store_pngs(ws)
    aesthetic = {m: (ws / "data" / "scores" / m / "aesthetic.csv").read_bytes() for m in (A, B)}
    try:
        out = dvc(ws, "exp", "run", "-n", "good5", "-S", "scoring.aesthetic.good_threshold=5.0")
        # the threshold is standardize's (the good-image rate): no score stage's settings file changes
        assert ran(out) == {"checkparams", "standardize", "arena", "report"}
        assert not drawn(out) and store_pngs(ws) == pngs
        for m in (A, B):  # the threshold only changes the good-image rate: the scores are the same bytes
            assert (ws / "data" / "scores" / m / "aesthetic.csv").read_bytes() == aesthetic[m]

        table = list(csv.DictReader(io.StringIO(dvc(ws, "exp", "show", "--csv"))))
        for m in (A, B):  # per model: the headline numbers, the raw means beside the relative ones
            assert {f"{m}.combined", f"{m}.rank", f"{m}.aesthetic_mean", f"{m}.clipscore_mean",
                    f"{m}.styleloss_mean", f"{m}.loraloss_mean"} <= set(table[0])
            assert not {f"{m}.aesthetic", f"{m}.styleloss"} & set(table[0])  # no per-metric z columns any more
        assert {"_all.aesthetic_mean", "_all.aesthetic_std", "_all.aesthetic_good_rate", "_all.flagged_images"} \
            <= set(table[0])
        exp = next(r for r in table if r["Experiment"] == "good5")
        assert exp["scoring.aesthetic.good_threshold"] == "5.0" and float(exp[f"{A}.rank"]) in (1.0, 2.0)
        assert 0.0 <= float(exp["_all.aesthetic_good_rate"]) <= 1.0
    finally:
        git(ws, "checkout", "--", ".")  # back to the committed review; outputs come back from the cache
        dvc(ws, "checkout")
    assert "up to date" in dvc(ws, "status").lower()


def test_a_new_style_size_recomputes_only_the_style_metrics_values(review):
    """A scorer setting reruns every model's score stage, which recomputes only that scorer's values: the others are
    read back from the score store (counted in its summary line) and their tables stay the same bytes."""
    ws, _, _ = review
    kept = {m: {f: (ws / "data" / "scores" / m / f).read_bytes() for f in ("aesthetic.csv", "clipscore.csv")}
            for m in (A, B)}
    try:
        edit_yaml(ws / "params.yaml", lambda d: d["scoring"]["style"].__setitem__("image_size", 48))
        out = dvc(ws, "repro")  # (not --dry: dry runs look the run cache up with the old params)
        assert "refstats" not in restored(out), "the statistics at size 64 were checked out as the ones at 48"
        assert ran(out) == instances(A, ("score",)) | instances(B, ("score",)) | {
            "checkparams", "refstats", "standardize", "arena", "report"}
        for m, counts in scored(out).items():
            style, lora = counts["styleloss"], counts["loraloss"]
            assert counts["aesthetic"][0] == counts["clipscore"][0] == counts["clip image embeddings"][0] == 0, out
            assert style[0] > 0 and lora[0] > 0 and style[1] == lora[1] == 0, out  # every style value new
            for f, data in kept[m].items():
                assert (ws / "data" / "scores" / m / f).read_bytes() == data, (m, f)
        assert set(scored(out)) == {A, B}
    finally:
        git(ws, "checkout", "--", ".")
        dvc(ws, "checkout")


def test_adding_a_judge_to_a_finished_review_computes_only_that_judge(review):
    """Issue 16: the preference judges added to params reach every model's score stage, which computes their values
    and nothing else (no image drawn, every other metric's value read back from the score store)."""
    ws, _, _ = review
    pngs = store_pngs(ws)
    kept = {m: tree(ws / "data" / "scores" / m) for m in (A, B)}
    general = {m: sum(r[0] == "general" for r in csv_rows(ws / "data" / "images" / m / "manifest.csv"))
               for m in (A, B)}
    try:
        set_judges(ws / "params.yaml", (*FOUR, "hpsv21", "pickscore"))
        out = dvc(ws, "repro")
        assert ran(out) == instances(A, ("score",)) | instances(B, ("score",)) | {
            "checkparams", "standardize", "arena", "report"}
        assert not drawn(out) and store_pngs(ws) == pngs
        assert set(scored(out)) == {A, B}
        for m, counts in scored(out).items():
            old = ("aesthetic", "clipscore", "styleloss", "loraloss", "clip image embeddings")
            assert [counts[k][0] for k in old] == [0] * len(old), out  # nothing else computed
            assert counts["hpsv21"] == counts["pickscore"] == (general[m], 0), out
            now = tree(ws / "data" / "scores" / m)
            assert set(now) == set(kept[m]) | {"hpsv21.csv", "pickscore.csv"}
            assert {f: now[f] for f in kept[m]} == kept[m]  # the other tables: the same bytes
        assert "HPSv2.1" in (ws / "reports" / "leaderboard.md").read_text()
    finally:
        git(ws, "checkout", "--", ".")
        dvc(ws, "checkout")


def test_reports_publish_to_a_remote_and_pull_back_byte_identical_while_images_stay_local(review):
    ws, _, _ = review
    published = ws.parent / "published"
    dvc(ws, "remote", "add", "--local", "publish", str(published))
    dvc(ws, "push", "-r", "publish", "report")

    reader = ws.parent / "reader"
    run(["git", "clone", "-q", str(ws), str(reader)], ws.parent, env_for(ws))
    dvc(reader, "remote", "add", "--local", "publish", str(published))
    dvc(reader, "pull", "-r", "publish", "report")
    assert tree(reader / "reports") == tree(ws / "reports")
    assert {"index.html", "leaderboard.csv", "metrics.json"} <= set(tree(reader / "reports"))
    # no image came with the report (data/images holds only DVC's committed .gitignore)
    assert [p.name for p in (reader / "data" / "images").rglob("*") if p.is_file()] == [".gitignore"]
    images = list((ws / "data" / "images").rglob("*.png"))
    assert len(images) == 8
    for png in images:
        assert not in_remote(published, md5(png))  # the images stayed out of the published remote


def test_a_coordinator_restores_the_workers_results_from_the_remote_without_recomputing(review):
    ws, _, _ = review
    remote = ws.parent / "ghostreview-dvc-remote"  # the committed default remote: ../ghostreview-dvc-remote
    dvc(ws, "repro", "--pull", *sorted(instances(A)))  # this workspace was the worker: up to date
    dvc(ws, "push", "--run-cache")
    assert all(in_remote(remote, md5(png)) for png in (ws / "data" / "images").rglob("*.png"))

    coordinator = ws.parent / "coordinator"
    run(["git", "clone", "-q", str(ws), str(coordinator)], ws.parent, env_for(ws))
    shutil.copytree(ws / "demo" / "kit", coordinator / "demo" / "kit")  # every machine has the checkpoints
    # Workers do not commit dvc.lock: the coordinator knows the models from params.yaml (and reports/metrics.json,
    # kept in git, which `report` would rewrite if it were stale) and nothing else.
    (coordinator / "dvc.lock").unlink()
    out = dvc(coordinator, "repro", "--pull")
    # Everything comes from the run cache, except `report`: its reports/metrics.json is kept in git (cache: false),
    # so the remote has no copy to check out and the report (seconds) is rewritten, identical; and checkparams, whose
    # output is `persist: true`, which DVC never takes from the run cache (a few seconds: params.yaml checked, the
    # settings and code files written, the same bytes as the workers', so nothing downstream is stale).
    assert restored(out) == instances(A) | instances(B) | {"refstats", "standardize", "arena"}
    assert ran(out) == {"checkparams", "report"}
    assert not (coordinator / "store").exists()  # not one image drawn here
    for directory in ("data/images", "data/scores", "reports"):
        assert tree(coordinator / directory) == tree(ws / directory), directory
    assert yaml.safe_load((coordinator / "dvc.lock").read_text()) == yaml.safe_load((ws / "dvc.lock").read_text())
    assert "up to date" in dvc(coordinator, "status").lower()


def standardized_rows(ws: Path, model: str) -> tuple[list[dict], list[dict]]:
    """``model``'s metric score rows (all but the ranks, which a new model moves) and image z rows of
    data/standardized, every value as written."""
    def rows(name: str) -> list[dict]:
        with open(ws / "data" / "standardized" / f"{name}.csv", newline="", encoding="utf-8") as fh:
            return [{k: v for k, v in r.items() if not k.startswith("rank")} for r in csv.DictReader(fh)
                    if r["model"] == model]
    return rows("scores"), rows("images")


def test_with_a_reference_set_adding_a_model_leaves_the_others_scores_unchanged_bit_for_bit(review):
    """Issue 19's promise through DVC: freeze the two-model review as a reference set, review against it, add a
    third model: every metric score, its interval and image z of the first two is the same text as before (their
    ranks move: a model was added; the combined score averages the metrics every model has: compared too where that
    set did not change). Then the workspace is put back as it was (C removed, the pool again) for the tests after."""
    ws, _, _ = review
    params_before = (ws / "params.yaml").read_text()
    out = ghostreview(ws, "freeze-reference", "pair")
    assert "references/pair.json: frozen" in out
    edit_yaml(ws / "params.yaml", lambda d: d["standardize"].__setitem__("reference", "pair"))
    out = dvc(ws, "repro")
    assert ran(out) >= {"standardize", "report"} and not any("@" in s for s in ran(out) | restored(out))
    before = {m: standardized_rows(ws, m) for m in (A, B)}
    over = json.loads((ws / "data" / "standardized" / "meta.json").read_text())["combined_over"]
    assert "reference set pair" in (ws / "reports" / "leaderboard.md").read_text()
    ghostreview(ws, "add-model", "demo/kit/models/tiny-sd15-b.safetensors", "--name", C)
    out = dvc(ws, "repro")
    assert ran(out) >= instances(C) | {"standardize", "report"} and not (ran(out) & (instances(A) | instances(B)))
    same_over = json.loads((ws / "data" / "standardized" / "meta.json").read_text())["combined_over"] == over
    for m in (A, B):
        (scores, images), (scores_now, images_now) = before[m], standardized_rows(ws, m)
        kept = [r for r in scores if same_over or r["metric"] != "combined"]
        assert kept and kept == [r for r in scores_now if same_over or r["metric"] != "combined"], m
        assert images and images == images_now, m
    assert standardized_rows(ws, C)[0]  # C is scored, against the same anchors
    ghostreview(ws, "remove-model", C)
    (ws / "references" / "pair.json").unlink()
    (ws / "params.yaml").write_text(params_before)


def test_remove_model_takes_it_out_of_params_outputs_lock_and_report(review):
    ws, _, _ = review
    out = ghostreview(ws, "remove-model", B)
    assert f"removed models.{B}" in out
    assert B not in yaml.safe_load((ws / "params.yaml").read_text())["models"]
    assert not (ws / "data" / "images" / B).exists() and not (ws / "data" / "scores" / B).exists()
    assert f"@{B}" not in (ws / "dvc.lock").read_text()
    assert f"/{B}" not in (ws / "data" / "images" / ".gitignore").read_text()
    out = dvc(ws, "repro")
    # the one-model review of the start has exactly these inputs again: its results come from the run cache
    assert restored(out) | ran(out) == {"checkparams", "standardize", "arena", "report"} and "checkparams" in ran(out)
    board = (ws / "reports" / "leaderboard.csv").read_text()
    assert A in board and B not in board
    assert "up to date" in dvc(ws, "status").lower()


def test_clean_demo_removes_the_demo_and_its_outputs_and_keeps_the_gitignores_every_review_has(review):
    """`make clean-demo` (last: it ends the workspace's review) before a real review in the demo's workspace."""
    ws, _, _ = review
    run(["make", "clean-demo"], ws, env_for(ws))
    assert not (ws / "demo" / "kit").exists() and not (ws / "dvc.lock").exists()
    for out in ("data/images", "data/scores", "data/refstats", "data/standardized"):
        assert not (ws / out).exists(), out
    assert [p.name for p in (ws / "reports").iterdir()] == [".gitignore"]
    assert (ws / "data" / ".gitignore").is_file()
    status = git(ws, "status", "--porcelain").splitlines()  # (params.yaml: modified by remove-model, uncommitted)
    assert not [line for line in status if line.startswith("??")], status  # nothing left untracked
    deleted = {line[3:] for line in status if line.startswith(" D ")}
    assert {"dvc.lock", "reports/metrics.json", "data/images/.gitignore", "data/scores/.gitignore"} <= deleted
    assert not {"data/.gitignore", "reports/.gitignore"} & deleted
