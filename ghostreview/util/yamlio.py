"""The one strict YAML reader: duplicate keys refused, alias expansion capped, errors name the file and the line.

Two views of one reading: :func:`read_yaml` gives plain Python data (PyYAML, safe); :func:`read_yaml_lines` gives
ruamel's round-trip data, whose mappings and lists remember the line of each key (the benchmark's errors cite them).
Both refuse, before anything is built from the file:

- a duplicate key (PyYAML silently keeps the last one, hiding a duplicate model);
- aliases (``*name``) that expand to more than :data:`MAX_YAML_NODES` values or into themselves (an alias bomb:
  a few lines that expand to billions of values), checked on the composed node graph;
- text that is not UTF-8, and nesting too deep for the parser.

Every refusal is a :class:`YamlError`; its message is ``"<path>: <problem>"``, and ``syntax`` tells a parse error
(the caller may add how to fix the syntax) from the other refusals.
"""

from __future__ import annotations

import io
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError as RuamelError

from ghostreview.errors import UserError

MAX_YAML_NODES = 100_000  # params.yaml and the benchmark files hold a few thousand


class YamlError(UserError, ValueError):
    """A YAML file that cannot be read: ``str()`` is ``"<path>: <problem>"``.

    Attributes:
        path: the file.
        problem: what is wrong, with the fix where there is one.
        syntax: True for a parse error (``problem`` is then ``"not valid YAML: <parser message>"``).
        detail: the parser's own message for a parse error, else ``problem``.
    """

    def __init__(self, path: Path, problem: str, syntax: bool = False, detail: str | None = None) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.syntax, self.detail = path, problem, syntax, detail or problem


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(None, None, "a list or mapping as a key", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: each key (and each model name) may appear once",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _children(node: Any) -> list[Any]:
    """The child nodes of a PyYAML or ruamel node: a mapping's keys and values, a list's items, none for a scalar."""
    value = node.value
    if not isinstance(value, list):
        return []
    return [n for item in value for n in (item if isinstance(item, tuple) else (item,))]


def expanded_size(root: Any) -> int | None:
    """How many nodes the YAML document holds once every alias is expanded; None when an alias contains itself.

    Works on PyYAML's and ruamel's composed nodes. Aliases share one node object, so each node is sized once
    (memoized, iterative): linear in the file, whatever the expansion. Sizes are capped at ``MAX_YAML_NODES + 1``.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, todo = stack[-1]
        child = next(todo, None)
        if child is None:
            stack.pop()
            open_.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in _children(node)), MAX_YAML_NODES + 1)
        elif id(child) in open_:
            return None
        elif id(child) not in sizes:
            open_.add(id(child))
            stack.append((child, iter(_children(child))))
    return sizes[id(root)]


def _check_size(path: Path, node: Any) -> None:
    size = expanded_size(node)
    if size is None or size > MAX_YAML_NODES:
        what = "an alias that contains itself" if size is None else f"more than {MAX_YAML_NODES:,} values"
        raise YamlError(path, f"its YAML aliases (*name) expand to {what} (an alias bomb?). Write the values out, or "
                              f"use fewer aliases.")


def _read_text(path: Path) -> io.StringIO:
    """The file as UTF-8 text, in a stream named after the file (so the parser's marks cite it, not a string).

    OSError passes through: a missing file is the caller's to explain.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    stream = io.StringIO(text)
    stream.name = str(path)  # read by the parsers' Reader for error marks
    return stream


def _too_deep(path: Path) -> YamlError:
    return YamlError(path, "YAML nested too deeply to read (thousands of levels); a settings file needs a few.")


def read_yaml(path: Path) -> object:
    """Read a YAML file strictly as plain data (dicts, lists, scalars); None for an empty file.

    Merge keys (``<<: *defaults``) work. Raises :class:`YamlError` (see the module docstring); OSError (a missing
    file, ...) passes through.
    """
    path = Path(path)
    text, loader = _read_text(path), None
    try:
        loader = _StrictLoader(text)  # the reader refuses unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(path, node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(path, f"not valid YAML: {exc}", syntax=True, detail=str(exc)) from exc
    except RecursionError:
        raise _too_deep(path) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_lines(path: Path, reader: YAML | None = None) -> Any:
    """Read a YAML file strictly in ruamel's round-trip mode: mappings and lists keep the line of each key (``.lc``).

    ``reader``: a round-trip ``YAML`` configured by the caller (``preserve_quotes`` for a file it writes back);
    a plain one by default. Same refusals as :func:`read_yaml` (ruamel refuses duplicate keys itself, as a parse
    error). Raises :class:`YamlError`; OSError passes through.
    """
    path = Path(path)
    text = _read_text(path)
    reader = reader if reader is not None else YAML(typ="rt")
    try:
        # YAML.load, split in two so that the composed graph is sized before anything is constructed from it.
        constructor, parser = reader.get_constructor_parser(text)
        try:
            node = constructor.composer.get_single_node()
            if node is None:
                return None
            _check_size(path, node)
            return constructor.construct_document(node)
        finally:
            parser.dispose()
    except RuamelError as exc:
        raise YamlError(path, f"not valid YAML: {exc}", syntax=True, detail=str(exc)) from exc
    except RecursionError:
        raise _too_deep(path) from None
