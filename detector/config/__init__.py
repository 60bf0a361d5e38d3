"""Load and validate config.toml: one frozen, strict pydantic model per section.

This package is the one place that reads TOML. `base` holds durations and the section base model,
`sources` the `[source]` sections, `detectors` a detector's other sections; this module the top-level
sections, `Config` and `load_config`, and it is where the rest of the daemon imports them from.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from detector.allocator import DEFAULT_CACHE_MIB, MAX_CACHE_MIB
from detector.config.base import PositiveDuration, Section, parse_duration
from detector.config.detectors import (
    AlertingConfig,
    DetectorConfig,
    DiversityConfig,
    FeatureConfig,
    FloorConfig,
    ModelConfig,
    ReviewConfig,
    ScoringConfig,
    ThresholdConfig,
    TrainingConfig,
)
from detector.config.sources import (
    DemoSourceConfig,
    FileSourceConfig,
    HttpSourceConfig,
    PrometheusSourceConfig,
    SourceConfig,
    SqlSourceConfig,
)
from detector.errors import ConfigError

__all__ = [
    "AlertingConfig",
    "Config",
    "DaemonConfig",
    "DemoSourceConfig",
    "DetectorConfig",
    "DiversityConfig",
    "FeatureConfig",
    "FileSourceConfig",
    "FloorConfig",
    "HttpConfig",
    "HttpSourceConfig",
    "ModelConfig",
    "PrometheusSourceConfig",
    "ReviewConfig",
    "ScoringConfig",
    "SourceConfig",
    "SqlSourceConfig",
    "StoreConfig",
    "ThresholdConfig",
    "TrainingConfig",
    "load_config",
    "parse_duration",
    "require_detectors",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_HOST_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


class DaemonConfig(Section):
    state_dir: Path = Field(default=Path("state"))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    torch_threads: int = Field(default=1, ge=0)
    malloc_cache_mib: int = Field(default=DEFAULT_CACHE_MIB, ge=0, le=MAX_CACHE_MIB)


class StoreConfig(Section):
    url: str | None = None
    retention: PositiveDuration = Field(default=7 * 86400.0)
    reject_retention: PositiveDuration = Field(default=7 * 86400.0)
    retention_interval: PositiveDuration = Field(default=3600.0)
    keep_model_versions: int = Field(default=10, ge=1)
    # how long a write waits for the store (SQLite: its write lock) before it gives up (HTTP ingest: 503)
    write_timeout: PositiveDuration = Field(default=5.0, le=600.0)
    # SQLite: "full" syncs each commit to disk; "normal" may lose the last commits to a power failure or OS crash
    sqlite_synchronous: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value


def _host_name(name: str) -> str:
    if not _HOST_NAME.match(name):
        raise ValueError(f"{name!r} is not a host name: letters, digits, '-' and '.', optionally starting with "
                         "'*.' (any subdomain), without a port or a scheme")
    return name.lower()


HostName = Annotated[str, AfterValidator(_host_name)]


class HttpConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_batch_records: int = Field(default=10_000, gt=0)
    token_file: Path = Field(default=Path("api-token"))
    read_requires_token: bool = False
    # how long the answer to a batch sent with an Idempotency-Key is kept, to answer a retry without storing twice
    idempotency_key_ttl: PositiveDuration = Field(default=86400.0, le=30 * 86400.0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    header_timeout: PositiveDuration = Field(default=10.0)
    body_timeout: PositiveDuration = Field(default=60.0)
    allowed_hosts: list[HostName] = Field(default_factory=list)
    api_docs: bool = False

    @property
    def binds_loopback(self) -> bool:
        """Whether `host` is a loopback address (or `localhost`): nothing outside this machine can connect."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def exposure_warnings(self) -> list[str]:
        """What an operator should know about where the API listens: empty on loopback."""
        if not self.enabled or self.binds_loopback:
            return []
        clear = ("the bearer token travels in clear text over plain HTTP: put a TLS proxy in front of the API "
                 "or keep it on a trusted network")
        if self.read_requires_token:
            return [f"http.host {self.host!r} is not a loopback address: {clear}"]
        return [f"http.host {self.host!r} is not a loopback address and reads are open "
                "(http.read_requires_token = false): anyone who can reach the port can read every record and "
                f"outlier; set http.read_requires_token = true. Also, {clear}"]


class Config(Section):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    detectors: dict[str, DetectorConfig] = Field(default_factory=dict)

    @field_validator("detectors")
    @classmethod
    def _detector_names(cls, value: dict[str, DetectorConfig]) -> dict[str, DetectorConfig]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"detector name {name!r} must be lower case letters, digits, '-' or '_', "
                    "starting with a letter, at most 64 characters"
                )
        return value

    @property
    def store_url(self) -> str:
        """The SQLAlchemy URL of the store: the configured one, else SQLite under state_dir."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{self.daemon.state_dir / 'vigil.db'}"

    @property
    def token_path(self) -> Path:
        return self.http.token_file


def _key_path(loc: tuple[int | str, ...], raw: Any, missing: bool) -> str:
    """The dotted key of an error in the file: union branch labels in `loc` (a source's
    `type` tag such as "http", or "FeatureConfig") are not keys of the input and are skipped."""
    keys, node = [], raw
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            keys.append(str(part))
            node = node[part]
        elif missing and i == len(loc) - 1:
            keys.append(str(part))
    return ".".join(keys)


def _format_errors(exc: ValidationError, raw: Any) -> str:
    parts = []
    for error in exc.errors():
        loc = _key_path(error["loc"], raw, error["type"] == "missing")
        if error["type"] == "extra_forbidden":
            msg = "unknown key"
        elif error["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = str(error["msg"]).removeprefix("Value error, ")
            secret = loc.rsplit(".", 1)[-1] in ("url", "password", "token")   # may hold a password
            table = isinstance(error.get("input"), dict)      # a whole table: the message names what is wrong
            if "input" in error and error["type"] not in ("model_type", "dict_type") and not secret and not table:
                msg += f" (got {error['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _resolve_sqlite_url(base: Path, url: str) -> str:
    """A SQLite URL whose relative file path is taken from `base`; other URLs unchanged."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str(base / database)).render_as_string(hide_password=False)


def _resolve_paths(config: Config, base: Path) -> Config:
    state_dir = _resolve(base, config.daemon.state_dir)
    url = config.store.url
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = f"sqlite:///{_resolve(base, Path(url.removeprefix('sqlite:///')))}"
    detectors = {}
    for name, det in config.detectors.items():
        if isinstance(det.source, FileSourceConfig):
            folder = _resolve(base, det.source.path)
            if not folder.is_dir():
                raise ConfigError(base, f"detectors.{name}.source.path: directory {folder} not found")
            det = det.model_copy(update={"source": det.source.model_copy(update={"path": folder})})
        elif isinstance(det.source, SqlSourceConfig):
            source_url = _resolve_sqlite_url(base, det.source.url)
            det = det.model_copy(update={"source": det.source.model_copy(update={"url": source_url})})
        detectors[name] = det
    return config.model_copy(
        update={
            "daemon": config.daemon.model_copy(update={"state_dir": state_dir}),
            "store": config.store.model_copy(update={"url": url}),
            "http": config.http.model_copy(update={"token_file": _resolve(state_dir, config.http.token_file)}),
            "detectors": detectors,
        }
    )


def load_config(path: Path | str) -> Config:
    """Read, validate and resolve a config file; relative paths are taken from the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(path, f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line {line} "
                                f"(save the file as UTF-8)") from None
    try:
        raw = tomllib.loads(text)
        config = Config.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(path, _format_errors(exc, raw)) from None
    try:
        return _resolve_paths(config, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(path, exc.problem) from None


def require_detectors(config: Config, path: Path | str) -> None:
    """`ConfigError` when `config` has no detector: a daemon on it would watch nothing (and a reload to it
    would remove every running detector)."""
    if not config.detectors:
        raise ConfigError(path, "no detectors: add at least one [detectors.NAME] section (see README, "
                                "Configuration)")
