"""/docs and /redoc render in a real headless Chromium with every asset served by this API.

`.ci/run` installs Debian's `chromium`. The browser's network log shows every request the page
made (its `initiator` is the page's origin); all of them must stay on loopback.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support import Server, render, served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> object:
    workdir = tmp_path_factory.mktemp("docs")
    with served(workdir, DATABASE_URL=f"sqlite:///{workdir / 'docs.db'}") as (running,):
        yield running


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
