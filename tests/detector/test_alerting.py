"""Alert hygiene: k-of-n confirmation per key and per-feature deviation floors suppress what they should
and nothing else; suppressed records keep their scores and are counted by reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.errors import ConfigError
from detector.store.types import ModelVersion, ScoredRecord
from tests.support.alerting import LATER, install, normal, slow, spike, trained_model

from .conftest import HTTP_DETECTOR

__all__ = ["trained_model"]      # the shared model fixture


@pytest.fixture(params=["on_ingest", "score_job"])
def with_alerting(request: pytest.FixtureRequest, write_config: Callable[[str], Path],
                  trained_model: ModelVersion) -> Callable[[str], Runtime]:
    """A runtime whose web detector has the given [detectors.web.alerting] table and the shared model;
    its records are scored as they are ingested, or (score_job) wait pending for the score job."""

    def build(alerting: str) -> Runtime:
        config = load_config(write_config(HTTP_DETECTOR + "\n[detectors.web.alerting]\n" + alerting))
        runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
        if request.param == "score_job":
            runtime.vigil.scorer = None
        return install(runtime, trained_model)

    return build


def score(runtime: Runtime, records: list[dict[str, Any]]) -> list[tuple[bool, float]]:
    """Ingest and score `records`; (is outlier, score / threshold) of each, in the order given."""
    assert runtime.vigil.ingest("web", records, "http").accepted == len(records)
    # scored on ingest already, or now by the score job
    assert runtime.scorer.score("web") == (0 if runtime.vigil.scorer is not None else len(records))
    threshold = runtime.vigil.repo.active_model("web", with_weights=False).threshold  # type: ignore[union-attr]
    scored = runtime.vigil.repo.recent_scored("web", len(records))
    return [(flag, s / threshold) for _, s, flag in scored]


def over(results: list[tuple[bool, float]]) -> list[int]:
    return [i for i, (_, ratio) in enumerate(results) if ratio > 1]


def flagged(results: list[tuple[bool, float]]) -> list[int]:
    return [i for i, (flag, _) in enumerate(results) if flag]


def suppressed(runtime: Runtime, reason: str) -> float:
    value = runtime.vigil.metrics.registry.get_sample_value(
        "vigil_alerts_suppressed_total", {"detector": "web", "reason": reason})
    assert value is not None
    return value


def test_without_alerting_every_record_over_the_threshold_is_an_outlier(
        with_alerting: Callable[[str], Runtime]) -> None:
    runtime = with_alerting("")
    records = normal(30, 5, LATER, noise=0.2)
    for i in (3, 4, 17):
        records[i] = spike(records[i])
    results = score(runtime, records)
    assert over(results) == flagged(results) == [3, 4, 17]
    assert suppressed(runtime, "confirmation") == suppressed(runtime, "deviation_floor") == 0


def test_two_of_three_confirms_the_second_spike_of_a_key(with_alerting: Callable[[str], Runtime]) -> None:
    runtime = with_alerting("confirm_k = 2\nconfirm_n = 3\n")
    records = normal(36, 5, LATER, noise=0.2)     # host of record i: h(i % 3)
    # h0: one spike alone; h1: spikes two records apart (within three); h2: spikes three records apart
    for i in (0, 4, 10, 5, 14):
        records[i] = spike(records[i])
    results = score(runtime, records)
    assert over(results) == [0, 4, 5, 10, 14]           # the model flags every spike...
    assert flagged(results) == [10]                     # ...only h1's second one is confirmed
    assert suppressed(runtime, "confirmation") == 4
    assert suppressed(runtime, "deviation_floor") == 0
    assert len(runtime.vigil.repo.list_outliers("web")) == 1


def test_spikes_of_different_keys_do_not_confirm_each_other(with_alerting: Callable[[str], Runtime]) -> None:
    runtime = with_alerting("confirm_k = 2\nconfirm_n = 3\n")
    records = normal(12, 6, LATER, noise=0.2)
    for i in (3, 4, 5):                                  # h0, h1, h2 in a row
        records[i] = spike(records[i])
    results = score(runtime, records)
    assert over(results) == [3, 4, 5]
    assert flagged(results) == []
    assert suppressed(runtime, "confirmation") == 3


def test_confirmation_reads_the_key_history_across_batches(with_alerting: Callable[[str], Runtime]) -> None:
    runtime = with_alerting("confirm_k = 2\nconfirm_n = 3\n")
    records = normal(30, 7, LATER, noise=0.2)
    records[3] = spike(records[3])                       # h0, scored in the first batch
    first = score(runtime, records[:6])
    assert over(first) == [3] and flagged(first) == []
    records[9] = spike(records[9])                       # h0 two records later: confirmed
    records[13] = spike(records[13])                     # h1: nothing before it
    second = score(runtime, records[6:18])
    assert over(second) == [3, 7] and flagged(second) == [3]
    records[24] = spike(records[24])                     # h0 again, five records after its last spike
    third = score(runtime, records[18:])
    assert over(third) == [6] and flagged(third) == []
    assert suppressed(runtime, "confirmation") == 3


# floor_top = 1: only the largest contribution counts (latency for `slow`, cpu or load for `spike`)
FLOORS_SPIKE_KEPT_SLOW_DROPPED = """
floor_top = 1
floors = { latency = { absolute = 100.0 }, cpu = { absolute = 20.0 }, load = { absolute = 20.0 } }
"""

# floors on every numeric feature; a spike is explained first by its cpu (95 where a load of 12 gives about 10)
ALL = "floors = {{ cpu = {{ {} }}, load = {{ {} }}, latency = {{ {} }} }}\nfloor_top = 2"
WIDE, NARROW = "absolute = 500.0", "absolute = 0.001"
WIDE_RELATIVE, NARROW_RELATIVE = "relative = 20.0", "relative = 0.0001"


@pytest.mark.parametrize(("alerting", "kept"), [
    pytest.param(ALL.format(WIDE, WIDE, WIDE), [], id="all-within-absolute"),
    pytest.param(ALL.format(WIDE_RELATIVE, WIDE_RELATIVE, WIDE_RELATIVE), [], id="all-within-relative"),
    pytest.param(ALL.format(NARROW, WIDE, WIDE), [4, 17], id="cpu-beyond-absolute"),
    pytest.param(ALL.format(NARROW_RELATIVE, WIDE_RELATIVE, WIDE_RELATIVE), [4, 17], id="cpu-beyond-relative"),
    pytest.param(ALL.format(f"{NARROW}, {WIDE_RELATIVE}", WIDE_RELATIVE, NARROW), [], id="either-floor-suffices"),
    pytest.param("floors = { load = { absolute = 500.0 }, latency = { absolute = 500.0 } }\nfloor_top = 2",
                 [4, 17], id="cpu-has-no-floor"),
    # region and healthy (no floors possible) in the top five contribute nothing: within
    pytest.param(ALL.format(WIDE, WIDE, WIDE).replace("floor_top = 2", "floor_top = 5"),
                 [], id="categoricals-that-are-no-cause-need-no-floor"),
    pytest.param("floors = { region = { absolute = 500.0 } }", None, id="categorical-refused"),
])
def test_deviation_floors(with_alerting: Callable[[str], Runtime], alerting: str, kept: list[int] | None) -> None:
    if kept is None:
        with pytest.raises(ConfigError, match=r"detectors\.web\.alerting: floors \['region'\]"):
            with_alerting(alerting)
        return
    runtime = with_alerting(alerting)
    records = normal(24, 8, LATER, noise=0.2)
    records[4], records[17] = spike(records[4]), spike(records[17])
    results = score(runtime, records)
    assert over(results) == [4, 17]
    assert flagged(results) == kept
    assert suppressed(runtime, "deviation_floor") == 2 - len(kept)
    assert suppressed(runtime, "confirmation") == 0


def test_floors_drop_the_small_deviation_and_keep_the_large_one(with_alerting: Callable[[str], Runtime]) -> None:
    """Latency 40 above normal lies within its floor of 100: dropped; the spike moves cpu and load beyond
    their floors of 20: kept, in the same batch."""
    runtime = with_alerting(FLOORS_SPIKE_KEPT_SLOW_DROPPED)
    records = normal(24, 9, LATER, noise=0.2)
    records[5], records[11] = slow(records[5]), spike(records[11])
    results = score(runtime, records)
    assert over(results) == [5, 11]
    assert flagged(results) == [11]
    assert suppressed(runtime, "deviation_floor") == 1
    outlier, = runtime.vigil.repo.list_outliers("web")
    assert outlier.fields["cpu"] == 95.0


def test_floors_and_confirmation_together_count_each_record_once(with_alerting: Callable[[str], Runtime]) -> None:
    runtime = with_alerting("confirm_k = 2\nconfirm_n = 3\n" + FLOORS_SPIKE_KEPT_SLOW_DROPPED)
    records = normal(24, 10, LATER, noise=0.2)
    records[3], records[6], records[15] = slow(records[3]), spike(records[6]), spike(records[15])   # all h0
    results = score(runtime, records)
    assert over(results) == [3, 6, 15]
    # 3: within its floors; 6: confirmed by 3 (over the threshold, whatever the floors said); 15: alone
    assert flagged(results) == [6]
    assert suppressed(runtime, "deviation_floor") == 1
    assert suppressed(runtime, "confirmation") == 1


@pytest.mark.parametrize(("alerting", "message"), [
    ("confirm_k = 3\nconfirm_n = 2\n", r"detectors\.web\.alerting: confirm_k \(3\) must be <= confirm_n \(2\)"),
    ("confirm_k = 0\n", r"detectors\.web\.alerting\.confirm_k: "),
    ("floors = { cpu = { absolute = 1.0 }, disk = { absolute = 1.0 }, io = { relative = 0.1 } }\n",
     r"detectors\.web\.alerting: floors \['disk', 'io'\] name no numeric feature"),
    ("floors = { cpu = {} }\n", r"detectors\.web\.alerting\.floors\.cpu: a floor needs absolute, relative or both"),
    ("floors = { cpu = { absolute = -1.0 } }\n", r"detectors\.web\.alerting\.floors\.cpu\.absolute: "),
    ("floor_top = 0\n", r"detectors\.web\.alerting\.floor_top: "),
    ("confirm = 2\n", r"detectors\.web\.alerting\.confirm: unknown key"),
])
def test_invalid_alerting_config_names_the_key(write_config: Callable[[str], Path], alerting: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(HTTP_DETECTOR + "\n[detectors.web.alerting]\n" + alerting))


def test_alerting_is_off_by_default(write_config: Callable[[str], Path]) -> None:
    alerting = load_config(write_config(HTTP_DETECTOR)).detectors["web"].alerting
    assert (alerting.confirm_k, alerting.confirm_n, alerting.floors, alerting.floor_top) == (1, 1, {}, 3)


def test_recent_exceedances_judge_each_record_by_the_model_that_scored_it(runtime: Runtime) -> None:
    """The store's k-of-n history: per key, the newest records before the given time, oldest first, each
    compared with its own model version's threshold; records still pending are not history."""
    repo = runtime.vigil.repo
    records = normal(12, 11, LATER, hosts=2)              # h0: 0, 2, 4...; h1: 1, 3, 5...
    runtime.vigil.ingest("web", records[:8], "http")
    low = repo.save_model("web", b"w", {}, 1.0, 1, None, None)
    scores = iter([0.5, 2.0, 5.0, 0.5, 0.5, 0.5, 2.0, 0.5])   # records 0..7 under a threshold of 1
    repo.score_pending("web", 4, low.id, 1.0,
                       lambda pending: [ScoredRecord(p.id, next(scores)) for p in pending])
    high = repo.save_model("web", b"w", {}, 3.0, 1, None, None)
    repo.score_pending("web", 4, high.id, 3.0,
                       lambda pending: [ScoredRecord(p.id, next(scores)) for p in pending])
    runtime.vigil.ingest("web", records[8:], "http")      # pending: never part of the history
    at = {key: LATER + timedelta(minutes=m) for key, m in (("h0", 11), ("h1", 5), ("h9", 11))}
    assert repo.recent_exceedances("web", at, 3) == {
        "h0": [True, False, False],     # records 2 (5.0 > 1), 4 (0.5 < 3), 6 (2.0 < 3); 8 and 10 pending
        "h1": [True, False],            # records 1 (2.0 > 1, though not > 3) and 3; 5 is not before minute 5
    }
    assert repo.recent_exceedances("web", at, 1) == {"h0": [False], "h1": [False]}
