"""The change sequence (sync feed): `change_seq` on users, tasks, lists and labels, tombstones
of deletes, and event stream tickets (see todo_api.tables.changes).

Existing rows keep change_seq 0: a sync without a token sends them, and every later write
takes a value above every token issued so far. On PostgreSQL the columns are catalog-only
changes (constant defaults) and the indexes are built CONCURRENTLY when batched.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.platform.database.migrate import batched_migration
from todo_api.platform.database.types import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Table -> the kind its rows are in the feed.
KINDS = {"tasks": "task", "lists": "list", "labels": "label"}
INDEXES = {f"ix_{table}_user_id_change_seq_id": table for table in KINDS}

PG_FUNCTIONS = (
    # The transaction's value for `owner`: the counter is bumped (and its row locked until
    # commit) by the first write of the transaction, which also queues the NOTIFY; later rows
    # of the same transaction reuse it. Remembered as "<seq> <user_id>" (user ids have no
    # whitespace) in a transaction-local setting, which also works through PgBouncer.
    """
CREATE FUNCTION change_seq_of(owner text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    remembered text := current_setting('todo_api.change_seq', true);
    seq bigint;
BEGIN
    IF remembered IS NOT NULL AND remembered <> ''
            AND substr(remembered, strpos(remembered, ' ') + 1) = owner THEN
        RETURN split_part(remembered, ' ', 1)::bigint;
    END IF;
    UPDATE users SET change_seq = change_seq + 1 WHERE id = owner RETURNING change_seq INTO seq;
    IF seq IS NULL THEN
        RETURN 0;  -- no such user: the row's foreign key refuses it, naming itself
    END IF;
    PERFORM set_config('todo_api.change_seq', seq || ' ' || owner, true);
    PERFORM pg_notify('todo_api_changes', seq || ' ' || owner);
    RETURN seq;
END $$""",
    """
CREATE FUNCTION change_stamped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_seq := change_seq_of(NEW.user_id);
    RETURN NEW;
END $$""",
    # Once per statement: deleting a list (and so its tasks) may remove thousands of rows.
    # A user's own deletion (its rows go by cascade) leaves nothing to sync to.
    """
CREATE FUNCTION tombstones_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tombstones (user_id, kind, id, change_seq, deleted_at)
    SELECT user_id, TG_ARGV[0], id, change_seq_of(user_id), now() FROM old_rows
    WHERE EXISTS (SELECT FROM users WHERE users.id = old_rows.user_id)
    ON CONFLICT (user_id, kind, id)
    DO UPDATE SET change_seq = EXCLUDED.change_seq, deleted_at = EXCLUDED.deleted_at;
    RETURN NULL;
END $$""",
)


STAMP_IDEMPOTENCY_KEYS = (
    "CREATE TRIGGER idempotency_keys_change_stamped BEFORE INSERT OR UPDATE ON idempotency_keys "
    "FOR EACH ROW EXECUTE FUNCTION change_stamped()"
)


def _pg_triggers(table: str) -> tuple[str, str]:
    return (
        f"CREATE TRIGGER {table}_change_stamped BEFORE INSERT OR UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION change_stamped()",
        f"CREATE TRIGGER {table}_tombstones AFTER DELETE ON {table} REFERENCING OLD TABLE AS "
        f"old_rows FOR EACH STATEMENT EXECUTE FUNCTION tombstones_left('{KINDS[table]}')",
    )


# SQLite has one writer at a time and no transaction-local state: `change_pending` holds the
# value the current write transaction took, per user; the app empties it when each write
# transaction begins (todo_api.tables.changes.TRANSACTION_SETUP).
SQLITE_PENDING = "(SELECT seq FROM change_pending WHERE user_id = {owner})"


def _sqlite_triggers(table: str) -> tuple[str, ...]:
    # The statement wrote the transaction's value into the row (next_change_seq); the counter
    # follows, and the value is remembered for the rest of the transaction. An update that did
    # not take a new value is a bug: refused.
    follow = (
        "UPDATE users SET change_seq = NEW.change_seq "
        "WHERE id = NEW.user_id AND change_seq < NEW.change_seq; "
        "INSERT OR IGNORE INTO change_pending (user_id, seq) VALUES (NEW.user_id, NEW.change_seq);"
    )
    pending = SQLITE_PENDING.format(owner="OLD.user_id")
    now = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    return (
        f"CREATE TRIGGER {table}_change_required BEFORE UPDATE ON {table} "
        "WHEN NEW.change_seq <= OLD.change_seq AND NEW.change_seq IS NOT "
        f"{SQLITE_PENDING.format(owner='NEW.user_id')} BEGIN "
        f"SELECT RAISE(ABORT, '{table}: a write must take the next change_seq'); END",
        f"CREATE TRIGGER {table}_change_counted AFTER INSERT ON {table} BEGIN {follow} END",
        f"CREATE TRIGGER {table}_change_counted_on_update AFTER UPDATE ON {table} "
        f"BEGIN {follow} END",
        f"CREATE TRIGGER {table}_tombstones AFTER DELETE ON {table} BEGIN "
        "INSERT OR REPLACE INTO tombstones (user_id, kind, id, change_seq, deleted_at) "
        f"SELECT OLD.user_id, '{KINDS[table]}', OLD.id, coalesce({pending}, change_seq + 1), "
        f"{now} FROM users WHERE id = OLD.user_id; "
        "UPDATE users SET change_seq = change_seq + 1 "
        f"WHERE id = OLD.user_id AND {pending} IS NULL; "
        "INSERT OR IGNORE INTO change_pending (user_id, seq) "
        "SELECT id, change_seq FROM users WHERE id = OLD.user_id; END",
    )


def _sqlite_trigger_names(table: str) -> tuple[str, ...]:
    return tuple(
        f"{table}_{suffix}"
        for suffix in ("change_required", "change_counted", "change_counted_on_update",
                       "tombstones")
    )  # fmt: skip


def _create_tables() -> None:
    op.create_table(
        "tombstones",
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_tombstones_user_id_users"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "kind", "id", name="pk_tombstones"),
        sa.CheckConstraint("kind IN ('label', 'list', 'task')", name="ck_tombstones_kind"),
    )
    op.create_index("ix_tombstones_user_id_change_seq", "tombstones", ["user_id", "change_seq"])
    op.create_index("ix_tombstones_deleted_at", "tombstones", ["deleted_at"])
    op.create_table(
        "event_tickets",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_event_tickets_user_id_users"),
            nullable=False,
        ),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_event_tickets"),
    )
    op.create_index("ix_event_tickets_expires_at", "event_tickets", ["expires_at"])
    op.create_table(
        "change_pending",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_change_pending"),
    )


def _columns() -> None:
    for name in ("change_seq", "sync_floor"):
        with op.batch_alter_table("users") as batch:
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
    for table in (*KINDS, "idempotency_keys"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("change_seq", sa.BigInteger(), server_default="0", nullable=False)
            )


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql and _exists("SELECT 1 FROM pg_tables WHERE tablename = 'tombstones'"):
        pass  # a batched run cut short after its DDL: only the indexes may be missing
    else:
        _columns()
        _create_tables()
        if postgresql:
            for statement in PG_FUNCTIONS:
                op.execute(statement)
        for table in KINDS:
            for statement in _pg_triggers(table) if postgresql else _sqlite_triggers(table):
                op.execute(statement)
        if postgresql:  # a keyed create's claim takes the create's value (for its replays)
            op.execute(STAMP_IDEMPOTENCY_KEYS)
    if not postgresql:
        for name, table in INDEXES.items():
            op.create_index(name, table, ["user_id", "change_seq", "id"])
        return
    batched = batched_migration()
    concurrently = "CONCURRENTLY " if batched else ""

    def create_indexes() -> None:
        for name, table in INDEXES.items():
            if _exists(
                "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid "
                f"WHERE relname = '{name}' AND NOT indisvalid"
            ):
                op.execute(f"DROP INDEX {concurrently}{name}")
            op.execute(
                f"CREATE INDEX {concurrently}IF NOT EXISTS {name} "
                f"ON {table} (user_id, change_seq, id)"
            )

    if batched:
        with op.get_context().autocommit_block():
            create_indexes()
    else:
        create_indexes()


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, table in INDEXES.items():
        op.drop_index(name, table_name=table)
    for table in KINDS:
        if postgresql:
            op.execute(f"DROP TRIGGER {table}_change_stamped ON {table}")
            op.execute(f"DROP TRIGGER {table}_tombstones ON {table}")
        else:
            for name in _sqlite_trigger_names(table):
                op.execute(f"DROP TRIGGER {name}")
    if postgresql:
        op.execute("DROP TRIGGER idempotency_keys_change_stamped ON idempotency_keys")
        for function in ("tombstones_left()", "change_stamped()", "change_seq_of(text)"):
            op.execute(f"DROP FUNCTION {function}")
    op.drop_table("change_pending")
    op.drop_table("event_tickets")
    op.drop_table("tombstones")
    # ALTER TABLE … DROP COLUMN on both (SQLite >= 3.35): a batch copy of `tasks` would drop
    # migration 0004's triggers with the old table.
    for table, column in (
        *((table, "change_seq") for table in (*KINDS, "idempotency_keys")),
        ("users", "sync_floor"),
        ("users", "change_seq"),
    ):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def _exists(query: str) -> bool:
    return op.get_bind().execute(sa.text(query)).first() is not None
