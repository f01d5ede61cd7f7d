"""Which of the project's files decide a stage's output: its script's import closure and the package data it reads.

Read statically with ``ast`` (nothing is imported): ``import ghostreview.x``, ``from ghostreview.x import y``,
relative imports, ``importlib.import_module`` with a literal name, and imports inside functions too (a lazy import
decides the output whenever it runs). Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` as well, so
those count. Third-party code is out of scope: images and scores record the library versions.

Package data is found through ``__file__``: library code takes every other path as an argument from its stage, so a
module that reads its own files locates them from ``__file__``. ``PACKAGE_DATA`` names the directory each such module
reads (tests/test_dvc_deps.py holds the table to the code both ways).

The checkparams stage writes one fingerprint per stage script (:func:`fingerprint`: the sha256 of every file here) to
``data/params/code/<script>.json``, and each stage depends on that one file instead of listing its code one module at
a time: DVC then parses and checks one entry per stage instance, not forty (docs/ARCHITECTURE.md, "Scale").
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "ghostreview"

# module that reads package data -> the directory it reads (see the module docstring)
PACKAGE_DATA = {
    "ghostreview/generation/topology.py": "ghostreview/generation/configs",
    "ghostreview/analysis/report/html.py": "ghostreview/analysis/report/static",
    "ghostreview/arena/server.py": "ghostreview/arena/static",  # the voting page (no stage imports the server)
}


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


@functools.cache
def tree_of(path: str, root: Path = ROOT) -> ast.Module:
    return ast.parse((root / path).read_text(encoding="utf-8"), filename=path)


def module_file(name: str, root: Path = ROOT) -> str | None:
    """The file that runs for module ``name`` (a package's ``__init__.py``), or None outside this checkout."""
    base = root.joinpath(*name.split("."))
    for file in (base / "__init__.py", base.with_suffix(".py")):
        if file.is_file():
            return rel(file, root)
    return None


def _package_of(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1])  # a.py -> its package; a/__init__.py -> a


def _literal_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``__import__("x")`` -> "x"."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


def imported_names(path: str, root: Path = ROOT) -> dict[str, str]:
    """Every name a module imports, anywhere in it, as {local name: dotted source}; ``from a import b`` -> a.b."""
    package = _package_of(path)
    names: dict[str, str] = {}
    for node in ast.walk(tree_of(path, root)):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names[f"<from {base}>"] = base
            names.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Call) and (target := _literal_import(node)):
            names[f"<dynamic {target}>"] = target
    return names


def project_imports(path: str, root: Path = ROOT) -> set[str]:
    """Files of this package that importing/running ``path`` runs (one step)."""
    files: set[str] = set()
    for dotted in imported_names(path, root).values():
        parts = dotted.split(".")
        if parts[0] == PACKAGE:
            files.update(f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]), root)))
    return files


def closure(paths, root: Path = ROOT) -> set[str]:
    """The files of ``paths`` and everything of this package they import, transitively."""
    seen: set[str] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += project_imports(path, root)
    return seen


def stage_needs(script: str, root: Path = ROOT) -> set[str]:
    """The code and package data that decide a stage's output: its script's closure and the directories (of package
    data) its modules read."""
    code = closure([script], root)
    return code | {PACKAGE_DATA[m] for m in code if m in PACKAGE_DATA}


def files_of(path: str, root: Path = ROOT) -> list[str]:
    """``path`` itself, or every file under the directory ``path`` (bytecode caches left out), sorted."""
    full = root / path
    if full.is_file():
        return [path]
    return sorted(rel(p, root) for p in full.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def fingerprint(script: str, root: Path = ROOT) -> dict[str, str]:
    """{file: sha256} of every file that decides ``script``'s output (:func:`stage_needs`, directories expanded)."""
    files = sorted(f for need in stage_needs(script, root) for f in files_of(need, root))
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}
