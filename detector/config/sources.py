"""The `[detectors.NAME.source]` sections: one model per source type, chosen by its `type` key."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from detector.config.base import Duration, PositiveDuration, Section, parse_duration

__all__ = [
    "DemoSourceConfig",
    "FileSourceConfig",
    "HttpSourceConfig",
    "OtlpSourceConfig",
    "PrometheusSourceConfig",
    "SourceConfig",
    "SqlSourceConfig",
]

class DemoSourceConfig(Section):
    type: Literal["demo"]
    hosts: int = Field(default=4, ge=1, le=100)
    step: PositiveDuration = Field(default=60.0)
    seed: int = 7
    incident_rate: float = Field(default=0.02, ge=0.0, lt=0.5)
    history: Duration = Field(default=86400.0, ge=0)
    speed: float = Field(default=12.0, gt=0)
    poll_interval: PositiveDuration = Field(default=5.0)


class HttpSourceConfig(Section):
    type: Literal["http"]


class OtlpSourceConfig(Section):
    type: Literal["otlp"]
    key_attributes: tuple[str, ...] = ()       # attributes whose values, joined by "/", form the record key
    ignore_attributes: tuple[str, ...] = ()    # attributes left out of feature names (high-cardinality ones)
    align: PositiveDuration = Field(default=1.0)   # points within one such step form one record


class FileSourceConfig(Section):
    type: Literal["file"]
    path: Path
    format: Literal["auto", "csv", "parquet", "ndjson"] = "auto"
    poll_interval: PositiveDuration = Field(default=5.0)
    settle: Duration = Field(default=2.0, ge=0)


class PrometheusSourceConfig(Section):
    type: Literal["prometheus"]
    url: str
    queries: dict[str, str]
    step: PositiveDuration = Field(default=60.0)
    key_label: str | None = None
    lag: Duration = Field(default=30.0, ge=0)
    backfill: Duration = Field(default=86400.0, ge=0)
    poll_interval: PositiveDuration = Field(default=30.0)
    timeout: PositiveDuration = Field(default=10.0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL of the Prometheus server")
        return value

    @field_validator("queries")
    @classmethod
    def _some_queries(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("give at least one PromQL expression: queries = { name = 'expr' }")
        for name, expr in value.items():
            if not expr.strip():
                raise ValueError(f"query {name!r} is empty")
        return value


_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,127}$")


class SqlSourceConfig(Section):
    type: Literal["sql"]
    url: str
    table: str | None = None
    query: str | None = Field(default=None, validate_default=True)
    order_column: str
    batch_size: int = Field(default=5000, gt=0)
    max_batches: int = Field(default=20, gt=0)
    poll_interval: PositiveDuration = Field(default=10.0)
    timeout: PositiveDuration = Field(default=10.0)
    initial: datetime | int | str | None = None

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value).get_dialect().import_dbapi()
        except ArgumentError as exc:
            raise ValueError(f"not a usable SQLAlchemy URL: {exc}") from None
        except ImportError as exc:
            raise ValueError(f"the database driver of this URL is not installed: {exc}") from None
        return value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is not None:
            parts = value.split(".")
            if len(parts) > 2 or not all(_SQL_IDENTIFIER.match(part) for part in parts):
                raise ValueError("must be a table name (letters, digits, '_', '$'), optionally schema.table")
        return value

    @field_validator("query")
    @classmethod
    def _table_or_query(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "table" not in info.data:        # table itself is invalid (and reported)
            return value
        if value is not None and info.data["table"] is not None:
            raise ValueError("set either table or query, not both")
        if value is None and info.data["table"] is None:
            raise ValueError("set table = 'name' or query = 'SELECT ...'")
        if value is not None:
            value = value.strip().removesuffix(";").rstrip()
            if not re.match(r"(?is)^(select|with)\b", value):
                raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
        return value

    @field_validator("order_column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not _SQL_IDENTIFIER.match(value):
            raise ValueError("must be a column name (letters, digits, '_', '$')")
        return value

    @field_validator("initial", mode="before")
    @classmethod
    def _initial(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("initial is a duration back from now ('7d'), an ISO time, or an integer")
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError:
                try:
                    datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                except ValueError:
                    raise ValueError("initial is a duration back from now ('7d'), an ISO time, "
                                     "or an integer") from None
        return value

SourceConfig = Annotated[
    DemoSourceConfig | HttpSourceConfig | OtlpSourceConfig | FileSourceConfig | PrometheusSourceConfig
    | SqlSourceConfig,
    Field(discriminator="type"),
]
