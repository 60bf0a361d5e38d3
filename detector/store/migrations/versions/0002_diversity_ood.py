"""Diversity report on training runs; out-of-distribution notes on scored records and outliers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from detector.store.tables import JsonType

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("diversity", JsonType, nullable=True))
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("ood", JsonType, nullable=True))
    with op.batch_alter_table("outliers") as batch:
        batch.add_column(sa.Column("ood", JsonType, nullable=True))


def downgrade() -> None:
    for table in ("outliers", "records", "training_runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("ood" if table != "training_runs" else "diversity")
