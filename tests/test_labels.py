"""Labels through HTTP: a user's named, coloured tags, unique per user ignoring case and
Unicode compatibility forms, checked against what the database stores."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, create_task, running, stored_task
from todo_api.settings import Settings

FULL_WIDTH_WORK = "\uff37\uff2f\uff32\uff2b"  # full-width WORK: NFKC folds it to "WORK"


async def create_label(
    client: httpx.AsyncClient, user: str = "alice", **fields: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/labels", json={"name": "Work", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def stored_labels(engine: AsyncEngine, user: str = "alice") -> list[dict[str, Any]]:
    """The user's label rows as the database holds them, by name_key."""
    async with engine.connect() as connection:
        result = await connection.execute(
            sa.text(
                "SELECT name, name_key, color, version FROM labels "
                "WHERE user_id = :user ORDER BY name_key"
            ),
            {"user": user},
        )
        return [dict(row._mapping) for row in result]


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value  # RFC 3339, UTC
    return datetime.fromisoformat(value)


def label_url(label: dict[str, Any], user: str = "alice") -> str:
    return f"/api/{user}/labels/{label['id']}"


# --- create, read, list -------------------------------------------------------------------------


@pytest.mark.through_pooler
async def test_create_returns_the_label_with_location_and_etag_and_stores_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post("/api/alice/labels", json={"name": "Work", "color": "#EF4444"})

    assert response.status_code == 201, response.text
    label = response.json()
    assert set(label) == {
        "id",
        "name",
        "color",
        "created_at",
        "updated_at",
        "version",
        "change_seq",
    }
    assert uuid.UUID(label["id"]).version == 4
    assert (label["name"], label["color"], label["version"]) == ("Work", "#ef4444", 1)
    assert label["created_at"] == label["updated_at"]
    assert response.headers["location"] == f"/api/alice/labels/{label['id']}"
    assert response.headers["etag"] == '"1"'
    assert (await client.get(response.headers["location"])).json() == label
    assert await stored_labels(engine) == [
        {"name": "Work", "name_key": "work", "color": "#ef4444", "version": 1}
    ]


async def test_create_without_color_has_none(client: httpx.AsyncClient) -> None:
    assert (await create_label(client))["color"] is None


async def test_name_is_trimmed_and_may_have_60_characters(client: httpx.AsyncClient) -> None:
    assert (await create_label(client, name="  Work \t"))["name"] == "Work"
    longest = "x" * 60
    assert (await create_label(client, name=f"  {longest}  "))["name"] == longest


async def test_list_holds_only_the_users_labels_ordered_by_folded_name(
    client: httpx.AsyncClient,
) -> None:
    for name in ("beta", "Gamma", "alpha", "Beta2"):
        await create_label(client, name=name)
    await create_label(client, user="bob", name="aardvark")

    response = await client.get("/api/alice/labels")

    assert response.status_code == 200
    assert [label["name"] for label in response.json()["items"]] == [
        "alpha", "beta", "Beta2", "Gamma",
    ]  # fmt: skip


async def test_list_of_a_user_without_labels_is_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nobody-yet/labels")
    assert response.status_code == 200
    assert response.json() == {"items": []}


async def test_get_answers_304_when_if_none_match_names_its_etag(
    client: httpx.AsyncClient,
) -> None:
    label = await create_label(client)

    fresh = await client.get(label_url(label), headers={"If-None-Match": '"1"'})
    changed = await client.get(label_url(label), headers={"If-None-Match": '"7"'})

    assert fresh.status_code == 304
    assert fresh.content == b""
    assert fresh.headers["etag"] == '"1"'
    assert changed.status_code == 200
    assert changed.headers["etag"] == '"1"'
    assert changed.json() == label


async def test_unknown_label_is_404_problem_naming_it(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    body = assert_problem(await client.get(f"/api/alice/labels/{missing}"), 404)
    assert body["detail"] == f"No label {missing} for this user"


# --- update -------------------------------------------------------------------------------------


@pytest.mark.through_pooler
async def test_patch_renames_and_recolours_and_bumps_the_version(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client, color="#112233")

    renamed = await client.patch(
        label_url(label), json={"name": " Errands "}, headers={"If-Match": '"1"'}
    )
    cleared = await client.patch(label_url(label), json={"color": None})

    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["color"]) == ("Errands", "#112233")
    assert renamed.headers["etag"] == '"2"'
    assert cleared.status_code == 200, cleared.text
    body = cleared.json()
    assert (body["name"], body["color"], body["version"]) == ("Errands", None, 3)
    assert body["created_at"] == label["created_at"]
    assert parse_time(body["updated_at"]) > parse_time(label["updated_at"])
    assert await stored_labels(engine) == [
        {"name": "Errands", "name_key": "errands", "color": None, "version": 3}
    ]


async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client)
    await client.patch(label_url(label), json={"color": "#000000"})

    response = await client.patch(
        label_url(label), json={"name": "Other"}, headers={"If-Match": '"1"'}
    )

    assert_problem(response, 412)
    assert response.headers["etag"] == '"2"'
    assert [row["name"] for row in await stored_labels(engine)] == ["Work"]


async def test_empty_patch_changes_nothing_but_still_checks_if_match(
    client: httpx.AsyncClient,
) -> None:
    label = await create_label(client)

    unchanged = await client.patch(label_url(label), json={})
    stale = await client.patch(label_url(label), json={}, headers={"If-Match": '"9"'})

    assert unchanged.status_code == 200
    assert unchanged.json() == label
    assert_problem(stale, 412)


async def test_renaming_to_another_case_of_its_own_name_is_allowed(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client, name="work")

    response = await client.patch(label_url(label), json={"name": "WORK"})

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "WORK"
    assert await stored_labels(engine) == [
        {"name": "WORK", "name_key": "work", "color": None, "version": 2}
    ]


async def test_renaming_to_a_name_that_folds_to_another_labels_is_409(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create_label(client, name="Work")
    home = await create_label(client, name="Home")

    body = assert_problem(await client.patch(label_url(home), json={"name": " wORk "}), 409)

    assert body["detail"] == 'A label named "Work" already exists'
    assert [row["name"] for row in await stored_labels(engine)] == ["Home", "Work"]


# --- duplicate names ------------------------------------------------------------------------------


@pytest.mark.through_pooler
async def test_names_that_differ_in_case_or_compatibility_form_are_one_name(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await create_label(client, name="Work")

    for name in ("work", "WORK", FULL_WIDTH_WORK, " Work "):
        response = await client.post("/api/alice/labels", json={"name": name})
        body = assert_problem(response, 409)
        assert body["detail"] == 'A label named "Work" already exists', name

    assert await stored_labels(engine) == [
        {"name": "Work", "name_key": "work", "color": None, "version": 1}
    ]


async def test_another_user_may_have_the_same_name(client: httpx.AsyncClient) -> None:
    await create_label(client, name="Work")
    assert (await create_label(client, user="bob", name="work"))["name"] == "work"


# --- validation ---------------------------------------------------------------------------------


async def test_invalid_names_are_422_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client, name="Kept")
    for name in ("", "   ", "x" * 61, "two\nlines", "tab\tinside", 7, None):
        created = await client.post("/api/alice/labels", json={"name": name})
        patched = await client.patch(label_url(label), json={"name": name})
        for response in (created, patched):
            body = assert_problem(response, 422)
            assert [error["field"] for error in body["errors"]] == ["name"], name
    missing = assert_problem(await client.post("/api/alice/labels", json={}), 422)
    assert [error["field"] for error in missing["errors"]] == ["name"]
    assert await stored_labels(engine) == [
        {"name": "Kept", "name_key": "kept", "color": None, "version": 1}
    ]


async def test_invalid_colors_are_422(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    label = await create_label(client, name="Kept", color="#abcdef")
    for color in ("red", "#12345", "#1234567", "123456", "#gggggg", 123):
        created = await client.post("/api/alice/labels", json={"name": "New", "color": color})
        patched = await client.patch(label_url(label), json={"color": color})
        for response in (created, patched):
            body = assert_problem(response, 422)
            assert [error["field"] for error in body["errors"]] == ["color"], color
    assert [row["color"] for row in await stored_labels(engine)] == ["#abcdef"]


async def test_unknown_and_read_only_fields_are_422(client: httpx.AsyncClient) -> None:
    label = await create_label(client)
    for extra in ({"colour": "#000000"}, {"id": str(uuid.uuid4())}, {"version": 5}):
        created = await client.post("/api/alice/labels", json={"name": "New", **extra})
        patched = await client.patch(label_url(label), json=extra)
        for response in (created, patched):
            body = assert_problem(response, 422)
            assert [error["type"] for error in body["errors"]] == ["extra_forbidden"], extra


async def test_a_label_id_that_is_no_uuid_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/alice/labels/not-a-uuid"), 422)


# --- ownership ----------------------------------------------------------------------------------


async def test_another_users_label_is_not_found_and_stays_unchanged(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client, user="bob", color="#123456")
    url = label_url(label, user="alice")
    expected = f"No label {label['id']} for this user"

    for response in (
        await client.get(url),
        await client.patch(url, json={"name": "Mine now", "color": None}),
        await client.delete(url),
        await client.delete(url, headers={"If-Match": '"1"'}),
    ):
        assert assert_problem(response, 404)["detail"] == expected

    assert (await client.get("/api/alice/labels")).json() == {"items": []}
    assert await stored_labels(engine, user="bob") == [
        {"name": "Work", "name_key": "work", "color": "#123456", "version": 1}
    ]


# --- delete -------------------------------------------------------------------------------------


async def test_delete_removes_the_label(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    label = await create_label(client)

    deleted = await client.delete(label_url(label), headers={"If-Match": '"1"'})

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get(label_url(label)), 404)
    assert_problem(await client.delete(label_url(label)), 404)
    assert await count_rows(engine, "labels") == 0
    assert (await create_label(client))["name"] == "Work"  # the name is free again


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_label(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client)
    await client.patch(label_url(label), json={"color": "#000000"})

    response = await client.delete(label_url(label), headers={"If-Match": '"1"'})

    assert_problem(response, 412)
    assert response.headers["etag"] == '"2"'
    assert await count_rows(engine, "labels") == 1


# --- quota --------------------------------------------------------------------------------------


async def test_creating_past_the_quota_is_403_and_stores_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(settings.model_copy(update={"quota_labels_per_user": 3})) as client:
        for name in ("a", "b", "c"):
            await create_label(client, name=name)

        body = assert_problem(await client.post("/api/alice/labels", json={"name": "d"}), 403)
        # Another user's labels do not count against alice's quota.
        await create_label(client, user="bob", name="d")

    assert body["type"] == "/problems/quota-exceeded"
    assert (body["resource"], body["limit"]) == ("labels", 3)
    assert [row["name"] for row in await stored_labels(engine)] == ["a", "b", "c"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_concurrent_creates_never_exceed_the_quota(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with running(settings.model_copy(update={"quota_labels_per_user": 5})) as client:
        responses = await asyncio.gather(
            *(client.post("/api/racer/labels", json={"name": f"label {i}"}) for i in range(20))
        )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 5 + [403] * 15, [r.text for r in responses]
    assert len(await stored_labels(engine, user="racer")) == 5


# --- deleting a label takes it off its tasks ------------------------------------------------------


@pytest.mark.through_pooler
async def test_deleting_a_label_takes_it_off_its_tasks_and_bumps_their_version(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    label = await create_label(client)
    other = await create_label(client, name="Home")
    carrier = await create_task(client, title="t", label_ids=[label["id"], other["id"]])
    bystander = await create_task(client, title="u", label_ids=[other["id"]])

    assert (await client.delete(label_url(label))).status_code == 204

    async with engine.connect() as connection:
        remaining = await connection.scalar(
            sa.text("SELECT count(*) FROM task_labels WHERE user_id = 'alice'")
        )
    assert remaining == 2  # the other label stays on both tasks
    carried = await stored_task(engine, carrier["id"])
    untouched = await stored_task(engine, bystander["id"])
    assert carried is not None and untouched is not None
    assert carried["version"] == carrier["version"] + 1
    assert carried["updated_at"] > untouched["updated_at"]
    assert untouched["version"] == bystander["version"]
