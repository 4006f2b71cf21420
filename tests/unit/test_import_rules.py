"""Layering rules, checked on the syntax tree of every module (never on raw text).

- `workflows/` is the engine: no flask, sqlalchemy, celery, redis, nor the application (`app`).
- `app/services/` are use cases: no flask (or a flask extension) and no `app.api`.
- SpiffWorkflow is imported by `workflows/` only.

Relative imports are resolved against the module's package, so `from ..api import x` inside
`app/services/` counts as `app.api`; `importlib.import_module("x")` / `__import__("x")` with a literal
name count too. `if TYPE_CHECKING:` imports are imports.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "build", "dist", "node_modules", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", ".tox"}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def python_files(under: Path, *, exclude: Iterable[Path] = ()) -> list[Path]:
    excluded = [e.resolve() for e in exclude]
    found = []
    for path in sorted(under.rglob("*.py")):
        rel_parts = path.relative_to(under).parts
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel_parts[:-1]):
            continue
        if any(path.resolve().is_relative_to(e) for e in excluded):
            continue
        found.append(path)
    return found


def package_of(path: Path, root: Path = ROOT) -> str:
    """Dotted package a module lives in (its own name for an `__init__.py`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    base = package.split(".") if package else []
    if level - 1 > len(base):
        return f"<relative import beyond top level: {'.' * level}{module or ''}>"
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def imports_in_source(source: str, filename: str, package: str) -> Iterator[Import]:
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(filename, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level, package)
            if base:
                yield Import(filename, node.lineno, base)
            for alias in node.names:  # `from app import api` imports app.api
                if alias.name != "*":
                    yield Import(filename, node.lineno, f"{base}.{alias.name}" if base else alias.name)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                target = first.value
                if target.startswith("."):
                    level = len(target) - len(target.lstrip("."))
                    target = resolve(target.lstrip(".") or None, level, package)
                yield Import(filename, node.lineno, target)


def imports_of(path: Path) -> list[Import]:
    rel = path.relative_to(ROOT).as_posix()
    return list(imports_in_source(path.read_text(encoding="utf-8"), rel, package_of(path)))


def is_under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def flask_family(module: str) -> bool:
    top = module.split(".", 1)[0]
    return top == "flask" or top.startswith("flask_")


def violations(files: Iterable[Path], forbidden: Callable[[str], bool]) -> list[str]:
    found: dict[tuple[str, int], list[str]] = {}
    for path in files:
        for imp in imports_of(path):
            if forbidden(imp.module):
                found.setdefault((imp.file, imp.line), []).append(imp.module)
    return [f"{file}:{line} imports {', '.join(dict.fromkeys(mods))}" for (file, line), mods in sorted(found.items())]


def report(rule: str, bad: list[str]) -> str:
    return f"{rule}:\n  " + "\n  ".join(bad)


WORKFLOWS = ROOT / "workflows"
SERVICES = ROOT / "app" / "services"
ENGINE_FORBIDDEN = ("flask", "sqlalchemy", "celery", "redis", "app")


# --------------------------------------------------------------------------- the rules
def test_workflows_imports_no_web_db_queue_or_app_code() -> None:
    files = python_files(WORKFLOWS)
    assert len(files) >= 3, f"expected the workflows package under {WORKFLOWS}"
    bad = violations(files, lambda m: flask_family(m) or is_under(m, ENGINE_FORBIDDEN))
    assert not bad, report("workflows/ must not import flask, sqlalchemy, celery, redis or app", bad)


def test_services_import_neither_flask_nor_the_api_layer() -> None:
    files = python_files(SERVICES)
    assert files, f"expected service modules under {SERVICES}"
    bad = violations(files, lambda m: flask_family(m) or is_under(m, ("app.api",)))
    assert not bad, report("app/services/ must not import flask or app.api", bad)


def test_only_workflows_imports_spiffworkflow() -> None:
    files = python_files(ROOT, exclude=[WORKFLOWS])
    assert any(p.is_relative_to(ROOT / "app") for p in files), "expected to scan app/"
    assert Path(__file__).resolve() in [p.resolve() for p in files], "expected to scan tests/"
    bad = violations(files, lambda m: m.split(".", 1)[0].lower() == "spiffworkflow")
    assert not bad, report("only workflows/ may import SpiffWorkflow", bad)


# --------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize(("source", "package", "expected"), [
    ("import flask.views", "app.services", {"flask.views"}),
    ("from flask import g", "app.services", {"flask", "flask.g"}),
    ("from ..api import schemas", "app.services", {"app.api", "app.api.schemas"}),
    ("from .. import api", "app.services", {"app", "app.api"}),
    ("from . import audit", "app.services", {"app.services", "app.services.audit"}),
    ("from .errors import Problem", "workflows", {"workflows.errors", "workflows.errors.Problem"}),
    ("import importlib\nimportlib.import_module('sqlalchemy.orm')", "workflows", {"importlib", "sqlalchemy.orm"}),
    ("__import__('redis')", "workflows", {"redis"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.models import User\n", "workflows",
     {"typing", "typing.TYPE_CHECKING", "app.models", "app.models.User"}),
    ("def f():\n    from SpiffWorkflow.bpmn import BpmnWorkflow\n", "app.services",
     {"SpiffWorkflow.bpmn", "SpiffWorkflow.bpmn.BpmnWorkflow"}),
])
def test_checker_resolves_imports(source: str, package: str, expected: set[str]) -> None:
    found = {imp.module for imp in imports_in_source(source, "x.py", package)}
    assert found == expected


def test_checker_reports_file_and_line() -> None:
    source = '"""doc"""\n\nimport os\nfrom flask import Flask  # line 4\n'
    imports = list(imports_in_source(source, "pkg/mod.py", "pkg"))
    flagged = [str(i) for i in imports if flask_family(i.module)]
    assert flagged == ["pkg/mod.py:4 imports flask", "pkg/mod.py:4 imports flask.Flask"]
    assert not flask_family("flaskish") and flask_family("flask_smorest.fields")
    assert is_under("app.api.resources", ("app.api",)) and not is_under("app.apiary", ("app.api",))
