"""The tree shows the design: platform code knows no domain, and each domain's SQL stays in
its repository."""

from __future__ import annotations

import ast
from pathlib import Path

import todo_api

PACKAGE = Path(todo_api.__file__).parent
DOMAINS = (
    "todo_api.tables",
    "todo_api.tasks",
    "todo_api.lists",
    "todo_api.labels",
    "todo_api.users",
    "todo_api.auth",
    "todo_api.sync",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_platform_code_imports_no_domain() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in _imports(path) if name.startswith(DOMAINS)
        )
        for path in (PACKAGE / "platform").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_repositories_and_the_platform_build_statements() -> None:
    # Routers, schemas and errors describe HTTP; SQL is built by a domain's repository (and
    # its sorting/filters, which the repository assembles) or by platform code.
    sql_modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == "sqlalchemy" for name in _imports(path))
        and "migrations" not in path.parts
    }
    allowed_prefixes = ("platform/", "tables/", "cli.py")
    allowed_names = ("repository.py", "filters.py", "sorting.py", "ordering.py")
    stray = {
        module
        for module in sql_modules
        if not module.startswith(allowed_prefixes) and not module.endswith(allowed_names)
    }
    assert stray == set()
