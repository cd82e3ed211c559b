"""Tasks remember when they were completed (`completed_at`), sortable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.platform.database.types import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("completed_at", UTCDateTime(), nullable=True))
    # Tasks completed before this column existed: their last change is the best estimate.
    op.execute("UPDATE tasks SET completed_at = updated_at WHERE completed")
    op.create_index("ix_tasks_user_id_completed_at_id", "tasks", ["user_id", "completed_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_user_id_completed_at_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("completed_at")
