"""DVC reruns a stage only when a dep changes: each stage's code must be fingerprinted, and the code that decides
pixels (which the image store keys by ``DRAW_VERSION``, not by the code) is pinned by a hash.

A stage's code is its script's import closure inside ``ghostreview/`` plus the package data its modules read
(``ghostreview/util/imports.py``: read with ``ast``, lazy imports included). Each stage depends on one file,
``data/params/code/<script>.json``, that the checkparams stage writes (the sha256 of each of those files), and
checkparams lists every one of them in dvc.yaml, so an edit of any reruns it and, through the fingerprints, exactly the
stages whose code changed. ``PACKAGE_DATA`` (in ``util.imports``) names the directory each module that reads its own
files reads; a test holds it to the code both ways. A declared table was chosen over inferring paths from the code,
which builds them with ``/`` from constants and cannot be evaluated without running it.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import re
import shutil
from pathlib import Path

import yaml
from conftest import stage_script

from ghostreview.generation import drawversion
from ghostreview.util.imports import (
    PACKAGE,
    PACKAGE_DATA,
    ROOT,
    closure,
    imported_names,
    module_file,
    project_imports,
    rel,
    stage_needs,
    tree_of,
)

__all__ = ["PACKAGE", "ROOT", "project_imports", "rel"]  # tests/test_layout.py reads the import reader through here
PIN_FILE = "ghostreview/generation/drawversion.py"
CODE_DIR = "data/params/code/"

# modules that the pixel-deciding code imports but that cannot alter a pixel, with the reason
NOT_PIXEL = {
    "ghostreview/__init__.py": "holds __version__ only, which goes into the infotext, not into pixels",
    "ghostreview/errors.py": "exception classes and the stages' error wrapper: what a failure says, never a pixel",
    "ghostreview/util/__init__.py": "the package docstring",
    "ghostreview/util/atomic.py": "how files are written (temporary sibling, fsync, rename), never what they hold",
    "ghostreview/util/names.py": "slugs and 'did you mean' hints: what an error message suggests",
}
DATA_READERS = {"importlib.resources", "pkgutil", "pkg_resources"}


def dvc_stages() -> dict[str, tuple[str, list[str]]]:
    """{stage: (script, deps)} of dvc.yaml; a ``foreach`` stage counts once (its code deps take no ``${...}``)."""
    stages = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        body = stage.get("do", stage)
        script = re.search(r"\bpython (stages/\S+\.py)\b", body["cmd"])
        assert script, f"dvc.yaml stage {name}: no `python stages/<script>.py` in its cmd {body['cmd']!r}"
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        stages[name] = (script.group(1), [d.rstrip("/") for d in deps])
    return stages


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep + "/")


def scripts() -> list[str]:
    return sorted(rel(p) for p in (ROOT / "stages").glob("*.py"))


def all_code() -> set[str]:
    return set().union(*(stage_needs(s) for s in scripts()))


def test_checkparams_lists_every_file_that_decides_a_stage_output():
    _, deps = dvc_stages()["checkparams"]
    missing = sorted(p for p in all_code() if not any(covers(d, p) for d in deps))
    assert not missing, (
        "dvc.yaml: checkparams, which fingerprints every stage's code, leaves out files that decide stage outputs "
        "(after a change to one, `dvc status` would call stale outputs up to date); add them to its deps: "
        + ", ".join(missing)
    )


def test_checkparams_lists_no_project_code_that_no_stage_reads():
    _, deps = dvc_stages()["checkparams"]
    needs = all_code()
    unread = [d for d in deps if d.split("/")[0] in (PACKAGE, "stages") and not any(covers(d, p) for p in needs)]
    assert not unread, f"dvc.yaml: checkparams deps that no stage's code imports or reads: {', '.join(unread)}"


def test_every_other_stage_depends_on_its_code_fingerprint_and_lists_no_code():
    wrong = {}
    for name, (script, deps) in dvc_stages().items():
        if name == "checkparams":
            continue
        code = [d for d in deps if d.split("/")[0] in (PACKAGE, "stages") or d.startswith(CODE_DIR)]
        if code != [f"{CODE_DIR}{Path(script).stem}.json"]:
            wrong[name] = code
    assert not wrong, (
        f"each stage depends on its script's fingerprint ({CODE_DIR}<script>.json, written by checkparams) and on no "
        f"code file itself (DVC would check forty per instance): {wrong}"
    )


def test_a_code_edit_changes_the_fingerprints_of_exactly_the_stages_that_run_it(tmp_path):
    for d in ("stages", PACKAGE):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    write = stage_script("checkparams").code_texts
    before = write(tmp_path / "stages")
    assert set(before) == {f"code/{Path(s).stem}.json" for s in scripts()}
    edited = "ghostreview/analysis/report/plots.py"
    with open(tmp_path / edited, "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    after = write(tmp_path / "stages")
    changed = {k for k in before if before[k] != after[k]}
    expected = {f"code/{Path(s).stem}.json" for s in scripts() if edited in stage_needs(s)}
    assert changed == expected and "code/report.json" in changed and "code/score.json" not in changed


def test_no_stage_lists_a_directory_of_python_modules():
    # DVC hashes a directory with everything in it, __pycache__ included (checked on dvc 3.67.1), and Python writes
    # bytecode there on import: the stage would look changed after the first run, or a run under another Python.
    ignored = "__pycache__" in (ROOT / ".dvcignore").read_text(encoding="utf-8")
    code_dirs = sorted({d for _, deps in dvc_stages().values() for d in deps
                        if (ROOT / d).is_dir() and any((ROOT / d).rglob("*.py"))})
    assert ignored or not code_dirs, (
        f"dvc.yaml lists directories of Python modules: {', '.join(code_dirs)}. List their modules instead (or put "
        f"__pycache__/ into .dvcignore)"
    )


def test_package_data_table_matches_the_code():
    readers = set()
    for file in sorted((ROOT / PACKAGE).rglob("*.py")):
        path, tree = rel(file), tree_of(rel(file))
        uses_file = any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(tree))
        if uses_file or DATA_READERS & set(imported_names(path).values()):
            readers.add(path)
    readers -= {"ghostreview/util/imports.py"}  # locates the checkout to read code, not package data
    assert readers == set(PACKAGE_DATA), (
        f"modules that read files next to them: {sorted(readers)}; PACKAGE_DATA in {rel(Path(__file__))} names "
        f"{sorted(PACKAGE_DATA)}: add each reader with the directory it reads (and list that directory in dvc.yaml)"
    )
    for module, data in PACKAGE_DATA.items():
        strings = {n.value for n in ast.walk(tree_of(module)) if isinstance(n, ast.Constant)}
        assert (ROOT / data).is_dir() and Path(data).name in strings, (
            f"PACKAGE_DATA says {module} reads {data}, but that is no directory or the module never names "
            f"{Path(data).name!r}"
        )


# ------------------------------------------------------------------------------------------------ the pixel pin


def is_docstring(stmt: ast.stmt | None) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and is_docstring(
                node.body[0] if node.body else None):
            node.body = node.body[1:]
    return tree


def canonical(node) -> str:
    """The AST as text: node types and fields, no positions. Empty fields are left out, so that a field a newer Python
    adds empty (``type_params`` in 3.12) keeps the text, and with it the pin, the same (``ast.dump`` changed in
    3.13)."""
    if isinstance(node, ast.AST):
        fields = ((f, v) for f in node._fields if (v := getattr(node, f, None)) not in (None, []))
        return f"{type(node).__name__}({','.join(f'{f}={canonical(v)}' for f, v in fields)})"
    if isinstance(node, list):
        return f"[{','.join(map(canonical, node))}]"
    return repr(node)


def defined_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement defines: a function's or class's name, an assignment's plain targets."""
    if hasattr(node, "name"):
        return [node.name]
    targets = getattr(node, "targets", [getattr(node, "target", None)])
    return [t.id for t in targets if isinstance(t, ast.Name)]


def definition(path: str, name: str) -> ast.AST:
    """The top-level function, class or assignment ``name`` of ``path``."""
    for node in tree_of(path).body:
        if name in defined_names(node):
            return node
    raise AssertionError(f"{PIN_FILE} pins {path}:{name}, which {path} no longer defines: update PIXEL_FUNCTIONS")


def draw_code_sha256() -> str:
    """sha256 over the pinned modules, functions (docstrings and comments left out) and data files."""
    h = hashlib.sha256()
    for path in sorted(drawversion.PIXEL_MODULES):
        h.update(f"{path}\0{canonical(without_docstrings(copy.deepcopy(tree_of(path))))}\0".encode())
    for path, names in sorted(drawversion.PIXEL_FUNCTIONS.items()):
        for name in sorted(names):
            node = without_docstrings(copy.deepcopy(definition(path, name)))
            h.update(f"{path}:{name}\0{canonical(node)}\0".encode())
    for data in sorted(drawversion.PIXEL_DATA):
        for file in sorted(p for p in (ROOT / data).rglob("*") if p.is_file()):
            h.update(f"{rel(file)}\0".encode() + file.read_bytes() + b"\0")
    return h.hexdigest()


def test_drawing_code_matches_its_pin_next_to_draw_version():
    new = draw_code_sha256()
    assert new == drawversion.DRAW_CODE_SHA256, (
        f"the pixel-deciding code changed: bump DRAW_VERSION in {PIN_FILE} (now {drawversion.DRAW_VERSION!r}) and "
        f"set DRAW_CODE_SHA256 = '{new}'. A change that cannot alter a pixel (a rename, a refactor) sets the pin "
        f"alone; one that can, without a bump, leaves images drawn by the old code under the new code's keys."
    )


def names_used(node: ast.AST) -> set[str]:
    """Names a definition reads at run time (annotations are left out: they are strings here, never run)."""
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n.returns = None
        elif isinstance(n, ast.arg):
            n.annotation = None
        elif isinstance(n, ast.AnnAssign):
            n.annotation = ast.Constant(None)
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def test_pinned_code_covers_the_code_and_data_it_uses():
    pinned = set(drawversion.PIXEL_MODULES)
    unpinned = sorted(closure(pinned) - pinned - set(NOT_PIXEL))
    for path, names in drawversion.PIXEL_FUNCTIONS.items():
        imports, top = imported_names(path), {n for node in tree_of(path).body for n in defined_names(node)}
        for name in names:
            for used in names_used(definition(path, name)) - {name}:
                dotted = imports.get(used, "")
                source = module_file(dotted) or module_file(dotted.rpartition(".")[0]) if dotted else None
                if source and source not in pinned | set(NOT_PIXEL):
                    unpinned.append(f"{source} (used by {path}:{name})")
                if used in top and used not in names:
                    unpinned.append(f"{path}:{used} (used by {path}:{name})")
    data = {PACKAGE_DATA[m] for m in pinned if m in PACKAGE_DATA}
    unpinned += sorted(data - set(drawversion.PIXEL_DATA))
    assert not unpinned, (
        f"code or data that the pinned drawing code uses is not pinned: {', '.join(unpinned)}. Add it to "
        f"PIXEL_MODULES / PIXEL_FUNCTIONS / PIXEL_DATA in {PIN_FILE} (or to NOT_PIXEL in this test, with the reason)"
    )
    generate_code = stage_needs("stages/generate.py")
    assert pinned | set(drawversion.PIXEL_FUNCTIONS) | set(drawversion.PIXEL_DATA) <= generate_code, (
        "pinned code that the generate stage never runs: "
        f"{sorted((pinned | set(drawversion.PIXEL_FUNCTIONS) | set(drawversion.PIXEL_DATA)) - generate_code)}"
    )
