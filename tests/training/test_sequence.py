"""Sequence mode: windows of each key's preceding records, cyclic time features, and conv / LSTM models
scoring with history."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from training.fit import KEY_COLUMN, TS_COLUMN, fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.schema import Schema
from training.sequence import TIME_FEATURES, time_features, windows
from training.settings import ModelSettings, ThresholdSettings

# --- windows() -------------------------------------------------------------------------------------


def _hours(*values: int) -> list[pd.Timestamp]:
    return [pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=h) for h in values]


def test_windows_on_two_interleaved_keys_with_unsorted_timestamps() -> None:
    frame = pd.DataFrame({
        KEY_COLUMN: ["a", "b", "a", "b", "a", "a", "b"],
        TS_COLUMN: _hours(3, 1, 1, 2, 2, 5, 2),      # rows 3 and 6 (key b) share a timestamp
    })
    x = np.array([[10.0 * i, 10.0 * i + 1] for i in range(7)], dtype=np.float32)   # row i is (10i, 10i + 1)
    out = windows(x, frame, 3)
    # key a by time: rows 2 (t1), 4 (t2), 0 (t3), 5 (t5); key b: 1 (t1), 3 (t2), 6 (t2, after 3 in frame order)
    expected_rows = [
        [2, 4, 0],   # row 0 ends its window, preceded by the two earlier a rows
        [1, 1, 1],   # the earliest b row: padded with itself
        [2, 2, 2],   # the earliest a row
        [1, 1, 3],   # one predecessor: padded by repeating the key's earliest row
        [2, 2, 4],
        [4, 0, 5],
        [1, 3, 6],   # the tie keeps frame order: 3 before 6
    ]
    assert out.shape == (7, 6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack([x[r].reshape(-1) for r in expected_rows]))
    np.testing.assert_array_equal(out[:, -2:], x)   # output order = input order; each window ends with its row


def test_windows_without_a_key_column_is_one_series() -> None:
    frame = pd.DataFrame({TS_COLUMN: _hours(2, 0, 1)})
    x = np.array([[2.0], [0.0], [1.0]], dtype=np.float32)
    np.testing.assert_array_equal(windows(x, frame, 2), [[1.0, 2.0], [0.0, 0.0], [0.0, 1.0]])


def test_windows_keys_are_compared_as_strings() -> None:
    frame = pd.DataFrame({KEY_COLUMN: [1, "1", 2], TS_COLUMN: _hours(0, 1, 2)})
    x = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    np.testing.assert_array_equal(windows(x, frame, 2), [[1.0, 1.0], [1.0, 2.0], [3.0, 3.0]])


def test_window_one_and_empty_inputs() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = windows(x, pd.DataFrame({"other": [1, 2, 3]}), 1)   # window 1 needs no timestamps
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float32
    empty = windows(np.zeros((0, 2), dtype=np.float32), pd.DataFrame({TS_COLUMN: []}), 4)
    assert empty.shape == (0, 8)


def test_missing_or_bad_timestamps_are_refused() -> None:
    x = np.zeros((2, 1), dtype=np.float32)
    with pytest.raises(KeyError, match=TS_COLUMN):
        windows(x, pd.DataFrame({"v": [1, 2]}), 2)
    with pytest.raises(KeyError, match=TS_COLUMN):
        time_features(pd.DataFrame({"v": [1, 2]}))
    with pytest.raises(ValueError, match="row 1"):
        windows(x, pd.DataFrame({TS_COLUMN: ["2024-01-01T00:00Z", "not a time"]}), 2)
    with pytest.raises(ValueError, match="row 0"):
        time_features(pd.DataFrame({TS_COLUMN: [None, "2024-01-01T00:00Z"]}))


# --- time_features() -------------------------------------------------------------------------------


def test_time_features_of_known_timestamps() -> None:
    stamps = [
        "2024-01-01T06:00:00Z",        # Monday 06:00
        "2024-01-01T08:00:00+02:00",   # the same instant in another zone
        "2024-01-03T18:00:00Z",        # Wednesday 18:00
        "2024-01-07T00:00:00",         # Sunday midnight, naive = UTC
        "2024-01-04T12:30:00Z",        # Thursday 12:30
    ]
    out = np.concatenate([time_features(pd.DataFrame({TS_COLUMN: [s]})) for s in stamps])
    assert out.shape == (5, len(TIME_FEATURES)) == (5, 4)
    assert out.dtype == np.float32
    assert TIME_FEATURES == ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")

    def angles(weekday: int, hours: float) -> list[float]:
        day = hours / 24.0
        week = (weekday + day) / 7.0
        return [np.sin(2 * np.pi * day), np.cos(2 * np.pi * day), np.sin(2 * np.pi * week), np.cos(2 * np.pi * week)]

    expected = np.array([angles(0, 6), angles(0, 6), angles(2, 18), angles(6, 0), angles(3, 12.5)])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out[0, :2], [1.0, 0.0], atol=1e-6)    # 06:00 -> hour_sin 1, hour_cos ~0
    np.testing.assert_allclose(out[2, :2], [-1.0, 0.0], atol=1e-6)   # 18:00
    np.testing.assert_allclose(out[3], [0.0, 1.0, np.sin(2 * np.pi * 6 / 7), np.cos(2 * np.pi * 6 / 7)], atol=1e-6)
    same_format = time_features(pd.DataFrame({TS_COLUMN: [stamps[0], stamps[2], stamps[4]]}))
    np.testing.assert_array_equal(same_format, out[[0, 2, 4]])


def test_time_features_of_a_datetime_column() -> None:
    ts = pd.date_range("2024-01-01", periods=48, freq="h", tz="UTC")
    out = time_features(pd.DataFrame({TS_COLUMN: ts}))
    np.testing.assert_allclose(out[:24, :2], out[24:, :2], atol=1e-6)         # the hour repeats daily
    assert not np.allclose(out[:24, 2:], out[24:, 2:], atol=1e-3)              # the weekday moves on
    np.testing.assert_allclose(np.square(out[:, :2]).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.square(out[:, 2:]).sum(axis=1), 1.0, atol=1e-6)


# --- sequence models -------------------------------------------------------------------------------

PERIOD = 24
TRAIN_ROWS = 480   # 20 days of hourly records
SPIKE = 50         # index into the test frame
DIP = 54           # test row 54 is at hour 6, the daily peak


def _series(n: int, seed: int, start: pd.Timestamp) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq="h")
    hour = ts.hour.to_numpy()
    return pd.DataFrame({TS_COLUMN: ts, "value": np.sin(2 * np.pi * hour / PERIOD) + rng.normal(0, 0.05, n)})


TRAIN = _series(TRAIN_ROWS, 0, pd.Timestamp("2024-01-01", tz="UTC"))
SCHEMA = Schema.infer(TRAIN, exclude=[TS_COLUMN])
HISTORY = TRAIN.iloc[-30:].reset_index(drop=True)
FAST = TrainSettings(epochs=30, batch_size=64, learning_rate=3e-3, patience=30, device="cpu", seed=0)
ONE_NETWORK = ThresholdSettings(calibration_folds=1)   # threshold on the validation split: one network per fit


def _test_frame(spike: float = 0.0) -> pd.DataFrame:
    """The 96 hours after the training window; `spike` is added to the value of record SPIKE."""
    frame = _series(96, 1, TRAIN[TS_COLUMN].iloc[-1] + pd.Timedelta(hours=1))
    values = frame["value"].to_numpy(copy=True)
    values[SPIKE] += spike
    return frame.assign(value=values)


def _settings(arch: str, score: str, **extra: object) -> ModelSettings:
    return ModelSettings(hidden=(8,), latent=4, window=8, arch=arch, score=score, **extra)   # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted() -> Callable[..., FittedModel]:
    cache: dict[tuple[object, ...], FittedModel] = {}

    def get(arch: str, score: str, time_feats: bool = False) -> FittedModel:
        key = (arch, score, time_feats)
        if key not in cache:
            cache[key] = fit_model(TRAIN, SCHEMA, _settings(arch, score, time_features=time_feats), FAST,
                                   ONE_NETWORK)
        return cache[key]

    return get


ARCH_SCORE = [("conv", "reconstruction"), ("conv", "hybrid"), ("lstm", "reconstruction"), ("lstm", "hybrid")]


@pytest.mark.parametrize(("arch", "score"), ARCH_SCORE)
def test_a_spike_scores_its_own_record_highest(fitted: Callable[..., FittedModel], arch: str, score: str) -> None:
    model = fitted(arch, score)
    assert model.spec.arch == arch
    assert model.spec.window == 8
    assert model.spec.n_inputs == 8       # 8 records x 1 encoded column
    assert model.needs_history
    frame = _test_frame(spike=2.0)
    result = model.score(frame, history=HISTORY)
    assert result.scores.shape == (96,)
    assert int(np.argmax(result.scores)) == SPIKE
    assert result.is_outlier[SPIKE]
    # records whose windows do not contain the spike stay normal
    clean = np.r_[0:SPIKE, SPIKE + 8 : 96]
    assert result.scores[SPIKE] > 3 * np.quantile(result.scores[clean], 0.99)
    assert float(np.mean(result.is_outlier[clean])) <= 0.05
    np.testing.assert_allclose(result.contributions.sum(axis=1), result.scores, rtol=1e-9)


def test_an_out_of_phase_value_is_seen_only_through_the_window(fitted: Callable[..., FittedModel]) -> None:
    """-1 is an ordinary value at hour 18, but not at hour 6: only the sequence model can tell."""
    frame = _test_frame()
    assert frame[TS_COLUMN].iloc[DIP].hour == 6
    frame.loc[DIP, "value"] = -1.0
    sequence = fitted("conv", "reconstruction").score(frame, history=HISTORY)
    assert int(np.argmax(sequence.scores)) == DIP
    assert sequence.is_outlier[DIP]
    rowwise = fit_model(TRAIN, SCHEMA, ModelSettings(hidden=(8,), latent=4, score="reconstruction"), FAST,
                        ONE_NETWORK)
    assert not rowwise.score(frame).is_outlier[DIP]


@pytest.mark.parametrize(("arch", "score"), ARCH_SCORE)
def test_history_completes_the_first_windows(fitted: Callable[..., FittedModel], arch: str, score: str) -> None:
    model = fitted(arch, score)
    frame = _test_frame()
    with_history = model.score(frame, history=HISTORY).scores
    joined = model.score(pd.concat([HISTORY, frame], ignore_index=True)).scores
    np.testing.assert_allclose(with_history, joined[len(HISTORY):], rtol=1e-9)   # chunking may move the last bit
    alone = model.score(frame).scores
    np.testing.assert_array_equal(alone[7:], with_history[7:])   # full windows inside the frame: no change
    assert (alone[:7] != with_history[:7]).all()                   # padded windows differ
    np.testing.assert_array_equal(model.score(frame, history=HISTORY.iloc[:0]).scores, alone)


def test_scoring_keeps_keys_apart(fitted: Callable[..., FittedModel]) -> None:
    model = fitted("conv", "hybrid")
    a = _test_frame()
    b = _series(96, 7, a[TS_COLUMN].iloc[0])
    b["value"] = -b["value"]
    both = pd.concat([a.assign(**{KEY_COLUMN: "a"}), b.assign(**{KEY_COLUMN: "b"})]).sort_values(TS_COLUMN,
                                                                                                   kind="stable")
    result = model.score(both.reset_index(drop=True))
    is_a = (both[KEY_COLUMN] == "a").to_numpy()
    np.testing.assert_allclose(result.scores[is_a], model.score(a).scores, rtol=1e-12)
    np.testing.assert_allclose(result.scores[~is_a], model.score(b).scores, rtol=1e-12)


@pytest.mark.parametrize("arch", ["conv", "lstm"])
def test_time_features_widen_the_input_and_are_needed_at_scoring(fitted: Callable[..., FittedModel],
                                                                  arch: str) -> None:
    model = fitted(arch, "reconstruction", True)
    assert model.spec.n_inputs == 8 * (1 + 4)
    assert model.scoring.time_features
    frame = _test_frame(spike=2.0)
    result = model.score(frame, history=HISTORY)
    assert int(np.argmax(result.scores)) == SPIKE
    assert result.contributions.shape == (96, 1)
    # each record's block is its encoded value followed by its 4 time features, oldest record first
    blocks = model.inputs(frame).reshape(96, 8, 5)
    np.testing.assert_array_equal(blocks[:, -1, 1:], time_features(frame))
    np.testing.assert_array_equal(blocks[1:, -2, 1:], time_features(frame)[:-1])
    # the model relies on them: the same values 12 hours out of phase look wrong
    shifted = frame.assign(**{TS_COLUMN: frame[TS_COLUMN] + pd.Timedelta(hours=12)})
    assert np.median(model.score(shifted).scores) > 5 * np.median(model.score(frame).scores)
    with pytest.raises(KeyError, match=TS_COLUMN):
        model.score(frame.drop(columns=[TS_COLUMN]))


@pytest.mark.parametrize(("arch", "score"), [*ARCH_SCORE, ("conv", "time_features")])
def test_artifact_round_trip_reproduces_sequence_scores_exactly(
    fitted: Callable[..., FittedModel], arch: str, score: str,
) -> None:
    model = fitted(arch, "reconstruction", True) if score == "time_features" else fitted(arch, score)
    weights, meta = model.to_artifact()
    loaded = FittedModel.from_artifact(weights, json.loads(json.dumps(meta, allow_nan=False)))
    assert loaded.spec == model.spec
    assert loaded.scoring == model.scoring
    frame = _test_frame(spike=2.0)
    before, after = model.score(frame, history=HISTORY), loaded.score(frame, history=HISTORY)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.contributions, before.contributions)
    assert loaded.threshold == model.threshold


@pytest.mark.parametrize(("arch", "score"), [("conv", "hybrid"), ("lstm", "reconstruction")])
def test_a_seeded_sequence_fit_is_reproducible(fitted: Callable[..., FittedModel], arch: str, score: str) -> None:
    model = fitted(arch, score)
    again = fit_model(TRAIN, SCHEMA, _settings(arch, score), FAST, ONE_NETWORK)
    frame = _test_frame()
    np.testing.assert_array_equal(again.score(frame, history=HISTORY).scores,
                                  model.score(frame, history=HISTORY).scores)
    assert again.threshold == model.threshold
    for name, tensor in model.network.state_dict().items():
        assert again.network.state_dict()[name].equal(tensor), name


def test_sequence_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="arch 'conv' or 'lstm'"):
        ModelSettings(window=4, arch="dense")
    assert ModelSettings(window=1, arch="lstm").arch == "dense"   # window 1 is row mode whatever the arch
    with pytest.raises(ValueError, match="window must be >= 1"):
        ModelSettings(window=0)
