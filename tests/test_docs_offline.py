"""/docs and /redoc render in a real headless Chromium with every asset served by this API.

`.ci/run` installs Debian's `chromium`. The browser's network log shows every request the page
made (its `initiator` is the page's origin); all of them must stay on loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support import IN_CI, Server, served

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> object:
    workdir = tmp_path_factory.mktemp("docs")
    with served(workdir, DATABASE_URL=f"sqlite:///{workdir / 'docs.db'}") as (running,):
        yield running


def render(chromium: str, url: str, workdir: Path) -> tuple[str, list[str]]:
    """The page's DOM after scripts ran, and the URLs of every request the page made."""
    netlog = workdir / "netlog.json"
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}",
         f"--log-net-log={netlog}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    requested = [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("initiator") == origin
    ]
    return result.stdout, requested


def test_swagger_ui_renders_every_operation_from_local_assets(
    chromium: str, server: Server, tmp_path: Path
) -> None:
    dom, requested = render(chromium, f"{server.base_url}/docs", tmp_path)

    for path in ("/api/{user_id}/tasks", "/api/{user_id}/tasks/{task_id}", "/health/ready"):
        assert f'data-path="{path}"' in dom, f"operation {path} not rendered"
    assert "Authorize" in dom or "opblock" in dom
    assert any(url.endswith("/openapi.json") for url in requested)
    assert any(url.endswith("swagger-ui-bundle.js") for url in requested)
    off_host = [url for url in requested if urlsplit(url).hostname != "127.0.0.1"]
    assert not off_host, f"the page fetched from elsewhere: {off_host}"


def test_redoc_renders_from_local_assets(chromium: str, server: Server, tmp_path: Path) -> None:
    dom, requested = render(chromium, f"{server.base_url}/redoc", tmp_path)

    assert "List tasks: filter, search, sort, paginate" in dom
    assert any(url.endswith("redoc.standalone.js") for url in requested)
    off_host = [url for url in requested if urlsplit(url).hostname != "127.0.0.1"]
    assert not off_host, f"the page fetched from elsewhere: {off_host}"
