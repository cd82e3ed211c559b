"""A corpus of hostile input sent through HTTP.

Each input gets one specific 4xx problem (never a 5xx) and leaves the database exactly as it was;
text that merely looks dangerous (SQL, path traversal, markup) is valid and stored literally.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, create_task, running, snapshot, stored_task
from todo_api.settings import Settings

USER = "alice"
TASKS = f"/api/{USER}/tasks"
JSON = {"content-type": "application/json"}
MiB = 1024 * 1024

# Every endpoint that reads a JSON body: (method, path after the collection, {task} = a task id).
BODY_TARGETS = [
    pytest.param("POST", "", id="create"),
    pytest.param("PUT", "/{task}", id="replace"),
    pytest.param("PATCH", "/{task}", id="update"),
    pytest.param("PATCH", "/{task}/complete", id="complete"),
]
# The endpoints whose body holds title and description.
TEXT_TARGETS = BODY_TARGETS[:3]


async def assert_refused(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    status: int,
    *,
    content: bytes | AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send raw `content` to an endpoint of an existing task; expect `status` and no change."""
    task = await create_task(client, description="2 litres")
    before = await snapshot(engine, task["id"])

    url = TASKS + suffix.format(task=task["id"])
    response = await client.request(method, url, content=content, headers=headers)

    problem = assert_problem(response, status)
    assert await snapshot(engine, task["id"]) == before
    return problem


def named_fields(problem: dict[str, Any]) -> set[str]:
    errors = problem.get("errors")
    assert isinstance(errors, list) and errors, problem
    return {error["field"] for error in errors}


def text_body(field: str, json_string: str) -> bytes:
    """A body whose `field` is the JSON string literal `json_string` (escapes kept as written)."""
    if field == "title":
        return b'{"title":"' + json_string.encode() + b'"}'
    return b'{"title":"x","description":"' + json_string.encode() + b'"}'


# --- characters that cannot be stored ---------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), TEXT_TARGETS)
@pytest.mark.parametrize("field", ["title", "description"])
@pytest.mark.parametrize("text", ["\\u0000", "a\\u0000b", "abc\\u0000"], ids=["only", "mid", "end"])
@pytest.mark.request_layer
async def test_nul_character_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, field: str, text: str
) -> None:
    problem = await assert_refused(
        client, engine, method, suffix, 422, content=text_body(field, text), headers=JSON
    )
    assert named_fields(problem) == {field}


@pytest.mark.parametrize(("method", "suffix"), TEXT_TARGETS)
@pytest.mark.parametrize("field", ["title", "description"])
@pytest.mark.parametrize(
    "text",
    ["\\ud800", "\\udfff", "a\\ud83db", "\\ude00\\ud83d"],
    ids=["high", "low", "high-then-text", "reversed-pair"],
)
@pytest.mark.request_layer
async def test_lone_surrogate_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, field: str, text: str
) -> None:
    problem = await assert_refused(
        client, engine, method, suffix, 422, content=text_body(field, text), headers=JSON
    )
    assert named_fields(problem) == {field}


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.request_layer
async def test_lone_surrogate_in_a_field_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str
) -> None:
    content = b'{"title":"x","completed":true,"\\ud800":1}'
    await assert_refused(client, engine, method, suffix, 422, content=content, headers=JSON)


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"title":"\xff\xfe"}', id="ff-fe"),
        pytest.param(b'{"title":"caf\xe9"}', id="latin-1"),
        pytest.param(b'{"title":"\xc3\x28"}', id="bad-continuation"),
        pytest.param(b'{"title":"\xc0\xaf"}', id="overlong"),
        pytest.param(b'{"title":"\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(b'{"title":"\xf4\x90\x80\x80"}', id="beyond-u10ffff"),
        pytest.param(b'{"title":"x", "completed": true}\x80', id="trailing-byte"),
    ],
)
@pytest.mark.request_layer
async def test_invalid_utf8_body_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, content: bytes
) -> None:
    await assert_refused(client, engine, method, suffix, 400, content=content, headers=JSON)


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"title": "x"', id="unterminated"),
        pytest.param(b"{'title': 'x'}", id="single-quotes"),
        pytest.param(b'{"title": "x",}', id="trailing-comma"),
        pytest.param(b'{"title": "x"} {"title": "y"}', id="two-documents"),
        pytest.param(b'{"title": "a\x00b"}', id="raw-nul-byte"),
        pytest.param(b'{"title": "a\nb"}', id="raw-newline-in-string"),
        pytest.param(b"\x00\x00\x00\x00", id="nul-bytes"),
        pytest.param(b"\xef\xbb\xbf", id="bom-only"),
        pytest.param(b"<task><title>x</title></task>", id="xml"),
        pytest.param(b"title=x", id="form-encoded"),
    ],
)
@pytest.mark.request_layer
async def test_invalid_json_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, content: bytes
) -> None:
    await assert_refused(client, engine, method, suffix, 400, content=content, headers=JSON)


# Numbers a JSON parser may turn into floats or big ints; none of them is text.
NUMBER_LITERALS = ["NaN", "-Infinity", "1e999", "1" * 30]


@pytest.mark.parametrize(("method", "suffix"), TEXT_TARGETS)
@pytest.mark.parametrize("field", ["title", "description"])
@pytest.mark.parametrize("literal", NUMBER_LITERALS)
@pytest.mark.request_layer
async def test_number_where_a_string_belongs_is_rejected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    field: str,
    literal: str,
) -> None:
    others = b'"description":"x"' if field == "title" else b'"title":"x"'
    content = b"{" + others + b',"' + field.encode() + b'":' + literal.encode() + b"}"
    problem = await assert_refused(
        client, engine, method, suffix, 422, content=content, headers=JSON
    )
    assert named_fields(problem) == {field}


# --- parser limits ----------------------------------------------------------------------------

DEPTH = 10_000


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * DEPTH + b"]" * DEPTH, id="arrays"),
        pytest.param(b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, id="objects"),
        pytest.param(b'{"title":' + b"[" * DEPTH + b"]" * DEPTH + b"}", id="in-title"),
        pytest.param(b'{"title":"x","completed":' + b"1" * 5000 + b"}", id="5000-digit-number"),
    ],
)
@pytest.mark.request_layer
async def test_json_beyond_parser_limits_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, content: bytes
) -> None:
    await assert_refused(client, engine, method, suffix, 400, content=content, headers=JSON)


# --- body size --------------------------------------------------------------------------------


def padded_json(size: int) -> bytes:
    """A valid create body of exactly `size` bytes (whitespace padding)."""
    body = b'{"title":"x"}'
    return body + b" " * (size - len(body))


async def chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.request_layer
async def test_ten_megabyte_body_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str
) -> None:
    await assert_refused(
        client, engine, method, suffix, 413, content=padded_json(10 * MiB), headers=JSON
    )


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize("extra", [1, 10 * MiB], ids=["one-byte-over", "ten-megabytes-over"])
@pytest.mark.request_layer
async def test_chunked_body_over_the_limit_without_content_length_is_refused(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    method: str,
    suffix: str,
    extra: int,
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])
    content = chunks(padded_json(settings.max_body_bytes + extra))

    url = TASKS + suffix.format(task=task["id"])
    response = await client.request(method, url, content=content, headers=JSON)

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413)
    assert await snapshot(engine, task["id"]) == before


async def test_body_of_exactly_the_limit_is_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    content = padded_json(settings.max_body_bytes)

    declared = await client.post(TASKS, content=content, headers=JSON)
    chunked = await client.post(TASKS, content=chunks(content), headers=JSON)

    assert declared.status_code == 201, declared.text
    assert chunked.status_code == 201, chunked.text
    assert await count_rows(engine) == 2


@pytest.mark.request_layer
async def test_body_one_byte_over_the_limit_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await assert_refused(
        client,
        engine,
        "POST",
        "",
        413,
        content=padded_json(settings.max_body_bytes + 1),
        headers=JSON,
    )


def ten_megabytes(kind: str) -> bytes | AsyncIterator[bytes]:
    content = padded_json(10 * MiB)
    return content if kind == "declared" else chunks(content)


@pytest.mark.parametrize("kind", ["declared", "chunked"])
async def test_ten_megabyte_body_on_a_delete_is_refused_and_deletes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, kind: str
) -> None:
    # DELETE takes no body; a huge one must still be refused before anything is removed.
    await assert_refused(client, engine, "DELETE", "/{task}", 413, content=ten_megabytes(kind))


@pytest.mark.parametrize("kind", ["declared", "chunked"])
async def test_ten_megabyte_body_on_a_bulk_delete_is_refused_and_deletes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, kind: str
) -> None:
    done = await create_task(client, completed=True)
    before = await snapshot(engine, done["id"])

    response = await client.request(
        "DELETE", TASKS, params={"completed": "true"}, content=ten_megabytes(kind)
    )

    assert_problem(response, 413)
    assert await snapshot(engine, done["id"]) == before


# --- media type -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "text/json",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/jsonx",
        None,
    ],
)
@pytest.mark.request_layer
async def test_body_that_is_not_declared_as_json_is_refused(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    content_type: str | None,
) -> None:
    headers = {"content-type": content_type} if content_type else None
    content = b'{"title":"x","completed":true}'
    await assert_refused(client, engine, method, suffix, 415, content=content, headers=headers)


@pytest.mark.parametrize(("method", "suffix"), TEXT_TARGETS)
@pytest.mark.parametrize("headers", [JSON, None], ids=["json", "no-content-type"])
@pytest.mark.request_layer
async def test_empty_body_is_rejected_where_one_is_required(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    suffix: str,
    headers: dict[str, str] | None,
) -> None:
    problem = await assert_refused(
        client, engine, method, suffix, 422, content=b"", headers=headers
    )
    assert problem["errors"][0]["location"] == "body"
    assert problem["errors"][0]["type"] == "missing"


# --- text that looks dangerous but is valid ---------------------------------------------------

SUSPICIOUS_TEXT = [
    "'; DROP TABLE tasks; --",
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "x' UNION SELECT id, user_id, title FROM tasks --",
    "%' OR title LIKE '%",
    "\\'; --",
    "../../etc/passwd",
    "..\\..\\windows\\system32\\config\\sam",
    "/etc/shadow",
    "file:///etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "{{7*7}} ${7*7} #{7*7}",
    "${jndi:ldap://example.invalid/a}",
    "%s%s%s%n %x",
    "$(rm -rf /) `id` | cat",
    "null",
    "undefined",
    "\\u0000 written out",
    "\N{RIGHT-TO-LEFT OVERRIDE}gnp.exe",
    "zero\N{ZERO WIDTH JOINER}width\N{ZERO WIDTH SPACE}",
    "\N{PILE OF POO}\N{GRINNING FACE} e\N{COMBINING ACUTE ACCENT}",
    "\N{CJK UNIFIED IDEOGRAPH-4E2D}\N{CJK UNIFIED IDEOGRAPH-6587}",
    "\ufeffbom first",
    "\N{REPLACEMENT CHARACTER}",
]


@pytest.mark.parametrize("text", SUSPICIOUS_TEXT)
async def test_suspicious_text_is_stored_and_returned_literally(
    client: httpx.AsyncClient, engine: AsyncEngine, text: str
) -> None:
    bystander = await create_task(client, user="bob")

    response = await client.post(TASKS, json={"title": text, "description": text})

    assert response.status_code == 201, response.text
    task = response.json()
    assert (task["title"], task["description"]) == (text, text)
    row = await stored_task(engine, task["id"])
    assert row is not None and (row["title"], row["description"]) == (text, text)
    fetched = await client.get(f"{TASKS}/{task['id']}")
    assert fetched.json() == task
    listed = await client.get(TASKS)
    assert listed.json()["items"] == [task]
    # Nothing else was touched: the other user's task and both users are still there.
    assert await stored_task(engine, bystander["id"]) is not None
    assert (await count_rows(engine, "tasks"), await count_rows(engine, "users")) == (2, 2)


@pytest.mark.parametrize("text", SUSPICIOUS_TEXT[:8])
async def test_suspicious_text_round_trips_through_put_and_patch(
    client: httpx.AsyncClient, engine: AsyncEngine, text: str
) -> None:
    task = await create_task(client)
    url = f"{TASKS}/{task['id']}"

    replaced = await client.put(url, json={"title": text, "description": text})
    assert replaced.status_code == 200, replaced.text
    patched = await client.patch(url, json={"description": text + text})
    assert patched.status_code == 200, patched.text

    row = await stored_task(engine, task["id"])
    assert row is not None and (row["title"], row["description"]) == (text, text + text)
    assert await count_rows(engine) == 1


@pytest.mark.parametrize(
    "user",
    ["'OR'1'='1", "alice'--", "alice;DROP", "*", "%", "_", "alice%", "<b>", "a?b", "a#b", "a&b=c"],
)
async def test_user_id_with_special_characters_is_only_an_id(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    alices = await create_task(client)

    mine = await create_task(client, user=user, title="mine")

    assert mine["user_id"] == user
    row = await stored_task(engine, mine["id"])
    assert row is not None and row["user_id"] == user
    listed = await client.get(f"/api/{quote(user, safe='')}/tasks")
    assert [item["id"] for item in listed.json()["items"]] == [mine["id"]]
    alices_list = await client.get(TASKS)
    assert [item["id"] for item in alices_list.json()["items"]] == [alices["id"]]


# --- hostile path and query parameters --------------------------------------------------------


@pytest.mark.parametrize(
    "task_id",
    ["1 OR 1=1", "' OR '1'='1", "1; DROP TABLE tasks", "*", "%", "..\\..\\etc\\passwd"],
)
async def test_sql_or_wildcards_as_task_id_are_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, task_id: str
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])

    response = await client.delete(f"{TASKS}/{quote(task_id, safe='')}")

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"task_id"}
    assert await snapshot(engine, task["id"]) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/alice/tasks/../../etc/passwd",
        "/api/alice/tasks/..%2F..%2Fetc%2Fpasswd",
        "/api/alice/tasks/%2E%2E/%2E%2E/etc/passwd",
        "/api/../../../etc/passwd",
        "/api/alice/..%2Fbob/tasks",
    ],
)
@pytest.mark.request_layer
async def test_path_traversal_finds_no_route(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])

    for method in ("GET", "DELETE"):
        response = await client.request(method, path)
        assert_problem(response, 404)
    assert await snapshot(engine, task["id"]) == before


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", ""),
        ("DELETE", "?completed=true"),
        ("GET", "/stats"),
        ("GET", "/{task}"),
        ("PUT", "/{task}"),
        ("PATCH", "/{task}"),
        ("DELETE", "/{task}"),
        ("PATCH", "/{task}/complete"),
    ],
)
@pytest.mark.request_layer
async def test_empty_user_id_finds_no_route(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str
) -> None:
    task = await create_task(client, completed=True)
    before = await snapshot(engine, task["id"])
    body = {"title": "x"} if method in ("POST", "PUT", "PATCH") else None

    response = await client.request(
        method, "/api//tasks" + suffix.format(task=task["id"]), json=body
    )

    assert_problem(response, 404)
    assert await snapshot(engine, task["id"]) == before


# Starlette percent-decodes the path and query with errors="replace": unchecked, these bytes
# would arrive as U+FFFD, and "%FF" and "%FE" would be one and the same user.
INVALID_UTF8_IN_URL = [
    pytest.param("%FF", id="ff"),
    pytest.param("ali%C3%28ce", id="bad-continuation"),
    pytest.param("%C0%AF", id="overlong"),
    pytest.param("%ED%A0%80", id="encoded-lone-surrogate"),
]


@pytest.mark.parametrize("user", INVALID_UTF8_IN_URL)
@pytest.mark.request_layer
async def test_invalid_utf8_in_the_user_id_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    before = await snapshot(engine)

    response = await client.post(f"/api/{user}/tasks", json={"title": "x"})

    assert_problem(response, 400)
    assert await snapshot(engine) == before


@pytest.mark.parametrize("q", INVALID_UTF8_IN_URL)
@pytest.mark.request_layer
async def test_invalid_utf8_in_the_search_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, q: str
) -> None:
    await create_task(client, title="\N{REPLACEMENT CHARACTER}")

    response = await client.get(f"{TASKS}?q={q}")

    assert_problem(response, 400)
    assert await count_rows(engine) == 1


@pytest.mark.parametrize("text", SUSPICIOUS_TEXT[:13])
async def test_sql_and_paths_as_search_terms_match_only_literally(
    client: httpx.AsyncClient, engine: AsyncEngine, text: str
) -> None:
    target = await create_task(client, title=f"before {text} after")
    await create_task(client, title="plain")
    await create_task(client, user="bob", title=text)

    response = await client.get(TASKS, params={"q": text})

    assert response.status_code == 200, response.text
    assert response.json()["items"] == [target]
    assert await count_rows(engine) == 3


@pytest.mark.parametrize("limit", ["1; DROP TABLE tasks", "1 OR 1=1", "' OR '1'='1", "1e3"])
@pytest.mark.request_layer
async def test_sql_as_limit_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, limit: str
) -> None:
    await create_task(client)

    response = await client.get(TASKS, params={"limit": limit})

    problem = assert_problem(response, 422)
    assert named_fields(problem) == {"limit"}
    assert await count_rows(engine) == 1


# --- cursors ----------------------------------------------------------------------------------


def encode_cursor(payload: Any) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HEX_ID = "0" * 32
GARBAGE_CURSORS = [
    pytest.param("' OR 1=1 --", id="sql"),
    pytest.param("not a cursor", id="words"),
    pytest.param("!!!!", id="punctuation"),
    pytest.param("====", id="padding-only"),
    pytest.param("A", id="one-char"),
    pytest.param("\N{LATIN SMALL LETTER E WITH ACUTE}", id="non-ascii"),
    pytest.param("\x00", id="nul"),
    pytest.param(base64.urlsafe_b64encode(bytes(range(48))).decode(), id="random-base64"),
    pytest.param(base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(), id="base64-of-non-utf8"),
    pytest.param(encode_cursor({"created_at": "2024-01-01T00:00:00+00:00"}), id="object"),
    pytest.param(encode_cursor([]), id="empty-list"),
    pytest.param(encode_cursor(None), id="null"),
    pytest.param(encode_cursor("ab"), id="two-char-string"),
    pytest.param(encode_cursor(12), id="number"),
    pytest.param(encode_cursor([1, 2]), id="numbers"),
    pytest.param(encode_cursor([None, HEX_ID]), id="null-time"),
    pytest.param(encode_cursor(["yesterday", HEX_ID]), id="words-for-time"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00", HEX_ID]), id="time-without-zone"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00+00:00", "not-hex"]), id="id-not-hex"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00+00:00", None]), id="id-null"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00+00:00", 123]), id="id-number"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00+00:00", [HEX_ID]]), id="id-list"),
    pytest.param(encode_cursor(["2024-01-01T00:00:00+00:00", HEX_ID, 3]), id="three-items"),
    pytest.param(encode_cursor(["0001-01-01T00:00:00+14:00", HEX_ID]), id="time-before-year-1"),
    pytest.param(encode_cursor(["9999-12-31T23:59:59-14:00", HEX_ID]), id="time-after-year-9999"),
]


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
@pytest.mark.request_layer
async def test_garbage_cursor_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, cursor: str
) -> None:
    await create_task(client)

    response = await client.get(TASKS, params={"cursor": cursor})

    assert_problem(response, 400)
    assert await count_rows(engine) == 1


def flip(cursor: str, index: int) -> str:
    """One base64 character of the cursor replaced by another (the decoded bytes change)."""
    replacement = "B" if cursor[index] == "A" else "A"
    return cursor[:index] + replacement + cursor[index + 1 :]


def resigned(cursor: str, field: int, value: Any) -> str:
    """The cursor with one field of its JSON payload changed and the original MAC kept: what an
    attacker who can read the format writes to jump elsewhere in a listing."""
    payload, mac = cursor.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert fields[field] != value
    fields[field] = value
    edited = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(edited).decode().rstrip("=") + "." + mac


async def real_cursor(client: httpx.AsyncClient) -> str:
    for title in ("one", "two", "three"):
        await create_task(client, title=title)
    page = await client.get(TASKS, params={"limit": 1})
    cursor: str = page.json()["next_cursor"]
    assert cursor
    return cursor


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda cursor: cursor[: len(cursor) // 2], id="first-half"),
        pytest.param(lambda cursor: cursor[:-4], id="last-bytes-cut"),
        pytest.param(lambda cursor: cursor[len(cursor) // 2 :], id="second-half"),
        pytest.param(lambda cursor: cursor + "AAAA", id="bytes-appended"),
        pytest.param(lambda cursor: "AAAA" + cursor, id="bytes-prepended"),
        pytest.param(lambda cursor: flip(cursor, len(cursor) // 3), id="payload-character-flipped"),
        pytest.param(lambda cursor: flip(cursor, len(cursor) - 5), id="mac-character-flipped"),
        pytest.param(lambda cursor: cursor.split(".")[0], id="mac-removed"),
        pytest.param(lambda cursor: cursor.split(".")[0] + ".", id="mac-empty"),
        pytest.param(lambda cursor: cursor + "." + cursor.split(".")[1], id="second-mac"),
        pytest.param(lambda cursor: cursor.swapcase(), id="case-swapped"),
        pytest.param(lambda cursor: cursor.replace(".", "\x00."), id="nul-inserted"),
        pytest.param(lambda cursor: resigned(cursor, 3, "2000-01-01T00:00:00+00:00"), id="time"),
        pytest.param(lambda cursor: resigned(cursor, 4, "0" * 32), id="task-id"),
        pytest.param(lambda cursor: resigned(cursor, 1, "-updated_at"), id="sort"),
        pytest.param(lambda cursor: resigned(cursor, 2, "0" * 16), id="filter-scope"),
    ],
)
async def test_edited_real_cursor_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, edit: Any
) -> None:
    cursor = await real_cursor(client)
    assert (await client.get(TASKS, params={"cursor": cursor})).status_code == 200

    response = await client.get(TASKS, params={"cursor": edit(cursor)})

    assert_problem(response, 400)
    assert await count_rows(engine) == 3


async def real_sync_token(client: httpx.AsyncClient) -> str:
    """A token from the middle of a full sync (the inbox, then the task, one per page)."""
    await create_task(client)
    page = await client.get(f"/api/{USER}/sync", params={"limit": 1})
    assert page.status_code == 200 and page.json()["has_more"] is True, page.text
    token: str = page.json()["next_token"]
    return token


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda token: token[: len(token) // 2], id="first-half"),
        pytest.param(lambda token: token + "AAAA", id="bytes-appended"),
        pytest.param(lambda token: flip(token, len(token) // 3), id="payload-character-flipped"),
        pytest.param(lambda token: flip(token, len(token) - 5), id="mac-character-flipped"),
        pytest.param(lambda token: token.split(".")[0], id="mac-removed"),
        pytest.param(lambda token: token.swapcase(), id="case-swapped"),
        pytest.param(lambda token: token.replace(".", "\x00."), id="nul-inserted"),
        pytest.param(lambda token: "' OR 1=1 --", id="sql"),
        pytest.param(lambda token: "é" * 300, id="non-ascii"),
        pytest.param(lambda token: "", id="empty"),
        pytest.param(lambda token: resigned(token, 2, 0), id="sequence"),
        pytest.param(lambda token: resigned(token, 3, "task"), id="kind"),
        pytest.param(lambda token: resigned(token, 1, "0" * 16), id="owner"),
        pytest.param(lambda token: resigned(token, 5, -1), id="since"),
    ],
)
async def test_edited_or_garbage_sync_token_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, edit: Any
) -> None:
    token = await real_sync_token(client)
    assert (await client.get(f"/api/{USER}/sync", params={"token": token})).status_code == 200

    response = await client.get(f"/api/{USER}/sync", params={"token": edit(token)})

    problem = assert_problem(response, 400)
    assert problem["type"] == "/problems/invalid-sync-token"
    assert "sync token" in problem["detail"]
    assert await count_rows(engine) == 1


async def test_a_cursor_replayed_on_another_users_list_shows_only_that_users_tasks(
    client: httpx.AsyncClient,
) -> None:
    # The cursor is not bound to a user, only to a position; bob's tasks are older than that
    # position, so they are all after it, and nothing of alice's may come with them.
    bobs = [await create_task(client, user="bob", title=title) for title in ("b1", "b2")]
    cursor = await real_cursor(client)

    response = await client.get("/api/bob/tasks", params={"cursor": cursor})

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert sorted(item["id"] for item in items) == sorted(task["id"] for task in bobs)
    assert {item["user_id"] for item in items} == {"bob"}


# --- routes and methods -----------------------------------------------------------------------

SOME_ID = "0b6a2f4e-8a1b-4c1d-9e2f-3a4b5c6d7e8f"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/alice/todos",
        "/api/alice/task",
        f"/api/alice/tasks/{SOME_ID}/done",
        f"/api/alice/tasks/{SOME_ID}/complete/now",
        "/.env",
        "/admin",
        "/api/alice/tasks/x/y/z",
    ],
)
@pytest.mark.request_layer
async def test_unknown_route_is_404_problem(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, path: str
) -> None:
    await create_task(client)
    body = {"title": "x"} if method in ("POST", "PUT", "PATCH") else None

    response = await client.request(method, path, json=body)

    problem = assert_problem(response, 404)
    assert path in problem["detail"]
    assert await count_rows(engine) == 1


METHOD_NOT_ALLOWED = [
    pytest.param("PUT", "", id="put-collection"),
    pytest.param("PATCH", "", id="patch-collection"),
    pytest.param("POST", "/{task}", id="post-task"),
    pytest.param("GET", "/{task}/complete", id="get-complete"),
    pytest.param("POST", "/{task}/complete", id="post-complete"),
    pytest.param("PUT", "/{task}/complete", id="put-complete"),
    pytest.param("DELETE", "/{task}/complete", id="delete-complete"),
]


@pytest.mark.parametrize(("method", "suffix"), METHOD_NOT_ALLOWED)
@pytest.mark.request_layer
async def test_wrong_method_is_405_problem(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str
) -> None:
    task = await create_task(client)
    before = await snapshot(engine, task["id"])
    body = {"title": "x"} if method in ("POST", "PUT", "PATCH") else None

    url = TASKS + suffix.format(task=task["id"])
    response = await client.request(method, url, json=body)

    problem = assert_problem(response, 405)
    assert method in problem["detail"]
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert method not in allowed
    assert await snapshot(engine, task["id"]) == before


SUPPORTED_METHODS = {
    "": {"GET", "POST", "DELETE"},
    "/{task}": {"GET", "PUT", "PATCH", "DELETE"},
    "/{task}/complete": {"PATCH"},
}


@pytest.mark.parametrize(("method", "suffix"), METHOD_NOT_ALLOWED)
@pytest.mark.request_layer
async def test_405_allow_header_lists_every_supported_method(
    client: httpx.AsyncClient, method: str, suffix: str
) -> None:
    # RFC 9110 15.5.6: the Allow header lists the target resource's supported methods.
    task = await create_task(client)

    response = await client.request(method, TASKS + suffix.format(task=task["id"]))

    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == SUPPORTED_METHODS[suffix]


# --- due dates, zones, labels, lists, bulk changes -------------------------------------------

OTHER = "bob"


async def everything(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table a task write can touch, in a stable order."""
    tables = ("users", "lists", "labels", "tasks", "task_labels", "idempotency_keys")
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as connection:
        for table in tables:
            result = await connection.execute(sa.text(f"SELECT * FROM {table}"))
            rows[table] = sorted((tuple(row) for row in result), key=repr)
    return rows


@dataclass(frozen=True)
class World:
    """Alice's task (in her list, with her label) and her inbox task; Bob's task, list and
    label: the ids a hostile request names."""

    task: str
    inbox_task: str
    list: str
    label: str
    bobs_task: str
    bobs_list: str
    bobs_label: str


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await make_world(client)


async def make_world(client: httpx.AsyncClient) -> World:
    async def made(path: str, body: dict[str, Any]) -> str:
        response = await client.post(path, json=body)
        assert response.status_code == 201, response.text
        made_id: str = response.json()["id"]
        return made_id

    alices_list = await made(f"/api/{USER}/lists", {"name": "Errands"})
    alices_label = await made(f"/api/{USER}/labels", {"name": "home"})
    bobs_list = await made(f"/api/{OTHER}/lists", {"name": "Bob's"})
    bobs_label = await made(f"/api/{OTHER}/labels", {"name": "bob"})
    task = await create_task(
        client,
        list_id=alices_list,
        label_ids=[alices_label],
        due={"date": "2026-12-24", "time": "18:30", "timezone": "Europe/Berlin"},
        priority="high",
    )
    inbox_task = await create_task(client, title="in the inbox")
    bobs = await create_task(client, user=OTHER, list_id=bobs_list, label_ids=[bobs_label])
    return World(
        task["id"], inbox_task["id"], alices_list, alices_label, bobs["id"], bobs_list, bobs_label
    )


async def assert_changes_nothing(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    method: str,
    url: str,
    status: int,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send the request; expect a `status` problem and every table exactly as it was."""
    before = await everything(engine)

    response = await client.request(method, url, json=json_body, params=params)

    problem = assert_problem(response, status)
    assert await everything(engine) == before
    return problem


# Each write that takes a due date, and the body that carries `due` (`{due}`) in it.
def due_writes(world: World) -> list[tuple[str, str, Callable[[Any], dict[str, Any]], str]]:
    """(method, url, body of a due, the field prefix errors name)."""
    return [
        ("POST", TASKS, lambda due: {"title": "x", "due": due}, "due"),
        ("PATCH", f"{TASKS}/{world.task}", lambda due: {"due": due}, "due"),
        ("PUT", f"{TASKS}/{world.task}", lambda due: {"title": "x", "due": due}, "due"),
        (
            "POST",
            f"{TASKS}/bulk",
            lambda due: {"ids": [world.task, world.inbox_task], "set": {"due": due}},
            "set.due",
        ),
    ]


WRITE_IDS = ["create", "update", "replace", "bulk"]


def spread(corpus: list[Any], names: list[str], everywhere: int = 3) -> list[Any]:
    """The whole corpus on the first write, its first `everywhere` values on the others too:
    the writes share their validation, and the suite runs on every backend within budget."""
    cases = [pytest.param(0, value, id=f"{names[0]}-{value!r:.40}") for value in corpus]
    for write, name in enumerate(names[1:], start=1):
        for value in corpus[:everywhere]:
            cases.append(pytest.param(write, value, id=f"{name}-{value!r:.40}"))
    return cases


BAD_DATES = [
    "2026-02-30",
    "2026-13-01",
    "0000-01-01",
    "2026-00-10",
    "2026-1-1",
    "20261201",
    "2026-12-01T10:00:00Z",
    "\N{FULLWIDTH DIGIT TWO}026-01-01",
    "",
    "2026-12-01\x00",
    "x" * 10_240,
    20_261_201,
    1_764_547_200,
    1.5,
    True,
    None,
    [],
    {},
]
BAD_TIMES = [
    "24:00",
    "09:60",
    "23:59:60",
    "10:00+02:00",
    "10:00Z",
    "10:00:00.5",
    "9:30",
    "10",
    "",
    "10:00\x00",
    "x" * 10_240,
    36_000,
    10.5,
    True,
    [],
]
BAD_ZONES = [
    "UTC+5",
    "Mars/Olympus",
    "../../etc/passwd",
    "/etc/localtime",
    "localtime",
    "GMT-3",
    "+05:00",
    "Europe/../../x",
    "Europe/Berlin/..",
    "europe/berlin",
    "Europe/Berlin ",
    "",
    "x" * 10_240,
    "Europe/Berlin\x00",
    "\x00",
    5,
    True,
    [],
]


@pytest.mark.parametrize(("write", "value"), spread(BAD_DATES, WRITE_IDS))
@pytest.mark.request_layer
async def test_impossible_due_date_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, value: Any
) -> None:
    method, url, body, prefix = due_writes(world)[write]
    problem = await assert_changes_nothing(
        client, engine, method, url, 422, json_body=body({"date": value})
    )
    assert named_fields(problem) == {f"{prefix}.date"}


@pytest.mark.parametrize(("write", "value"), spread(BAD_TIMES, WRITE_IDS))
@pytest.mark.request_layer
async def test_impossible_due_time_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, value: Any
) -> None:
    method, url, body, prefix = due_writes(world)[write]
    problem = await assert_changes_nothing(
        client, engine, method, url, 422, json_body=body({"date": "2026-12-01", "time": value})
    )
    assert named_fields(problem) == {f"{prefix}.time"}


@pytest.mark.parametrize(("write", "value"), spread(BAD_ZONES, WRITE_IDS, everywhere=1))
@pytest.mark.request_layer
async def test_due_zone_that_is_not_an_iana_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, value: Any
) -> None:
    method, url, body, prefix = due_writes(world)[write]
    due = {"date": "2026-12-01", "time": "10:00", "timezone": value}
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body(due))
    assert named_fields(problem) == {f"{prefix}.timezone"}


MALFORMED_DUES = [
    {"date": "2026-12-01", "timezone": "Europe/Berlin"},  # a zone without a time
    {"time": "10:00"},
    {"date": "2026-12-01", "at": "2026-12-01T09:00:00Z"},  # read-only
    {"date": "2026-12-01", "when": "soon"},
    "2026-12-01",
    1_764_547_200,
    [{"date": "2026-12-01"}],
]


@pytest.mark.parametrize(("write", "due"), spread(MALFORMED_DUES, WRITE_IDS, everywhere=1))
@pytest.mark.request_layer
async def test_malformed_due_object_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, due: Any
) -> None:
    method, url, body, prefix = due_writes(world)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body(due))
    assert all(name.startswith(prefix) for name in named_fields(problem)), problem


@pytest.mark.parametrize("write", range(4), ids=WRITE_IDS)
@pytest.mark.parametrize(
    "due",
    [
        # The instant of a fixed due must exist: these local times are beyond year 9999 or
        # before year 1 in UTC.
        pytest.param(
            {"date": "9999-12-31", "time": "23:00", "timezone": "America/Los_Angeles"},
            id="after-9999-in-utc",
        ),
        pytest.param(
            {"date": "0001-01-01", "time": "00:00", "timezone": "Asia/Tokyo"},
            id="before-year-1-in-utc",
        ),
    ],
)
async def test_fixed_due_whose_instant_is_beyond_the_calendar_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, due: Any
) -> None:
    method, url, body, prefix = due_writes(world)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body(due))
    assert named_fields(problem) == {prefix}


# --- the user's zone and `tz=` ------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_ZONES, ids=repr)
@pytest.mark.request_layer
async def test_user_zone_that_is_not_an_iana_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, value: Any
) -> None:
    problem = await assert_changes_nothing(
        client, engine, "PATCH", f"/api/{USER}", 422, json_body={"timezone": value}
    )
    assert named_fields(problem) == {"timezone"}
    assert (await client.get(f"/api/{USER}")).json()["timezone"] == "UTC"


@pytest.mark.parametrize("value", [zone for zone in BAD_ZONES if isinstance(zone, str)], ids=repr)
@pytest.mark.request_layer
async def test_tz_query_that_is_not_an_iana_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, value: str
) -> None:
    problem = await assert_changes_nothing(
        client, engine, "GET", TASKS, 422, params={"due": "today", "tz": value}
    )
    assert named_fields(problem) == {"tz"}


# --- priority -----------------------------------------------------------------------------------

BAD_PRIORITIES = [1, 4, "HIGH", None, 0, -1, 2.5, True, "High", "urgent", "p1", "1", "", [], {}]


@pytest.mark.parametrize(("write", "value"), spread(BAD_PRIORITIES, WRITE_IDS, everywhere=1))
@pytest.mark.request_layer
async def test_priority_that_is_not_a_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, value: Any
) -> None:
    # Numbers would invite the 1-is-high-or-4-is-high inversion; null clears nothing.
    method, url, body, field = {
        "create": ("POST", TASKS, {"title": "x", "priority": value}, "priority"),
        "update": ("PATCH", f"{TASKS}/{world.task}", {"priority": value}, "priority"),
        "replace": ("PUT", f"{TASKS}/{world.task}", {"title": "x", "priority": value}, "priority"),
        "bulk": (
            "POST",
            f"{TASKS}/bulk",
            {"ids": [world.task], "set": {"priority": value}},
            "set.priority",
        ),
    }[WRITE_IDS[write]]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body)
    assert named_fields(problem) == {field}


@pytest.mark.parametrize("value", BAD_PRIORITIES[:8], ids=repr)
@pytest.mark.request_layer
async def test_priority_filter_that_is_not_a_name_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, value: Any
) -> None:
    problem = await assert_changes_nothing(
        client, engine, "GET", TASKS, 422, params={"priority": str(value)}
    )
    assert {name.split(".")[0] for name in named_fields(problem)} == {"priority"}


# --- label ids ----------------------------------------------------------------------------------


def label_writes(world: World, label_ids: Any) -> list[tuple[str, str, dict[str, Any], str]]:
    """Every write that takes label ids: (method, url, body, the field errors name)."""
    return [
        ("POST", TASKS, {"title": "x", "label_ids": label_ids}, "label_ids"),
        ("PATCH", f"{TASKS}/{world.task}", {"label_ids": label_ids}, "label_ids"),
        ("PUT", f"{TASKS}/{world.task}", {"title": "x", "label_ids": label_ids}, "label_ids"),
        (
            "POST",
            f"{TASKS}/bulk",
            {"ids": [world.task], "add_label_ids": label_ids},
            "add_label_ids",
        ),
        (
            "POST",
            f"{TASKS}/bulk",
            {"ids": [world.task], "remove_label_ids": label_ids},
            "remove_label_ids",
        ),
    ]


LABEL_WRITE_IDS = ["create", "update", "replace", "bulk-add", "bulk-remove"]


@pytest.mark.parametrize("write", range(5), ids=LABEL_WRITE_IDS)
async def test_another_users_label_is_not_found_and_named(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int
) -> None:
    label_ids = [world.label, world.bobs_label]
    method, url, body, _ = label_writes(world, label_ids)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body)
    # The repository names the ids that are not the user's (one message for all writes).
    assert world.bobs_label in problem["detail"] and world.label not in problem["detail"]
    assert named_fields(problem) == {"label_ids"}


MALFORMED_LABEL_IDS = [
    "duplicate",
    "fifty-one",
    ["not-a-uuid"],
    [1],
    [None],
    ["' OR 1=1 --"],
    [SOME_ID + "\x00"],
    SOME_ID,
    {"id": SOME_ID},
]


@pytest.mark.parametrize(("write", "label_ids"), spread(MALFORMED_LABEL_IDS, LABEL_WRITE_IDS))
async def test_malformed_label_ids_are_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, label_ids: Any
) -> None:
    if label_ids == "duplicate":
        label_ids = [world.label, world.label.upper()]  # one id, spelled twice
    elif label_ids == "fifty-one":
        label_ids = [str(uuid.uuid4()) for _ in range(51)]
    method, url, body, field = label_writes(world, label_ids)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body)
    assert {name.split(".")[0] for name in named_fields(problem)} == {field}


@pytest.mark.parametrize("write", range(5), ids=LABEL_WRITE_IDS)
async def test_ten_thousand_label_ids_are_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int
) -> None:
    # 380 KB of ids: over the default body limit before anything is parsed.
    label_ids = [str(uuid.uuid4()) for _ in range(10_000)]
    method, url, body, _ = label_writes(world, label_ids)[write]
    await assert_changes_nothing(client, engine, method, url, 413, json_body=body)


@pytest.mark.parametrize("write", [0, 3], ids=["create", "bulk-add"])
async def test_ten_thousand_label_ids_under_a_larger_body_limit_are_rejected_by_count(
    settings: Settings, engine: AsyncEngine, write: int
) -> None:
    # With room for the body, the list is parsed and refused for its length (≤ 50), not
    # looked up: no query with 10,000 parameters, no 500.
    roomy = settings.model_copy(update={"max_body_bytes": 1024 * 1024})
    async with running(roomy) as client:
        world_ = await make_world(client)
        label_ids = [str(uuid.uuid4()) for _ in range(10_000)]
        method, url, body, field = label_writes(world_, label_ids)[write]
        problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body)
    assert named_fields(problem) == {field}


GARBAGE_LABEL_FILTERS = [
    "fifty-one",
    "duplicate",
    "x",
    "' OR 1=1 --",
    "-" * 36,
    "0" * 33,
    "",
    ",",
    SOME_ID + ",",
    SOME_ID + "\x00",
    "x" * 10_240,
]


@pytest.mark.parametrize(
    ("which", "value"), spread(GARBAGE_LABEL_FILTERS, ["labels_any", "labels_all"])
)
@pytest.mark.request_layer
async def test_garbage_label_filter_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, which: int, value: str
) -> None:
    param = ["labels_any", "labels_all"][which]
    if value == "fifty-one":
        value = ",".join(str(uuid.uuid4()) for _ in range(51))
    elif value == "duplicate":
        value = f"{world.label},{world.label}"
    problem = await assert_changes_nothing(client, engine, "GET", TASKS, 422, params={param: value})
    assert named_fields(problem) == {param}


async def test_label_filter_with_another_users_label_shows_nothing_of_theirs(
    client: httpx.AsyncClient, world: World
) -> None:
    for param in ("labels_any", "labels_all"):
        response = await client.get(TASKS, params={param: world.bobs_label})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []


# --- list ids -----------------------------------------------------------------------------------

BAD_LIST_REFS = ["Inbox", "INBOX", "inbox ", " inbox", "inbox\x00", "", "null", "../inbox", 1, True]


def list_writes(world: World, ref: Any) -> list[tuple[str, str, dict[str, Any], str]]:
    """Every write whose body names a list: (method, url, body, the field errors name)."""
    return [
        ("POST", TASKS, {"title": "x", "list_id": ref}, "list_id"),
        ("PATCH", f"{TASKS}/{world.task}", {"list_id": ref}, "list_id"),
        ("PUT", f"{TASKS}/{world.task}", {"title": "x", "list_id": ref}, "list_id"),
        ("POST", f"{TASKS}/{world.task}/move", {"list_id": ref}, "list_id"),
        ("POST", f"{TASKS}/bulk", {"ids": [world.task], "set": {"list_id": ref}}, "set.list_id"),
    ]


LIST_WRITE_IDS = ["create", "update", "replace", "move", "bulk"]


@pytest.mark.parametrize("write", range(5), ids=LIST_WRITE_IDS)
@pytest.mark.parametrize("whose", ["another-users", "nobodys"])
async def test_list_that_is_not_the_users_is_not_found_and_named(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, whose: str
) -> None:
    ref = world.bobs_list if whose == "another-users" else str(uuid.uuid4())
    method, url, body, _ = list_writes(world, ref)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 404, json_body=body)
    assert ref in problem["detail"]


@pytest.mark.parametrize(("write", "ref"), spread(BAD_LIST_REFS, LIST_WRITE_IDS, everywhere=1))
@pytest.mark.request_layer
async def test_list_reference_that_is_neither_an_id_nor_inbox_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, write: int, ref: Any
) -> None:
    method, url, body, field = list_writes(world, ref)[write]
    problem = await assert_changes_nothing(client, engine, method, url, 422, json_body=body)
    assert {name.split(".uuid")[0].split(".literal")[0] for name in named_fields(problem)} == {
        field
    }


@pytest.mark.parametrize("ref", [ref for ref in BAD_LIST_REFS if isinstance(ref, str)], ids=repr)
@pytest.mark.request_layer
async def test_list_filter_that_is_neither_an_id_nor_inbox_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, ref: str
) -> None:
    problem = await assert_changes_nothing(
        client, engine, "GET", TASKS, 422, params={"list_id": ref, "sort": "position"}
    )
    assert {name.split(".")[0] for name in named_fields(problem)} == {"list_id"}


async def test_list_filter_with_another_users_list_shows_nothing_of_theirs(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(TASKS, params={"list_id": world.bobs_list, "sort": "position"})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"tasks": "move", "move_to": "bobs"}, id="move-to-another-users-list"),
        pytest.param({"tasks": "move", "move_to": "random"}, id="move-to-nobodys-list"),
    ],
)
async def test_deleting_a_list_into_a_list_that_is_not_the_users_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, params: dict[str, str]
) -> None:
    target = world.bobs_list if params["move_to"] == "bobs" else str(uuid.uuid4())
    problem = await assert_changes_nothing(
        client,
        engine,
        "DELETE",
        f"/api/{USER}/lists/{world.list}",
        404,
        params={"tasks": "move", "move_to": target},
    )
    assert target in problem["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"tasks": "move", "move_to": "Inbox"}, "move_to", id="Inbox"),
        pytest.param({"tasks": "move", "move_to": "inbox "}, "move_to", id="inbox-space"),
        pytest.param({"tasks": "move", "move_to": "self"}, "move_to", id="itself"),
        pytest.param({"tasks": "move"}, "move_to", id="no-destination"),
        pytest.param({"move_to": "inbox"}, "move_to", id="destination-without-move"),
        pytest.param({"tasks": "MOVE", "move_to": "inbox"}, "tasks", id="MOVE"),
        pytest.param({"tasks": "archive"}, "tasks", id="unknown-mode"),
    ],
)
async def test_malformed_list_delete_is_rejected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    world: World,
    params: dict[str, str],
    field: str,
) -> None:
    if params.get("move_to") == "self":
        params = params | {"move_to": world.list}
    problem = await assert_changes_nothing(
        client, engine, "DELETE", f"/api/{USER}/lists/{world.list}", 422, params=params
    )
    assert {name.split(".")[0] for name in named_fields(problem)} == {field}


@pytest.mark.parametrize("path", ["/lists/{bobs_list}", "/labels/{bobs_label}"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_another_users_list_or_label_in_the_path_is_not_found(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, path: str, method: str
) -> None:
    url = f"/api/{USER}" + path.format(bobs_list=world.bobs_list, bobs_label=world.bobs_label)
    body = {"name": "intruder"} if method == "PATCH" else None
    await assert_changes_nothing(client, engine, method, url, 404, json_body=body)


# --- moves --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({"after_id": "bobs_task"}, 422, "after_id", id="after-another-users-task"),
        pytest.param({"before_id": "bobs_task"}, 422, "before_id", id="before-another-users"),
        pytest.param({"after_id": "self"}, 422, "after_id", id="after-itself"),
        pytest.param({"after_id": "inbox_task"}, 422, "after_id", id="anchor-in-another-list"),
        pytest.param(
            {"after_id": "inbox_task", "before_id": "inbox_task", "list_id": "inbox"},
            422,
            "before_id",
            id="both-anchors",
        ),
        pytest.param({"after_id": "not-a-uuid"}, 422, "after_id", id="anchor-not-a-uuid"),
        pytest.param({"position": "0"}, 422, "position", id="position-is-read-only"),
    ],
)
async def test_bad_move_anchor_is_rejected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    world: World,
    body: dict[str, str],
    status: int,
    field: str,
) -> None:
    names = {"bobs_task": world.bobs_task, "self": world.task, "inbox_task": world.inbox_task}
    body = {key: names.get(value, value) for key, value in body.items()}
    problem = await assert_changes_nothing(
        client, engine, "POST", f"{TASKS}/{world.task}/move", status, json_body=body
    )
    assert named_fields(problem) == {field}


async def test_moving_another_users_task_is_not_found(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World
) -> None:
    await assert_changes_nothing(
        client, engine, "POST", f"{TASKS}/{world.bobs_task}/move", 404, json_body={}
    )


# --- bulk changes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        pytest.param("201", "ids", id="201-ids"),
        pytest.param("duplicate", "ids", id="duplicate"),
        pytest.param("duplicate-spelled-differently", "ids", id="duplicate-upper-case"),
        pytest.param([], "ids", id="none"),
        pytest.param(["not-a-uuid"], "ids", id="not-a-uuid"),
        pytest.param([None], "ids", id="null"),
        pytest.param("all", "ids", id="a-string"),
    ],
)
async def test_malformed_bulk_ids_are_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, ids: Any, field: str
) -> None:
    if ids == "201":
        ids = [world.task, *(str(uuid.uuid4()) for _ in range(200))]
    elif ids == "duplicate":
        ids = [world.task, world.inbox_task, world.task]
    elif ids == "duplicate-spelled-differently":
        ids = [world.task, world.task.upper()]
    problem = await assert_changes_nothing(
        client,
        engine,
        "POST",
        f"{TASKS}/bulk",
        422,
        json_body={"ids": ids, "set": {"completed": True}},
    )
    assert {name.split(".")[0] for name in named_fields(problem)} == {field}


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize(
    "change",
    [
        {"set": {"completed": True}},
        {"set": {"priority": "low", "due": None}},
        {"set": {"list_id": "inbox"}},
        {"add_label_ids": ["label"]},
        {"remove_label_ids": ["label"]},
    ],
    ids=["complete", "priority-and-due", "move", "add-label", "remove-label"],
)
async def test_bulk_with_one_of_another_users_tasks_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, where: str, change: Any
) -> None:
    ids = [world.task, world.inbox_task]
    ids = [world.bobs_task, *ids] if where == "first" else [*ids, world.bobs_task]
    change = json.loads(json.dumps(change).replace('"label"', f'"{world.label}"'))
    problem = await assert_changes_nothing(
        client, engine, "POST", f"{TASKS}/bulk", 404, json_body={"ids": ids, **change}
    )
    assert world.bobs_task in problem["detail"]
    assert world.task not in problem["detail"] and world.inbox_task not in problem["detail"]


@pytest.mark.parametrize(
    "values",
    [
        {"completed": None},
        {"priority": None},
        {"list_id": None},
        {"completed": "true"},
        {"completed": 1},
        {"title": "x"},
        {"label_ids": []},
        {"position": "0"},
    ],
    ids=repr,
)
async def test_bulk_set_with_a_value_it_cannot_set_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, values: dict[str, Any]
) -> None:
    # Only `due` may be null in `set` (it clears the due date): null is no completion state,
    # priority or list.
    problem = await assert_changes_nothing(
        client,
        engine,
        "POST",
        f"{TASKS}/bulk",
        422,
        json_body={"ids": [world.task], "set": values},
    )
    assert named_fields(problem) == {f"set.{next(iter(values))}"}


async def test_bulk_adding_and_removing_one_label_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World
) -> None:
    body = {"ids": [world.task], "add_label_ids": [world.label], "remove_label_ids": [world.label]}
    await assert_changes_nothing(client, engine, "POST", f"{TASKS}/bulk", 422, json_body=body)


# --- listing parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "position"},
        {"sort": "-position"},
        {"sort": "position", "due": "today"},
        {"sort": "position", "labels_any": SOME_ID},
    ],
    ids=repr,
)
async def test_position_sort_without_a_list_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, params: dict[str, str]
) -> None:
    await assert_changes_nothing(client, engine, "GET", TASKS, 400, params=params)


BAD_RANGE_DATES = [
    "99999-01-01",
    "0000-01-01",
    "2026-02-30",
    "+10000-01-01",
    "-0001-01-01",
    "2026-13-01",
    "1e9",
    "9" * 1000,
    "today",
    "",
    "2026-01-01\x00",
]


@pytest.mark.parametrize(("which", "value"), spread(BAD_RANGE_DATES, ["due_from", "due_to"]))
@pytest.mark.request_layer
async def test_impossible_due_range_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, world: World, which: int, value: str
) -> None:
    param = ["due_from", "due_to"][which]
    problem = await assert_changes_nothing(client, engine, "GET", TASKS, 422, params={param: value})
    assert named_fields(problem) == {param}


@pytest.mark.parametrize(
    ("params", "matches"),
    [
        ({"due_from": "0001-01-01"}, True),
        ({"due_to": "9999-12-31"}, True),
        ({"due_from": "0001-01-01", "due_to": "9999-12-31"}, True),
        ({"due_from": "0001-01-01", "tz": "Pacific/Kiritimati"}, True),
        ({"due_to": "9999-12-31", "tz": "Etc/GMT+12"}, True),
        ({"due_from": "9999-12-31", "tz": "Pacific/Kiritimati"}, False),
        ({"due_to": "0001-01-01", "tz": "Etc/GMT+12"}, False),
        ({"due_from": "9999-12-31", "due_to": "9999-12-31"}, False),
        ({"due_from": "0001-01-01", "due_to": "0001-01-01"}, False),
    ],
    ids=repr,
)
async def test_due_range_at_the_ends_of_the_calendar_is_answered(
    client: httpx.AsyncClient, world: World, params: dict[str, str], matches: bool
) -> None:
    # The first and last dates there are: valid dates, so an answer (never an overflow).
    response = await client.get(TASKS, params=params)

    assert response.status_code == 200, response.text
    assert [task["id"] for task in response.json()["items"]] == ([world.task] if matches else [])
