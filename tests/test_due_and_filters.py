"""Users and their time zones, due dates, priority, the listing's filters and sorts, and the
stats, through HTTP: "today" and "overdue" are the user's, not UTC's.

Tests that depend on the current time build their dues from "now" in the zone under test
(yesterday / today / tomorrow, or the local time ± 2 hours), so they hold at any hour;
`local_today` waits out the last seconds before a local midnight.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support import assert_problem, count_rows, stored_task
from todo_api.platform.database.engine import open_database
from todo_api.settings import Settings
from todo_api.tables.changes import TRANSACTION_SETUP
from todo_api.tasks.filters import DueFilter, TaskFilter
from todo_api.tasks.repository import list_tasks, task_stats
from todo_api.tasks.sorting import ALLOWED_SORTS

# Zones whose date differs from UTC's for much of the day, in both directions.
KIRITIMATI = "Pacific/Kiritimati"  # UTC+14
LOS_ANGELES = "America/Los_Angeles"  # UTC-8 / UTC-7
PAGO_PAGO = "Pacific/Pago_Pago"  # UTC-11: always one or two dates behind Kiritimati


# --- helpers -------------------------------------------------------------------------------------


async def user_in(client: httpx.AsyncClient, zone: str = "UTC") -> str:
    """A fresh user whose time zone is `zone`."""
    user = f"u-{uuid.uuid4().hex[:10]}"
    response = await client.patch(f"/api/{user}", json={"timezone": zone})
    assert response.status_code == 200, response.text
    return user


async def create(client: httpx.AsyncClient, user: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": "t", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(client: httpx.AsyncClient, user: str, **params: Any) -> list[str]:
    """Ids of every matching task (one page of 200), in the listing's order."""
    response = await client.get(f"/api/{user}/tasks", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def local_now(zone: str) -> datetime:
    """Now in `zone`, at least 10 s before its next midnight (so "today" holds for the test)."""
    now = datetime.now(ZoneInfo(zone))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    if (midnight - now).total_seconds() < 10:
        await asyncio.sleep((midnight - now).total_seconds() + 1)
        now = datetime.now(ZoneInfo(zone))
    return now


async def local_today(zone: str) -> date:
    return (await local_now(zone)).date()


def all_day(day: date) -> dict[str, Any]:
    return {"date": day.isoformat()}


def floating(moment: datetime) -> dict[str, Any]:
    return {"date": moment.date().isoformat(), "time": moment.strftime("%H:%M:%S")}


def fixed(moment: datetime, zone: str) -> dict[str, Any]:
    local = moment.astimezone(ZoneInfo(zone))
    return {**floating(local), "timezone": zone}


# --- users and time zones ------------------------------------------------------------------------


async def test_get_user_provisions_it_with_utc_as_its_zone(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.get("/api/zoe")

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "email", "timezone", "created_at"}
    assert (body["id"], body["timezone"]) == ("zoe", "UTC")
    created = datetime.fromisoformat(body["created_at"])
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert await count_rows(engine, "users") == 1
    # Provisioned with its inbox, and a second read changes nothing.
    assert (await client.get("/api/zoe")).json() == body
    async with engine.connect() as connection:
        inboxes = await connection.scalar(
            sa.text("SELECT count(*) FROM lists WHERE user_id = 'zoe' AND is_inbox")
        )
    assert inboxes == 1


async def test_patch_user_sets_an_iana_zone_and_get_returns_it(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/zoe", json={"timezone": "Europe/Berlin"})

    assert response.status_code == 200, response.text
    assert response.json()["timezone"] == "Europe/Berlin"
    assert (await client.get("/api/zoe")).json()["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize("zone", ["UTC+5", "Mars/Olympus", "../../etc/passwd", "", "europe/berlin"])
async def test_a_zone_that_is_not_an_iana_name_is_422_naming_the_field(
    client: httpx.AsyncClient, zone: str
) -> None:
    await client.patch("/api/zoe", json={"timezone": "Asia/Tokyo"})

    body = assert_problem(await client.patch("/api/zoe", json={"timezone": zone}), 422)

    assert [error["field"] for error in body["errors"]] == ["timezone"]
    assert (await client.get("/api/zoe")).json()["timezone"] == "Asia/Tokyo"


@pytest.mark.parametrize("body", [{"timezone": 5}, {"timezone": None}, {}])
async def test_a_zone_that_is_not_a_string_is_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    problem = assert_problem(await client.patch("/api/zoe", json=body), 422)
    assert [error["field"] for error in problem["errors"]] == ["timezone"]


async def test_patch_user_refuses_other_fields(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/zoe", json={"timezone": "UTC", "email": "z@example.com"})
    problem = assert_problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == ["email"]


# --- due dates -----------------------------------------------------------------------------------


async def test_all_day_due_has_a_date_only(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    task = await create(client, "alice", due={"date": "2026-12-24"})

    assert task["due"] == {"date": "2026-12-24", "time": None, "timezone": None, "at": None}
    row = await stored_task(engine, task["id"])
    assert row is not None
    assert (str(row["due_date"]), row["due_time"], row["due_timezone"], row["due_at"]) == (
        "2026-12-24", None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize("given", ["18:30", "18:30:00"])
async def test_floating_due_has_a_time_and_no_instant(
    client: httpx.AsyncClient, given: str
) -> None:
    task = await create(client, "alice", due={"date": "2026-12-24", "time": given})

    assert task["due"] == {"date": "2026-12-24", "time": "18:30:00", "timezone": None, "at": None}
    assert (await client.get(f"/api/alice/tasks/{task['id']}")).json()["due"] == task["due"]


@pytest.mark.parametrize(
    ("local", "zone", "instant"),
    [
        (("2026-12-24", "18:30"), "Europe/Berlin", "2026-12-24T17:30:00"),
        (("2026-07-01", "09:00"), "America/Los_Angeles", "2026-07-01T16:00:00"),
        (("2026-07-01", "09:00"), KIRITIMATI, "2026-06-30T19:00:00"),
        # Spring forward: 02:30 does not exist in Berlin that night; it resolves forward
        # (fold=0 reads it with the offset before the gap: 01:30Z = 03:30 CEST).
        (("2026-03-29", "02:30"), "Europe/Berlin", "2026-03-29T01:30:00"),
        # Fall back: 02:30 happens twice; the first occurrence (CEST) is meant.
        (("2026-10-25", "02:30"), "Europe/Berlin", "2026-10-25T00:30:00"),
    ],
)
async def test_fixed_due_carries_its_instant_in_utc(
    client: httpx.AsyncClient, local: tuple[str, str], zone: str, instant: str
) -> None:
    day, time_ = local
    task = await create(client, "alice", due={"date": day, "time": time_, "timezone": zone})

    due = task["due"]
    assert (due["date"], due["time"], due["timezone"]) == (day, f"{time_}:00", zone)
    assert due["at"].endswith("Z"), due["at"]
    assert datetime.fromisoformat(due["at"]) == datetime.fromisoformat(instant).replace(tzinfo=UTC)
    assert (await client.get(f"/api/alice/tasks/{task['id']}")).json()["due"] == due


@pytest.mark.parametrize(
    "due",
    [
        {"date": "2026-12-24", "timezone": "Europe/Berlin"},  # a zone needs a time
        {"date": "2026-12-24", "time": None, "timezone": "Europe/Berlin"},
        {"date": "2026-02-30"},
        {"date": "2026-13-01"},
        {"date": "26-12-24"},
        {"date": "2026-12-24T10:00:00"},
        {"date": "2026-12-24", "time": "24:00"},
        {"date": "2026-12-24", "time": "09:60"},
        {"date": "2026-12-24", "time": "9:30"},
        {"date": "2026-12-24", "time": "10:00+02:00"},
        {"date": "2026-12-24", "time": "10:00Z"},
        {"date": "2026-12-24", "time": "10:00:00.5"},
        {"date": 20261224},
        {"date": 1766534400},
        {"date": "2026-12-24", "time": 36000},
        {"date": "2026-12-24", "time": "10:00", "timezone": "UTC+5"},
        {"date": "2026-12-24", "time": "10:00", "timezone": "../../etc/passwd"},
        {"time": "10:00"},  # date is required
        {},
        "2026-12-24",
        {"date": "2026-12-24", "colour": "red"},
    ],
)
async def test_invalid_due_is_422_naming_the_due_field(
    client: httpx.AsyncClient, engine: AsyncEngine, due: Any
) -> None:
    body = assert_problem(
        await client.post("/api/alice/tasks", json={"title": "t", "due": due}), 422
    )

    assert body["errors"], body
    assert all(error["field"].startswith("due") for error in body["errors"]), body["errors"]
    assert await count_rows(engine) == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_due_at_in_a_request_is_refused_as_read_only(
    client: httpx.AsyncClient, method: str
) -> None:
    task = await create(client, "alice")
    url = "/api/alice/tasks" + ("" if method == "POST" else f"/{task['id']}")
    due = {"date": "2026-12-24", "time": "10:00", "timezone": "UTC", "at": "2026-12-24T10:00:00Z"}

    body = assert_problem(await client.request(method, url, json={"title": "t", "due": due}), 422)

    assert [(error["field"], error["message"]) for error in body["errors"]] == [
        ("due.at", "due.at is read-only; it is set by the server")
    ]
    assert (await client.get(f"/api/alice/tasks/{task['id']}")).json() == task


async def test_patch_due_null_clears_it(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    task = await create(
        client, "alice", due={"date": "2026-12-24", "time": "10:00", "timezone": "Asia/Tokyo"}
    )

    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"due": None})

    assert response.status_code == 200, response.text
    assert response.json()["due"] is None
    row = await stored_task(engine, task["id"])
    assert row is not None
    assert [
        row[name] for name in ("due_date", "due_time", "due_timezone", "due_at", "due_sort")
    ] == [None] * 5


async def test_patch_of_other_fields_leaves_the_due_alone(client: httpx.AsyncClient) -> None:
    due = {"date": "2026-12-24", "time": "10:00", "timezone": "Asia/Tokyo"}
    task = await create(client, "alice", due=due)

    for change in ({"title": "renamed"}, {"completed": True}, {"priority": "high"}):
        response = await client.patch(f"/api/alice/tasks/{task['id']}", json=change)
        assert response.status_code == 200, response.text
        assert response.json()["due"] == task["due"]


async def test_patch_due_replaces_the_whole_due(client: httpx.AsyncClient) -> None:
    task = await create(
        client, "alice", due={"date": "2026-12-24", "time": "10:00", "timezone": "Asia/Tokyo"}
    )

    response = await client.patch(
        f"/api/alice/tasks/{task['id']}", json={"due": {"date": "2027-01-02"}}
    )

    assert response.json()["due"] == {
        "date": "2027-01-02",
        "time": None,
        "timezone": None,
        "at": None,
    }


async def test_put_without_due_clears_it(client: httpx.AsyncClient) -> None:
    task = await create(client, "alice", due={"date": "2026-12-24"}, priority="high")

    response = await client.put(f"/api/alice/tasks/{task['id']}", json={"title": "again"})

    assert (response.json()["due"], response.json()["priority"]) == (None, "none")


# --- priority ------------------------------------------------------------------------------------


async def test_priority_defaults_to_none(client: httpx.AsyncClient) -> None:
    assert (await create(client, "alice"))["priority"] == "none"


@pytest.mark.parametrize("priority", ["none", "low", "medium", "high"])
async def test_priority_names_are_stored_and_returned(
    client: httpx.AsyncClient, priority: str
) -> None:
    task = await create(client, "alice", priority=priority)
    assert task["priority"] == priority
    assert (await client.get(f"/api/alice/tasks/{task['id']}")).json()["priority"] == priority


@pytest.mark.parametrize("priority", [1, 4, 0, "1", "HIGH", "urgent", None, True])
async def test_priority_other_than_a_name_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine, priority: Any
) -> None:
    response = await client.post("/api/alice/tasks", json={"title": "t", "priority": priority})
    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["priority"]
    assert await count_rows(engine) == 0


async def test_patch_priority_null_is_422(client: httpx.AsyncClient) -> None:
    task = await create(client, "alice", priority="low")
    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"priority": None})
    assert_problem(response, 422)


@pytest.mark.parametrize("sort", ["priority", "-priority"])
async def test_sort_by_priority_orders_by_rank_not_name(
    client: httpx.AsyncClient, sort: str
) -> None:
    by_priority = {
        p: (await create(client, "alice", priority=p))["id"]
        for p in ("medium", "none", "high", "low")
    }

    order = [by_priority[p] for p in ("none", "low", "medium", "high")]
    assert await listed(client, "alice", sort=sort) == (
        order if sort == "priority" else order[::-1]
    )


async def test_priority_filter_is_repeatable(client: httpx.AsyncClient) -> None:
    by_priority = {
        p: (await create(client, "alice", priority=p))["id"]
        for p in ("none", "low", "medium", "high")
    }

    found = await listed(client, "alice", priority=["high", "low"])

    assert set(found) == {by_priority["high"], by_priority["low"]}
    assert await listed(client, "alice", priority="none") == [by_priority["none"]]


async def test_unknown_priority_filter_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/alice/tasks", params={"priority": "3"}), 422)


# --- due filters in the user's zone --------------------------------------------------------------


async def test_all_day_today_in_kiritimati_is_today_and_not_overdue(
    client: httpx.AsyncClient,
) -> None:
    user = await user_in(client, KIRITIMATI)
    today = await local_today(KIRITIMATI)
    yesterday = await create(client, user, due=all_day(today - timedelta(days=1)))
    due_today = await create(client, user, due=all_day(today))
    tomorrow = await create(client, user, due=all_day(today + timedelta(days=1)))

    assert await listed(client, user, due="today") == [due_today["id"]]
    assert await listed(client, user, due="tomorrow") == [tomorrow["id"]]
    assert await listed(client, user, due="overdue") == [yesterday["id"]]


async def test_all_day_today_in_los_angeles_is_not_overdue_after_utc_midnight(
    client: httpx.AsyncClient,
) -> None:
    # From 16:00 or 17:00 in Los Angeles on, UTC's date is already tomorrow.
    user = await user_in(client, LOS_ANGELES)
    today = await local_today(LOS_ANGELES)
    yesterday = await create(client, user, due=all_day(today - timedelta(days=1)))
    due_today = await create(client, user, due=all_day(today))
    tomorrow = await create(client, user, due=all_day(today + timedelta(days=1)))

    assert await listed(client, user, due="overdue") == [yesterday["id"]]
    assert await listed(client, user, due="today") == [due_today["id"]]
    assert await listed(client, user, due="tomorrow") == [tomorrow["id"]]


@pytest.mark.parametrize("zone", [KIRITIMATI, LOS_ANGELES])
async def test_fixed_due_is_overdue_once_its_instant_has_passed(
    client: httpx.AsyncClient, zone: str
) -> None:
    user = await user_in(client, zone)
    now = datetime.now(UTC)
    # Written in a third zone: only the instant counts.
    past = await create(client, user, due=fixed(now - timedelta(hours=2), "Asia/Tokyo"))
    await create(client, user, due=fixed(now + timedelta(hours=2), "Asia/Tokyo"))
    await create(client, user, due=fixed(now + timedelta(hours=2), "America/New_York"))

    assert await listed(client, user, due="overdue") == [past["id"]]


@pytest.mark.parametrize("zone", [KIRITIMATI, LOS_ANGELES])
async def test_floating_due_compares_local_time_with_the_local_now(
    client: httpx.AsyncClient, zone: str
) -> None:
    # Compared with UTC's clock instead, Kiritimati's past would be future (it is 14 h ahead)
    # and Los Angeles' future would be past.
    user = await user_in(client, zone)
    now = await local_now(zone)
    past = await create(client, user, due=floating(now - timedelta(hours=2)))
    await create(client, user, due=floating(now + timedelta(hours=2)))

    assert await listed(client, user, due="overdue") == [past["id"]]


async def test_completed_tasks_are_never_overdue(client: httpx.AsyncClient) -> None:
    user = await user_in(client, KIRITIMATI)
    now = await local_now(KIRITIMATI)
    open_ = await create(client, user, due=all_day(now.date() - timedelta(days=3)))
    for due in (
        all_day(now.date() - timedelta(days=3)),
        floating(now - timedelta(hours=2)),
        fixed(now - timedelta(hours=2), "UTC"),
    ):
        await create(client, user, due=due, completed=True)

    assert await listed(client, user, due="overdue") == [open_["id"]]


async def test_tasks_without_due_are_not_overdue_and_match_due_none(
    client: httpx.AsyncClient,
) -> None:
    user = await user_in(client, LOS_ANGELES)
    today = await local_today(LOS_ANGELES)
    without = await create(client, user)
    with_due = await create(client, user, due=all_day(today - timedelta(days=1)))

    assert await listed(client, user, due="none") == [without["id"]]
    assert await listed(client, user, due="any") == [with_due["id"]]
    assert await listed(client, user, due="overdue") == [with_due["id"]]


async def test_today_includes_timed_dues_of_the_local_day(client: httpx.AsyncClient) -> None:
    user = await user_in(client, KIRITIMATI)
    today = await local_today(KIRITIMATI)
    zone = ZoneInfo(KIRITIMATI)
    start = datetime.combine(today, datetime.min.time(), zone)
    inside = [
        await create(client, user, due={"date": today.isoformat(), "time": "00:00"}),
        await create(client, user, due={"date": today.isoformat(), "time": "23:59:59"}),
        # Fixed elsewhere, but within the local day: the first and the last minute.
        await create(client, user, due=fixed(start + timedelta(minutes=1), "Europe/London")),
        await create(client, user, due=fixed(start + timedelta(hours=24, minutes=-1), "UTC")),
    ]
    outside = [
        await create(client, user, due=fixed(start - timedelta(minutes=1), "Europe/London")),
        await create(client, user, due=fixed(start + timedelta(hours=24), "UTC")),
    ]

    found = set(await listed(client, user, due="today"))

    assert found == {task["id"] for task in inside}, [t["due"] for t in outside]


async def test_next_7_days_is_today_and_the_six_days_after(client: httpx.AsyncClient) -> None:
    user = await user_in(client, LOS_ANGELES)
    today = await local_today(LOS_ANGELES)
    by_offset = {
        offset: (await create(client, user, due=all_day(today + timedelta(days=offset))))["id"]
        for offset in (-1, 0, 3, 6, 7)
    }

    found = set(await listed(client, user, due="next_7_days"))

    assert found == {by_offset[0], by_offset[3], by_offset[6]}


async def test_tz_parameter_overrides_the_users_zone(client: httpx.AsyncClient) -> None:
    # Kiritimati's today is always Pago Pago's tomorrow or the day after (25 hours apart).
    user = await user_in(client, "UTC")
    kiritimati_today = await local_today(KIRITIMATI)
    task = await create(client, user, due=all_day(kiritimati_today))

    assert await listed(client, user, due="today", tz=KIRITIMATI) == [task["id"]]
    assert await listed(client, user, due="today", tz=PAGO_PAGO) == []
    assert await listed(client, user, due="overdue", tz=PAGO_PAGO) == []


@pytest.mark.parametrize("tz", ["UTC+5", "Mars/Olympus", "../../etc/passwd", ""])
async def test_tz_that_is_not_an_iana_name_is_422(client: httpx.AsyncClient, tz: str) -> None:
    response = await client.get("/api/alice/tasks", params={"due": "today", "tz": tz})
    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["tz"]


async def test_due_from_and_due_to_are_inclusive_local_dates(client: httpx.AsyncClient) -> None:
    user = await user_in(client, LOS_ANGELES)
    base = date(2030, 5, 10)
    by_offset = {
        offset: (await create(client, user, due=all_day(base + timedelta(days=offset))))["id"]
        for offset in (-1, 0, 1, 2, 3)
    }
    await create(client, user)

    window = {"due_from": base.isoformat(), "due_to": (base + timedelta(days=2)).isoformat()}
    assert set(await listed(client, user, **window)) == {by_offset[i] for i in (0, 1, 2)}
    assert set(await listed(client, user, due_from=(base + timedelta(days=2)).isoformat())) == {
        by_offset[2], by_offset[3],
    }  # fmt: skip
    assert set(await listed(client, user, due_to=base.isoformat())) == {by_offset[-1], by_offset[0]}


async def test_due_range_places_a_fixed_due_on_its_date_in_the_users_zone(
    client: httpx.AsyncClient,
) -> None:
    # 2030-05-11 01:00 in Tokyo is 2030-05-10 09:00 in Los Angeles.
    user = await user_in(client, LOS_ANGELES)
    task = await create(
        client, user, due={"date": "2030-05-11", "time": "01:00", "timezone": "Asia/Tokyo"}
    )

    assert await listed(client, user, due_from="2030-05-10", due_to="2030-05-10") == [task["id"]]
    assert await listed(client, user, due_from="2030-05-11", due_to="2030-05-11") == []
    assert await listed(
        client, user, due_from="2030-05-11", due_to="2030-05-11", tz="Asia/Tokyo"
    ) == [task["id"]]


async def test_due_to_before_due_from_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/alice/tasks", params={"due_from": "2030-05-10", "due_to": "2030-05-09"}
    )
    assert_problem(response, 422)


@pytest.mark.parametrize(
    "params",
    [{"due": "yesterday"}, {"due_from": "2030-02-30"}, {"due_to": "soon"}, {"labels_any": "x"}],
)
async def test_malformed_filters_are_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert_problem(await client.get("/api/alice/tasks", params=params), 422)


@pytest.mark.parametrize(
    "ids",
    [
        "-" * 36,
        "0" * 33,
        "0" * 32 + "," + "0" * 32,  # the same id twice
        ",".join(uuid.uuid4().hex for _ in range(51)),
        "",
    ],
)
@pytest.mark.parametrize("parameter", ["labels_any", "labels_all"])
async def test_malformed_label_id_lists_are_422(
    client: httpx.AsyncClient, parameter: str, ids: str
) -> None:
    response = await client.get("/api/alice/tasks", params={parameter: ids})
    body = assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == [parameter]


@pytest.mark.parametrize(
    ("user_zone", "due_zone"), [(PAGO_PAGO, KIRITIMATI), (KIRITIMATI, PAGO_PAGO)]
)
async def test_a_fixed_due_25_hours_away_is_on_its_local_date_in_the_users_zone(
    client: httpx.AsyncClient, user_zone: str, due_zone: str
) -> None:
    # The due's own wall clock is a day or two from the user's: its instant decides.
    user = await user_in(client, user_zone)
    now = await local_now(user_zone)
    noon = datetime.combine(now.date(), datetime.min.time(), now.tzinfo) + timedelta(hours=12)
    today = await create(client, user, due=fixed(noon, due_zone))
    tomorrow = await create(client, user, due=fixed(noon + timedelta(days=1), due_zone))
    past = await create(client, user, due=fixed(now - timedelta(minutes=5), due_zone))

    assert set(await listed(client, user, due="today")) == {today["id"], past["id"]} - (
        set() if (now - timedelta(minutes=5)).date() == now.date() else {past["id"]}
    )
    assert await listed(client, user, due="tomorrow") == [tomorrow["id"]]
    assert past["id"] in await listed(client, user, due="overdue")
    assert tomorrow["id"] not in await listed(client, user, due="overdue")


@pytest.mark.parametrize(
    ("user_zone", "due_zone"),
    [(PAGO_PAGO, KIRITIMATI), ("Etc/GMT+12", KIRITIMATI), (KIRITIMATI, "Etc/GMT+12")],
)
async def test_overdue_holds_at_every_hour_of_the_users_day(
    client: httpx.AsyncClient, settings: Settings, user_zone: str, due_zone: str
) -> None:
    # The test above sees the failing hours only when CI happens to run in them: here the
    # evaluation moment is chosen. Each due is a minute before one of the moments, written in a
    # zone up to 26 hours ahead of (or behind) the user's, so its wall clock is as far from the
    # user's as any can be; at each moment exactly the dues before it are overdue, and all of
    # them are due today.
    user = await user_in(client, user_zone)
    day = date(2030, 5, 10)
    moments = [
        datetime.combine(day, time(hour, 59), ZoneInfo(user_zone)) for hour in (0, 12, 21, 22, 23)
    ]
    ids = [
        (await create(client, user, due=fixed(m - timedelta(minutes=1), due_zone)))["id"]
        for m in moments
    ]

    database = open_database(settings, transaction_setup=TRANSACTION_SETUP)
    try:
        for index, now in enumerate(moments):
            overdue = TaskFilter(due=DueFilter.OVERDUE, now=now)
            page = await list_tasks(database, user_id=user, limit=200, filters=overdue)
            assert {str(task.id) for task in page.items} == set(ids[: index + 1]), now
            today = TaskFilter(due=DueFilter.TODAY, now=now)
            page = await list_tasks(database, user_id=user, limit=200, filters=today)
            assert {str(task.id) for task in page.items} == set(ids), now
            stats = await task_stats(database, user_id=user, now=now)
            assert (stats.overdue, stats.due_today) == (index + 1, len(ids)), now
    finally:
        await database.dispose()


# --- lists and labels as filters, combined --------------------------------------------------------


async def new_label(client: httpx.AsyncClient, user: str, name: str) -> str:
    response = await client.post(f"/api/{user}/labels", json={"name": name})
    assert response.status_code == 201, response.text
    label_id: str = response.json()["id"]
    return label_id


async def new_list(client: httpx.AsyncClient, user: str, name: str) -> str:
    response = await client.post(f"/api/{user}/lists", json={"name": name})
    assert response.status_code == 201, response.text
    list_id: str = response.json()["id"]
    return list_id


async def test_labels_any_and_labels_all(client: httpx.AsyncClient) -> None:
    work, home, urgent = [
        await new_label(client, "alice", name) for name in ("work", "home", "urgent")
    ]
    both = await create(client, "alice", label_ids=[work, urgent])
    work_only = await create(client, "alice", label_ids=[work])
    home_only = await create(client, "alice", label_ids=[home])
    await create(client, "alice")

    assert set(await listed(client, "alice", labels_any=f"{work},{home}")) == {
        both["id"], work_only["id"], home_only["id"],
    }  # fmt: skip
    assert await listed(client, "alice", labels_all=f"{work},{urgent}") == [both["id"]]
    assert await listed(client, "alice", labels_all=f"{work},{home}") == []
    assert set(await listed(client, "alice", labels_all=work)) == {both["id"], work_only["id"]}


async def test_list_id_filter_and_inbox_alias(client: httpx.AsyncClient) -> None:
    errands = await new_list(client, "alice", "Errands")
    in_errands = await create(client, "alice", list_id=errands)
    in_inbox = await create(client, "alice")

    assert await listed(client, "alice", list_id=errands) == [in_errands["id"]]
    assert await listed(client, "alice", list_id="inbox") == [in_inbox["id"]]
    assert await listed(client, "alice", list_id=str(uuid.uuid4())) == []


async def test_filters_combine_with_and(client: httpx.AsyncClient) -> None:
    user = await user_in(client, KIRITIMATI)
    today = await local_today(KIRITIMATI)
    errands = await new_list(client, user, "Errands")
    work = await new_label(client, user, "work")
    match = await create(
        client, user, list_id=errands, priority="high", label_ids=[work], due=all_day(today),
        title="call the bank",
    )  # fmt: skip
    # Each differs from `match` in exactly one respect.
    fields: dict[str, Any]
    for fields in (
        {"list_id": "inbox"},
        {"priority": "low"},
        {"label_ids": []},
        {"due": all_day(today + timedelta(days=1))},
        {"completed": True},
        {"title": "call the dentist"},
    ):
        await create(client, user, **{
            "list_id": errands, "priority": "high", "label_ids": [work], "due": all_day(today),
            "title": "call the bank", **fields,
        })  # fmt: skip

    found = await listed(
        client, user, list_id=errands, priority=["high", "medium"], labels_any=work, due="today",
        completed="false", q="bank",
    )  # fmt: skip

    assert found == [match["id"]]


# --- sorts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["due", "-due"])
async def test_tasks_without_a_due_come_last_in_both_directions(
    client: httpx.AsyncClient, sort: str
) -> None:
    none_1 = await create(client, "alice")
    early = await create(client, "alice", due={"date": "2030-01-01", "time": "08:00"})
    late = await create(client, "alice", due={"date": "2030-01-03"})
    none_2 = await create(client, "alice")
    middle = await create(
        client, "alice", due={"date": "2030-01-02", "time": "10:00", "timezone": "UTC"}
    )

    order = await listed(client, "alice", sort=sort)

    dated = [early["id"], middle["id"], late["id"]]
    assert order[:3] == (dated if sort == "due" else dated[::-1])
    assert set(order[3:]) == {none_1["id"], none_2["id"]}


async def test_sort_by_due_puts_an_all_day_due_after_the_timed_ones_of_its_day(
    client: httpx.AsyncClient,
) -> None:
    day = await create(client, "alice", due={"date": "2030-01-02"})
    evening = await create(client, "alice", due={"date": "2030-01-02", "time": "23:00"})
    morning = await create(client, "alice", due={"date": "2030-01-02", "time": "07:00:30"})
    before = await create(client, "alice", due={"date": "2030-01-01"})

    assert await listed(client, "alice", sort="due") == [
        before["id"], morning["id"], evening["id"], day["id"],
    ]  # fmt: skip


async def test_sort_position_needs_list_id(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/alice/tasks", params={"sort": "position"}), 400)
    response = await client.get("/api/alice/tasks", params={"sort": "position", "list_id": "inbox"})
    assert response.status_code == 200


async def walk(client: httpx.AsyncClient, user: str, limit: int, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get(f"/api/{user}/tasks", params=query)
        assert response.status_code == 200, (params, response.text)
        page = response.json()
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the walk did not end")


async def test_every_sort_with_filters_walks_each_matching_task_exactly_once(
    client: httpx.AsyncClient,
) -> None:
    user = await user_in(client, LOS_ANGELES)
    today = await local_today(LOS_ANGELES)
    work = await new_label(client, user, "work")
    other = await new_list(client, user, "Other")
    # Colliding keys: equal dues (all-day and timed on one day), equal priorities, no dues.
    dues: list[Any] = [
        None, None, None, all_day(today), all_day(today), all_day(today - timedelta(days=2)),
        {"date": today.isoformat(), "time": "09:00"}, {"date": today.isoformat(), "time": "09:00"},
        {"date": today.isoformat(), "time": "09:00", "timezone": "UTC"},
    ]  # fmt: skip
    for index, (due, priority) in enumerate(itertools.product(dues, ("none", "high"))):
        await create(
            client, user, due=due, priority=priority, completed=index % 5 == 0,
            label_ids=[work] if index % 3 else [], list_id=other if index % 2 else "inbox",
        )  # fmt: skip
    filters: list[dict[str, Any]] = [
        {},
        {"due": "any", "labels_any": work},
        {"priority": "high", "completed": "false"},
        {"due": "next_7_days"},
        {"due": "overdue"},
    ]
    # The due and priority sorts with every filter; the others with two each, in turn.
    cases = [(sort, f) for sort in ("due", "-due", "priority", "-priority") for f in filters]
    others = [sort for sort in ALLOWED_SORTS if "due" not in sort and "priority" not in sort]
    others = [sort for sort in others if "position" not in sort]
    cases += [
        (sort, filters[(index + shift) % len(filters)])
        for index, sort in enumerate(others)
        for shift in (0, 2)
    ]
    cases += [(sort, {"list_id": other}) for sort in ("position", "-position", "due", "-priority")]
    cases += [("position", {"list_id": "inbox", "due": "none"})]
    for sort, params in cases:
        whole = await listed(client, user, sort=sort, **params)
        assert len(whole) == len(set(whole))
        for limit in (1, 3) if "due" in sort or "priority" in sort else (2,):
            assert await walk(client, user, limit, sort=sort, **params) == whole, (
                sort,
                params,
                limit,
            )
    assert await listed(client, user, due="none")  # the NULL keys were walked


async def test_a_cursor_reused_with_other_filters_is_400(client: httpx.AsyncClient) -> None:
    for priority in ("high", "high", "low", "low"):
        await create(client, "alice", priority=priority, due={"date": "2030-01-01"})
    first = await client.get(
        "/api/alice/tasks", params={"limit": 1, "sort": "due", "priority": "high"}
    )
    cursor = first.json()["next_cursor"]
    assert cursor

    for params in (
        {"priority": "low"},
        {"priority": ["high", "low"]},
        {"priority": "high", "due": "any"},
        {"priority": "high", "tz": "Asia/Tokyo"},
        {"priority": "high", "list_id": "inbox"},
        {"priority": "high", "due_from": "2030-01-01"},
        {},
    ):
        response = await client.get(
            "/api/alice/tasks", params={"limit": 1, "sort": "due", "cursor": cursor, **params}
        )
        assert_problem(response, 400)
    same = await client.get(
        "/api/alice/tasks", params={"limit": 1, "sort": "due", "cursor": cursor, "priority": "high"}
    )
    assert same.status_code == 200


# --- stats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", [KIRITIMATI, LOS_ANGELES])
async def test_stats_count_overdue_and_due_today_in_the_users_zone(
    client: httpx.AsyncClient, zone: str
) -> None:
    user = await user_in(client, zone)
    now = await local_now(zone)
    today = now.date()
    await create(client, user, due=all_day(today - timedelta(days=1)))  # overdue
    await create(client, user, due=floating(now - timedelta(hours=2)))  # overdue
    await create(client, user, due=fixed(now - timedelta(hours=2), "UTC"))  # overdue
    await create(client, user, due=all_day(today))  # due today, not overdue
    await create(client, user, due=all_day(today), completed=True)  # neither: completed
    await create(client, user, due=all_day(today - timedelta(days=1)), completed=True)
    await create(client, user, due=all_day(today + timedelta(days=1)))
    await create(client, user)
    expected_today = 1 + sum(
        (now - timedelta(hours=2)).date() == today for _ in range(2)
    )  # the timed ones 2 h ago are today too, unless that was yesterday

    response = await client.get(f"/api/{user}/tasks/stats")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "total": 8, "completed": 2, "pending": 6, "overdue": 3, "due_today": expected_today,
    }  # fmt: skip
