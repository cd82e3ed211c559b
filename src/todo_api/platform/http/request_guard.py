"""Guard requests before FastAPI decodes them.

Pure ASGI (not `@app.middleware("http")`, where an exception would bypass the handlers):
- a URL whose percent-escapes are not UTF-8 is refused with 400: Starlette would decode them
  with errors="replace", so `/api/%FF/tasks` and `/api/%FE/tasks` would reach the same user;
- a body larger than the limit is refused with 413 after reading at most `limit + 1` bytes,
  whether it announces a Content-Length or arrives chunked; a body that is not JSON is refused
  with 415, one that is not UTF-8 with 400.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.platform.http.problems import PROBLEM_MEDIA_TYPE, problem_bytes


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        undecodable = _undecodable_url_part(scope)
        if undecodable is not None:
            detail = f"The {undecodable} contains percent-escapes that are not valid UTF-8"
            await self._refuse(send, 400, detail)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send, 413, self._too_large())
            return

        # Buffer the (small) body so an oversized chunked upload is cut off at the limit.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break

        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and not _is_json(content_type):
            detail = "Request bodies must be JSON (Content-Type: application/json)"
            await self._refuse(send, 415, detail)
            return
        try:
            # Python's json module would let UTF-8-encoded surrogates through; JSON is UTF-8.
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            detail = f"The request body is not valid UTF-8 (byte {error.start})"
            await self._refuse(send, 400, detail)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as usual
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"The request body exceeds the limit of {self.max_bytes} bytes"

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = problem_bytes(status, detail)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_json(content_type: bytes) -> bool:
    return content_type == b"application/json" or content_type.endswith(b"+json")


def _undecodable_url_part(scope: Scope) -> str | None:
    """ "path" or "query string" when its percent-decoded bytes are not UTF-8, else None."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    for name, raw in (("path", raw_path), ("query string", scope["query_string"])):
        if b"%" in raw:  # the common case: no escapes, nothing to check
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return name
    return None
