"""A real browser on another origin uses the API with tokens (headless Chromium).

A page served from another port lists, creates (reading `Location` and `ETag`), PATCHes with
`If-Match`, toggles and deletes a task, and reads a 401's problem body, against an API started
with `AUTH_MODE=jwt` that allows that page's origin. The same page from an origin the API does
not list cannot read a single answer. `.ci/run` installs Debian's `chromium`.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from support import Server, free_port, render, served

SECRET = "browser-cors-secret-" + "0123456789abcdef" * 2

PAGE = """<!doctype html>
<html><body><pre id="out">pending</pre>
<script>
const API = "%(api)s";
const TOKEN = "%(token)s";
const auth = { Authorization: `Bearer ${TOKEN}` };
const json = { ...auth, "Content-Type": "application/json" };
async function run() {
  const out = {};
  try {
    let r = await fetch(`${API}/api/alice/tasks`, { headers: auth });
    out.list = r.status;
    r = await fetch(`${API}/api/alice/tasks`, {
      method: "POST", headers: json, body: JSON.stringify({ title: "from the browser" }),
    });
    out.create = r.status;
    out.location = r.headers.get("Location");
    out.etag = r.headers.get("ETag");
    r = await fetch(`${API}${out.location}`, {
      method: "PATCH", headers: { ...json, "If-Match": out.etag },
      body: JSON.stringify({ title: "renamed" }),
    });
    out.patch = r.status;
    out.patchedTitle = (await r.json()).title;
    out.patchedEtag = r.headers.get("ETag");
    r = await fetch(`${API}${out.location}`, {
      method: "PATCH", headers: { ...json, "If-Match": out.etag },
      body: JSON.stringify({ title: "late" }),
    });
    out.stale = r.status;
    out.staleEtag = r.headers.get("ETag");
    r = await fetch(`${API}${out.location}/complete`, { method: "PATCH", headers: auth });
    out.toggle = r.status;
    out.completed = (await r.json()).completed;
    r = await fetch(`${API}${out.location}`, { method: "DELETE", headers: auth });
    out.delete = r.status;
    r = await fetch(`${API}/api/alice/tasks`);
    out.unauthorized = r.status;
    out.problem = await r.json();
    out.requestId = r.headers.get("X-Request-ID");
  } catch (error) {
    out.error = String(error);
  }
  document.getElementById("out").textContent = JSON.stringify(out);
}
run();
</script></body></html>
"""


@pytest.fixture
def page_origins(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two static origins serving the same folder: one the API allows, one it does not."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    servers = [ThreadingHTTPServer(("127.0.0.1", free_port()), handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        allowed, other = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield allowed, other
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path, page_origins: tuple[str, str]) -> Iterator[Server]:
    allowed, _other = page_origins
    with served(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'cors.db'}",
        AUTH_MODE="jwt",
        AUTH_JWT_SECRET=SECRET,
        CORS_ORIGINS=allowed,
    ) as (server,):
        yield server


def write_page(folder: Path, api: Server) -> str:
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    (folder / "page.html").write_text(PAGE % {"api": api.base_url, "token": token})
    return "page.html"


def outcome(dom: str) -> dict[str, Any]:
    match = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert match is not None, dom[:2000]
    text = match.group(1).replace("&quot;", '"').replace("&amp;", "&")
    assert text != "pending", "the page's script did not finish"
    result: dict[str, Any] = json.loads(text)
    return result


def test_a_page_on_an_allowed_origin_uses_every_kind_of_call(
    chromium: str,
    api: Server,
    page_origins: tuple[str, str],
    tmp_path: Path,
) -> None:
    allowed, _other = page_origins
    page = write_page(tmp_path, api)
    dom, _requested = render(chromium, f"{allowed}/{page}", tmp_path / "browser")
    out = outcome(dom)

    assert "error" not in out, out
    assert (out["list"], out["create"], out["patch"], out["toggle"], out["delete"]) == (
        200, 201, 200, 200, 204,
    )  # fmt: skip
    assert re.fullmatch(r"/api/alice/tasks/[0-9a-f-]{36}", out["location"])
    assert (out["etag"], out["patchedEtag"]) == ('"1"', '"2"')
    assert out["patchedTitle"] == "renamed"
    assert (out["stale"], out["staleEtag"]) == (412, '"2"')
    assert out["completed"] is True
    assert out["unauthorized"] == 401
    assert out["problem"]["status"] == 401 and out["problem"]["detail"]
    assert out["requestId"]


def test_the_same_page_on_another_origin_cannot_read_any_answer(
    chromium: str,
    api: Server,
    page_origins: tuple[str, str],
    tmp_path: Path,
) -> None:
    _allowed, other = page_origins
    page = write_page(tmp_path, api)
    dom, _requested = render(chromium, f"{other}/{page}", tmp_path / "browser")
    out = outcome(dom)
    assert out == {"error": "TypeError: Failed to fetch"}
