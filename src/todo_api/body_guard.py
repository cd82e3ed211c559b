"""Guard request bodies before FastAPI parses them.

Pure ASGI (not `@app.middleware("http")`, where an exception would bypass the handlers): a body
larger than the limit is refused with 413 after reading at most `limit + 1` bytes, whether it
announces a Content-Length or arrives chunked; a body that is not JSON is refused with 415.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.problems import PROBLEM_MEDIA_TYPE, problem_bytes


class RequestBodyGuard:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
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
