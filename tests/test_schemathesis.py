"""Schemathesis against the served /openapi.json: no 5xx, no response that breaks the schema.

It generates requests from the OpenAPI document (examples, fuzzing, and stateful sequences that
feed one response into the next request) against a real `todo-api serve` process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import served

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    else:
        url = str(request.getfixturevalue("postgresql_server_url"))
    executable = shutil.which("st") or f"{Path(sys.executable).parent}/st"
    with served(tmp_path, DATABASE_URL=url) as (server,):
        result = subprocess.run(
            [executable, "run", f"{server.base_url}/openapi.json", "--checks", CHECKS,
             "--phases", "examples,fuzzing,stateful", "--max-examples", "30",
             "--workers", "2", "--no-color"],
            capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout or "passed" in result.stdout
