"""Event watches: a write sends its NOTIFY only when a process streams its user's events.

NOTIFY makes every committing transaction that sent one take a database-wide lock in turn
(held through its WAL flush), which cost the write benchmark 16-36% with nobody listening.
Each process with an open events stream of a user keeps a row in `event_watches` fresh;
`change_seq_of` checks it once per transaction, after it holds the user's counter (so a
stream that starts concurrently either is seen or waits for the write: see
todo_api.sync.repository.watch). Table and function only: nothing is rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.platform.database.types import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _change_seq_of(notify: str) -> str:
    # As in 0005 (see there), but for the NOTIFY.
    return f"""
CREATE OR REPLACE FUNCTION change_seq_of(owner text) RETURNS bigint LANGUAGE plpgsql AS $$
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
    {notify}
    RETURN seq;
END $$"""


# A statement of its own in a volatile function: in READ COMMITTED it sees every watch
# committed before it starts, which is after this transaction took the counter's row lock.
WATCHED_NOTIFY = """IF EXISTS (SELECT FROM event_watches
               WHERE user_id = owner AND expires_at > statement_timestamp()) THEN
        PERFORM pg_notify('todo_api_changes', seq || ' ' || owner);
    END IF;"""
ALWAYS_NOTIFY = "PERFORM pg_notify('todo_api_changes', seq || ' ' || owner);"


def upgrade() -> None:
    op.create_table(
        "event_watches",
        sa.Column(
            "user_id",
            sa.String(128),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_event_watches_user_id_users"),
            nullable=False,
        ),
        sa.Column("process_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "process_id", name="pk_event_watches"),
    )
    op.create_index("ix_event_watches_expires_at", "event_watches", ["expires_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_change_seq_of(WATCHED_NOTIFY))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_change_seq_of(ALWAYS_NOTIFY))
    op.drop_index("ix_event_watches_expires_at", table_name="event_watches")
    op.drop_table("event_watches")
