"""One owner per fact: the atomic writer, the slug rule, "did you mean", the YAML reader and the shared column lists.

The owners are tested here against plain expectations; an AST scan of ``ghostreview/`` and ``stages/`` keeps every
other module from growing its own copy again. Each allow-list entry says why; ``PENDING`` entries are copies whose
owners switch to the shared definition (a test keeps each entry true, so a switched file must leave the list).
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from ghostreview.util import atomic, names, yamlio

ROOT = Path(__file__).resolve().parents[1]
SCANNED = sorted(p for d in ("ghostreview", "stages") for p in (ROOT / d).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _trees() -> dict[str, ast.Module]:
    return {_rel(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in SCANNED}


TREES = _trees()


# ---------------------------------------------------------------------------------------------------- atomic writes
def test_write_atomic_replaces_the_file_and_leaves_no_temporary_behind(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    assert atomic.write_bytes_atomic(target, b"old\n") == target  # the directory is created
    atomic.write_atomic(target, lambda f: f.write(b"new\n"))
    assert target.read_bytes() == b"new\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_a_failing_writer_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_bytes(b"complete\n")

    def half(f):
        f.write(b"half a ")
        raise RuntimeError("disk full")

    def save_half(tmp):
        with open(tmp, "wb") as f:
            half(f)

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_atomic(target, half)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic.save_atomic(target, save_half)
    assert target.read_bytes() == b"complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umask_default(tmp_path):
    kept = tmp_path / "params.yaml"
    kept.write_text("a: 1\n")
    os.chmod(kept, 0o640)
    atomic.write_text_atomic(kept, "a: 2\n")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "a: 2\n"
    atomic.save_atomic(kept, lambda tmp: Path(tmp).write_text("a: 3\n"))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "a: 3\n"

    umask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives: the mode a new atomic file must get too (not mkstemp's 0o600)
        for new in (atomic.write_text_atomic(tmp_path / "new.txt", "x"),
                    atomic.save_atomic(tmp_path / "saved.txt", lambda tmp: Path(tmp).write_text("x"))):
            assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    finally:
        os.umask(umask)


def test_save_atomic_gives_the_writer_a_fresh_path_with_the_target_suffix(tmp_path):
    seen = []
    atomic.save_atomic(tmp_path / "w.safetensors", lambda tmp: (seen.append(Path(tmp)), Path(tmp).write_bytes(b"w")))
    assert seen[0].parent == tmp_path and seen[0].suffix == ".safetensors" and seen[0].name.startswith(".w.")
    assert not seen[0].exists() and (tmp_path / "w.safetensors").read_bytes() == b"w"


def test_write_temp_then_move_into_place(tmp_path):
    target = tmp_path / "a.png"
    tmp = atomic.write_temp(target, lambda f: f.write(b"png"))
    assert tmp.parent == tmp_path and tmp.read_bytes() == b"png" and not target.exists()
    atomic.move_into_place(tmp, target)
    assert target.read_bytes() == b"png" and not tmp.exists()


def test_replace_dir_swaps_a_whole_tree_and_keeps_the_old_one_on_error(tmp_path):
    dest = tmp_path / "kit"

    def build(version):
        def fill(d):
            (d / "models").mkdir()
            (d / "models" / "a.txt").write_text(version)
        return fill

    atomic.replace_dir(dest, build("1"))
    (dest / "stale.txt").write_text("from the old tree")
    atomic.replace_dir(dest, build("2"))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["models", "models/a.txt"]
    assert (dest / "models" / "a.txt").read_text() == "2"

    def broken(d):
        (d / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic.replace_dir(dest, broken)
    assert (dest / "models" / "a.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["kit"]


def test_create_dir_once_builds_only_a_missing_directory(tmp_path):
    dest, calls = tmp_path / "refs", []

    def build(d):
        calls.append(d)
        (d / "r.png").write_bytes(b"r")

    assert atomic.create_dir_once(dest, build) == dest
    atomic.create_dir_once(dest, build)
    assert len(calls) == 1 and (dest / "r.png").read_bytes() == b"r"
    assert [p.name for p in tmp_path.iterdir()] == ["refs"]


def test_create_dir_once_discards_the_copy_of_a_builder_that_lost_the_race(tmp_path):
    dest = tmp_path / "refs"

    def racing(d):  # another process finishes first, while this one is still building
        (d / "mine.png").write_bytes(b"mine")
        dest.mkdir()
        (dest / "theirs.png").write_bytes(b"theirs")

    atomic.create_dir_once(dest, racing)
    assert [p.name for p in dest.iterdir()] == ["theirs.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["refs"]


# Renames outside util/atomic.py. Legitimate ones move an existing file or directory, which no writer can do.
RENAMES_ALLOWED = {
    "ghostreview/generation/store.py": "set_aside moves a damaged entry into the quarantine (a move, not a write)",
}
RENAMES_PENDING: dict[str, str] = {}  # owners switch these to ghostreview.util.atomic


def _renames(tree: ast.Module) -> list[int]:
    """Lines calling os.replace / os.rename / shutil.move, or ``x.rename(y)`` / ``x.replace(y)`` (pathlib's)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        owner = f.value.id if isinstance(f.value, ast.Name) else None
        if (owner, f.attr) in {("os", "replace"), ("os", "rename"), ("shutil", "move")}:
            lines.append(node.lineno)
        elif f.attr in ("rename", "replace") and len(node.args) == 1 and not node.keywords and not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            # not str.replace (two arguments), DataFrame.rename (keywords), Series.rename("z")
            lines.append(node.lineno)
    return lines


def test_only_the_atomic_module_renames_files():
    found = {path: lines for path, tree in TREES.items() if (lines := _renames(tree))}
    found.pop("ghostreview/util/atomic.py", None)
    allowed = RENAMES_ALLOWED | RENAMES_PENDING
    assert {p: ls for p, ls in found.items() if p not in allowed} == {}, "use ghostreview.util.atomic"
    assert sorted(p for p in allowed if p not in found) == [], "switched: take it off the allow-list"


# ---------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("text, model, table", [
    ("DreamShaper_8", "dreamshaper_8", "dreamshaper_8"),
    ("MoXin v1.0", "moxin-v1-0", "moxin_v1_0"),
    ("  Ink  Wash!!  ", "ink-wash", "ink_wash"),
    ("a__b--c", "a__b--c", "a_b_c"),
    ("_hidden-", "hidden", "hidden"),
    ("Ünïcode Ø", "n-code", "n_code"),
    ("+++", "", ""),
])
def test_the_slug_presets(text, model, table):
    assert names.model_slug(text) == model and names.table_slug(text) == table
    assert names.table_slug("+++", default="lora") == "lora"


def test_a_model_slug_is_a_params_key_dvc_can_address():
    """A '.' in a params key splits DVC's params path (models.a.b reads as two levels): the key rule refuses it."""
    import re

    for text in ("v1.5", "../evil", "a\nb", "sd 1.5 (pruned).ckpt", "-x-", "Ø1"):
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", names.model_slug(text)), text


def test_slug_keeps_case_and_characters_when_asked():
    assert names.slug("Low Poly.v2", keep="_.-", lower=False, default="style") == "Low_Poly.v2"
    assert names.slug("", default="style") == "style"


@pytest.mark.parametrize("word, options, cutoff, quote, hint", [
    ("generaton", ["generation", "models"], 0.6, '"', ' Did you mean "generation"?'),
    ("clipscor", ["aesthetic", "clipscore"], 0.6, "'", " Did you mean 'clipscore'?"),
    ("zzz", ["generation"], 0.6, '"', ""),
    (12, ["1", "12x"], 0.6, '"', ' Did you mean "12x"?'),  # a YAML key that is a number
])
def test_did_you_mean(word, options, cutoff, quote, hint):
    assert names.did_you_mean(word, options, cutoff, quote) == hint


def test_closest_takes_the_best_match_above_the_cutoff():
    samplers = ["Euler", "Euler a", "DPM++ 2M Karras"]
    assert names.closest("euler a", samplers, cutoff=0.5) == "Euler a"
    assert names.closest("DPM++ 2M Karas", samplers) == "DPM++ 2M Karras"
    assert names.closest("heun", samplers) is None


# config.py imports nothing of the project, so it keeps marked copies of these two; they must give the same output.
# Not "_x": config's copy strips only "-" today ("_x" -> "_x", an invalid suggestion); add it once the copy strips "-_".
COPY_INPUTS = ["DreamShaper 8", "../evil", "a.b", "Model+V2", "x--y", "Ünïcode", "sd15", "m1\n"]


def test_configs_copy_of_the_model_slug_agrees():
    config = pytest.importorskip("ghostreview.config")
    for text in COPY_INPUTS:
        assert config._slugify(text) == names.model_slug(text, default="model"), text


def test_configs_copy_of_did_you_mean_agrees():
    config = pytest.importorskip("ghostreview.config")
    keys = ["generation", "models", "scoring", "report", "checkpoint"]
    for word in ("generaton", "model", "chekpoint", "zzz", "scorin", ""):
        assert config._did_you_mean(word, keys) == names.did_you_mean(word, keys), word


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _calls(node: ast.AST) -> set[str]:
    """Names of the functions ``node`` calls (``f(...)`` and ``x.f(...)``)."""
    return {c.func.id if isinstance(c.func, ast.Name) else c.func.attr for c in ast.walk(node)
            if isinstance(c, ast.Call) and isinstance(c.func, (ast.Name, ast.Attribute))}


SLUG_COPIES = {
    "ghostreview/config.py": "the leaf's marked copy of model_slug (test_configs_copy_of_the_model_slug_agrees)",
}
SLUG_PENDING: dict[str, str] = {}


def test_every_slug_function_uses_the_one_rule():
    """A function named *slug* outside util/names.py must call names' rule, not carry a rule of its own."""
    rule = {"slug", "model_slug", "table_slug"}
    found = {path for path, tree in TREES.items() if path != "ghostreview/util/names.py"
             for f in _functions(tree) if "slug" in f.name.lower() and not (_calls(f) & rule)}
    allowed = SLUG_COPIES | SLUG_PENDING
    assert sorted(found - set(allowed)) == [], "use ghostreview.util.names"
    assert sorted(set(allowed) - found) == [], "switched: take it off the allow-list"


HINT_COPIES = {
    "ghostreview/config.py": "the leaf's marked copy of did_you_mean (test_configs_copy_of_did_you_mean_agrees)"}
HINT_PENDING: dict[str, str] = {}


def test_only_names_looks_for_close_matches():
    found = {path for path, tree in TREES.items() if "get_close_matches" in _calls(tree)}
    found.discard("ghostreview/util/names.py")
    allowed = HINT_COPIES | HINT_PENDING
    assert sorted(found - set(allowed)) == [], "use ghostreview.util.names.did_you_mean / closest"
    assert sorted(set(allowed) - found) == [], "switched: take it off the allow-list"


# ---------------------------------------------------------------------------------------------------- YAML
BAD_YAML = {
    "duplicate key": (b"a: 1\nb: 2\na: 3\n", "duplicate key"),
    "alias bomb": (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                   + b"".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode()
                              for p, c in zip("abcdef", "bcdefg")), "aliases (*name) expand to more than 100,000"),
    "an alias inside itself": (b"a: &a [1, *a]\n", "an alias that contains itself"),
    "not UTF-8": (b"a: \xff\n", "not UTF-8 text"),
    "nested too deeply": (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
    "bad syntax": (b"a: b: c\n", "not valid YAML"),
}


@pytest.mark.parametrize("read", [yamlio.read_yaml, yamlio.read_yaml_lines])
@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_both_readers_refuse_the_same_files(tmp_path, read, case):
    text, message = BAD_YAML[case]
    path = tmp_path / "f.yaml"
    path.write_bytes(text)
    with pytest.raises(yamlio.YamlError) as err:
        read(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert err.value.syntax == (case in ("bad syntax", "duplicate key"))  # both parsers report a duplicate key
    assert len(str(err.value)) < 600


def test_both_readers_give_the_same_data_and_merge_keys_work(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: &d {steps: 20, cfg: 7}\nrun:\n  <<: *d\n  steps: 30\nlist: [1, two, null]\n")
    plain, lines = yamlio.read_yaml(path), yamlio.read_yaml_lines(path)
    assert plain == {"base": {"steps": 20, "cfg": 7}, "run": {"steps": 30, "cfg": 7}, "list": [1, "two", None]}
    assert dict(lines["run"]) == plain["run"] and list(lines["list"]) == plain["list"]
    assert lines.lc.key("list") == (4, 0)  # 0-based line and column, as ruamel records them
    (tmp_path / "empty.yaml").write_text("")
    assert yamlio.read_yaml(tmp_path / "empty.yaml") is None is yamlio.read_yaml_lines(tmp_path / "empty.yaml")


def test_a_syntax_error_cites_the_file_and_line(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("a: 1\nb: c: d\n")
    with pytest.raises(yamlio.YamlError) as err:
        yamlio.read_yaml_lines(path)
    assert f'"{path}", line 2' in err.value.detail


def test_only_yamlio_builds_a_strict_loader():
    """No other module subclasses PyYAML's loaders or sizes a composed node graph."""
    found = {path for path, tree in TREES.items()
             if "get_single_node" in _calls(tree) or any(
                 isinstance(n, ast.ClassDef) and any("Loader" in ast.unparse(b) for b in n.bases)
                 for n in ast.walk(tree))}
    found.discard("ghostreview/util/yamlio.py")
    assert sorted(found) == [], "use ghostreview.util.yamlio"


# ---------------------------------------------------------------------------------------------------- shared lists
OWNERS = {
    "FAMILIES": "ghostreview/generation/families.py",
    "SCORE_COLUMNS": "ghostreview/scoring/table.py",  # the score-row contract; standardize reads VALUE_COLUMNS of it
    "MANIFEST_COLUMNS": "ghostreview/generation/manifest.py",
    "IMAGE_SUFFIXES": "ghostreview/protocol.py",  # the benchmark's reference files; style loss opens the same set
}
OWNERS_PENDING = {  # (name, module): what the owner does
}


def _assigned(tree: ast.Module) -> set[str]:
    names_ = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        names_ |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names_


def test_each_shared_list_is_assigned_by_its_owner_only():
    found = {(name, path) for path, tree in TREES.items() for name in _assigned(tree) & set(OWNERS)}
    assert {name for name, path in found if path == OWNERS[name]} == set(OWNERS)
    strays = {(n, p) for n, p in found if p != OWNERS[n]}
    assert sorted(strays - set(OWNERS_PENDING)) == [], "import the list from its owner"
    assert sorted(set(OWNERS_PENDING) - strays) == [], "switched: take it off the allow-list"


def test_score_rows_means_one_thing():
    """``scoring.table.score_rows`` builds tidy score rows; standardize's per-model output rows are
    ``estimate_rows``."""
    found = {path for path, tree in TREES.items() for f in _functions(tree) if f.name == "score_rows"}
    assert found == {"ghostreview/scoring/table.py"}


def test_standardize_reads_the_score_contract_not_a_copy():
    from ghostreview.analysis import standardize
    from ghostreview.scoring import table

    assert standardize.VALUE_COLUMNS is table.VALUE_COLUMNS
    assert table.SCORE_COLUMNS[:len(table.VALUE_COLUMNS)] == table.VALUE_COLUMNS
    assert set(table.PROVENANCE_COLUMNS).isdisjoint(table.VALUE_COLUMNS)


def test_the_report_reads_manifest_columns_the_manifest_contract_has():
    from ghostreview.analysis.report.html import REPORT_COLUMNS
    from ghostreview.generation.manifest import MANIFEST_COLUMNS

    assert set(REPORT_COLUMNS) <= set(MANIFEST_COLUMNS)


def test_configs_copy_of_the_task_list_agrees():
    """config.py is a leaf: its TASKS is a marked copy of the protocol's."""
    from ghostreview import config, protocol

    assert config.TASKS == protocol.TASKS
