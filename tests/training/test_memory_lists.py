"""The approximate neighbour search (`NeighborMemory(search="approximate")`, `model.neighbor_search`):
k-means cells of the memory, checked against the exact search and brute-force numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

import training.memory
from training.memory import NeighborMemory, _cells, _Lists
from training.settings import ModelSettings, Scoring


def _factors(n: int, d: int, seed: int) -> npt.NDArray[np.float32]:
    """Correlated rows: 4 factors plus noise (like the throughput benchmark's), standardised."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ np.random.default_rng(1234).normal(size=(4, d)) + 0.3 * rng.normal(size=(n, d))
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)


def _brute(bank: npt.NDArray[np.float32], q: npt.NDArray[np.float32], k: int,
           exclude: npt.NDArray[np.int64] | None = None) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - bank[None, :, :].astype(np.float64)) ** 2).sum(axis=2))
    if exclude is not None:
        hit = exclude >= 0
        d[np.flatnonzero(hit), exclude[hit]] = np.inf
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def _lists(memory: NeighborMemory) -> _Lists:
    lists = memory._lists_built()
    if lists is None:
        raise AssertionError("the memory built no cells")
    return lists


@pytest.fixture
def small_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells of about 64 rows, so that memories of 16 * 64 rows and more get them (tests on small banks)."""
    monkeypatch.setattr(training.memory, "_LIST_ROWS", 64)


def test_probing_every_cell_is_the_exact_search(small_cells: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training.memory, "_LIST_PROBES", 10_000)
    x = _factors(3000, 12, seed=1)
    q = np.concatenate([_factors(60, 12, seed=2), x[:40]])
    exclude = torch.from_numpy(np.concatenate([np.full(60, -1), np.arange(40)]))
    approximate = NeighborMemory(torch.from_numpy(x), torch.rand(3000) + 0.5, 5, "approximate")
    exact = NeighborMemory(approximate.bank, approximate.kdist, 5)
    with torch.inference_mode():
        got, want = approximate.query(torch.from_numpy(q), exclude), exact.query(torch.from_numpy(q), exclude)
    lists = _lists(approximate)
    assert lists.probes == len(lists.products) >= 16
    for name in ("distance", "density", "neighbour_mean"):
        np.testing.assert_array_equal(getattr(got, name).numpy(), getattr(want, name).numpy(), err_msg=name)
    dist, _ = _brute(x, q, 5, exclude.numpy())
    np.testing.assert_allclose(got.distance.numpy(), dist.mean(axis=1), rtol=1e-5)


def test_the_default_cells_find_nearly_every_true_neighbour() -> None:
    # the benchmark's shape: a 20,000-row memory of 32 columns; queries from the same distribution and far ones
    x = _factors(20_000, 32, seed=3)
    q = np.concatenate([_factors(600, 32, seed=4), 3.0 * _factors(20, 32, seed=5)])
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    lists = _lists(memory)
    with torch.inference_mode():
        dist, idx = memory._approximate(lists, torch.from_numpy(q), None)
    assert lists.probes * float(lists.sizes.float().mean()) < len(x) / 4       # it reads a quarter or less
    true_dist, true_idx = _brute(x, q, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx.tolist(), true_idx.tolist(), strict=True)])
    assert recall >= 0.97
    found = dist.numpy().astype(np.float64)
    # it never reports a row nearer than the true neighbours, and is mostly exactly right
    assert (found >= true_dist * (1 - 1e-5) - 1e-6).all()
    off = found.mean(axis=1) / true_dist.mean(axis=1) - 1
    assert np.mean(off > 1e-3) <= 0.05 and off.max() < 0.5


def test_leave_one_out_skips_the_row_itself(small_cells: None) -> None:
    x = _factors(2000, 6, seed=6)
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 3, "approximate")
    rows = torch.arange(500)
    with torch.inference_mode():
        _, idx = memory._approximate(_lists(memory), torch.from_numpy(x[:500]), rows)
        _, own = memory._approximate(_lists(memory), torch.from_numpy(x[:500]), None)
    assert not (idx == rows.unsqueeze(1)).any()
    assert (own[:, 0] == rows).all()          # without the exclusion each row is its own nearest


def test_memories_too_small_for_cells_search_exactly() -> None:
    x = _factors(5000, 8, seed=7)
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    assert memory._lists_built() is None
    exact = NeighborMemory(memory.bank, memory.kdist, 5)
    q = torch.from_numpy(_factors(50, 8, seed=8))
    np.testing.assert_array_equal(memory.query(q).distance.numpy(), exact.query(q).distance.numpy())


def test_an_exact_memory_builds_no_cells() -> None:
    assert NeighborMemory(torch.from_numpy(_factors(20_000, 4, seed=9)), torch.ones(20_000), 5)._lists_built() is None


def test_cells_hold_every_row_once_and_one_cell_of_identical_rows() -> None:
    x = _factors(4000, 5, seed=9)
    x[1000:3500] = x[0]                      # an idle host: 2,500 identical records (and row 0 is one too)
    cells = _cells(torch.from_numpy(x), 200, 10)
    rows = torch.cat(cells)
    assert len(rows) == len(set(rows.tolist()))
    twins = set(range(1000, 3500)) | {0}
    others = sorted(set(rows.tolist()) - twins)
    assert others == sorted(set(range(4000)) - twins)            # every other row, once
    kept = [len(set(cell.tolist()) & twins) for cell in cells if set(cell.tolist()) & twins]
    assert kept == [300]                 # one cell's worth (1.5 * 200) of the twins (with a small cell merged in)
    sizes = [len(cell) for cell in cells]
    assert min(sizes) >= 10 and max(sizes) <= 300 + 10 * len(cells)


def test_a_memory_of_many_identical_rows_still_finds_them(small_cells: None) -> None:
    x = _factors(3000, 4, seed=14)
    x[500:2500] = x[0]
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    exact = NeighborMemory(memory.bank, memory.kdist, 5)
    q = torch.from_numpy(np.concatenate([x[:1], x[600:610], x[2600:2700], _factors(50, 4, seed=15)]))
    exclude = torch.from_numpy(np.concatenate([[0], np.arange(600, 610), np.full(150, -1)]))
    with torch.inference_mode():
        got, want = memory.query(q, exclude), exact.query(q, exclude)
    np.testing.assert_array_equal(got.distance[:11].numpy(), np.zeros(11, dtype=np.float32))   # twins: distance 0
    close = np.isclose(got.distance.numpy(), want.distance.numpy(), rtol=1e-5, atol=1e-6)
    assert close.mean() >= 0.95 and (got.distance.numpy() >= want.distance.numpy() - 1e-6).all()


def test_the_same_bank_gives_the_same_cells(small_cells: None) -> None:
    x = torch.from_numpy(_factors(3000, 10, seed=10))
    first = _lists(NeighborMemory(x, torch.ones(3000), 5, "approximate"))
    second = _lists(NeighborMemory(x.clone(), torch.ones(3000), 5, "approximate"))
    assert torch.equal(first.rows, second.rows)
    assert all(torch.equal(a, b) for a, b in zip(first.products, second.products, strict=True))


def test_a_query_beyond_float32_does_not_break_the_batch(small_cells: None) -> None:
    x = _factors(2000, 4, seed=11)
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    q = torch.from_numpy(np.concatenate([x[:3], np.full((1, 4), np.inf, dtype=np.float32)]))
    with torch.inference_mode():
        result = memory.query(q)
    assert torch.isfinite(result.distance[:3]).all() and not torch.isfinite(result.distance[3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_the_same_cells_give_the_same_neighbours(small_cells: None) -> None:
    x = _factors(3000, 16, seed=12)
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    q = torch.from_numpy(_factors(200, 16, seed=13))
    with torch.inference_mode():
        on_cpu = memory.query(q)
        moved = memory.to(torch.device("cuda"))
        on_gpu = moved.query(q.cuda())
    assert moved.search == "approximate" and _lists(moved).products[0].is_cuda
    np.testing.assert_allclose(on_gpu.distance.cpu().numpy(), on_cpu.distance.numpy(), rtol=1e-4, atol=1e-5)


def test_the_search_is_stored_with_the_scoring_and_old_models_read_as_exact() -> None:
    scoring = Scoring(kind="hybrid", search="approximate", normalizer={"reconstruction": (0.0, 1.0, 1e-3)})
    assert Scoring.from_dict(scoring.to_dict()).search == "approximate"
    old = scoring.to_dict()
    del old["search"]
    assert Scoring.from_dict(old).search == "exact"
    with pytest.raises(ValueError, match="neighbour search"):
        Scoring.from_dict({**old, "search": "fuzzy"})
    with pytest.raises(ValueError, match="search must be one of"):
        NeighborMemory(torch.zeros(10, 2), torch.zeros(10), 2, "fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neighbor_search"):
        ModelSettings(neighbor_search="fuzzy")  # type: ignore[arg-type]


def test_a_model_fitted_with_the_approximate_search_keeps_it_through_its_artifact(small_cells: None) -> None:
    from tests.training._data import correlated_frame
    from tests.training.conftest import FAST
    from training.fit import fit_model
    from training.fitted import FittedModel
    from training.schema import Feature, Schema

    schema = Schema(tuple(Feature(f"f{i}", "numeric") for i in range(6)))
    settings = ModelSettings(hidden=(16,), latent=3, neighbor_search="approximate")
    model = fit_model(correlated_frame(3000, seed=0), schema, settings, FAST)
    assert model.memory is not None and model.scoring.search == "approximate"
    assert len(model.memory.bank) >= 16 * 64 and model.memory._lists_built() is not None
    weights, meta = model.to_artifact()
    loaded = FittedModel.from_artifact(weights, meta)
    assert loaded.scoring.search == "approximate" and loaded.memory is not None
    fresh = correlated_frame(2000, seed=1)
    np.testing.assert_array_equal(loaded.score(fresh).scores, model.score(fresh).scores)
    # the threshold was calibrated with the same search: fresh normal rows are flagged near the target rate
    assert 0.002 <= float(np.mean(loaded.score(fresh).is_outlier)) <= 0.03


def test_the_scripted_products_and_the_plain_loop_give_the_same_neighbours(
        small_cells: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    x = _factors(3000, 12, seed=8)
    q = torch.from_numpy(np.concatenate([_factors(80, 12, seed=9), x[:20]]))
    exclude = torch.from_numpy(np.concatenate([np.full(80, -1), np.arange(20)]))
    memory = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5, "approximate")
    lists = _lists(memory)
    training.memory._cell_products.cache_clear()
    try:
        scripted = training.memory._cell_products()
        assert scripted is not training.memory._products_by_cell       # TorchScript compiled it here
        with torch.inference_mode():
            got = memory._approximate(lists, q, exclude)

        def refuse(_: object) -> object:
            raise RuntimeError("no TorchScript here")

        monkeypatch.setattr(torch.jit, "script", refuse)
        training.memory._cell_products.cache_clear()
        with caplog.at_level("INFO", logger="training.memory"):
            plain = training.memory._cell_products()
        assert plain is training.memory._products_by_cell
        assert "TorchScript unavailable" in caplog.text
        with torch.inference_mode():
            want = memory._approximate(lists, q, exclude)
    finally:
        training.memory._cell_products.cache_clear()
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    _, idx = _brute(x, q.numpy(), 5, exclude.numpy())
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got[1].tolist(), idx.tolist(), strict=True)])
    assert recall >= 0.9
