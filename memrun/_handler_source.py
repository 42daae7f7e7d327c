"""Read a handler's service settings and PEP 723 metadata from its source, never running it.

The user's dependencies may not be installed where `memrun deploy` runs, so the
`MemoryService(...)` call and `@svc.handler(sticky_key=...)` are found in the syntax tree
and only literal arguments are taken; anything else must come as a CLI flag.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrun.errors import ConfigError
from memrun.service import MemoryService
from memrun.wire.config import SETTING_ARGS, SETTINGS
from memrun.wire.manifest import is_requirement
from memrun.wire.sizes import parse_size
from memrun.wire.sticky import StickyTemplate

SERVICE_ARGUMENTS = ("name", *SETTING_ARGS)
_FLAGS = {s.arg: s.flag for s in SETTINGS}
_SCRIPT_BLOCK = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)
_SCRIPT_KEYS = ("dependencies", "requires-python", "tool")


@dataclass(frozen=True)
class ScriptMetadata:
    """The PEP 723 `# /// script` block of a handler (empty when it has none)."""

    dependencies: tuple[str, ...] = ()
    requires_python: str | None = None


def read_script_metadata(source: str, *, filename: str = "handler.py") -> ScriptMetadata:
    """Parse the PEP 723 inline metadata of `source` (the spec's reference regex and TOML)."""
    blocks = [m for m in _SCRIPT_BLOCK.finditer(source) if m.group("type") == "script"]
    if not blocks:
        return ScriptMetadata()
    if len(blocks) > 1:
        raise ConfigError(f"{filename}: more than one '# /// script' block; keep one")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{filename}: the '# /// script' block is not valid TOML: {exc}"
        ) from None
    unknown = sorted(set(data) - set(_SCRIPT_KEYS))
    if unknown:
        raise ConfigError(
            f"{filename}: the '# /// script' block has unknown keys {unknown}; "
            f"it may hold {', '.join(_SCRIPT_KEYS)}"
        )
    dependencies = data.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(
        isinstance(dep, str) and is_requirement(dep.strip()) for dep in dependencies
    ):
        raise ConfigError(
            f"{filename}: 'dependencies' must be a list of requirements like 'numpy>=2'"
        )
    requires_python = data.get("requires-python")
    if requires_python is not None and not isinstance(requires_python, str):
        raise ConfigError(f"{filename}: 'requires-python' must be a string like '>=3.11'")
    return ScriptMetadata(tuple(d.strip() for d in dependencies), requires_python)


@dataclass
class _Declared:
    """What the source says about its service: literal values, and the non-literal ones."""

    values: dict[str, Any] = field(default_factory=dict)
    non_literal: dict[str, str] = field(default_factory=dict)


def _is_service_call(node: ast.Call, aliases: set[str]) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id in aliases) or (
        isinstance(func, ast.Attribute) and func.attr == "MemoryService"
    )


def _read_argument(declared: _Declared, key: str, node: ast.expr, source: str) -> None:
    try:
        declared.values[key] = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        text = ast.get_source_segment(source, node) or "?"
        declared.non_literal[key] = f"{text} (line {node.lineno})"


def _read_declared_service(source: str, filename: str) -> _Declared:
    """Find the one `MemoryService(...)` call and `@svc.handler(sticky_key=...)` by parsing."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ConfigError(f"{filename}, line {exc.lineno}: syntax error: {exc.msg}") from None
    aliases = {"MemoryService"} | {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "memrun"
        for alias in node.names
        if alias.name == "MemoryService" and alias.asname
    }
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _is_service_call(node, aliases)
    ]
    if not calls:
        raise ConfigError(
            f"{filename}: no MemoryService(...) found; declare one at module level, "
            "e.g. svc = MemoryService('matrix-qa', memory='32Gi')"
        )
    if len(calls) > 1:
        lines = ", ".join(sorted(str(call.lineno) for call in calls))
        raise ConfigError(f"{filename}: MemoryService(...) is called on lines {lines}; keep one")
    call = calls[0]
    declared = _Declared()
    for position, arg in enumerate(call.args):
        if position > 0 or isinstance(arg, ast.Starred):
            raise ConfigError(
                f"{filename}, line {call.lineno}: MemoryService takes the name as its only "
                "positional argument; pass the rest by keyword"
            )
        _read_argument(declared, "name", arg, source)
    for keyword in call.keywords:
        if keyword.arg is None:
            declared.non_literal["**"] = f"**{ast.get_source_segment(source, keyword.value)}"
        elif keyword.arg not in SERVICE_ARGUMENTS:
            raise ConfigError(
                f"{filename}, line {call.lineno}: MemoryService has no argument "
                f"{keyword.arg!r}; it takes {', '.join(SERVICE_ARGUMENTS)}"
            )
        else:
            _read_argument(declared, keyword.arg, keyword.value, source)
    _read_handler_sticky_key(declared, tree, call, source, filename)
    return declared


def _read_handler_sticky_key(
    declared: _Declared, tree: ast.Module, call: ast.Call, source: str, filename: str
) -> None:
    names = {
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is call
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    decorators = [
        decorator
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr == "handler"
        and isinstance(decorator.func.value, ast.Name)
        and decorator.func.value.id in names
    ]
    if len(decorators) > 1:
        raise ConfigError(f"{filename}: a service has exactly one @svc.handler(); found several")
    for keyword in decorators[0].keywords if decorators else []:
        if keyword.arg != "sticky_key":
            continue
        handler_side = _Declared()
        _read_argument(handler_side, "sticky_key", keyword.value, source)
        if "sticky_key" in handler_side.non_literal:
            declared.non_literal["sticky_key"] = handler_side.non_literal["sticky_key"]
            continue
        value = handler_side.values["sticky_key"]
        if "sticky_key" in declared.values and not _same(
            "sticky_key", declared.values["sticky_key"], value
        ):
            raise ConfigError(
                f"{filename}: sticky_key is {declared.values['sticky_key']!r} on MemoryService "
                f"but {value!r} on @svc.handler(); give it in one place"
            )
        declared.values["sticky_key"] = value


def _same(key: str, a: object, b: object) -> bool:
    try:
        if key in ("memory", "disk") and isinstance(a, str | int) and isinstance(b, str | int):
            return parse_size(a, field=key) == parse_size(b, field=key)
        if key == "sticky_key" and isinstance(a, str) and isinstance(b, str):
            return str(StickyTemplate.parse(a)) == str(StickyTemplate.parse(b))
    except ConfigError:
        return False
    return a == b


def _flag(key: str) -> str:
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def resolve_service(
    handler: Path, overrides: Mapping[str, Any] = {}
) -> tuple[MemoryService, list[str]]:
    """The service `handler` declares, with `overrides` (None = not given) applied.

    The source is parsed, never imported. Returns the validated service and warnings for
    each override that replaces a different value written in the code.
    """
    unknown = sorted(set(overrides) - set(SERVICE_ARGUMENTS))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; use {', '.join(SERVICE_ARGUMENTS)}")
    declared = _read_declared_service(handler.read_text(encoding="utf-8"), handler.name)
    final: dict[str, Any] = {}
    warnings: list[str] = []
    problems: list[str] = []
    if "**" in declared.non_literal:
        problems.append(f"MemoryService({declared.non_literal['**']}) is not literal")
    for key in SERVICE_ARGUMENTS:
        override = overrides.get(key)
        if override is not None:
            if key in declared.values and not _same(key, declared.values[key], override):
                warnings.append(
                    f"{key}: {_flag(key)} {override!r} overrides "
                    f"{declared.values[key]!r} from {handler.name}"
                )
            final[key] = override
        elif key in declared.non_literal:
            problems.append(
                f"{key}={declared.non_literal[key]} is not a literal (pass {_flag(key)})"
            )
        elif key in declared.values:
            final[key] = declared.values[key]
    if problems:
        raise ConfigError(
            f"{handler.name}: memrun reads the service settings without running the code, "
            "so they must be literal values or flags: " + "; ".join(problems)
        )
    if "name" not in final:
        raise ConfigError(f"{handler.name}: MemoryService(...) has no name; pass one or --name")
    name = final.pop("name")
    return MemoryService(name, **final), warnings
