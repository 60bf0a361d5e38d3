"""Initial store: records, rejects, model versions, outliers, training runs, watermarks.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from detector.store.tables import Blob, Id, JsonType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("window_start", UTCDateTime(), nullable=True),
        sa.Column("window_end", UTCDateTime(), nullable=True),
        sa.Column("n_records", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("weights", Blob, nullable=False),
        sa.Column("meta", JsonType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("detector", "version", name="uq_model_versions_detector_version"),
    )
    op.create_index("ix_model_versions_detector_status", "model_versions", ["detector", "status"])
    op.create_table(
        "records",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("key", sa.String(256), nullable=True),
        sa.Column("fields", JsonType, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("is_outlier", sa.Boolean(), nullable=False),
        sa.Column("model_version_id", Id, nullable=True),
        sa.Column("scored_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_records"),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"],
            name="fk_records_model_version_id_model_versions", ondelete="SET NULL",
        ),
    )
    op.create_index("ix_records_detector_state_id", "records", ["detector", "state", "id"])
    op.create_index("ix_records_detector_ts", "records", ["detector", "ts"])
    op.create_table(
        "rejects",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(512), nullable=True),
        sa.Column("record_index", sa.Integer(), nullable=True),
        sa.Column("field", sa.String(256), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejects"),
    )
    op.create_index("ix_rejects_detector_received_at", "rejects", ["detector", "received_at"])
    op.create_table(
        "outliers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("record_id", Id, nullable=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("key", sa.String(256), nullable=True),
        sa.Column("fields", JsonType, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version_id", Id, nullable=False),
        sa.Column("contributions", JsonType, nullable=False),
        sa.Column("expected", JsonType, nullable=False),
        sa.Column("review_state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outliers"),
        sa.ForeignKeyConstraint(
            ["record_id"], ["records.id"], name="fk_outliers_record_id_records", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name="fk_outliers_model_version_id_model_versions"
        ),
    )
    op.create_index("ix_outliers_detector_ts", "outliers", ["detector", "ts"])
    op.create_index("ix_outliers_record_id", "outliers", ["record_id"])
    op.create_table(
        "training_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("n_records", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("model_version_id", Id, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"],
            name="fk_training_runs_model_version_id_model_versions", ondelete="SET NULL",
        ),
    )
    op.create_index("ix_training_runs_detector_started_at", "training_runs", ["detector", "started_at"])
    op.create_table(
        "watermarks",
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("detector", "name", name="pk_watermarks"),
    )


def downgrade() -> None:
    for table in ("watermarks", "training_runs", "outliers", "rejects", "records", "model_versions"):
        op.drop_table(table)
