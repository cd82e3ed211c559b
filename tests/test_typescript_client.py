"""The API as a frontend developer meets it: TypeScript types generated from the served
/openapi.json by openapi-typescript, a strict `tsc` build of a typed openapi-fetch client
(clients/typescript/src/check.ts), and that client run against the live API.

The second test shows the type check has teeth: a body the schema forbids does not compile, so
a schema change that breaks the frontend's types fails CI.

Needs Node >= 20 with npm: missing, the tests fail in CI (CI=true) and skip elsewhere. The
pinned packages come from clients/typescript/package-lock.json (`npm ci`, run here when
node_modules is absent or older than the lock).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from support import IN_CI, Server, served

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"
NODE_MAJOR = 20
# npm writes this file last: present, the previous install completed.
INSTALLED = CLIENT / "node_modules" / ".package-lock.json"
# `tsc --pretty false`: `file(line,column): error TS1234: message`.
TSC_ERROR = re.compile(
    r"^(?P<file>[^(]+)\((?P<line>\d+),\d+\): error (?P<code>TS\d+): (?P<text>.*)$"
)


@dataclass(frozen=True)
class Node:
    node: str
    npm: str
    npx: str

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A command in clients/typescript (never a prompt, never colours)."""
        env = os.environ | {
            "NO_COLOR": "1",
            "FORCE_COLOR": "0",
            "npm_config_update_notifier": "false",
            "npm_config_fund": "false",
            "npm_config_audit": "false",
        }
        return subprocess.run(
            list(args), cwd=CLIENT, env=env, capture_output=True, text=True, timeout=timeout
        )

    def tool(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A locally installed package binary. `--no`: never download one; `--`: its options
        (`tsc -p`) are not npx's own (`npx -p` is `--package`)."""
        return self.run(self.npx, "--no", "--", *args, timeout=timeout)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def node() -> Node:
    found = {name: shutil.which(name) for name in ("node", "npm", "npx")}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (Node {NODE_MAJOR}+ with npm)")
    tools = Node(**{name: str(path) for name, path in found.items()})
    version = tools.run(tools.node, "--version", timeout=30).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < NODE_MAJOR:
        _unavailable(f"node {version or '?'} is older than {NODE_MAJOR}")
    lock = CLIENT / "package-lock.json"
    if not INSTALLED.is_file() or INSTALLED.stat().st_mtime < lock.stat().st_mtime:
        installed = tools.run(tools.npm, "ci", timeout=600)
        assert installed.returncode == 0, f"npm ci failed:\n{output(installed)}"
    return tools


@pytest.fixture(scope="module")
def server(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The served API, with src/schema.d.ts freshly generated from its /openapi.json."""
    workdir = tmp_path_factory.mktemp("typescript-client")
    database = f"sqlite:///{workdir / 'client.db'}"
    with served(workdir, DATABASE_URL=database, AUTH_MODE="none") as (running,):
        schema = CLIENT / "src" / "schema.d.ts"
        schema.unlink(missing_ok=True)  # a failed generation must not leave last run's types
        generated = node.tool(
            "openapi-typescript", f"{running.base_url}/openapi.json", "-o", "src/schema.d.ts"
        )
        assert generated.returncode == 0, f"openapi-typescript failed:\n{output(generated)}"
        assert "export interface paths" in schema.read_text(encoding="utf-8")
        yield running


def test_generated_client_type_checks_and_drives_the_api(node: Node, server: Server) -> None:
    shutil.rmtree(CLIENT / "dist", ignore_errors=True)
    build = node.tool("tsc", "-p", ".", "--pretty", "false")
    assert build.returncode == 0, f"tsc (strict) rejected the client:\n{output(build)}"

    user = f"ts-client-{uuid.uuid4().hex[:12]}"
    result = node.run(node.node, "dist/check.js", server.base_url, user, timeout=60)
    assert result.returncode == 0, f"{output(result)}\n--- server log\n{server.log()}"

    lines = result.stdout.splitlines()
    assert len(lines) == 1, output(result)
    summary = json.loads(lines[0])
    assert summary["check"] == "typescript-client" and summary["ok"] is True
    assert summary["user_id"] == user
    assert summary["etags"] == ['"1"', '"2"', '"3"']
    assert summary["stale"]["status"] == 412 and "If-Match" in summary["stale"]["detail"]
    assert summary["missing"]["status"] == 404
    assert summary["listed"] == {"before": 0, "after": 0}
    assert summary["steps"] == [
        "list",
        "create",
        "patch-if-match",
        "patch-stale-412",
        "toggle",
        "get-missing-404",
        "delete",
        "list-again",
        "get-deleted-404",
        "task-model",
        "sync",
    ]
    # Seen from outside the client too: the task it created is gone.
    gone = httpx.get(f"{server.base_url}/api/{user}/tasks/{summary['task_id']}", timeout=10)
    assert gone.status_code == 404, gone.text


# Compiled against the generated types; `tsc` must refuse both bodies (and nothing else).
BREAKING = """\
import createClient from "openapi-fetch";
import type { components, paths } from "../../src/schema.js";

const client = createClient<paths>({ baseUrl: "http://127.0.0.1:9" });

export const wrongType = client.POST("/api/{user_id}/tasks", {
  params: { path: { user_id: "u" } },
  body: { title: 5, completed: false },
});

export const unknownField: components["schemas"]["TaskCreate"] = {
  title: "Buy milk",
  completed: false,
  colour: "red",
};
"""


def test_a_body_the_schema_forbids_does_not_compile(node: Node, server: Server) -> None:
    scratch = CLIENT / "tmp" / f"breaking-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    try:
        (scratch / "breaking.ts").write_text(BREAKING, encoding="utf-8")
        config = {
            "extends": "../../tsconfig.json",
            "compilerOptions": {"noEmit": True, "rootDir": "../.."},
            "include": ["breaking.ts", "../../src/schema.d.ts"],
        }
        (scratch / "tsconfig.json").write_text(json.dumps(config), encoding="utf-8")
        build = node.tool("tsc", "-p", str(scratch.relative_to(CLIENT)), "--pretty", "false")
    finally:
        shutil.rmtree(scratch)
        if not any((CLIENT / "tmp").iterdir()):
            (CLIENT / "tmp").rmdir()

    assert build.returncode != 0, f"tsc accepted bodies the schema forbids:\n{output(build)}"
    errors = [match for match in map(TSC_ERROR.match, build.stdout.splitlines()) if match]
    lines = BREAKING.splitlines()
    found = {
        (Path(error["file"]).name, lines[int(error["line"]) - 1].strip(), error["code"])
        for error in errors
    }
    assert found == {
        ("breaking.ts", "body: { title: 5, completed: false },", "TS2322"),
        ("breaking.ts", 'colour: "red",', "TS2353"),
    }, output(build)
    texts = " ".join(error["text"] for error in errors)
    assert "Type 'number' is not assignable to type 'string'" in texts, output(build)
    assert "'colour' does not exist in type" in texts, output(build)
