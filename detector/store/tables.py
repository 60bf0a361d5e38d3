"""SQLAlchemy table definitions of the store; Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "Blob",
    "Id",
    "JsonType",
    "MaintenanceWindowRow",
    "ModelVersionRow",
    "NullableJson",
    "OutlierRow",
    "RecordRow",
    "RejectRow",
    "TrainingRunRow",
    "UTCDateTime",
    "WatermarkRow",
]

Id = BigInteger().with_variant(Integer(), "sqlite")
JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")
NullableJson = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")  # None -> NULL
Blob = LargeBinary().with_variant(postgresql.BYTEA(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every back end (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class RecordRow(Base):
    """One accepted record; state goes pending -> scored."""

    __tablename__ = "records"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    detector: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    key: Mapped[str | None] = mapped_column(String(256))
    fields: Mapped[dict[str, Any]] = mapped_column(JsonType)
    source: Mapped[str] = mapped_column(String(32))
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="pending")
    score: Mapped[float | None] = mapped_column(Float)
    is_outlier: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version_id: Mapped[int | None] = mapped_column(Id, ForeignKey("model_versions.id", ondelete="SET NULL"))
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ood: Mapped[dict[str, Any] | None] = mapped_column(NullableJson)

    __table_args__ = (
        Index(None, "detector", "state", "id"),
        Index(None, "detector", "ts"),
    )


class RejectRow(Base):
    """A record (or a whole body or file) that was refused, with the reason."""

    __tablename__ = "rejects"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    detector: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str | None] = mapped_column(String(512))
    record_index: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "detector", "received_at"),)


class ModelVersionRow(Base):
    """An immutable trained model: safetensors weights plus JSON metadata."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    detector: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    n_records: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    weights: Mapped[bytes] = mapped_column(Blob)
    meta: Mapped[dict[str, Any]] = mapped_column(JsonType)

    __table_args__ = (UniqueConstraint("detector", "version"), Index(None, "detector", "status"))


class OutlierRow(Base):
    """A record whose score passed the threshold, with what the model expected instead."""

    __tablename__ = "outliers"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    record_id: Mapped[int | None] = mapped_column(Id, ForeignKey("records.id", ondelete="SET NULL"))
    detector: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    key: Mapped[str | None] = mapped_column(String(256))
    fields: Mapped[dict[str, Any]] = mapped_column(JsonType)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_version_id: Mapped[int] = mapped_column(Id, ForeignKey("model_versions.id"))
    contributions: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    expected: Mapped[dict[str, Any]] = mapped_column(JsonType)
    review_state: Mapped[str] = mapped_column(String(16), default="unreviewed")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ood: Mapped[dict[str, Any] | None] = mapped_column(NullableJson)
    review_note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "detector", "ts"), Index(None, "record_id"), Index(None, "detector", "review_state"))


class MaintenanceWindowRow(Base):
    """A declared time range of a detector whose records are neither flagged nor used for training."""

    __tablename__ = "maintenance_windows"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    detector: Mapped[str] = mapped_column(String(64))
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    end: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "detector", "start"),)


class TrainingRunRow(Base):
    """One attempt to train a model, whatever its result."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    detector: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    n_records: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    model_version_id: Mapped[int | None] = mapped_column(Id, ForeignKey("model_versions.id", ondelete="SET NULL"))
    diversity: Mapped[dict[str, Any] | None] = mapped_column(NullableJson)

    __table_args__ = (Index(None, "detector", "started_at"),)


class WatermarkRow(Base):
    """How far a pulling source has read, so a restart resumes without gaps or duplicates."""

    __tablename__ = "watermarks"
    detector: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
