"""Task versions (ETags), sort indexes, trigram search, idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.platform.database.types import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGRAM_INDEXES = {
    "ix_tasks_title_trgm": "title",
    "ix_tasks_description_trgm": "description",
}


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_index("ix_tasks_user_id_updated_at_id", "tasks", ["user_id", "updated_at", "id"])
    op.create_index("ix_tasks_user_id_title_id", "tasks", ["user_id", "title", "id"])
    if op.get_bind().dialect.name == "postgresql":
        # Makes `q` (ILIKE '%…%') an index search instead of a scan of the user's tasks.
        # pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, column in TRIGRAM_INDEXES.items():
            op.create_index(
                name,
                "tasks",
                [column],
                postgresql_using="gin",
                postgresql_ops={column: "gin_trgm_ops"},
            )
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_idempotency_keys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    if op.get_bind().dialect.name == "postgresql":
        for name in TRIGRAM_INDEXES:
            op.drop_index(name, table_name="tasks")
    op.drop_index("ix_tasks_user_id_title_id", table_name="tasks")
    op.drop_index("ix_tasks_user_id_updated_at_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("version")
