"""Review verdicts on outliers (note, reviewer, time) and maintenance windows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from detector.store.tables import Id, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outliers") as batch:
        batch.add_column(sa.Column("review_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviewer", sa.String(128), nullable=True))
        batch.add_column(sa.Column("reviewed_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_outliers_detector_review_state", ["detector", "review_state"])
    op.create_table(
        "maintenance_windows",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("start", UTCDateTime(), nullable=False),
        sa.Column("end", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_maintenance_windows"),
    )
    op.create_index("ix_maintenance_windows_detector_start", "maintenance_windows", ["detector", "start"])


def downgrade() -> None:
    op.drop_table("maintenance_windows")
    with op.batch_alter_table("outliers") as batch:
        batch.drop_index("ix_outliers_detector_review_state")
        batch.drop_column("reviewed_at")
        batch.drop_column("reviewer")
        batch.drop_column("review_note")
