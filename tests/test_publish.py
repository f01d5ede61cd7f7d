"""A published report is whole on a second clone: the report stage's declared outputs hold everything its page
links to, so ``dvc push report`` then ``dvc pull report`` elsewhere gives an index and grid pages whose every image
loads.

A throwaway DVC + git project whose one stage, ``report``, writes a report of the small fixture review of
tests/test_report.py (with 288 px images of random pixels, as large as real ones) and declares exactly the outputs
the project's own ``report`` stage declares in dvc.yaml. Needs Debian's chromium (skipped otherwise).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report_browser import CHROMIUM, broken_images, live, scroll_through

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.dvc, pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium")]

BUILD = '''import sys
from pathlib import Path

sys.path[:0] = [{tests!r}, {root!r}]
from test_report import METRICS, make_demo  # noqa: E402

from ghostreview.analysis.report import write_report  # noqa: E402

result, scores, manifests, models, images = make_demo(Path(sys.argv[1]), sdxl_lora=True, size=288, noise=True)
write_report(result, scores, manifests, models, images, Path("reports"), metrics=METRICS)
'''


def run(cwd: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def dvc(cwd: Path, *args: str) -> str:
    return run(cwd, sys.executable, "-m", "dvc", *args)


def report_stage(fixture: Path) -> dict:
    """The project's report stage with our command and no deps: its ``outs`` and ``metrics`` exactly."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    return {"cmd": f"{sys.executable} build_report.py {fixture}", "deps": ["build_report.py"],
            **{k: stage[k] for k in ("outs", "metrics") if k in stage}}


def untracked(cwd: Path) -> list[str]:
    return [line for line in run(cwd, "git", "status", "--porcelain", "--untracked-files=all").splitlines()
            if line.strip()]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_pulled_report_shows_every_image(tmp_path):
    project, remote, fixture = tmp_path / "project", tmp_path / "remote", tmp_path / "fixture"
    project.mkdir()
    run(project, "git", "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "remote", "add", "-d", "publish", str(remote))
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text())  # the project's rules
    (project / "build_report.py").write_text(BUILD.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": report_stage(fixture)}}))
    dvc(project, "repro", "-q")
    tracked = ["dvc.yaml", "dvc.lock", "build_report.py", ".gitignore", ".dvc", "reports/.gitignore"]
    stage = report_stage(fixture)
    tracked += [path for entry in stage["metrics"] for path, opts in entry.items() if opts.get("cache") is False]
    run(project, "git", "add", *tracked)
    run(project, "git", "commit", "-q", "-m", "review")
    assert untracked(project) == []  # everything the stage wrote is either committed or a DVC output
    pngs = sorted(fixture.rglob("*.png"))
    assert len(pngs) == 24 and min(p.stat().st_size for p in pngs) > 65_536  # real-sized images
    dvc(project, "push", "-q", "report")

    reader = tmp_path / "reader"
    run(tmp_path, "git", "clone", "-q", str(project), str(reader))
    dvc(reader, "pull", "-q", "report")
    assert untracked(reader) == []  # no "?? reports/..." on the reader's clone
    assert not [p for p in pngs if any(remote.rglob(md5(p)[2:]))]  # the originals stayed out of the remote

    index = reader / "reports" / "index.html"
    pages = sorted((reader / "reports" / "pages").glob("*.html"))
    linked = {str((index.parent / href.split("#")[0]).resolve()) for href in
              re.findall(r'<a href="(pages/[^"]+)"', index.read_text())}
    assert linked == {str(p.resolve()) for p in pages} and len(pages) == 4  # the index links every grid page
    images, full = [], []
    for page in [index, *pages]:
        with live(page) as tab:
            scroll_through(tab)
            images += tab.evaluate("() => [...document.querySelectorAll('td.cell img')].map(i => i.src)")
            assert broken_images(tab) == [], page.name
            full += [page.parent / f for f in tab.evaluate(
                "() => [...document.querySelectorAll('td.cell a.shot')].map(a => a.getAttribute('href'))")]
    assert len(images) == len(full) == len(pngs)  # every drawn image is in a grid, its full view came along too
    assert all(f.is_file() for f in full)
