"""Tests for config loading: durations, strict keys, one-line errors naming the key, path resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from detector.config import FileSourceConfig, load_config, parse_duration
from detector.errors import ConfigError
from training.schema import Feature

from .conftest import HTTP_DETECTOR

SHIPPED = Path(__file__).parents[2] / "config.toml"

WriteConfig = Callable[..., Path]

# A minimal detector; the cases below add or replace lines of it.
BASE = """
[detectors.web]
source = { type = "http" }
key_field = "host"

[detectors.web.features]
load = "numeric"
"""


@pytest.fixture
def write_raw(tmp_path: Path) -> Callable[[str], Path]:
    """Write exactly `text` (no [daemon]/[http] head, so a case may set those tables itself)."""

    def write(text: str) -> Path:
        path = tmp_path / "raw.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    return info.value


def test_shipped_config_loads_with_demo_detector() -> None:
    config = load_config(SHIPPED)
    assert list(config.detectors) == ["demo"]
    demo = config.detectors["demo"]
    assert demo.source.type == "demo"
    assert demo.key_field == "host"
    assert config.daemon.state_dir == SHIPPED.parent / "state"
    assert config.store.retention == 7 * 86400.0
    assert demo.training.interval == 30 * 60.0
    assert demo.scoring.interval == 5.0
    assert "categorical" in {f.kind for f in demo.feature_schema.features}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("7d", 604800.0), ("1w", 604800.0),
     ("1.5h", 5400.0), (" 10 ", 10.0), (45, 45.0), (0.25, 0.25)],
    ids=["ms", "s", "m", "h", "d", "w", "fraction", "bare-string", "int", "float"],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5x", "", "-5s", "s", "5 mins", True, None, [5]],
                         ids=["unit", "empty", "negative", "no-number", "word", "bool", "none", "list"])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_durations_in_config(write_config: WriteConfig) -> None:
    config = load_config(write_config(BASE + """
        [detectors.web.training]
        interval = "2h"
        window = "7d"

        [detectors.web.scoring]
        interval = "500ms"

        [store]
        retention = 3600
    """))
    det = config.detectors["web"]
    assert det.training.interval == 7200.0
    assert det.training.window == 7 * 86400.0
    assert det.scoring.interval == 0.5
    assert config.store.retention == 3600.0


@pytest.mark.parametrize(
    ("extra", "key"),
    [("[detectors.web.scoring]\ninterval = '5x'\n", "detectors.web.scoring.interval"),
     ("[detectors.web.training]\nwindow = '0s'\n", "detectors.web.training.window"),
     ("[store]\nretention = true\n", "store.retention")],
    ids=["bad-unit", "zero", "bool"],
)
def test_bad_duration_names_key(write_raw: WriteConfig, extra: str, key: str) -> None:
    error = _error(write_raw(BASE + extra))
    assert f"{key}:" in str(error)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("bogus = 1\n" + BASE, "bogus", "unknown key"),
        (BASE + "[store]\nbogus = 1\n", "store.bogus", "unknown key"),
        (BASE.replace('key_field = "host"', 'key_field = "host"\nbogus = 1'), "detectors.web.bogus",
         "unknown key"),
        (BASE + "[detectors.web.model]\nbogus = 1\n", "detectors.web.model.bogus", "unknown key"),
        (BASE.replace('{ type = "http" }', '{ type = "http", bogus = 1 }'), "detectors.web.source.bogus",
         "unknown key"),
        (BASE.replace('{ type = "http" }', '{ type = "demo", hosts = 2, bogus = 1 }'),
         "detectors.web.source.bogus", "unknown key"),
        (BASE + "[detectors.web.model]\nepochs = 'many'\n", "detectors.web.model.epochs", "integer"),
        (BASE + "[detectors.web.model]\nhidden = 'wide'\n", "detectors.web.model.hidden", "tuple"),
        (BASE + "[detectors.web.model]\nlatent = -1\n", "detectors.web.model.latent", "greater than 0"),
        (BASE + "[detectors.web.model]\nhidden = [16, 0]\n", "detectors.web.model.hidden", "> 0"),
        (BASE + "[detectors.web.threshold]\ntarget_fpr = 0.7\n", "detectors.web.threshold.target_fpr", "0.5"),
        (BASE + "[http]\nport = 70000\n", "http.port", "65535"),
        (BASE + "[detectors.web.model]\ndevice = 'gpu'\n", "detectors.web.model.device", "cuda:N"),
        (BASE + "[detectors.web.model]\nneighbor_search = 'fast'\n", "detectors.web.model.neighbor_search",
         "'approximate'"),
        (BASE + "[detectors.web.training]\ncron = '0 * * *'\n", "detectors.web.training.cron", "5 fields"),
        (BASE + "[detectors.web.training]\ncron = '0 * * * *'\ninterval = '1h'\n", "detectors.web.training",
         "not both"),
        (BASE + "[detectors.web.training]\nmin_records = 100\nmax_records = 10\n", "detectors.web.training",
         "max_records"),
        (BASE + "[daemon]\nlog_level = 'loud'\n", "daemon.log_level", "'debug'"),
        (BASE + "[daemon]\nmalloc_cache_mib = 4096\n", "daemon.malloc_cache_mib", "2047"),
        (BASE + "[store]\nurl = 'mysql://x/y'\n", "store.url", "sqlite"),
        (BASE.replace('load = "numeric"', 'load = "number"'), "detectors.web.features.load", "'numeric'"),
        (BASE.replace('load = "numeric"', 'load = { kind = "numeric", bogus = true }'),
         "detectors.web.features.load.bogus", "unknown key"),
        (BASE.replace('load = "numeric"', 'host = "numeric"'), "detectors.web", "clashes"),
        (BASE.replace('source = { type = "http" }', ""), "detectors.web.source", "required key is missing"),
        (BASE.replace('{ type = "http" }', '{ type = "kafka" }'), "detectors.web.source", "kafka"),
        (BASE.replace('{ type = "http" }', '{ type = "file" }'), "detectors.web.source.path",
         "required key is missing"),
    ],
    ids=["top-level", "section", "detector", "model", "http-source", "demo-source", "wrong-type",
         "wrong-type-list", "negative-latent", "zero-width", "target-fpr", "port", "device", "neighbor-search",
         "cron-4-fields", "interval-and-cron", "max-below-min", "log-level", "malloc-cache", "url-scheme",
         "feature-kind", "feature-table-key", "feature-clash", "missing-source", "source-type", "file-source-no-path"],
)
def test_invalid_config_names_key(write_raw: WriteConfig, body: str, key: str, problem: str) -> None:
    path = write_raw(body)
    error = _error(path)
    message = str(error)
    assert message.startswith(f"invalid config {path}: ")
    assert f"{key}:" in message
    assert problem in message
    assert error.path == path


@pytest.mark.parametrize("name", ["Web", "9web", "web.api", "w" * 65], ids=["upper", "digit", "dot", "long"])
def test_invalid_detector_name(write_config: WriteConfig, name: str) -> None:
    error = _error(write_config(BASE.replace("detectors.web", f'detectors."{name}"')))
    assert "detectors:" in str(error)
    assert f"detector name {name!r}" in str(error)


def test_file_source_folder_missing(write_config: WriteConfig, tmp_path: Path) -> None:
    error = _error(write_config(BASE.replace('{ type = "http" }', '{ type = "file", path = "spool" }')))
    assert "detectors.web.source.path:" in str(error)
    assert str(tmp_path / "spool") in str(error)


def test_file_source_folder_resolves_against_config_folder(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    config = load_config(write_config(BASE.replace('{ type = "http" }', '{ type = "file", path = "spool" }')))
    source = config.detectors["web"].source
    assert isinstance(source, FileSourceConfig)
    assert source.path == tmp_path / "spool"
    assert source.settle == 2.0
    assert source.format == "auto"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    error = _error(path)
    assert str(error) == f"invalid config {path}: file not found"


def test_invalid_toml(write_config: WriteConfig) -> None:
    path = write_config(BASE + "[detectors.web.model\nlatent = 2\n")
    error = _error(path)
    assert str(path) in str(error)
    assert "not valid TOML" in str(error)
    assert "line" in str(error)


def test_relative_paths_resolve_against_config_folder(write_config: WriteConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(write_config(BASE + "[store]\nurl = 'sqlite:///db/vigil.db'\n", name="sub.toml"))
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.store_url == f"sqlite:///{tmp_path / 'db' / 'vigil.db'}"
    assert config.http.token_file == tmp_path / "state" / "api-token"


def test_default_store_url_is_sqlite_under_state_dir(write_config: WriteConfig, tmp_path: Path) -> None:
    config = load_config(write_config(BASE))
    assert config.store.url is None
    assert config.store_url == f"sqlite:///{tmp_path / 'state' / 'vigil.db'}"


def test_absolute_and_memory_urls_are_kept(write_config: WriteConfig, tmp_path: Path) -> None:
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"
    assert absolute.startswith("sqlite:////")
    config = load_config(write_config(BASE + f"[store]\nurl = '{absolute}'\n"))
    assert config.store_url == absolute
    config = load_config(write_config(BASE + "[store]\nurl = 'sqlite:///:memory:'\n"))
    assert config.store_url == "sqlite:///:memory:"


def test_features_short_and_table_forms(write_config: WriteConfig) -> None:
    config = load_config(write_config(HTTP_DETECTOR))
    det = config.detectors["web"]
    assert det.feature_schema.features == (
        Feature("load", "numeric"),
        Feature("cpu", "numeric"),
        Feature("latency", "numeric"),
        Feature("region", "categorical"),
        Feature("healthy", "boolean", optional=True),
    )
    assert det.model.hidden == (16,)
    assert det.model.latent == 2
    assert det.threshold.target_fpr == 0.01
    assert det.training.min_records == 200


def test_table_feature_defaults_to_required(write_config: WriteConfig) -> None:
    config = load_config(write_config(BASE.replace('load = "numeric"', 'load = { kind = "categorical" }')))
    assert config.detectors["web"].feature_schema.features == (Feature("load", "categorical", optional=False),)


def test_cron_alone_is_accepted(write_config: WriteConfig) -> None:
    config = load_config(write_config(BASE + "[detectors.web.training]\ncron = '0 * * * *'\n"))
    assert config.detectors["web"].training.cron == "0 * * * *"


def test_config_is_frozen(write_config: WriteConfig) -> None:
    config = load_config(write_config(BASE))
    with pytest.raises(ValueError, match="frozen"):
        config.detectors["web"].key_field = "other"  # type: ignore[misc]


def test_error_in_a_list_names_the_item(write_raw: WriteConfig) -> None:
    error = _error(write_raw(BASE + "[detectors.web.model]\nhidden = [16, 'x']\n"))
    assert "detectors.web.model.hidden.1:" in str(error)
