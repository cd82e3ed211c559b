"""Lists (with each user's inbox), labels, due dates, priority, manual order, task quota counts;
search indexes that lead with the owner.

Existing tasks move into their user's inbox, positioned in today's default order (newest
first). On a direct PostgreSQL connection (`migrate.batched_migration()`) the work is split so
that no lock blocking reads is held for long: the new columns are added in a short
transaction (metadata only: no table rewrite), the data is filled in batches of users that
each commit, indexes are built CONCURRENTLY, and constraints are added NOT VALID and then
validated (which blocks neither reads nor writes). Elsewhere (SQLite, or through a
transaction-mode pooler) the same steps run in one transaction.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

from todo_api.platform.database.migrate import batched_migration
from todo_api.platform.database.types import UTCDateTime
from todo_api.tables.lists import INBOX_NAMESPACE, POSITION

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("todo_api.migrate")

USERS_PER_BATCH = 500
TASKS_PER_BATCH = 20_000
INBOX_POSITION = "a000000001V"  # todo_api.platform.positions.ranked(1)
OLD_TRIGRAM_INDEXES = ("ix_tasks_title_trgm", "ix_tasks_description_trgm")
# The owner leads (btree_gin): a search reads only that user's trigram entries, whatever plan
# a prepared statement settles on.
TRIGRAM_INDEXES = {
    "ix_tasks_user_id_title_trgm": "title",
    "ix_tasks_user_id_description_trgm": "description",
}
NEW_INDEXES = {
    "ix_tasks_user_id_priority_id": ("user_id", "priority", "id"),
    "ix_tasks_user_id_due_sort_id": ("user_id", "due_sort", "id"),
}
UNIQUE_INDEXES = {
    "uq_tasks_user_id_id": ("user_id", "id"),
    "uq_tasks_user_id_list_id_position": ("user_id", "list_id", "position"),
}
CHECKS = {
    "ck_tasks_priority_range": "priority BETWEEN 0 AND 3",
    "ck_tasks_due_shape": (
        "(due_time IS NULL OR due_date IS NOT NULL)"
        " AND (due_timezone IS NULL OR due_time IS NOT NULL)"
        " AND ((due_timezone IS NULL) = (due_at IS NULL))"
        " AND ((due_date IS NULL) = (due_sort IS NULL))"
    ),
}

# Task quota counts, kept by the database itself so that no delete path (a cascade from a
# list or a user included) can forget them. SQLite: per row.
PG_TRIGGERS = (
    # A create inserts one row: a row trigger (no transition table to build) is cheapest.
    """
CREATE FUNCTION task_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET task_count = task_count + 1 WHERE id = NEW.user_id;
    RETURN NULL;
END $$""",
    # A delete may remove thousands (a list, the completed ones): once per statement.
    """
CREATE FUNCTION tasks_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET task_count = users.task_count - removed.n
    FROM (SELECT user_id, count(*) AS n FROM old_rows GROUP BY user_id) AS removed
    WHERE users.id = removed.user_id;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks "
    "FOR EACH ROW EXECUTE FUNCTION task_counted()",
    "CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS "
    "old_rows FOR EACH STATEMENT EXECUTE FUNCTION tasks_uncounted()",
)
SQLITE_TRIGGERS = (
    "CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks BEGIN "
    "UPDATE users SET task_count = task_count + 1 WHERE id = NEW.user_id; END",
    "CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks BEGIN "
    "UPDATE users SET task_count = task_count - 1 WHERE id = OLD.user_id; END",
)


def _create_lists_and_labels() -> None:
    def owned(*columns: sa.Column[object]) -> list[sa.Column[object]]:
        return [
            sa.Column("user_id", sa.String(128), nullable=False),
            sa.Column("id", sa.Uuid(), nullable=False),
            *columns,
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
            sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        ]

    def owner_key(table: str) -> list[sa.Constraint]:
        return [
            sa.ForeignKeyConstraint(
                ["user_id"], ["users.id"], name=f"fk_{table}_user_id_users", ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint("user_id", "id", name=f"pk_{table}"),
        ]

    color = "color IS NULL OR (length(color) = 7 AND substr(color, 1, 1) = '#')"
    op.create_table(
        "lists",
        *owned(
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("color", sa.Text(), nullable=True),
            sa.Column("position", POSITION, nullable=False),
            sa.Column("is_inbox", sa.Boolean(), server_default=sa.false(), nullable=False),
        ),
        *owner_key("lists"),
        sa.CheckConstraint(
            "length(trim(name)) >= 1 AND length(name) <= 120", name="ck_lists_name_length"
        ),
        sa.CheckConstraint(color, name="ck_lists_color_format"),
        sa.UniqueConstraint("user_id", "position", name="uq_lists_user_id_position"),
    )
    op.create_index(
        "uq_lists_user_id_inbox",
        "lists",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("is_inbox"),
        sqlite_where=sa.text("is_inbox"),
    )
    op.create_table(
        "labels",
        *owned(
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("name_key", sa.Text(), nullable=False),
            sa.Column("color", sa.Text(), nullable=True),
        ),
        *owner_key("labels"),
        sa.CheckConstraint(
            "length(trim(name)) >= 1 AND length(name) <= 60", name="ck_labels_name_length"
        ),
        sa.CheckConstraint(color, name="ck_labels_color_format"),
        sa.UniqueConstraint("user_id", "name_key", name="uq_labels_user_id_name_key"),
    )


def _create_task_labels() -> None:
    op.create_table(
        "task_labels",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("label_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "task_id", "label_id", name="pk_task_labels"),
        sa.ForeignKeyConstraint(
            ["user_id", "task_id"],
            ["tasks.user_id", "tasks.id"],
            name="fk_task_labels_task",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id", "label_id"],
            ["labels.user_id", "labels.id"],
            name="fk_task_labels_label",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_task_labels_user_id_label_id_task_id",
        "task_labels",
        ["user_id", "label_id", "task_id"],
    )


def _new_task_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("list_id", sa.Uuid(), nullable=True),  # NOT NULL once filled in
        sa.Column("position", POSITION, nullable=True),
        sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("due_time", sa.Time(), nullable=True),
        sa.Column("due_timezone", sa.Text(), nullable=True),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("due_sort", UTCDateTime(), nullable=True),
    ]


def _fill_in(user_ids: list[str], dialect: str) -> None:
    """Give these users an inbox, their tasks its id and positions (newest first), and their
    task counts. One statement each; the users' rows only."""
    bind = op.get_bind()
    now = datetime.now(UTC)
    lists = sa.table(
        "lists",
        sa.column("user_id", sa.String()),
        sa.column("id", sa.Uuid()),
        *(sa.column(name, sa.Text()) for name in ("name", "position")),
        sa.column("is_inbox", sa.Boolean()),
        *(sa.column(name, UTCDateTime()) for name in ("created_at", "updated_at")),
    )
    # Idempotent, like the rest of the fill-in: a run cut short is resumed by running again.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    bind.execute(
        insert(lists).values(created_at=now, updated_at=now).on_conflict_do_nothing(),
        [
            {
                "user_id": user_id,
                "id": uuid.uuid5(INBOX_NAMESPACE, user_id),
                "name": "Inbox",
                "position": INBOX_POSITION,
                "is_inbox": True,
            }
            for user_id in user_ids
        ],
    )
    rank = "lpad(CAST(rn AS text), 9, '0')" if dialect == "postgresql" else "printf('%09d', rn)"
    ids: sa.BindParameter[list[str]] = sa.bindparam("ids", expanding=True)
    bind.execute(
        sa.text(
            f"""
            UPDATE tasks SET list_id = lists.id, position = 'a' || {rank} || 'V'
            FROM (
                SELECT id, row_number() OVER (
                    PARTITION BY user_id ORDER BY created_at DESC, id DESC
                ) AS rn
                FROM tasks WHERE user_id IN :ids
            ) AS ranked, lists
            WHERE tasks.id = ranked.id AND tasks.list_id IS NULL
                AND lists.user_id = tasks.user_id AND lists.is_inbox
            """
        ).bindparams(ids),
        {"ids": user_ids},
    )
    bind.execute(
        sa.text(
            "UPDATE users SET task_count = "
            "(SELECT count(*) FROM tasks WHERE tasks.user_id = users.id) WHERE id IN :ids"
        ).bindparams(ids),
        {"ids": user_ids},
    )


def _fill_in_all(dialect: str) -> None:
    """Batches of whole users holding at most TASKS_PER_BATCH tasks together (a bigger user
    alone), so each UPDATE stays well inside the statement timeout."""
    bind = op.get_bind()
    started, after, moved = time.monotonic(), "", 0
    while True:
        users = bind.execute(
            sa.text(
                "SELECT users.id, (SELECT count(*) FROM tasks WHERE tasks.user_id = users.id) "
                "FROM users WHERE users.id > :after ORDER BY users.id LIMIT :n"
            ),
            {"after": after, "n": USERS_PER_BATCH},
        ).all()
        if not users:
            break
        batch: list[str] = []
        tasks_in_batch = 0
        for user_id, count in users:
            if batch and tasks_in_batch + count > TASKS_PER_BATCH:
                break
            batch.append(user_id)
            tasks_in_batch += count
        _fill_in(batch, dialect)
        after, moved = batch[-1], moved + len(batch)
    log.info(
        "0004: %d users' tasks moved into their inboxes in %.1f s",
        moved,
        time.monotonic() - started,
    )


def _upgrade_sqlite() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False))
        batch.add_column(sa.Column("task_count", sa.Integer(), server_default="0", nullable=False))
    _create_lists_and_labels()
    with op.batch_alter_table("tasks") as batch:
        for column in _new_task_columns():
            batch.add_column(column)
    _fill_in_all("sqlite")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("list_id", existing_type=sa.Uuid(), nullable=False)
        batch.alter_column("position", existing_type=POSITION, nullable=False)
        for name, columns in UNIQUE_INDEXES.items():
            batch.create_unique_constraint(name, list(columns))
        batch.create_foreign_key(
            "fk_tasks_list",
            "lists",
            ["user_id", "list_id"],
            ["user_id", "id"],
            ondelete="CASCADE",
        )
        for name, condition in CHECKS.items():
            batch.create_check_constraint(name.removeprefix("ck_tasks_"), condition)
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, "tasks", list(columns))
    _create_task_labels()
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)


def _upgrade_postgresql() -> None:
    batched = batched_migration()
    context = op.get_context()
    # 1. Short DDL (catalog changes only; ADD COLUMN with a constant default rewrites nothing).
    # Committed on its own when batched: skipped when a run cut short had got past it.
    if not _exists("SELECT 1 FROM pg_tables WHERE tablename = 'lists'"):
        op.add_column(
            "users", sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False)
        )
        op.add_column(
            "users", sa.Column("task_count", sa.Integer(), server_default="0", nullable=False)
        )
        _create_lists_and_labels()
        for column in _new_task_columns():
            op.add_column("tasks", column)
        for statement in PG_TRIGGERS:
            op.execute(statement)
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    concurrently = "CONCURRENTLY " if batched else ""
    if batched:
        # 2. Data and indexes outside any long transaction: each batch commits by itself.
        with context.autocommit_block():
            _fill_in_all("postgresql")
            _create_indexes(concurrently)
    else:
        _fill_in_all("postgresql")
        _create_indexes(concurrently)
    # 3. Constraints: attached to the built indexes, or added NOT VALID and validated (a scan
    # that blocks neither reads nor writes); NOT NULL then trusts the validated CHECK. Batched,
    # each statement commits on its own, so the brief ACCESS EXCLUSIVE of an ADD CONSTRAINT is
    # never held through a validation scan; each is skipped when a cut-short run did it.
    if batched:
        with context.autocommit_block():
            _add_constraints()
    else:
        _add_constraints()
    if not _exists("SELECT 1 FROM pg_tables WHERE tablename = 'task_labels'"):
        _create_task_labels()


FILLED = "ck_tasks_filled_in"


def _constraint_missing(name: str) -> bool:
    return not _exists(f"SELECT 1 FROM pg_constraint WHERE conname = '{name}'")


def _add_constraints() -> None:
    for name in UNIQUE_INDEXES:
        if _constraint_missing(name):
            op.execute(f"ALTER TABLE tasks ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")
    if _constraint_missing("fk_tasks_list"):
        op.execute(
            "ALTER TABLE tasks ADD CONSTRAINT fk_tasks_list FOREIGN KEY (user_id, list_id) "
            "REFERENCES lists (user_id, id) ON DELETE CASCADE NOT VALID"
        )
    checks = CHECKS | {FILLED: "list_id IS NOT NULL AND position IS NOT NULL"}
    not_null_done = not _exists(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'tasks' "
        "AND column_name = 'position' AND is_nullable = 'YES'"
    )
    for name, condition in checks.items():
        if _constraint_missing(name) and not (name == FILLED and not_null_done):
            op.execute(f"ALTER TABLE tasks ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    for name in (*checks, "fk_tasks_list"):
        if not _constraint_missing(name):
            op.execute(f"ALTER TABLE tasks VALIDATE CONSTRAINT {name}")
    op.execute("ALTER TABLE tasks ALTER COLUMN list_id SET NOT NULL")
    op.execute("ALTER TABLE tasks ALTER COLUMN position SET NOT NULL")
    op.execute(f"ALTER TABLE tasks DROP CONSTRAINT IF EXISTS {FILLED}")


def _exists(query: str) -> bool:
    return op.get_bind().execute(sa.text(query)).first() is not None


def _create_indexes(concurrently: str) -> None:
    # An index whose concurrent build was cut short is left INVALID: build it again.
    for name in (*UNIQUE_INDEXES, *NEW_INDEXES, *TRIGRAM_INDEXES):
        if _exists(
            "SELECT 1 FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid "
            f"WHERE relname = '{name}' AND NOT indisvalid"
        ):
            op.execute(f"DROP INDEX {concurrently}{name}")
    for name, columns in UNIQUE_INDEXES.items():
        listed = ", ".join(columns)
        op.execute(f"CREATE UNIQUE INDEX {concurrently}IF NOT EXISTS {name} ON tasks ({listed})")
    for name, columns in NEW_INDEXES.items():
        op.execute(
            f"CREATE INDEX {concurrently}IF NOT EXISTS {name} ON tasks ({', '.join(columns)})"
        )
    for name, column in TRIGRAM_INDEXES.items():
        op.execute(
            f"CREATE INDEX {concurrently}IF NOT EXISTS {name} ON tasks "
            f"USING gin (user_id, {column} gin_trgm_ops)"
        )
    for name in OLD_TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX {concurrently}IF EXISTS {name}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("task_labels")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER tasks_counted_on_insert ON tasks")
        op.execute("DROP TRIGGER tasks_counted_on_delete ON tasks")
        op.execute("DROP FUNCTION task_counted()")
        op.execute("DROP FUNCTION tasks_uncounted()")
        for name in TRIGRAM_INDEXES:
            op.execute(f"DROP INDEX {name}")
        for name, column in zip(OLD_TRIGRAM_INDEXES, ("title", "description"), strict=True):
            op.execute(f"CREATE INDEX {name} ON tasks USING gin ({column} gin_trgm_ops)")
    else:
        op.execute("DROP TRIGGER tasks_counted_on_insert")
        op.execute("DROP TRIGGER tasks_counted_on_delete")
    for name in NEW_INDEXES:
        op.drop_index(name, table_name="tasks")
    if dialect == "postgresql":
        for name in ("fk_tasks_list", *UNIQUE_INDEXES, *CHECKS):
            op.execute(f"ALTER TABLE tasks DROP CONSTRAINT {name}")
        for new_column in _new_task_columns():
            op.drop_column("tasks", new_column.name)
    else:
        with op.batch_alter_table("tasks") as batch:
            batch.drop_constraint("fk_tasks_list", type_="foreignkey")
            for name in UNIQUE_INDEXES:
                batch.drop_constraint(name, type_="unique")
            for check in CHECKS:
                batch.drop_constraint(check.removeprefix("ck_tasks_"), type_="check")
            for new_column in _new_task_columns():
                batch.drop_column(new_column.name)
    op.drop_table("labels")
    op.drop_index("uq_lists_user_id_inbox", table_name="lists")
    op.drop_table("lists")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("task_count")
        batch.drop_column("timezone")
