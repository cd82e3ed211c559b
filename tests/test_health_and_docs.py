"""Probes, problem documents for framework errors, and the OpenAPI description."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from support import assert_problem
from todo_api import __version__
from todo_api.platform.database import migrate

pytestmark = pytest.mark.through_pooler


async def test_liveness_reports_version_and_uptime_quickly(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await client.get("/health")
    assert time.perf_counter() - started < 0.1
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0


async def test_readiness_reports_database_latency_and_revision(
    client: httpx.AsyncClient, backend: str
) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    database = response.json()["database"]
    assert database["dialect"] == ("sqlite" if backend == "sqlite" else "postgresql")
    assert database["latency_ms"] > 0
    assert database["revision"] == database["head_revision"] == migrate.head_revision()


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/no/such/route"), 404)
    assert "/no/such/route" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("PATCH", "/api/alice/tasks"), ("POST", "/health"), ("PUT", "/api/alice/tasks")],
)
async def test_wrong_method_is_a_405_problem(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    body = assert_problem(response, 405)
    assert method in body["detail"]
    assert response.headers["allow"]


WRITE_STATUSES = {"200", "400", "404", "412", "413", "415", "422", "503"}


async def test_openapi_declares_every_error_status_with_the_problem_schema(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    problem, invalid = schemas["Problem"], schemas["ValidationProblem"]
    # `errors` only where the server sends it (422): a 404 without it fits its type.
    assert set(problem["required"]) == {"type", "title", "status", "detail", "request_id"}
    assert "errors" not in problem["properties"]
    assert set(invalid["required"]) == set(problem["required"]) | {"errors"}
    body = {"400", "413", "415", "422", "503"}
    READ = {"400", "404", "422", "503"}
    expected = {
        ("get", "/api/{user_id}/tasks"): {"200", "400", "422", "503"},
        ("delete", "/api/{user_id}/tasks"): {"200", "400", "422", "503"},
        ("get", "/api/{user_id}/tasks/stats"): {"200", "422", "503"},
        ("post", "/api/{user_id}/tasks"): {"201", "404", "409"} | body,
        ("post", "/api/{user_id}/tasks/bulk"): {"200", "404", "409"} | body,
        ("get", "/api/{user_id}/tasks/{task_id}"): {"200", "304", "400", "404", "422", "503"},
        ("put", "/api/{user_id}/tasks/{task_id}"): WRITE_STATUSES | {"409"},
        ("patch", "/api/{user_id}/tasks/{task_id}"): WRITE_STATUSES | {"409"},
        ("delete", "/api/{user_id}/tasks/{task_id}"): {"204", "400", "404", "412", "422", "503"},
        ("patch", "/api/{user_id}/tasks/{task_id}/complete"): WRITE_STATUSES,
        ("post", "/api/{user_id}/tasks/{task_id}/move"): WRITE_STATUSES,
        ("get", "/api/{user_id}/lists"): {"200", "422", "503"},
        ("post", "/api/{user_id}/lists"): {"201"} | body,
        ("get", "/api/{user_id}/lists/{list_id}"): {"200", "304", "400", "404", "422", "503"},
        ("patch", "/api/{user_id}/lists/{list_id}"): WRITE_STATUSES,
        ("delete", "/api/{user_id}/lists/{list_id}"): {"204", "409", "412"} | READ,
        ("post", "/api/{user_id}/lists/{list_id}/move"): WRITE_STATUSES,
        ("get", "/api/{user_id}/labels"): {"200", "422", "503"},
        ("post", "/api/{user_id}/labels"): {"201", "409"} | body,
        ("get", "/api/{user_id}/labels/{label_id}"): {"200", "304", "400", "404", "422", "503"},
        ("patch", "/api/{user_id}/labels/{label_id}"): WRITE_STATUSES | {"409"},
        ("delete", "/api/{user_id}/labels/{label_id}"): {"204", "400", "404", "412", "422", "503"},
        ("get", "/api/{user_id}"): {"200", "422", "503"},
        ("patch", "/api/{user_id}"): {"200"} | body,
        ("get", "/api/{user_id}/limits"): {"200", "422", "503"},
        ("get", "/api/{user_id}/sync"): {"200", "400", "410", "422", "503"},
        ("post", "/api/{user_id}/events/ticket"): {"200", "422", "503"},
        ("get", "/api/{user_id}/events"): {"200", "422", "429", "503"},
        ("get", "/health/ready"): {"200", "503"},
    }
    declared = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert declared - {("get", "/health")} == set(expected)  # every operation is listed here
    # The writes that can run into a quota: their 403 is a quota problem or a plain one.
    quota = {
        ("post", "/api/{user_id}/tasks"),
        ("post", "/api/{user_id}/tasks/bulk"),
        ("put", "/api/{user_id}/tasks/{task_id}"),
        ("patch", "/api/{user_id}/tasks/{task_id}"),
        ("post", "/api/{user_id}/lists"),
        ("post", "/api/{user_id}/labels"),
    }
    for (method, path), statuses in expected.items():
        operation = spec["paths"][path][method]
        # Every /api operation may also answer 401 (no valid token) and 403 (another user's).
        if path.startswith("/api/"):
            statuses = statuses | {"401", "403"}
        assert set(operation["responses"]) == statuses, (method, path)
        assert operation["operationId"] and operation["summary"]
        for status, response in operation["responses"].items():
            assert "X-Request-ID" in response["headers"], (method, path, status)
            if status.startswith(("4", "5")):
                schema = response["content"]["application/problem+json"]["schema"]
                name = "ValidationProblem" if status == "422" else "Problem"
                if status == "403" and (method, path) in quota:
                    problems = [
                        {"$ref": f"#/components/schemas/{kind}"}
                        for kind in ("QuotaProblem", "Problem")
                    ]
                    assert schema == {"anyOf": problems}, (method, path)
                else:
                    assert schema == {"$ref": f"#/components/schemas/{name}"}, (method, path)


async def test_openapi_declares_the_headers_each_answer_carries(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    single = spec["paths"]["/api/{user_id}/tasks/{task_id}"]
    tasks = spec["paths"]["/api/{user_id}/tasks"]

    def declared(operation: dict[str, Any], status: str) -> set[str]:
        return set(operation["responses"][status]["headers"])

    assert declared(tasks["post"], "201") >= {"ETag", "Location", "Idempotent-Replayed"}
    for method in ("get", "put", "patch"):
        assert "ETag" in declared(single[method], "200"), method
        assert "ETag" in declared(single[method], "412" if method != "get" else "304")
        assert "Retry-After" in declared(single[method], "503")
        assert "WWW-Authenticate" in declared(single[method], "401")
    created = (await client.post("/api/alice/tasks", json={"title": "x"})).headers
    assert {"etag", "location", "x-request-id"} <= set(created)


async def test_openapi_request_types_match_what_the_server_accepts(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    update = schemas["TaskUpdate"]["properties"]
    # Omittable but never null, except the description, which null clears.
    assert update["title"]["type"] == "string" and update["completed"]["type"] == "boolean"
    assert {"type": "null"} in update["description"]["anyOf"]
    # Fields the server fills in are optional: no default that generators read as "required".
    create = schemas["TaskCreate"]
    assert create["required"] == ["title"]
    assert not any("default" in field for field in create["properties"].values())
    bulk = spec["paths"]["/api/{user_id}/tasks"]["delete"]["parameters"]
    [completed] = [p for p in bulk if p["name"] == "completed"]
    assert completed["required"] is True and completed["schema"]["type"] == "boolean"
    listing = spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]
    for parameter in listing:  # present or absent, never null
        assert {"type": "null"} not in parameter["schema"].get("anyOf", []), parameter["name"]
        assert parameter["schema"].get("type") != "null", parameter["name"]
    if_match = spec["paths"]["/api/{user_id}/tasks/{task_id}"]["patch"]["parameters"]
    [header] = [p for p in if_match if p["name"] == "If-Match"]
    assert header["in"] == "header" and header["schema"]["pattern"]


async def test_operation_ids_are_stable_and_unique(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert "tasks-create_task" in ids and "tasks-list_tasks" in ids


async def test_every_operation_documents_examples_for_its_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]

    def has_examples(schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        if "anyOf" in schema:
            return any(
                has_examples(option) for option in schema["anyOf"] if option != {"type": "null"}
            )
        properties = schema.get("properties", {}).values()
        return "examples" in schema or any(
            "examples" in prop or has_examples(prop)
            for prop in properties
            if "$ref" in prop or "examples" in prop
        )

    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert has_examples(body), (method, path, "request")
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json")
                if status.startswith("2") and content:
                    assert has_examples(content["schema"]), (method, path, status)
