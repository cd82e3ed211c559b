"""Every query of the change feed: a page of `/sync`, the purge of old tombstones, events
tickets, and the sequences the events streams start from.

A page is read in one snapshot (`Database.snapshot`): the user's counter, then up to
`limit + 1` rows after the position from each of tasks, lists, labels (their repositories'
`changed_*`) and tombstones, merged in (change_seq, kind, id) order. Because a user's writes
take their values under the counter's row lock and commit in that order, a snapshot holds
exactly the changes 1..head: a page never skips a change that commits later.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from todo_api.labels.repository import changed_labels
from todo_api.labels.schemas import LabelRead
from todo_api.lists.repository import changed_lists
from todo_api.lists.schemas import ListRead
from todo_api.platform.database.database import Database
from todo_api.platform.database.executors import Session
from todo_api.platform.database.types import utcnow
from todo_api.sync.errors import SyncTokenExpired
from todo_api.sync.tokens import FIRST_ID, LAST_ID, LAST_KIND, Position
from todo_api.tables.changes import event_tickets, event_watches, tombstones
from todo_api.tables.users import users
from todo_api.tasks.repository import changed_tasks
from todo_api.tasks.schemas import TaskRead
from todo_api.users.repository import insert, owner_parameters, provision

Resource = TaskRead | ListRead | LabelRead


@dataclass(frozen=True)
class Change:
    kind: str
    id: uuid.UUID
    change_seq: int
    data: Resource | None  # None: deleted

    @property
    def key(self) -> tuple[int, str, uuid.UUID]:
        return (self.change_seq, self.kind, self.id)


@dataclass(frozen=True)
class Page:
    changes: list[Change]
    next: Position
    has_more: bool


_OWNER = users.c.id == sa.bindparam("owner_id", type_=users.c.id.type)
_HEAD = sa.select(users.c.change_seq, users.c.sync_floor).where(_OWNER)
_TOMBSTONES = (
    sa.select(tombstones.c.kind, tombstones.c.id, tombstones.c.change_seq)
    .where(
        tombstones.c.user_id == sa.bindparam("owner_id", type_=tombstones.c.user_id.type),
        tombstones.c.change_seq > sa.bindparam("since", type_=sa.BigInteger),
        sa.tuple_(tombstones.c.change_seq, tombstones.c.kind, tombstones.c.id)
        > sa.tuple_(
            sa.bindparam("after_seq", type_=sa.BigInteger),
            sa.bindparam("after_kind", type_=tombstones.c.kind.type),
            sa.bindparam("after_id", type_=tombstones.c.id.type),
        ),
    )
    .order_by(tombstones.c.change_seq, tombstones.c.kind, tombstones.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_SOURCES = (("label", changed_labels), ("list", changed_lists), ("task", changed_tasks))


async def read_page(db: Database, *, user_id: str, position: Position | None, limit: int) -> Page:
    """The changes after `position` (None: every live row), at most `limit`. Raises
    SyncTokenExpired for a position the purged tombstones no longer answer."""

    async def work(session: Session) -> Page:
        head_rows = await session.rows(_HEAD, {"owner_id": user_id})
        head, floor = (int(head_rows[0][0]), int(head_rows[0][1])) if head_rows else (0, 0)
        start = position or Position(seq=-1, kind="label", id=FIRST_ID, since=head)
        if position is not None and (
            floor > max(position.seq, position.since) or position.seq > head
        ):
            # A tombstone it needs was purged; or the token is from a database that was
            # reset since (its position is ahead of everything here).
            raise SyncTokenExpired()
        fetched: list[Change] = []
        for kind, changed in _SOURCES:
            bound = {
                "owner_id": user_id,
                "after_seq": start.seq,
                "after_id": start.after_id(kind),
                "limit": limit + 1,
            }
            fetched += [
                Change(kind, row.id, row.change_seq, row) for row in await changed(session, bound)
            ]
        if position is not None:  # a full sync sends live rows only
            rows = await session.rows(
                _TOMBSTONES,
                {
                    "owner_id": user_id,
                    "since": start.since,
                    "after_seq": start.seq,
                    "after_kind": start.kind,
                    "after_id": start.id,
                    "limit": limit + 1,
                },
            )
            fetched += [Change(kind, id_, int(seq), None) for kind, id_, seq in rows]
        fetched.sort(key=lambda change: change.key)
        page = fetched[:limit]
        if len(fetched) > limit:
            last = page[-1]
            return Page(page, Position(last.change_seq, last.kind, last.id, start.since), True)
        # Everything up to `head` has been sent.
        return Page(page, Position(head, LAST_KIND, LAST_ID, start.since), False)

    return await db.snapshot(work)


# --- purge --------------------------------------------------------------------------------

PURGE_BATCH = 5000
# pg_try_advisory_xact_lock key: one replica purges at a time (the others skip that round).
_PURGE_LOCK_KEY = 0x746F646F5F737963  # "todo_syc"
_EXPIRED = tombstones.c.deleted_at < sa.bindparam("older_than", type_=tombstones.c.deleted_at.type)
_PURGE = (
    sa.delete(tombstones)
    .where(
        sa.tuple_(tombstones.c.user_id, tombstones.c.kind, tombstones.c.id).in_(
            sa.select(tombstones.c.user_id, tombstones.c.kind, tombstones.c.id)
            .where(_EXPIRED)
            .limit(sa.bindparam("batch", type_=sa.Integer))
        )
    )
    .returning(tombstones.c.user_id, tombstones.c.change_seq)
)
_FLOOR = sa.bindparam("floor", type_=sa.BigInteger)
_RAISE_FLOOR = sa.update(users).where(_OWNER, users.c.sync_floor < _FLOOR).values(sync_floor=_FLOOR)
_TRY_LOCK = sa.select(sa.func.pg_try_advisory_xact_lock(_PURGE_LOCK_KEY))
_EXPIRED_TICKETS = sa.delete(event_tickets).where(
    event_tickets.c.expires_at < sa.bindparam("now", type_=event_tickets.c.expires_at.type)
)


async def purge_tombstones(db: Database, *, older_than: datetime) -> int:
    """Delete the tombstones of deletes before `older_than`, in batches of PURGE_BATCH (one
    transaction each), raising each owner's `sync_floor` to the newest purged sequence; and
    the expired events tickets. How many tombstones went. Safe with several replicas."""
    purged = 0
    while True:

        async def batch(session: Session) -> int:
            if db.dialect == "postgresql" and not (await session.rows(_TRY_LOCK))[0][0]:
                return -1  # another replica is purging
            rows = await session.rows(_PURGE, {"older_than": older_than, "batch": PURGE_BATCH})
            floors: dict[str, int] = {}
            for user_id, seq in rows:
                floors[user_id] = max(floors.get(user_id, 0), int(seq))
            for user_id, floor in floors.items():
                await session.rows(_RAISE_FLOOR, {"owner_id": user_id, "floor": floor})
            return len(rows)

        count = await db.transaction(batch, idempotent=False)
        if count < 0:
            break
        purged += count
        if count < PURGE_BATCH:
            break
    await db.rows(_EXPIRED_TICKETS, {"now": utcnow()}, idempotent=True)
    if db.dialect == "postgresql":
        await db.rows(_EXPIRED_WATCHES, {}, idempotent=True)
    return purged


# --- events -------------------------------------------------------------------------------

TICKET_SECONDS = 60
_NEW_TICKET = sa.insert(event_tickets).values(
    digest=sa.bindparam("digest", type_=event_tickets.c.digest.type),
    user_id=sa.bindparam("owner_id", type_=event_tickets.c.user_id.type),
    expires_at=sa.bindparam("expires_at", type_=event_tickets.c.expires_at.type),
)
_USE_TICKET = (
    sa.delete(event_tickets)
    .where(
        event_tickets.c.digest == sa.bindparam("digest", type_=event_tickets.c.digest.type),
        event_tickets.c.expires_at > sa.bindparam("now", type_=event_tickets.c.expires_at.type),
    )
    .returning(event_tickets.c.user_id)
)


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


async def create_ticket(db: Database, *, user_id: str, email: str | None) -> str:
    """A new single-use ticket for one events stream of the user; only its digest is kept."""
    ticket = secrets.token_urlsafe(32)
    now = utcnow()
    parameters = owner_parameters(user_id, now, email) | {
        "digest": _digest(ticket),
        "expires_at": now + timedelta(seconds=TICKET_SECONDS),
    }

    async def work(session: Session) -> None:
        await provision(session, db.dialect, parameters)
        await session.rows(_NEW_TICKET, parameters)

    await db.transaction(work, idempotent=True)
    return ticket


async def use_ticket(db: Database, ticket: str) -> str | None:
    """The user a live ticket was issued to, which is used up by this; None if none."""
    rows = await db.rows(
        _USE_TICKET, {"digest": _digest(ticket), "now": utcnow()}, idempotent=False
    )
    return str(rows[0][0]) if rows else None


# PostgreSQL only: a write sends its NOTIFY when its user has a live watch (migration 0006).
# Times are the database's (as in change_seq_of), so no app server's clock is involved.
WATCH_SECONDS = 90.0  # refreshed every third of that while the process streams the user
_PROCESS = sa.bindparam("process_id", type_=event_watches.c.process_id.type)
_WATCH_EXPIRY = sa.func.statement_timestamp() + sa.func.make_interval(
    0, 0, 0, 0, 0, 0, sa.literal(WATCH_SECONDS, sa.Float)
)
_WATCHED_USERS = (
    sa.func.unnest(sa.bindparam("user_ids", type_=sa.ARRAY(event_watches.c.user_id.type)))
    .table_valued("user_id")
    .render_derived(name="watched")
)
_REFRESH_WATCHES = (
    insert("postgresql", event_watches)
    .from_select(
        ["user_id", "process_id", "expires_at"],
        # Only users that exist (the foreign key): each stream provisioned its user first.
        sa.select(_WATCHED_USERS.c.user_id, _PROCESS, _WATCH_EXPIRY).where(
            sa.exists().where(users.c.id == _WATCHED_USERS.c.user_id)
        ),
    )
    .on_conflict_do_update(
        index_elements=[event_watches.c.user_id, event_watches.c.process_id],
        set_={"expires_at": _WATCH_EXPIRY},
    )
)
_EXPIRED_WATCHES = sa.delete(event_watches).where(
    event_watches.c.expires_at < sa.func.statement_timestamp()
)
_FORGET_PROCESS = sa.delete(event_watches).where(event_watches.c.process_id == _PROCESS)
# FOR SHARE: waits for a write of this user that holds the counter (see `watch`).
_SEQUENCE = sa.select(users.c.change_seq).where(_OWNER).with_for_update(read=True)


async def watch(db: Database, *, user_id: str, email: str | None, process_id: uuid.UUID) -> int:
    """An events stream of the user starts in this process (whose listener is connected):
    the user's change_seq to start from, read after this process's watch is in place.

    One transaction: provision the user, upsert the watch, read the counter FOR SHARE. A
    concurrent write W either took the counter first, and the FOR SHARE read waits for W's
    commit (the stream starts at or after W, so the client's first sync has it), or W's
    UPDATE of the counter waits for this transaction, and W's watch check, a later statement,
    sees the committed watch and NOTIFYs. SQLite (no NOTIFY, one process): no watch needed.
    """
    parameters = owner_parameters(user_id, utcnow(), email) | {
        "user_ids": [user_id],
        "process_id": process_id,
    }

    async def work(session: Session) -> int:
        await provision(session, db.dialect, parameters)
        if db.dialect == "postgresql":
            await session.rows(_REFRESH_WATCHES, parameters)
        rows = await session.rows(_SEQUENCE, parameters)
        return int(rows[0][0])

    return await db.transaction(work, idempotent=True)


async def refresh_watches(db: Database, *, user_ids: list[str], process_id: uuid.UUID) -> None:
    """Keep this process's watches of `user_ids` (its streams' users) live."""
    if db.dialect == "postgresql" and user_ids:
        parameters = {"user_ids": user_ids, "process_id": process_id}
        await db.rows(_REFRESH_WATCHES, parameters, idempotent=True)


async def forget_watches(db: Database, *, process_id: uuid.UUID) -> None:
    """This process streams no more (shutdown): its writes need not NOTIFY for it."""
    if db.dialect == "postgresql":
        await db.rows(_FORGET_PROCESS, {"process_id": process_id}, idempotent=True)
