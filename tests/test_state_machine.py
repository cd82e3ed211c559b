"""The data-access layer against a plain in-memory model, as a Hypothesis state machine.

Random sequences of repository calls by two users run on a real database: tasks (create, create
with an Idempotency-Key, get, replace, patch with due dates and priorities, toggle/set, delete,
bulk delete, listings with filters/sorts/cursors, If-Match), lists (create, rename, delete with
their tasks or moving them to another list), labels (create, refused duplicates, delete, set on
tasks), manual order (moves after/before a task or first, within and across lists) and bulk
changes (all or nothing). After every step, for both users: the full task listing (every field:
list, labels, due, priority, position, completed_at), the stats (with overdue and due today),
the lists with their counts, the labels, each list's `sort=position` order, the quota counters,
the users table and the idempotency keys must equal the model; positions are unique per list
and at most 48 characters; and the user who did not act must see exactly what they saw before.
Calls aimed at the other user's task, list and label ids must behave as if those did not exist
and change nothing (a bulk change naming one of them changes none of the user's tasks either).

What the model cannot know, it takes from the database and then holds it to it:
- timestamps come from the application's clock at each write, so the model records those a
  write returns (and every later read must return them unchanged, to the microsecond);
  `updated_since` is only asked for at, or one microsecond either side of, a timestamp the
  model holds, never relative to "now";
- order keys are the server's (clock and random digits): the model holds each list's order and
  the keys the server returned; a rebalance (keys longer than 48 characters) may rewrite a
  whole list, which the model accepts only as ranked keys in the same order, one version up;
- the order of titles is the database's collation (PostgreSQL's depends on how the database was
  created), so title sorts are ranked by the database itself, on the bare titles, in a query
  that does not touch the tasks table;
- `q` is case-insensitive for ASCII on every backend but folds other letters only on PostgreSQL
  (in a UTF-8 locale), so searches are ASCII or caseless characters, and titles/descriptions
  hold no character whose lower case is ASCII (the Kelvin sign, dotted capital I): every other
  valid character is in, including the hostile ones the models accept;
- "overdue" and "due today" depend on the moment the server counts them: the model computes
  them at the moments just before and after the call, and holds the server to them when those
  agree (due dates cluster around today, in UTC: the users' zone).

Each example starts from empty tables, on its own engine and event loop. The numbers are set
for about 25 s on SQLite and 15 s on PostgreSQL on the shared 2-core machine; CI (CI=true) runs
the same fixed sequences every time (derandomized) and does not shrink a failure (see
hypothesis_settings).
Run with `-s` for one line per backend with how many examples, steps and rules ran.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from support import IN_CI
from todo_api.labels import repository as labels_repository
from todo_api.labels.errors import LabelNameTaken
from todo_api.labels.schemas import LabelCreate
from todo_api.lists import repository as lists_repository
from todo_api.lists.errors import InboxNotDeletable
from todo_api.lists.schemas import ListCreate
from todo_api.platform.database.engine import open_database
from todo_api.platform.database.ordering import AnchorNotFound
from todo_api.platform.http.cursor import Cursor
from todo_api.platform.positions import MAX_LENGTH
from todo_api.settings import Settings
from todo_api.tables.changes import TRANSACTION_SETUP
from todo_api.tables.lists import inbox_id
from todo_api.tasks import repository
from todo_api.tasks.errors import (
    IdempotencyKeyReused,
    LabelsNotFound,
    ListNotFound,
    StaleVersion,
    TaskNotFound,
    TasksNotFound,
)
from todo_api.tasks.filters import TaskFilter
from todo_api.tasks.schemas import (
    BulkChange,
    DueInput,
    DueRead,
    Priority,
    TaskCreate,
    TaskRead,
    TaskUpdate,
)
from todo_api.tasks.sorting import TaskSort, TaskSortField, parse_sort
from todo_api.users import repository as users_repository

T = TypeVar("T")

# The second user shares a prefix with the first and holds LIKE wildcards, quotes, a slash and
# non-ASCII: any user_id comparison that is not plain equality shows up as a leak.
ALICE = "alice"
AWKWARD = "alice%_\\'/ü😀"
USERS = (ALICE, AWKWARD)
EMAILS = (None, "alice@example.com", "shared@example.com")
IDEMPOTENCY_KEYS = ("k1", "k2", "%_", "Ab-9~!")
LONG_TTL = timedelta(hours=24)
CURSOR_SECRET = b"state-machine-secret"
SORTS = tuple(
    parse_sort(name)
    for name in ("created_at", "-created_at", "updated_at", "-updated_at", "title", "-title")
)
INVARIANT_PAGE = 7
QUOTAS = repository.Quotas(tasks=100_000, labels_per_task=50)
LIMIT = 500  # lists and labels per user
BY_POSITION = parse_sort("position")
RANKED_KEY = re.compile(r"a\d{9}V")  # what a rebalance gives every task of a list
INBOX_NAME = "Inbox"

# 25 before lists, labels, moves and bulk changes; CI runs 12 (its 15-minute budget), derandomized.
MAX_EXAMPLES = 12 if IN_CI else 18
STEPS = 20


# --- strategies ------------------------------------------------------------------------------

_ASCII_CONTROLS = "".join(map(chr, range(0x20))) + "\x7f"


def _search_safe(character: str) -> bool:
    # PostgreSQL's ILIKE lowercases non-ASCII letters, SQLite's LIKE does not; a letter that
    # lowercases to ASCII ("K" Kelvin -> "k") would match an ASCII search on one backend only.
    return character.isascii() or not any(c.isascii() for c in character.lower())


_HOSTILE = (
    "%_\\/'\"`;-*?[]{}<>&#"
    "éÉüÜßøΩж中文한"
    "😀👩‍👩‍👧🏳️‍🌈"  # emoji, ZWJ sequences
    "\u0301\u0338"  # combining marks
    "\u202e\u200f"  # bidi overrides
    "\u200b\u2060\ufeff"  # zero-width characters, BOM
    "\u2028\u2029\x85\xa0"  # Unicode line breaks and spaces (strip() removes them at the ends)
    "\x80\x9f"  # C1 controls: only ASCII controls are refused in titles
    "\ufffd\uffff\U0010ffff\U0001d11e"  # replacement char, non-characters, astral plane
)
assert all(_search_safe(c) for c in _HOSTILE)

_title_chars = st.one_of(
    st.sampled_from(_HOSTILE),
    st.characters(codec="utf-8", exclude_characters=_ASCII_CONTROLS).filter(_search_safe),
)
_text_chars = st.one_of(
    st.sampled_from(_HOSTILE + "\t\n\r\x1b\x7f\x01"),
    st.characters(codec="utf-8", exclude_characters="\x00").filter(_search_safe),
)


def _valid_title(value: str) -> bool:
    stripped = value.strip()
    return 1 <= len(stripped) <= 255 and not any(c in _ASCII_CONTROLS for c in stripped)


# A small pool makes equal titles (ties broken by id in the keyset) and search hits common.
titles = st.one_of(
    st.sampled_from(["a", "A", "b", "milk", "Milk", "MILK 2", "%", "_", "a_b", "ü", "😀", " a "]),
    st.text(_title_chars, min_size=1, max_size=12).filter(_valid_title),
    # At the 255-character limit, multi-byte, with spaces that are stripped before counting.
    st.sampled_from(["x", "é", "😀", "中"]).map(lambda c: f"  {c * 255}  "),
)
descriptions = st.one_of(
    st.none(),
    st.sampled_from(["", "2 litres", "milk%", "line 1\r\nline 2\t", " \x1b[31m "]),
    st.text(_text_chars, max_size=20),
    st.sampled_from(["x", "é", "😀", "\r\n"]).map(lambda c: (c * 10_000)[:10_000]),
)
_TODAY = datetime.now(UTC).date()
# Around today (overdue, due today, tomorrow), the ends of the calendar, and a spring-forward
# gap and an autumn fold in Berlin (fixed dues resolve them as PEP 495 fold=0 does).
due_dates = st.one_of(
    st.integers(min_value=-2, max_value=2).map(lambda days: _TODAY + timedelta(days=days)),
    st.sampled_from([date(1, 1, 1), date(9999, 12, 31), date(2026, 3, 29), date(2026, 10, 25)]),
)
due_times = st.sampled_from([time(0, 0), time(2, 30), time(9, 30), time(12, 0), time(23, 59, 59)])
due_zones = st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns"])


def _due(day: date, at: time | None, zone: str | None) -> DueInput | None:
    try:
        due = DueInput.model_validate({"date": day, "time": at, "timezone": zone})
    except ValueError:
        return None  # an instant beyond the calendar (9999-12-31 23:59 in a zone west of UTC)
    if zone is not None and at is not None:
        try:
            datetime.combine(day, at, tzinfo=ZoneInfo(zone)).astimezone(UTC)
        except OverflowError:
            return None
    return due


dues = st.one_of(
    st.none(),
    st.builds(_due, due_dates, st.none(), st.none()),  # all day
    st.builds(_due, due_dates, due_times, st.none()),  # floating
    st.builds(_due, due_dates, due_times, due_zones),  # fixed
)
priorities = st.sampled_from(list(Priority))


def _body(
    title: str, description: str | None, completed: bool, due: Any, priority: Priority | None
) -> TaskCreate:
    raw = {"title": title, "description": description, "completed": completed, "due": due}
    if priority is not None:  # else the default, none
        raw["priority"] = priority.value
    return TaskCreate.model_validate(raw)


# In the inbox and without labels: the rules that pick a list and labels add them (`placed`).
bodies = st.builds(_body, titles, descriptions, st.booleans(), dues, st.none() | priorities)
patches = st.fixed_dictionaries(
    {},
    optional={
        "title": titles,
        "description": descriptions,
        "completed": st.booleans(),
        "due": dues,
        "priority": priorities,
    },
).map(lambda raw: TaskUpdate.model_validate(raw).changes())
_caseless = [c for c in "😀中%_/\\ \u0301" if c.lower() == c == c.upper()]
# Searches are ASCII or caseless: see the module docstring (a non-ASCII letter like "ü" matches
# "Ü" on PostgreSQL only).
searches = st.one_of(
    st.sampled_from(["a", "A", "MILK", "%", "_", "a_b", "/", "\\", " ", "😀", "中", "ine 1\r"]),
    st.text(
        st.sampled_from("aAbBmMiIlLkK2 %_/\\'\"\n" + "".join(_caseless)), min_size=1, max_size=3
    ),
)
users = st.sampled_from(USERS)
picks = st.integers(min_value=0, max_value=255)
# If-Match: the current version, a stale or future one, or a list holding the current one.
if_matches = st.sampled_from(["none", "current", "stale", "future", "list"])
# Names that fold together (case, full-width, ß/ss) and hostile ones, trimmed by the schema.
list_names = st.sampled_from(
    ["Work", "work", " Home ", "Inbox", "inbox", "%_", "'; DROP TABLE lists; --", "😀", "x" * 120]
)
label_names = st.sampled_from(
    [
        "Work",
        "work",
        "\uff37\uff2f\uff32\uff2b",
        "ß",
        "SS",
        "ss",
        "%",
        "_",
        "😀",
        "e\u0301",
        "\u00e9",
        "x" * 60,
    ]
)
colors = st.sampled_from([None, "#22c55e", "#000000"])
label_picks = st.lists(picks, max_size=3)
# Where a move goes: (first | after | before, the anchor picked, the destination list picked
# or None for the task's own list).
move_targets = st.tuples(st.sampled_from(["first", "after", "before"]), picks, st.none() | picks)


def fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def expected_due(due: DueInput | None) -> DueRead | None:
    """What the server must show for a due: `at` only for a fixed zone (fold=0)."""
    if due is None:
        return None
    at = None
    if due.timezone is not None and due.time is not None:
        at = datetime.combine(due.date, due.time, tzinfo=ZoneInfo(due.timezone)).astimezone(UTC)
    return DueRead(due.date, due.time, due.timezone, at)


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A task as the model knows it: what the database must return, field for field."""

    id: uuid.UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    version: int
    created_at: datetime
    updated_at: datetime
    list_id: uuid.UUID
    priority: Priority
    due: DueRead | None
    label_ids: frozenset[uuid.UUID]
    completed_at: datetime | None
    position: str

    @classmethod
    def of(cls, task: TaskRead) -> Item:
        assert [label.id for label in task.labels] == task.label_ids
        assert len(set(task.label_ids)) == len(task.label_ids)
        return cls(
            task.id,
            task.user_id,
            task.title,
            task.description,
            task.completed,
            task.version,
            task.created_at,
            task.updated_at,
            task.list_id,
            task.priority,
            task.due,
            frozenset(task.label_ids),
            task.completed_at,
            task.position,
        )


@dataclass(frozen=True)
class ListItem:
    id: uuid.UUID
    name: str
    color: str | None
    is_inbox: bool
    version: int


@dataclass(frozen=True)
class LabelItem:
    id: uuid.UUID
    name: str
    color: str | None
    version: int


@dataclass
class StoredKey:
    body: TaskCreate
    response: Item
    expired: bool


@dataclass
class Account:
    tasks: dict[uuid.UUID, Item] = field(default_factory=dict)
    keys: dict[str, StoredKey] = field(default_factory=dict)
    provisioned: bool = False
    email: str | None = None
    # Lists in their order (the inbox first, the others as created), each with its tasks' ids
    # in their manual order.
    lists: dict[uuid.UUID, ListItem] = field(default_factory=dict)
    order: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    labels: dict[uuid.UUID, LabelItem] = field(default_factory=dict)


def _versions(kind: str, current: int) -> list[int] | None:
    return {
        "none": None,
        "current": [current],
        "stale": [current - 1] if current > 1 else [current + 1],
        "future": [current + 1],
        "list": [current + 7, current],
    }[kind]


def _applies(if_match: Sequence[int] | None, current: int) -> bool:
    return if_match is None or current in if_match


def _search_fold(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def _matches(item: Item, filters: TaskFilter) -> bool:
    if filters.completed is not None and item.completed is not filters.completed:
        return False
    if filters.list_id is not None and item.list_id != filters.list_id:
        return False
    if filters.q:
        needle = _search_fold(filters.q)
        haystacks = [item.title, item.description or ""]
        if not any(needle in _search_fold(text) for text in haystacks):
            return False
    return filters.updated_since is None or item.updated_at >= filters.updated_since


def _overdue(item: Item, now: datetime) -> bool:
    """Open and past due at `now`, in UTC (the users' zone)."""
    due = item.due
    if item.completed or due is None:
        return False
    if due.at is not None:
        return due.at < now
    if due.time is None:
        return due.date < now.date()
    return datetime.combine(due.date, due.time, tzinfo=UTC) < now


def _due_today(item: Item, now: datetime) -> bool:
    due = item.due
    if item.completed or due is None:
        return False
    if due.at is not None:
        midnight = datetime.combine(now.date(), time.min, tzinfo=UTC)
        return midnight <= due.at < midnight + timedelta(days=1)
    return due.date == now.date()


# --- the machine ------------------------------------------------------------------------------


@dataclass
class Observation:
    pages: dict[str, list[list[Item]]] = field(default_factory=dict)
    stats: dict[str, tuple[datetime, repository.Stats, datetime]] = field(default_factory=dict)
    users: dict[str, str | None] = field(default_factory=dict)
    keys: set[tuple[str, str]] = field(default_factory=set)
    lists: dict[str, list[tuple[ListItem, int, int]]] = field(default_factory=dict)
    labels: dict[str, list[LabelItem]] = field(default_factory=dict)
    positions: dict[str, dict[uuid.UUID, list[Item]]] = field(default_factory=dict)
    use: dict[str, users_repository.Use] = field(default_factory=dict)
    list_owners: Counter[str] = field(default_factory=Counter)


@dataclass
class Tally:
    examples: int = 0
    steps: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


class TaskMachine(RuleBasedStateMachine):
    def __init__(self, app_settings: Settings, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        tally.examples += 1
        # Hypothesis drives the machine synchronously: one event loop for this example's engine.
        self.runner = asyncio.Runner()
        self.database = open_database(app_settings, transaction_setup=TRANSACTION_SETUP)
        self.engine = self.database.engine
        self.accounts = {user: Account() for user in USERS}
        self.acted: set[str] = set()  # who acted in this step
        self.seen: dict[str, Any] = dict.fromkeys(USERS)
        self.run(self._empty())

    def teardown(self) -> None:
        try:
            self.run(self.database.dispose())
        finally:
            self.runner.close()

    # --- plumbing

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self.runner.run(wrapped())

    def call(self, function: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        """One repository call, as one request would make it."""
        return self.run(function(self.database, **kwargs))

    async def _empty(self) -> None:
        async with self.engine.begin() as connection:
            for table in ("idempotency_keys", "task_labels", "tasks", "labels", "lists", "users"):
                await connection.execute(sa.text(f"DELETE FROM {table}"))

    def acting(self, user: str, rule_name: str) -> Account:
        self.acted.add(user)
        self.tally.steps += 1
        self.tally.rules[rule_name] += 1
        return self.accounts[user]

    def other(self, user: str) -> str:
        return AWKWARD if user == ALICE else ALICE

    def own_id(self, user: str, pick: int) -> uuid.UUID:
        """One of the user's tasks, or (when they have none) an id nobody has. By creation
        order, not by id: ids are random, and a replayed sequence must pick the same tasks."""
        ids = list(self.accounts[user].tasks)
        return ids[pick % len(ids)] if ids else uuid.UUID(int=pick + 1)

    def own_list(self, user: str, pick: int) -> uuid.UUID:
        """One of the user's lists (the inbox too, provisioned or not), by creation order."""
        ids = [inbox_id(user), *(i for i in self.accounts[user].lists if i != inbox_id(user))]
        return ids[pick % len(ids)]

    def own_labels(self, user: str, chosen: list[int]) -> list[uuid.UUID]:
        ids = list(self.accounts[user].labels)
        return list(dict.fromkeys(ids[pick % len(ids)] for pick in chosen)) if ids else []

    def provision(self, account: Account, user: str, email: str | None) -> None:
        if account.provisioned:
            return  # the first write's email stays, whatever later writes carry
        taken = {a.email for name, a in self.accounts.items() if name != user}
        account.provisioned = True
        account.email = email if email not in taken else None
        inbox = inbox_id(user)
        account.lists = {inbox: ListItem(inbox, INBOX_NAME, None, True, 1), **account.lists}
        account.order.setdefault(inbox, [])

    def changed(self, account: Account, before: Item, task: TaskRead | None, **values: Any) -> None:
        """A change was applied: the returned task must be `before` with `values` and a new
        version; the model keeps the updated_at (and a new position) the database chose."""
        assert task is not None
        values = self.translated(before, values)
        if "position" in values:
            values["position"] = task.position
        expected = replace(before, version=before.version + 1, updated_at=task.updated_at, **values)
        if expected.completed and not before.completed:
            expected = replace(expected, completed_at=task.updated_at)
        elif not expected.completed:
            expected = replace(expected, completed_at=None)
        assert Item.of(task) == expected
        assert task.updated_at >= before.updated_at
        account.tasks[before.id] = expected
        if expected.list_id != before.list_id:  # to the end of its new list
            account.order[before.list_id].remove(before.id)
            account.order[expected.list_id].append(before.id)

    def translated(self, before: Item, values: dict[str, Any]) -> dict[str, Any]:
        """API field values as the model's: due and list references resolved, label ids a set;
        a move to another list takes a new position."""
        values = dict(values)
        if "due" in values:
            due = values["due"]
            values["due"] = expected_due(
                DueInput.model_validate(due) if isinstance(due, dict) else due
            )
        if "priority" in values:
            values["priority"] = Priority(values["priority"])
        if "label_ids" in values:
            values["label_ids"] = frozenset(values["label_ids"])
        if "list_id" in values:
            values["list_id"] = repository.resolve_list(values["list_id"], before.user_id)
            if values["list_id"] != before.list_id:
                values["position"] = None
        return values

    def unchanged_or_stale(
        self,
        account: Account,
        task_id: uuid.UUID,
        if_match: Sequence[int] | None,
        call: Callable[[], Any],
    ) -> bool:
        """Run `call` when it must not apply (missing task or stale If-Match); True if it did
        not, having checked what it returned."""
        before = account.tasks.get(task_id)
        if before is None:
            assert call() in (None, False)
            self.tally.outcomes["missing"] += 1
            return True
        if _applies(if_match, before.version):
            return False
        with pytest.raises(StaleVersion) as stale:
            call()
        assert Item.of(stale.value.current) == before
        self.tally.outcomes["stale"] += 1
        return True

    def placed(
        self, user: str, body: TaskCreate, list_pick: int | None, chosen: list[int]
    ) -> TaskCreate:
        """The body in one of the user's lists (None: the inbox) with some of their labels."""
        update: dict[str, Any] = {"label_ids": self.own_labels(user, chosen)}
        if list_pick is not None:
            list_id = self.own_list(user, list_pick)
            update["list_id"] = "inbox" if list_id == inbox_id(user) else list_id
        return body.model_copy(update=update)

    # --- rules: writes

    @initialize(
        alices=st.lists(bodies, max_size=5),
        others=st.lists(bodies, max_size=5),
        keyed=st.lists(st.tuples(users, st.sampled_from(IDEMPOTENCY_KEYS), bodies), max_size=3),
        lists=st.lists(st.tuples(users, list_names), max_size=2),
        labels=st.lists(st.tuples(users, label_names), max_size=3),
    )
    def seed(
        self,
        alices: list[TaskCreate],
        others: list[TaskCreate],
        keyed: list[tuple[str, str, TaskCreate]],
        lists: list[tuple[str, str]],
        labels: list[tuple[str, str]],
    ) -> None:
        """Start most examples with tasks, lists, labels and idempotency keys, so that the
        other rules have something to act on."""
        self.acted.update(USERS)
        for user, name in lists:
            self.make_list(user, name, None)
        for user, name in labels:
            self.make_label(user, name, None)
        for user, seeds in zip(USERS, (alices, others), strict=True):
            for index, body in enumerate(seeds):
                placed = self.placed(user, body, index if index % 2 else None, [index])
                self.create_plain(user, placed, None)
        for user, key, body in keyed:
            self.create_with_key(user, key, body, None, False)

    @rule(
        user=users,
        body=bodies,
        email=st.sampled_from(EMAILS),
        list_pick=st.none() | picks,
        chosen=label_picks,
    )
    def create(
        self,
        user: str,
        body: TaskCreate,
        email: str | None,
        list_pick: int | None,
        chosen: list[int],
    ) -> None:
        self.acting(user, "create")
        self.create_plain(user, self.placed(user, body, list_pick, chosen), email)

    def create_plain(self, user: str, body: TaskCreate, email: str | None) -> None:
        account = self.accounts[user]
        list_id = repository.resolve_list(body.list_id, user)
        if list_id != inbox_id(user) and list_id not in account.lists:
            with pytest.raises(ListNotFound):  # a list picked before it was deleted
                self.call(repository.create_task, user_id=user, data=body, quotas=QUOTAS)
            return
        task, replayed = self.call(
            repository.create_task, user_id=user, data=body, email=email, quotas=QUOTAS
        )
        assert not replayed
        self.created(account, user, body, task, email)

    def created(
        self, account: Account, user: str, body: TaskCreate, task: TaskRead, email: str | None
    ) -> Item:
        assert all(task.id not in a.tasks for a in self.accounts.values())
        item = Item.of(task)
        assert item == Item(
            task.id,
            user,
            body.title,
            body.description,
            body.completed,
            1,
            task.created_at,
            task.created_at,
            repository.resolve_list(body.list_id, user),
            body.priority,
            expected_due(body.due),
            frozenset(body.label_ids),
            task.created_at if body.completed else None,
            task.position,
        )
        self.provision(account, user, email)
        account.tasks[task.id] = item
        account.order[item.list_id].append(task.id)  # a new task goes last
        for label, ref in zip(task.label_ids, task.labels, strict=True):
            model = account.labels[label]
            assert (ref.name, ref.color) == (model.name, model.color)
        return item

    @rule(
        user=users,
        key=st.sampled_from(IDEMPOTENCY_KEYS),
        body=bodies,
        email=st.sampled_from(EMAILS),
        expire_at_once=st.sampled_from([False, False, True]),
    )
    def create_once(
        self, user: str, key: str, body: TaskCreate, email: str | None, expire_at_once: bool
    ) -> None:
        self.acting(user, "create_once")
        self.create_with_key(user, key, body, email, expire_at_once)

    @rule(user=users, pick=picks)
    def replay_key(self, user: str, pick: int) -> None:
        """A live key with its first body again: the first response, even if the task has
        changed or gone since."""
        account = self.acting(user, "replay key")
        if live := self.live_keys(account):
            key = live[pick % len(live)]
            self.create_with_key(user, key, account.keys[key].body, None, False)

    @rule(user=users, pick=picks, body=bodies)
    def reuse_key(self, user: str, pick: int, body: TaskCreate) -> None:
        """A live key with another body: refused, nothing created (a replay if it is equal)."""
        account = self.acting(user, "reuse key")
        if live := self.live_keys(account):
            self.create_with_key(user, live[pick % len(live)], body, None, False)

    def live_keys(self, account: Account) -> list[str]:
        return sorted(key for key, stored in account.keys.items() if not stored.expired)

    def create_with_key(
        self, user: str, key: str, body: TaskCreate, email: str | None, expire_at_once: bool
    ) -> None:
        # Keyed creates stay in the inbox without labels: a replay then cannot meet a list or
        # a label deleted since the first request.
        account = self.accounts[user]
        stored = account.keys.get(key)
        ttl = timedelta(0) if expire_at_once else LONG_TTL
        call = partial(
            self.call,
            repository.create_task,
            user_id=user,
            data=body,
            key=key,
            ttl=ttl,
            email=email,
            quotas=QUOTAS,
        )
        if stored is not None and not stored.expired:
            if stored.body.model_dump() == body.model_dump():
                task, replayed = call()
                assert replayed
                assert Item.of(task) == stored.response
                self.tally.outcomes["replayed"] += 1
            else:
                with pytest.raises(IdempotencyKeyReused):
                    call()
                self.tally.outcomes["key reused"] += 1
            return  # nothing changed (expired keys may or may not have been cleaned up)
        task, replayed = call()
        assert not replayed
        # The claim's transaction removed the user's expired keys (this one too, if it was).
        account.keys = {k: s for k, s in account.keys.items() if not s.expired}
        item = self.created(account, user, body, task, email)
        # A zero TTL expires as soon as the clock moves: for every later call of this user.
        account.keys[key] = StoredKey(body, item, expired=expire_at_once)

    @rule(
        user=users,
        pick=picks,
        body=bodies,
        if_match=if_matches,
        list_pick=st.none() | picks,
        chosen=label_picks,
    )
    def replace_task(
        self,
        user: str,
        pick: int,
        body: TaskCreate,
        if_match: str,
        list_pick: int | None,
        chosen: list[int],
    ) -> None:
        """PUT: every field as given or its default (the inbox, no labels, no due)."""
        body = self.placed(user, body, list_pick, chosen)
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, "replace", repository.replace_task, data=body, quotas=QUOTAS
        )
        if self.unchanged_or_stale(account, task_id, versions, call):
            return
        list_id = repository.resolve_list(body.list_id, user)
        if list_id not in account.lists and list_id != inbox_id(user):
            with pytest.raises(ListNotFound):
                call()
            return
        self.changed(account, account.tasks[task_id], call(), **body.model_dump())

    @rule(user=users, pick=picks, changes=patches, if_match=if_matches)
    def patch(self, user: str, pick: int, changes: dict[str, Any], if_match: str) -> None:
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, "patch", repository.update_task, changes=changes, quotas=QUOTAS
        )
        if self.unchanged_or_stale(account, task_id, versions, call):
            return
        if not changes:  # not a modification: same version, same updated_at
            task = call()
            assert task is not None and Item.of(task) == account.tasks[task_id]
            return
        self.changed(account, account.tasks[task_id], call(), **changes)

    @rule(user=users, pick=picks, list_pick=picks)
    def patch_list(self, user: str, pick: int, list_pick: int) -> None:
        """`list_id` in a PATCH: to the end of that list (where it is, if it is that one)."""
        list_id = self.own_list(user, list_pick)
        ref = "inbox" if list_id == inbox_id(user) and list_pick % 2 else list_id
        changes = {"list_id": ref}
        account, task_id, _, call = self.on_own_task(
            user, pick, "none", "patch list", repository.update_task, changes=changes, quotas=QUOTAS
        )
        if self.unchanged_or_stale(account, task_id, None, call):
            return
        if list_id not in account.lists and list_id != inbox_id(user):
            with pytest.raises(ListNotFound):
                call()
            return
        self.changed(account, account.tasks[task_id], call(), **changes)

    @rule(user=users, pick=picks, chosen=label_picks)
    def set_labels(self, user: str, pick: int, chosen: list[int]) -> None:
        """`label_ids` in a PATCH: exactly those (a new version even when they are the same)."""
        label_ids = self.own_labels(user, chosen)
        account, task_id, _, call = self.on_own_task(
            user, pick, "none", "set labels", repository.update_task,
            changes={"label_ids": label_ids}, quotas=QUOTAS,
        )  # fmt: skip
        if not self.unchanged_or_stale(account, task_id, None, call):
            self.changed(account, account.tasks[task_id], call(), label_ids=label_ids)

    @rule(user=users, pick=picks, completed=st.none() | st.booleans(), if_match=if_matches)
    def set_completion(self, user: str, pick: int, completed: bool | None, if_match: str) -> None:
        rule_name = "toggle" if completed is None else "set_completion"
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, rule_name, repository.set_completion, completed=completed
        )
        if self.unchanged_or_stale(account, task_id, versions, call):
            return
        before = account.tasks[task_id]
        value = not before.completed if completed is None else completed
        self.changed(account, before, call(), completed=value)

    @rule(user=users, pick=picks, if_match=if_matches)
    def delete(self, user: str, pick: int, if_match: str) -> None:
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, "delete", repository.delete_task
        )
        if not self.unchanged_or_stale(account, task_id, versions, call):
            assert call() is True
            self.forget(account, [task_id])

    def forget(self, account: Account, task_ids: Sequence[uuid.UUID]) -> None:
        for task_id in task_ids:
            item = account.tasks.pop(task_id)
            account.order[item.list_id].remove(task_id)

    @precondition(lambda self: sum(len(a.tasks) for a in self.accounts.values()) >= 3)
    @rule(user=users, completed=st.booleans())
    def delete_many(self, user: str, completed: bool) -> None:
        account = self.acting(user, "delete_many")
        doomed = [i for i, item in account.tasks.items() if item.completed is completed]
        deleted = self.call(repository.delete_tasks, user_id=user, completed=completed)
        assert deleted == len(doomed)
        self.forget(account, doomed)

    def on_own_task(
        self,
        user: str,
        pick: int,
        if_match: str,
        rule_name: str,
        operation: Callable[..., Any],
        **arguments: Any,
    ) -> tuple[Account, uuid.UUID, list[int] | None, Callable[[], Any]]:
        """For a rule on one of the user's tasks: the acting account, the task picked, the
        If-Match versions chosen, and the repository call on that task (not made yet)."""
        account = self.acting(user, rule_name)
        task_id = self.own_id(user, pick)
        versions = self.versions(account, task_id, if_match)
        call = partial(
            self.call, operation, user_id=user, task_id=task_id, if_match=versions, **arguments
        )
        return account, task_id, versions, call

    def versions(self, account: Account, task_id: uuid.UUID, kind: str) -> list[int] | None:
        item = account.tasks.get(task_id)
        return _versions(kind, item.version if item else 1)

    # --- rules: manual order

    @rule(user=users, pick=picks, where=move_targets)
    def move(self, user: str, pick: int, where: tuple[str, int, int | None]) -> None:
        """After or before a task of the destination list (its own, or another), or first;
        an anchor that is not in the destination (or is the task itself) is refused."""
        account = self.acting(user, f"move {where[0]}")
        kind, anchor_pick, list_pick = where
        task_id = self.own_id(user, pick)
        before = account.tasks.get(task_id)
        destination = self.own_list(user, list_pick) if list_pick is not None else None
        anchor = self.own_id(user, anchor_pick) if kind != "first" else None
        call = partial(
            self.call, repository.move_task, user_id=user, task_id=task_id,
            list_ref=destination, after_id=anchor if kind == "after" else None,
            before_id=anchor if kind == "before" else None,
        )  # fmt: skip
        if before is None:
            with pytest.raises(TaskNotFound):
                call()
            return
        into = destination if destination is not None else before.list_id
        if into not in account.lists and into != inbox_id(user):
            with pytest.raises(ListNotFound):
                call()
            return
        if anchor is not None and (anchor == task_id or anchor not in account.order[into]):
            with pytest.raises(AnchorNotFound):
                call()
            self.tally.outcomes["anchor refused"] += 1
            return
        task = call()
        order = account.order[before.list_id]
        order.remove(task_id)
        target_order = account.order[into]
        index = 0 if anchor is None else target_order.index(anchor) + (kind == "after")
        target_order.insert(index, task_id)
        # A rebalance of the destination first gives every task there (this one too, when it
        # was there already) a new key and version: +2 for this one then.
        expected = replace(before, list_id=into, position=task.position, updated_at=task.updated_at)
        assert task.version in (before.version + 1, before.version + 2)
        assert Item.of(task) == replace(expected, version=task.version)
        account.tasks[task_id] = replace(expected, version=task.version)
        self.settle(account, user, into, moved={task_id})

    def settle(
        self, account: Account, user: str, list_id: uuid.UUID, moved: set[uuid.UUID]
    ) -> None:
        """After a write that may have rebalanced the list: its order must be the model's; if
        the keys of tasks that did not move changed, they were all rebalanced (ranked keys in
        the same order, one version up), and the model takes them."""
        page = self.call(
            repository.list_tasks, user_id=user, limit=200, sort=BY_POSITION,
            filters=TaskFilter(list_id=list_id),
        )  # fmt: skip
        assert [task.id for task in page.items] == account.order[list_id]
        stayed = [task for task in page.items if task.id not in moved]
        if all(task.position == account.tasks[task.id].position for task in stayed):
            return
        self.tally.outcomes["rebalanced"] += 1
        for task in page.items:
            before = account.tasks[task.id]
            if task.id in moved:
                assert Item.of(task) == before
                continue
            assert RANKED_KEY.fullmatch(task.position), task.position
            expected = replace(
                before, position=task.position, version=before.version + 1,
                updated_at=task.updated_at,
            )  # fmt: skip
            assert Item.of(task) == expected and task.updated_at >= before.updated_at
            account.tasks[task.id] = expected

    # --- rules: lists

    @rule(user=users, name=list_names, color=colors)
    def create_list(self, user: str, name: str, color: str | None) -> None:
        self.acting(user, "create list")
        self.make_list(user, name, color)

    def make_list(self, user: str, name: str, color: str | None) -> None:
        data = ListCreate.model_validate({"name": name, "color": color})
        created = self.call(
            lists_repository.create_list, user_id=user, name=data.name, color=data.color,
            limit=LIMIT,
        )  # fmt: skip
        account = self.accounts[user]
        self.provision(account, user, None)
        item = ListItem(created.id, data.name, data.color, False, 1)
        assert (created.id, created.name, created.color, created.is_inbox, created.version) == (
            item.id, item.name, item.color, item.is_inbox, item.version
        )  # fmt: skip
        assert (created.task_count, created.open_task_count) == (0, 0)
        assert created.id not in account.lists and created.id != inbox_id(self.other(user))
        account.lists[created.id] = item
        account.order[created.id] = []

    @rule(user=users, pick=picks, name=list_names)
    def rename_list(self, user: str, pick: int, name: str) -> None:
        """The inbox too (it keeps being the inbox); a name is only a name."""
        account = self.acting(user, "rename list")
        list_id = self.own_list(user, pick)
        data = ListCreate.model_validate({"name": name})
        found = self.call(
            lists_repository.update_list, user_id=user, list_id=list_id,
            changes={"name": data.name},
        )  # fmt: skip
        if list_id not in account.lists:
            if list_id != inbox_id(user):
                assert found is None
                return
            self.provision(account, user, None)  # renaming the inbox provisions the user
        assert found is not None
        before = account.lists[list_id]
        account.lists[list_id] = replace(before, name=data.name, version=before.version + 1)
        assert (found.name, found.version, found.is_inbox) == (
            data.name, before.version + 1, before.is_inbox
        )  # fmt: skip

    @rule(user=users, pick=picks, move_to=st.none() | picks)
    def delete_list(self, user: str, pick: int, move_to: int | None) -> None:
        """With its tasks, or moving them to the end of another list (`tasks=move`)."""
        account = self.acting(user, "delete list" if move_to is None else "delete list, move")
        list_id = self.own_list(user, pick)
        destination = self.own_list(user, move_to) if move_to is not None else None
        if destination == list_id:
            destination = inbox_id(user)  # the route refuses the list itself (422)
        call = partial(
            self.call, lists_repository.delete_list, user_id=user, list_id=list_id,
            move_to=destination,
        )  # fmt: skip
        if list_id == inbox_id(user):  # provisioned or not: the inbox is never deletable
            with pytest.raises(InboxNotDeletable):
                call()
            return
        if list_id not in account.lists:
            assert call() is False
            return
        if destination is not None and destination not in account.lists:
            with pytest.raises(ListNotFound):
                call()
            return
        assert call() is True
        doomed = account.order.pop(list_id)
        del account.lists[list_id]
        if destination is None:
            for task_id in doomed:
                del account.tasks[task_id]
            return
        # Moved to the end in their order, one version up (two if the destination was then
        # rebalanced, which rewrites the keys of all its tasks).
        account.order[destination].extend(doomed)
        for task_id in doomed:
            task = self.call(repository.get_task, user_id=user, task_id=task_id)
            assert task is not None
            before = account.tasks[task_id]
            expected = replace(
                before, list_id=destination, position=task.position, updated_at=task.updated_at
            )
            assert task.version in (before.version + 1, before.version + 2)
            assert Item.of(task) == replace(expected, version=task.version)
            assert task.updated_at >= before.updated_at
            account.tasks[task_id] = replace(expected, version=task.version)
        self.settle(account, user, destination, moved=set(doomed))

    # --- rules: labels

    @rule(user=users, name=label_names, color=colors)
    def create_label(self, user: str, name: str, color: str | None) -> None:
        self.acting(user, "create label")
        self.make_label(user, name, color)

    def make_label(self, user: str, name: str, color: str | None) -> None:
        account = self.accounts[user]
        data = LabelCreate.model_validate({"name": name, "color": color})
        call = partial(
            self.call, labels_repository.create_label, user_id=user, name=data.name,
            color=data.color, limit=LIMIT,
        )  # fmt: skip
        taken = [label for label in account.labels.values() if fold(label.name) == fold(data.name)]
        if taken:
            with pytest.raises(LabelNameTaken) as refused:
                call()
            assert refused.value.name == taken[0].name
            self.tally.outcomes["label name taken"] += 1
            return
        created = call()
        self.provision(account, user, None)
        item = LabelItem(created.id, data.name, data.color, 1)
        assert LabelItem(created.id, created.name, created.color, created.version) == item
        account.labels[created.id] = item

    @rule(user=users, pick=picks)
    def delete_label(self, user: str, pick: int) -> None:
        """Off every task that carries it, each of which gets a new version."""
        account = self.acting(user, "delete label")
        labels = list(account.labels)
        label_id = labels[pick % len(labels)] if labels else uuid.UUID(int=pick + 1)
        deleted = self.call(labels_repository.delete_label, user_id=user, label_id=label_id)
        assert deleted is (label_id in account.labels)
        if not deleted:
            return
        del account.labels[label_id]
        for item in list(account.tasks.values()):
            if label_id in item.label_ids:
                task = self.call(repository.get_task, user_id=user, task_id=item.id)
                assert task is not None
                expected = replace(
                    item, label_ids=item.label_ids - {label_id}, version=item.version + 1,
                    updated_at=task.updated_at,
                )  # fmt: skip
                assert Item.of(task) == expected and task.updated_at >= item.updated_at
                account.tasks[item.id] = expected

    # --- rules: bulk changes

    @rule(
        user=users,
        chosen=st.lists(picks, min_size=1, max_size=4),
        values=st.fixed_dictionaries(
            {},
            optional={
                "completed": st.booleans(),
                "priority": priorities,
                "due": dues,
                "list_id": picks,
            },
        ),
        add=label_picks,
        remove=label_picks,
    )
    def bulk(
        self,
        user: str,
        chosen: list[int],
        values: dict[str, Any],
        add: list[int],
        remove: list[int],
    ) -> None:
        """All named tasks change (one version up each, in one transaction), moved ones to the
        end of the destination in the order named; labels added and removed."""
        account = self.acting(user, "bulk")
        if not account.tasks:
            return
        ids = list(dict.fromkeys(self.own_id(user, pick) for pick in chosen))
        if "list_id" in values:
            values["list_id"] = self.own_list(user, values["list_id"])
        added = self.own_labels(user, add)
        removed = [label for label in self.own_labels(user, remove) if label not in added]
        change = BulkChange.model_validate(
            {"ids": ids, "set": values, "add_label_ids": added, "remove_label_ids": removed}
        )
        call = partial(
            self.call, repository.bulk_change, user_id=user, change=change, quotas=QUOTAS
        )
        destination = values.get("list_id")
        if destination is not None and destination not in account.lists:
            with pytest.raises(ListNotFound):
                call()
            return
        changed = call()
        assert [task.id for task in changed] == ids
        now = changed[0].updated_at
        for task in changed:
            before = account.tasks[task.id]
            fields = self.translated(before, {k: v for k, v in values.items() if k != "list_id"})
            labels = (before.label_ids | set(added)) - set(removed)
            expected = replace(
                before, **fields, label_ids=labels, version=before.version + 1, updated_at=now
            )
            if destination is not None and destination != before.list_id:
                expected = replace(expected, list_id=destination, position=task.position)
                account.order[before.list_id].remove(task.id)
                account.order[destination].append(task.id)
            if expected.completed and not before.completed:
                expected = replace(expected, completed_at=now)
            elif not expected.completed:
                expected = replace(expected, completed_at=None)
            assert Item.of(task) == expected and now >= before.updated_at
            account.tasks[task.id] = expected

    # --- rules: the other user's ids

    @rule(
        user=users,
        pick=picks,
        operation=st.sampled_from(
            ["get", "replace", "patch", "patch nothing", "toggle", "set", "delete", "move"]
        ),
        if_match=st.sampled_from(["none", "current", "stale"]),
    )
    def touch_other_users_task(self, user: str, pick: int, operation: str, if_match: str) -> None:
        """Every operation on a task of the other user answers "not found" and changes nothing,
        whatever If-Match says (a StaleVersion would reveal that the task exists)."""
        self.acting(user, f"foreign {operation}")
        owner = self.accounts[self.other(user)]
        task_id = self.own_id(self.other(user), pick)
        versions = self.versions(owner, task_id, if_match)
        common: dict[str, Any] = {"user_id": user, "task_id": task_id}
        if operation != "get":
            common["if_match"] = versions
        if operation == "move":
            with pytest.raises(TaskNotFound):
                self.call(
                    repository.move_task, **common, list_ref=None, after_id=None, before_id=None
                )
            return
        operations: dict[str, tuple[Callable[..., Awaitable[object]], dict[str, Any]]] = {
            "get": (repository.get_task, {}),
            "replace": (
                repository.replace_task,
                {"data": TaskCreate(title="intruder"), "quotas": QUOTAS},
            ),
            "patch": (repository.update_task, {"changes": {"title": "x"}, "quotas": QUOTAS}),
            "patch nothing": (repository.update_task, {"changes": {}}),
            "toggle": (repository.set_completion, {"completed": None}),
            "set": (repository.set_completion, {"completed": True}),
            "delete": (repository.delete_task, {}),
        }
        function, extra = operations[operation]
        result = self.call(function, **common, **extra)
        assert result is (False if operation == "delete" else None)

    @rule(
        user=users,
        pick=picks,
        other_pick=picks,
        operation=st.sampled_from(
            [
                "create in list",
                "patch list",
                "move to list",
                "move after",
                "bulk list",
                "create with label",
                "set label",
                "bulk add label",
                "bulk remove label",
                "bulk task",
                "delete list",
                "move tasks to list",
                "rename list",
                "delete label",
            ]
        ),
    )
    def use_other_users_ids(self, user: str, pick: int, other_pick: int, operation: str) -> None:
        """The other user's list, label or task id in one of this user's writes: refused as
        missing (404/422), and nothing of either user changes."""
        account = self.acting(user, f"foreign id: {operation}")
        other = self.other(user)
        foreign_list = self.own_list(other, other_pick)
        foreign_labels = list(self.accounts[other].labels)
        foreign_label = (
            foreign_labels[other_pick % len(foreign_labels)] if foreign_labels else uuid.uuid4()
        )
        foreign_task = self.own_id(other, other_pick)
        task_id = self.own_id(user, pick)
        mine = task_id in account.tasks
        own = {"user_id": user}
        body = TaskCreate(title="intruder")
        expected: type[Exception] | None
        function: Callable[..., Awaitable[Any]]
        arguments: dict[str, Any]
        if operation == "create in list":
            function, arguments = repository.create_task, {
                "data": body.model_copy(update={"list_id": foreign_list}), "quotas": QUOTAS
            }  # fmt: skip
            expected = ListNotFound
        elif operation == "patch list":
            function, arguments = repository.update_task, {
                "task_id": task_id, "changes": {"list_id": foreign_list}, "quotas": QUOTAS
            }  # fmt: skip
            expected = ListNotFound if mine else None
        elif operation in ("move to list", "move after"):
            anchor = foreign_task if operation == "move after" else None
            destination = foreign_list if operation == "move to list" else None
            function, arguments = repository.move_task, {
                "task_id": task_id, "list_ref": destination, "after_id": anchor, "before_id": None
            }  # fmt: skip
            expected = ListNotFound if operation == "move to list" else AnchorNotFound
            if not mine:
                expected = TaskNotFound
        elif operation == "create with label":
            function, arguments = repository.create_task, {
                "data": body.model_copy(update={"label_ids": [foreign_label]}), "quotas": QUOTAS
            }  # fmt: skip
            expected = LabelsNotFound
        elif operation == "set label":
            function, arguments = repository.update_task, {
                "task_id": task_id, "changes": {"label_ids": [foreign_label]}, "quotas": QUOTAS
            }  # fmt: skip
            # A missing task with a foreign label: either answer is "not yours" (the labels
            # may be checked first).
            expected = LabelsNotFound if mine else None
        elif operation.startswith("bulk"):
            ids = list(account.tasks)[:3]
            raw: dict[str, Any] = {"ids": ids or [task_id], "set": {"completed": True}}
            if operation == "bulk list":
                raw["set"] = {"list_id": foreign_list}
                expected = ListNotFound if ids else TasksNotFound
            elif operation == "bulk task":
                raw["ids"] = [*ids, foreign_task] if foreign_task not in ids else ids
                expected = TasksNotFound
            else:
                raw["add_label_ids" if "add" in operation else "remove_label_ids"] = [foreign_label]
                expected = LabelsNotFound if ids else TasksNotFound
            function, arguments = repository.bulk_change, {
                "change": BulkChange.model_validate(raw), "quotas": QUOTAS
            }  # fmt: skip
        elif operation in ("delete list", "move tasks to list"):
            own_list = self.own_list(user, pick)
            if operation == "delete list":
                function, arguments = lists_repository.delete_list, {
                    "list_id": foreign_list, "move_to": None
                }  # fmt: skip
                expected = None
            else:
                function, arguments = lists_repository.delete_list, {
                    "list_id": own_list, "move_to": foreign_list
                }  # fmt: skip
                expected = ListNotFound
                if own_list not in account.lists or own_list == inbox_id(user):
                    return  # refused for another reason (the rule `delete_list` has those)
        elif operation == "rename list":
            function, arguments = lists_repository.update_list, {
                "list_id": foreign_list, "changes": {"name": "intruder"}
            }  # fmt: skip
            expected = None
        else:
            function, arguments = labels_repository.delete_label, {"label_id": foreign_label}
            expected = None
        if expected is None:
            try:
                result: Any = self.call(function, **own, **arguments)
            except (LabelsNotFound, ListNotFound):
                assert not mine and operation in ("set label", "patch list")
            else:
                assert result in (None, False)
        else:
            with pytest.raises(expected):
                self.call(function, **own, **arguments)
        self.tally.outcomes["foreign id refused"] += 1

    # --- rules: reads

    @rule(user=users, pick=picks)
    def get(self, user: str, pick: int) -> None:
        account = self.acting(user, "get")
        task_id = self.own_id(user, pick)
        task = self.call(repository.get_task, user_id=user, task_id=task_id)
        expected = account.tasks.get(task_id)
        assert (Item.of(task) if task else None) == expected

    @rule(
        user=users,
        sort=st.sampled_from(SORTS),
        completed=st.none() | st.booleans(),
        q=st.none() | searches,
        since=st.none() | st.tuples(picks, st.sampled_from([-1, 0, 1])),
        limit=st.integers(min_value=1, max_value=4),
        include_total=st.booleans(),
    )
    def list_filtered(
        self,
        user: str,
        sort: TaskSort,
        completed: bool | None,
        q: str | None,
        since: tuple[int, int] | None,
        limit: int,
        include_total: bool,
    ) -> None:
        account = self.acting(user, "list")
        updated_since = None
        if since is not None:
            # At, or a microsecond either side of, a time the database holds; never "now".
            times = sorted(
                {t for i in account.tasks.values() for t in (i.created_at, i.updated_at)}
            )
            if times:
                pick, shift = since
                updated_since = times[pick % len(times)] + timedelta(microseconds=shift)
        filters = TaskFilter(completed=completed, q=q, updated_since=updated_since)
        self.walk(user, sort, filters, limit, include_total=include_total)

    @rule(
        user=users,
        sort=st.sampled_from(SORTS),
        limit=st.integers(min_value=1, max_value=3),
        change=st.sampled_from(["create", "toggle", "delete"]),
        pick=picks,
        body=bodies,
    )
    def list_while_changing(
        self, user: str, sort: TaskSort, limit: int, change: str, pick: int, body: TaskCreate
    ) -> None:
        """A task is created, toggled or deleted between the first page and the rest: the rest
        is exactly the tasks then positioned after the cursor (keyset, not offset)."""
        account = self.acting(user, "list while changing")

        def between_pages() -> None:
            if change == "create":
                self.create_plain(user, body, None)
            elif account.tasks:
                before = account.tasks[self.own_id(user, pick)]
                if change == "toggle":
                    toggled = self.call(
                        repository.set_completion, user_id=user, task_id=before.id, completed=None
                    )
                    self.changed(account, before, toggled, completed=not before.completed)
                else:
                    assert self.call(repository.delete_task, user_id=user, task_id=before.id)
                    self.forget(account, [before.id])

        self.walk(user, sort, TaskFilter(), limit, between_pages=between_pages)

    def walk(
        self,
        user: str,
        sort: TaskSort,
        filters: TaskFilter,
        limit: int,
        *,
        include_total: bool = False,
        between_pages: Callable[[], None] | None = None,
    ) -> list[Item]:
        """Follow the cursors to the end; every page must be what the model predicts."""
        account = self.accounts[user]
        expected = self.ordered(account, sort, filters)
        listed: list[Item] = []
        after: Cursor[TaskSortField] | None = None
        pages = 0
        while True:
            page = self.call(
                repository.list_tasks,
                user_id=user,
                limit=limit,
                sort=sort,
                filters=filters,
                after=after,
                include_total=include_total,
            )
            pages += 1
            items = [Item.of(task) for task in page.items]
            assert items == expected[:limit], f"page {pages} of {sort} {filters}"
            if include_total:  # all that match, on every page, not only those left
                assert page.total == sum(_matches(i, filters) for i in account.tasks.values())
            listed += items
            if page.next_cursor is None:
                assert len(expected) <= limit
                break
            assert len(expected) > limit
            # Through the wire format, as a client would send it back.
            token = page.next_cursor.encode(CURSOR_SECRET)
            after = Cursor.decode(token, CURSOR_SECRET, sort=sort, scope=filters.fingerprint())
            assert (after.key, after.id) == (getattr(items[-1], sort.name), items[-1].id)
            if between_pages is not None:
                between_pages()
                between_pages = None
            expected = self.ordered(account, sort, filters, after=after)
        self.tally.outcomes[f"walks of {min(pages, 3)}{'+' if pages >= 3 else ''} pages"] += 1
        return listed

    def ordered(
        self,
        account: Account,
        sort: TaskSort,
        filters: TaskFilter,
        after: Cursor[TaskSortField] | None = None,
    ) -> list[Item]:
        """The model's tasks matching `filters`, in `sort` order (ties by id, as the keyset),
        only those after the cursor's position."""
        items = [item for item in account.tasks.values() if _matches(item, filters)]
        rank: dict[str, int] = {}
        if sort.name == "title":
            extra = {after.key} if after is not None and isinstance(after.key, str) else set()
            rank = self.collation_ranks({item.title for item in items} | extra)

        def position(key: datetime | str, task_id: uuid.UUID) -> tuple[Any, uuid.UUID]:
            return (rank[key] if isinstance(key, str) else key), task_id

        def key(item: Item) -> tuple[Any, uuid.UUID]:
            return position(getattr(item, sort.name), item.id)

        items.sort(key=key, reverse=sort.descending)
        if after is not None:
            boundary = position(after.key, after.id)
            items = [
                i for i in items if (key(i) < boundary if sort.descending else key(i) > boundary)
            ]
        return items

    def collation_ranks(self, titles: set[str]) -> dict[str, int]:
        """Titles ranked by the database's own collation (not the tasks table's rows)."""
        if len(titles) < 2:
            return dict.fromkeys(titles, 0)
        literals = sa.union_all(*(sa.select(sa.literal(t, sa.Text).label("t")) for t in titles))
        column = literals.subquery().c.t

        async def ranked() -> list[str]:
            async with self.engine.connect() as connection:
                result = await connection.execute(sa.select(column).order_by(column))
                return list(result.scalars())

        ordered = self.run(ranked())
        assert sorted(ordered) == sorted(titles)  # distinct in, distinct out: no collation ties
        return {title: index for index, title in enumerate(ordered)}

    # --- invariants

    @invariant()
    def database_agrees_with_model(self) -> None:
        observed = self.run(self.observe())
        for user in USERS:
            account = self.accounts[user]
            pages = observed.pages[user]
            listed = [item for page in pages for item in page]
            assert listed == self.ordered(account, parse_sort("-created_at"), TaskFilter())
            assert all(len(page) == INVARIANT_PAGE for page in pages[:-1])
            assert 0 < len(pages[-1]) <= INVARIANT_PAGE or len(pages) == 1
            self.stats_agree(account, *observed.stats[user])
            lists = observed.lists.get(user, [])
            expected_lists = [
                (item, len(account.order[item.id]),
                 sum(not account.tasks[i].completed for i in account.order[item.id]))
                for item in account.lists.values()
            ]  # fmt: skip
            assert lists == expected_lists
            assert observed.labels.get(user, []) == sorted(
                account.labels.values(), key=lambda label: label.id
            )
            for list_id, in_order in observed.positions[user].items():
                assert [item.id for item in in_order] == account.order[list_id]
                keys = [item.position for item in in_order]
                assert len(set(keys)) == len(keys), f"two tasks share a position in {list_id}"
                assert all(len(key) <= MAX_LENGTH for key in keys), keys
                assert keys == sorted(keys, key=lambda key: key.encode())  # byte-wise
            placed = Counter((item.list_id, item.position) for item in listed)
            assert max(placed.values(), default=1) == 1, "two tasks share a position"
            assert all(len(item.position) <= MAX_LENGTH for item in listed)
            if user in observed.use:
                use = observed.use[user]
                assert (use.tasks, use.lists, use.labels) == (
                    len(account.tasks), len(account.lists), len(account.labels)
                )  # fmt: skip
            seen = (listed, lists, observed.labels.get(user, []))
            if user not in self.acted:
                assert seen == self.seen[user], f"{user!r} changed when {self.acted} acted"
            self.seen[user] = seen
        # Users are provisioned on their first write, with that write's email unless another
        # user holds it already; lists exist only for them.
        assert observed.users == {u: a.email for u, a in self.accounts.items() if a.provisioned}
        assert set(observed.list_owners) <= set(observed.users)
        live = {
            (u, k) for u, a in self.accounts.items() for k, s in a.keys.items() if not s.expired
        }
        expired = {(u, k) for u, a in self.accounts.items() for k, s in a.keys.items() if s.expired}
        # Expired keys are never replayed, so when they are cleaned up is free, except that the
        # claim of a new key does it (for that user); they never come back.
        assert observed.keys - expired == live
        self.acted.clear()

    def stats_agree(
        self, account: Account, start: datetime, stats: repository.Stats, end: datetime
    ) -> None:
        items = account.tasks.values()
        completed = sum(item.completed for item in items)
        assert (stats.total, stats.completed) == (len(account.tasks), completed)
        # The server counted at a moment between start and end: hold it to the model when the
        # model's counts are the same at both.
        counts = [
            (sum(_overdue(i, now) for i in items), sum(_due_today(i, now) for i in items))
            for now in (start, end)
        ]
        if counts[0] == counts[1]:
            assert (stats.overdue, stats.due_today) == counts[0]
            self.tally.outcomes["due counts checked"] += 1

    async def observe(self) -> Observation:
        """Both users' full listings (page by page, default order), stats, lists, labels,
        each list's manual order and quota counters, and the users and idempotency keys
        tables; in one event loop turn, to keep steps cheap."""
        observation = Observation()
        async with self.engine.connect() as connection:
            for row in await connection.execute(sa.text("SELECT id, email FROM users")):
                observation.users[row.id] = row.email
            for row in await connection.execute(
                sa.text("SELECT user_id, key FROM idempotency_keys")
            ):
                observation.keys.add((row.user_id, row.key))
            for row in await connection.execute(sa.text("SELECT user_id FROM lists")):
                observation.list_owners[row.user_id] += 1
        for user in USERS:
            observation.pages[user] = pages = []
            after: Cursor[TaskSortField] | None = None
            while True:
                page = await repository.list_tasks(
                    self.database, user_id=user, limit=INVARIANT_PAGE, after=after
                )
                pages.append([Item.of(task) for task in page.items])
                if page.next_cursor is None:
                    break
                after = page.next_cursor
                assert len(pages) <= len(self.accounts[user].tasks), "the cursors go round"
            start = datetime.now(UTC)
            stats = await repository.task_stats(self.database, user_id=user)
            observation.stats[user] = (start, stats, datetime.now(UTC))
            observation.positions[user] = {}
            if user not in observation.users:
                continue  # reading the lists would provision the user
            observation.lists[user] = [
                (ListItem(found.id, found.name, found.color, found.is_inbox, found.version),
                 found.task_count, found.open_task_count)
                for found in await lists_repository.all_lists(self.database, user_id=user)
            ]  # fmt: skip
            observation.labels[user] = sorted(
                (
                    LabelItem(label.id, label.name, label.color, label.version)
                    for label in await labels_repository.all_labels(self.database, user_id=user)
                ),
                key=lambda label: label.id,
            )
            if user not in self.acted:
                continue  # what they see must not have changed: compared in full above
            observation.use[user] = await users_repository.use(self.database, user_id=user)
            for found, count, _ in observation.lists[user]:
                if count < 2:
                    continue  # no order to check (keys are checked in the full listing)
                page = await repository.list_tasks(
                    self.database, user_id=user, limit=200, sort=BY_POSITION,
                    filters=TaskFilter(list_id=found.id),
                )  # fmt: skip
                observation.positions[user][found.id] = [Item.of(task) for task in page.items]
        return observation


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_repository_agrees_with_model(settings: Settings, backend: str) -> None:
    tally = Tally()
    run_state_machine_as_test(  # type: ignore[no-untyped-call]  # untyped in Hypothesis
        lambda: TaskMachine(settings, tally),
        settings=hypothesis_settings(),
    )
    print(
        f"\nstate machine on {backend}: {tally.examples} examples, {tally.steps} steps "
        f"({tally.steps / max(tally.examples, 1):.1f} per example); "
        f"rules {dict(sorted(tally.rules.items()))}; "
        f"outcomes {dict(sorted(tally.outcomes.items()))}"
    )
    assert tally.examples >= MAX_EXAMPLES // 2 and tally.steps >= tally.examples


def hypothesis_settings() -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=IN_CI,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
        # Shrinking replays hundreds of sequences, each on a fresh database: minutes. CI reports
        # the failing sequence as found (at most STEPS steps) and the blob to replay it; a local
        # run shrinks it to the minimal one.
        phases=[p for p in hypothesis.Phase if not (IN_CI and p is hypothesis.Phase.shrink)],
        print_blob=True,
    )
