"""The folders of ``ghostreview/`` and what each may import (docs/ARCHITECTURE.md), read statically with the import
reader of tests/test_dvc_deps.py (lazy imports included: a function's import runs whenever the function does).

- no import cycle between modules;
- ``config.py`` is a leaf: it imports nothing of the project; only ``validate.py`` (and the stage scripts, outside
  the package) import it, so the library never sees a params object;
- ``kit/`` (the stand-ins) is imported by nothing in the package but the ``ghostreview kit`` command;
- each folder imports only the folders below it: ``util`` nothing but ``errors``; ``generation`` no scoring,
  analysis or validation; ``scoring`` no analysis, no drawing; ``analysis`` neither torch-side folder's code beyond
  the contracts it reads (score table, manifest, metric metadata).
"""

from __future__ import annotations

import ast

import pytest
from test_dvc_deps import PACKAGE, ROOT, project_imports, rel

FILES = sorted(rel(p) for p in (ROOT / PACKAGE).rglob("*.py"))


# Package __init__ files that hold code, and why.
BUSY_INITS = {
    "ghostreview/__init__.py": "__version__",
    "ghostreview/generation/engines/__init__.py": "the Engine protocol and the ENGINES registry",
    "ghostreview/analysis/report/__init__.py": "write_report, the report stage's one call",
}


def folder(path: str) -> str:
    """``ghostreview/generation/lora.py`` -> "generation"; ``ghostreview/cli.py`` -> "cli"."""
    parts = path.split("/")
    return parts[1] if len(parts) > 2 else parts[1].removesuffix(".py")


def imports(path: str) -> set[str]:
    """Project files ``path`` imports, without the docstring-only package ``__init__.py`` files that importing a
    module runs (test_package_inits_hold_docstrings_only keeps them so)."""
    def counts(d: str) -> bool:
        if not d.endswith("/__init__.py"):
            return d != path
        package = d.removesuffix("__init__.py")  # its own packages' inits run before it: not an import of its own
        return d in BUSY_INITS and not path.startswith(package) and d != "ghostreview/__init__.py"

    return {d for d in project_imports(path) if counts(d)}


def test_package_inits_hold_docstrings_only():
    """So that importing one module of a folder never runs the others (and the dependency rules below hold)."""
    busy = []
    for path in (f for f in FILES if f.endswith("/__init__.py")):
        body = ast.parse((ROOT / path).read_text(encoding="utf-8")).body
        if [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]:
            busy.append(path)
    assert sorted(busy) == sorted(BUSY_INITS)


def test_no_import_cycle():
    graph = {f: imports(f) for f in FILES}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for f in FILES if f not in state and (c := visit(f, []))]
    assert cycles == [], f"import cycle: {' -> '.join(cycles[0])}"


def test_config_is_a_leaf_that_only_validate_imports():
    assert imports("ghostreview/config.py") == set()
    importers = sorted(f for f in FILES if "ghostreview/config.py" in imports(f))
    assert importers == ["ghostreview/validate.py"], "the library takes plain arguments; the stages and validate.py " \
                                                     "turn params into them"


# The one module outside kit/ that may import it, and why.
KIT_IMPORTERS = {"ghostreview/cli.py": "`ghostreview kit` builds the demo kit: the demo's entry point"}


def test_nothing_but_the_kit_command_imports_the_stand_in_kit():
    importers = {f for f in FILES if folder(f) != "kit" and any(folder(d) == "kit" for d in imports(f))}
    assert sorted(importers) == sorted(KIT_IMPORTERS)


# folder -> the folders it may import (its own always). Modules at the top of the package count as folders.
ALLOWED = {
    "errors": set(),
    "config": set(),
    "util": {"errors"},
    "protocol": {"errors", "util", "generation"},  # families, prompt and infotext syntax: what a benchmark file holds
    "generation": {"errors", "util", "protocol"},
    "scoring": {"errors", "util", "protocol", "generation"},  # generation: prompt syntax (LoRA tags) only
    "analysis": {"errors", "util", "protocol", "generation", "scoring"},  # contracts only: see below
    "arena": {"errors", "util", "protocol", "generation", "scoring", "analysis"},  # contracts only; tau from analysis
    "kit": {"errors", "util", "protocol", "generation", "scoring", "arena"},  # arena: the demo's synthetic votes
    "validate": {"errors", "util", "protocol", "generation", "scoring", "config"},
    "import_infotext": {"errors", "util", "protocol", "generation", "scoring"},
    "models_cli": {"errors", "util", "protocol", "generation", "validate"},
    "cli": {"errors", "util", "protocol", "generation", "scoring", "analysis", "kit", "validate", "models_cli",
            "import_infotext", "arena"},
}
# What scoring and analysis may read of the folders that draw and score: contracts, never the model code.
CONTRACTS = {
    "scoring": {"ghostreview/generation/prompts.py", "ghostreview/generation/manifest.py",
                "ghostreview/generation/families.py"},  # which LoRA table's files sit in which family's folders
    "analysis": {"ghostreview/generation/manifest.py", "ghostreview/scoring/table.py", "ghostreview/scoring/metric.py",
                 "ghostreview/generation/families.py"},
    "arena": {"ghostreview/generation/manifest.py", "ghostreview/scoring/table.py", "ghostreview/scoring/metric.py"},
}


@pytest.mark.parametrize("path", [f for f in FILES if not f.endswith("ghostreview/__init__.py")])
def test_each_module_imports_only_the_folders_below_it(path):
    own = folder(path)
    assert own in ALLOWED, f"{path}: a new top-level module or folder: give it a row in ALLOWED (and ARCHITECTURE.md)"
    wrong = sorted(d for d in imports(path) if folder(d) != own and folder(d) not in ALLOWED[own])
    assert wrong == [], f"{path} ({own}) may import {sorted(ALLOWED[own])} only"
    if own in CONTRACTS:
        reach = sorted(d for d in imports(path) if folder(d) in ("generation", "scoring") and folder(d) != own
                       and d not in CONTRACTS[own])
        assert reach == [], f"{path}: {own} reads the contracts {sorted(CONTRACTS[own])} of the drawing/scoring code"
