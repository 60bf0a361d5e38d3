"""Per-key normal (training.keys): one model, many series, each judged against its own normal (issue 27)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.fit import fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.schema import Feature, Schema
from training.sequence import KEY_COLUMN
from training.settings import ModelSettings, ThresholdSettings

from ._data import auc

SCHEMA = Schema((Feature("cpu", "numeric"), Feature("mem", "numeric"), Feature("latency", "numeric"),
                 Feature("region", "categorical")))
REGIONS = np.array(["eu", "us", "asia"])
N_KEYS = 1000


def hosts(keys: np.ndarray, rng: np.random.Generator, cpu: np.ndarray, mem: np.ndarray) -> pd.DataFrame:
    """One row per entry of `keys` (host numbers): CPU and memory around the host's own level, latency
    following CPU, the host's own region."""
    c = cpu[keys] + rng.normal(0, 3, len(keys))
    return pd.DataFrame({"cpu": c, "mem": mem[keys] + rng.normal(0, 2, len(keys)),
                         "latency": 20 + 0.5 * c + rng.normal(0, 2, len(keys)), "region": REGIONS[keys % 3],
                         KEY_COLUMN: [f"host-{k}" for k in keys]})


def test_a_host_busy_at_another_hosts_normal_is_flagged_and_a_busy_host_is_not() -> None:
    """1,000 hosts, 10 records each to train; 200 records whose CPU moved 30 points to a level other hosts
    have as their normal, latency following. A global model cannot see them (ROC-AUC 0.51); per key it can."""
    rng = np.random.default_rng(0)
    cpu, mem = rng.uniform(10, 90, N_KEYS), rng.uniform(20, 80, N_KEYS)
    train = hosts(np.repeat(np.arange(N_KEYS), 10), rng, cpu, mem)
    fitted = fit_model(train, SCHEMA, ModelSettings(), TrainSettings(seed=0), ThresholdSettings(target_fpr=0.01))
    keys = fitted.preprocessor.keys
    assert keys is not None and keys.n_keys == N_KEYS
    normal = hosts(np.repeat(np.arange(N_KEYS), 2), rng, cpu, mem)
    moved_hosts = rng.choice(N_KEYS, 200, replace=False)
    moved = hosts(moved_hosts, rng, cpu, mem)
    shift = np.where(cpu[moved_hosts] < 50, 30.0, -30.0)
    moved["cpu"] += shift
    moved["latency"] += 0.5 * shift
    got_normal, got_moved = fitted.score(normal), fitted.score(moved)
    assert auc(got_normal.scores, got_moved.scores) > 0.95
    assert got_moved.is_outlier.mean() >= 0.9
    assert 0.003 <= got_normal.is_outlier.mean() <= 0.02
    # the contributions name CPU (or the latency that follows it), never the memory that did not move
    top = [got_moved.top_contributions(i, moved.iloc[i].to_dict(), 1)[0]["feature"] for i in range(len(moved))]
    assert sum(name in ("cpu", "latency") for name in top) >= 0.9 * len(top)

    # a host in another host's region is flagged: its region is not its own usual one
    swapped = hosts(moved_hosts[:50], rng, cpu, mem)
    swapped["region"] = REGIONS[(moved_hosts[:50] + 1) % 3]
    assert fitted.score(swapped).is_outlier.mean() >= 0.9

    # the same model without per-key normal: the moved hosts look like other hosts
    plain = fit_model(train, SCHEMA, ModelSettings(per_key="off"), TrainSettings(seed=0),
                      ThresholdSettings(target_fpr=0.01))
    assert plain.preprocessor.keys is None
    assert auc(plain.score(normal).scores, plain.score(moved).scores) < 0.7


def test_new_keys_are_judged_against_every_record_and_the_artifact_keeps_the_keys() -> None:
    rng = np.random.default_rng(1)
    cpu, mem = rng.uniform(10, 90, 50), rng.uniform(20, 80, 50)
    train = hosts(np.repeat(np.arange(50), 40), rng, cpu, mem)
    fitted = fit_model(train, SCHEMA, ModelSettings(per_key="on"), TrainSettings(seed=0),
                       ThresholdSettings(target_fpr=0.01))
    weights, meta = fitted.to_artifact()
    again = FittedModel.from_artifact(weights, meta)
    fresh = hosts(np.repeat(np.arange(50), 4), rng, cpu, mem)
    np.testing.assert_allclose(again.score(fresh).scores, fitted.score(fresh).scores, rtol=1e-6)
    assert again.preprocessor.keys is not None and again.preprocessor.keys.keys == fitted.preprocessor.keys.keys

    # a new host (its key never seen) at a level some known host has: its key columns say "as usual"
    new = hosts(np.repeat(np.arange(50), 4), rng, cpu, mem)
    new[KEY_COLUMN] = "new-" + new[KEY_COLUMN]
    keys = fitted.preprocessor.keys
    assert keys is not None and not keys.known(new).any() and keys.known(fresh).all()
    scored_new = fitted.score(new)
    assert scored_new.is_outlier.mean() <= 0.05
    # ... and each is marked: the model knows little about it yet
    note = scored_new.out_of_distribution(0)
    assert note is not None and note["new_key"] == ["key"]
    scored_known = fitted.score(fresh)
    assert all((scored_known.out_of_distribution(i) or {}).get("new_key") is None for i in range(len(fresh)))
    # a frame without keys scores as new keys do (nothing is read from a column that is not there)
    np.testing.assert_allclose(fitted.score(new.drop(columns=KEY_COLUMN)).scores, fitted.score(new).scores,
                               rtol=1e-6)


def test_one_key_or_none_fits_no_key_table_and_auto_waits_for_many_keys() -> None:
    rng = np.random.default_rng(2)
    cpu, mem = rng.uniform(10, 90, 3), rng.uniform(20, 80, 3)
    one = hosts(np.zeros(300, dtype=np.int64), rng, cpu, mem)
    for frame in (one, one.drop(columns=KEY_COLUMN)):
        fitted = fit_model(frame, SCHEMA, ModelSettings(hidden=(8,), latent=2, per_key="on"),
                           TrainSettings(seed=0, epochs=5))
        assert fitted.preprocessor.keys is None
        assert fitted.preprocessor.n_columns == 1 + 1 + 1 + 2     # three numbers, one seen region and __unseen__
    # "auto" leaves a window of a few keys to the network: 3 keys, no key table
    few = hosts(np.arange(300) % 3, rng, cpu, mem)
    fitted = fit_model(few, SCHEMA, ModelSettings(hidden=(8,), latent=2), TrainSettings(seed=0, epochs=5))
    assert fitted.preprocessor.keys is None
    assert fit_model(few, SCHEMA, ModelSettings(hidden=(8,), latent=2, per_key="on"),
                     TrainSettings(seed=0, epochs=5)).preprocessor.keys is not None
