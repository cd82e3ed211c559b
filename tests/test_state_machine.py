"""The data-access layer against a plain in-memory model, as a Hypothesis state machine.

Random sequences of repository calls (create, create with an Idempotency-Key, get, replace,
patch, toggle/set, delete, bulk delete, listings with filters/sorts/cursors, stats, If-Match)
by two users run on a real database; after every step both users' full listings, their stats,
the users table and the idempotency keys must equal the model, and the user who did not act
must see exactly what they saw before. Calls aimed at the other user's task ids must behave as
if the task did not exist.

What the model cannot know, it takes from the database and then holds it to it:
- timestamps come from the application's clock at each write, so the model records those a
  write returns (and every later read must return them unchanged, to the microsecond);
  `updated_since` is only asked for at, or one microsecond either side of, a timestamp the
  model holds, never relative to "now";
- the order of titles is the database's collation (PostgreSQL's depends on how the database was
  created), so title sorts are ranked by the database itself, on the bare titles, in a query
  that does not touch the tasks table;
- `q` is case-insensitive for ASCII on every backend but folds other letters only on PostgreSQL
  (in a UTF-8 locale), so searches are ASCII or caseless characters, and titles/descriptions
  hold no character whose lower case is ASCII (the Kelvin sign, dotted capital I): every other
  valid character is in, including the hostile ones the models accept.

Each example starts from empty tables, on its own engine and event loop. The numbers are set
for about 15-20 s per backend on the shared 2-core machine; CI (CI=true) runs the same fixed
sequences every time (derandomized) and does not shrink a failure (see hypothesis_settings).
Run with `-s` for one line per backend with how many examples, steps and rules ran.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

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
from todo_api.platform.database.engine import open_database
from todo_api.platform.http.cursor import Cursor
from todo_api.settings import Settings
from todo_api.tasks import repository
from todo_api.tasks.errors import IdempotencyKeyReused, StaleVersion
from todo_api.tasks.filters import TaskFilter
from todo_api.tasks.schemas import TaskCreate, TaskRead, TaskUpdate
from todo_api.tasks.sorting import TaskSort, TaskSortField, parse_sort

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

MAX_EXAMPLES = 25
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
bodies = st.builds(
    lambda title, description, completed: TaskCreate.model_validate(
        {"title": title, "description": description, "completed": completed}
    ),
    titles,
    descriptions,
    st.booleans(),
)
patches = st.fixed_dictionaries(
    {}, optional={"title": titles, "description": descriptions, "completed": st.booleans()}
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

    @classmethod
    def of(cls, task: TaskRead) -> Item:
        return cls(
            task.id,
            task.user_id,
            task.title,
            task.description,
            task.completed,
            task.version,
            task.created_at,
            task.updated_at,
        )


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
    if filters.q:
        needle = _search_fold(filters.q)
        haystacks = [item.title, item.description or ""]
        if not any(needle in _search_fold(text) for text in haystacks):
            return False
    return filters.updated_since is None or item.updated_at >= filters.updated_since


# --- the machine ------------------------------------------------------------------------------


@dataclass
class Observation:
    pages: dict[str, list[list[Item]]] = field(default_factory=dict)
    stats: dict[str, repository.Stats] = field(default_factory=dict)
    users: dict[str, str | None] = field(default_factory=dict)
    keys: set[tuple[str, str]] = field(default_factory=set)


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
        self.database = open_database(app_settings)
        self.engine = self.database.engine
        self.accounts = {user: Account() for user in USERS}
        self.acted: set[str] = set()  # who acted in this step
        self.seen: dict[str, list[Item]] = {user: [] for user in USERS}
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
            for table in ("idempotency_keys", "tasks", "users"):
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

    def provision(self, account: Account, user: str, email: str | None) -> None:
        if account.provisioned:
            return  # the first write's email stays, whatever later writes carry
        taken = {a.email for name, a in self.accounts.items() if name != user}
        account.provisioned = True
        account.email = email if email not in taken else None

    def changed(self, account: Account, before: Item, task: TaskRead | None, **values: Any) -> None:
        """A change was applied: the returned task must be `before` with `values` and a new
        version; the model keeps the updated_at the database chose."""
        assert task is not None
        expected = replace(before, version=before.version + 1, updated_at=task.updated_at, **values)
        assert Item.of(task) == expected
        account.tasks[before.id] = expected

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

    # --- rules: writes

    @initialize(
        alices=st.lists(bodies, max_size=5),
        others=st.lists(bodies, max_size=5),
        keyed=st.lists(st.tuples(users, st.sampled_from(IDEMPOTENCY_KEYS), bodies), max_size=3),
    )
    def seed(
        self,
        alices: list[TaskCreate],
        others: list[TaskCreate],
        keyed: list[tuple[str, str, TaskCreate]],
    ) -> None:
        """Start most examples with tasks and idempotency keys, so that the other rules have
        something to act on."""
        self.acted.update(USERS)
        for user, seeds in zip(USERS, (alices, others), strict=True):
            for body in seeds:
                task = self.call(repository.create_task, user_id=user, data=body)
                self.created(self.accounts[user], user, body, task, None)
        for user, key, body in keyed:
            self.create_with_key(user, key, body, None, False)

    @rule(user=users, body=bodies, email=st.sampled_from(EMAILS))
    def create(self, user: str, body: TaskCreate, email: str | None) -> None:
        account = self.acting(user, "create")
        task = self.call(repository.create_task, user_id=user, data=body, email=email)
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
        )
        account.tasks[task.id] = item
        self.provision(account, user, email)
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
        account = self.accounts[user]
        stored = account.keys.get(key)
        ttl = timedelta(0) if expire_at_once else LONG_TTL
        call = partial(
            self.call,
            repository.create_task_once,
            user_id=user,
            data=body,
            key=key,
            ttl=ttl,
            email=email,
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

    @rule(user=users, pick=picks, body=bodies, if_match=if_matches)
    def replace_task(self, user: str, pick: int, body: TaskCreate, if_match: str) -> None:
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, "replace", repository.replace_task, data=body
        )
        if not self.unchanged_or_stale(account, task_id, versions, call):
            self.changed(account, account.tasks[task_id], call(), **body.model_dump())

    @rule(user=users, pick=picks, changes=patches, if_match=if_matches)
    def patch(self, user: str, pick: int, changes: dict[str, Any], if_match: str) -> None:
        account, task_id, versions, call = self.on_own_task(
            user, pick, if_match, "patch", repository.update_task, changes=changes
        )
        if self.unchanged_or_stale(account, task_id, versions, call):
            return
        if not changes:  # not a modification: same version, same updated_at
            task = call()
            assert task is not None and Item.of(task) == account.tasks[task_id]
            return
        self.changed(account, account.tasks[task_id], call(), **changes)

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
            del account.tasks[task_id]

    @precondition(lambda self: sum(len(a.tasks) for a in self.accounts.values()) >= 3)
    @rule(user=users, completed=st.booleans())
    def delete_many(self, user: str, completed: bool) -> None:
        account = self.acting(user, "delete_many")
        doomed = [i for i, item in account.tasks.items() if item.completed is completed]
        deleted = self.call(repository.delete_tasks, user_id=user, completed=completed)
        assert deleted == len(doomed)
        for task_id in doomed:
            del account.tasks[task_id]

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

    # --- rules: the other user's tasks

    @rule(
        user=users,
        pick=picks,
        operation=st.sampled_from(
            ["get", "replace", "patch", "patch nothing", "toggle", "set", "delete"]
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
        operations: dict[str, tuple[Callable[..., Awaitable[object]], dict[str, Any]]] = {
            "get": (repository.get_task, {}),
            "replace": (repository.replace_task, {"data": TaskCreate(title="intruder")}),
            "patch": (repository.update_task, {"changes": {"title": "x"}}),
            "patch nothing": (repository.update_task, {"changes": {}}),
            "toggle": (repository.set_completion, {"completed": None}),
            "set": (repository.set_completion, {"completed": True}),
            "delete": (repository.delete_task, {}),
        }
        function, extra = operations[operation]
        result = self.call(function, **common, **extra)
        assert result is (False if operation == "delete" else None)

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
                task = self.call(repository.create_task, user_id=user, data=body)
                self.created(account, user, body, task, None)
            elif account.tasks:
                before = account.tasks[self.own_id(user, pick)]
                if change == "toggle":
                    toggled = self.call(
                        repository.set_completion, user_id=user, task_id=before.id, completed=None
                    )
                    self.changed(account, before, toggled, completed=not before.completed)
                else:
                    assert self.call(repository.delete_task, user_id=user, task_id=before.id)
                    del account.tasks[before.id]

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
            pages, stats = observed.pages[user], observed.stats[user]
            listed = [item for page in pages for item in page]
            assert listed == self.ordered(account, parse_sort("-created_at"), TaskFilter())
            assert all(len(page) == INVARIANT_PAGE for page in pages[:-1])
            assert 0 < len(pages[-1]) <= INVARIANT_PAGE or len(pages) == 1
            if user not in self.acted:
                assert listed == self.seen[user], f"{user!r} changed when {self.acted} acted"
            self.seen[user] = listed
            completed = sum(item.completed for item in account.tasks.values())
            assert (stats.total, stats.completed) == (len(account.tasks), completed)
        # Users are provisioned on their first write, with that write's email unless another
        # user holds it already.
        assert observed.users == {u: a.email for u, a in self.accounts.items() if a.provisioned}
        live = {
            (u, k) for u, a in self.accounts.items() for k, s in a.keys.items() if not s.expired
        }
        expired = {(u, k) for u, a in self.accounts.items() for k, s in a.keys.items() if s.expired}
        # Expired keys are never replayed, so when they are cleaned up is free, except that the
        # claim of a new key does it (for that user); they never come back.
        assert observed.keys - expired == live
        self.acted.clear()

    async def observe(self) -> Observation:
        """Both users' full listings (page by page, default order) and stats, and the users
        and idempotency keys tables; in one event loop turn, to keep steps cheap."""
        observation = Observation()
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
            observation.stats[user] = await repository.task_stats(self.database, user_id=user)
        async with self.engine.connect() as connection:
            for row in await connection.execute(sa.text("SELECT id, email FROM users")):
                observation.users[row.id] = row.email
            for row in await connection.execute(
                sa.text("SELECT user_id, key FROM idempotency_keys")
            ):
                observation.keys.add((row.user_id, row.key))
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
