"""NeighborMemory: leave-one-out k-th distances, neighbour distances, density ratios and neighbour means,
checked against hand computation and brute-force numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

import training.memory
from training.memory import NeighborMemory

LINE = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]], dtype=np.float32)   # no tied distances among the nearest 2


def _brute(
    bank_rows: npt.ArrayLike, queries: npt.ArrayLike, k: int, exclude: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.float64], ...]:
    """Leave-one-out k-th distances of the bank, and per query: mean distance, density ratio, neighbour mean."""
    bank = np.asarray(bank_rows, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    own = np.sqrt(((bank[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(own, np.inf)
    kdist = np.sort(own, axis=1)[:, k - 1]
    d = np.sqrt(((q[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2))
    if exclude is not None:
        for i, j in enumerate(np.asarray(exclude)):
            if j >= 0:
                d[i, j] = np.inf
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    near = np.take_along_axis(d, idx, axis=1)
    density = near[:, -1] / kdist[idx].mean(axis=1)
    return kdist, near.mean(axis=1), density, bank[idx].mean(axis=1)


def test_build_on_a_hand_made_line_gives_leave_one_out_kth_distances() -> None:
    memory, rows = NeighborMemory.build(LINE, k=2, size=100, seed=0)
    np.testing.assert_array_equal(rows, np.arange(5))
    assert memory.k == 2
    np.testing.assert_array_equal(memory.bank.numpy(), LINE)
    # 0: {1, 3} -> 3; 1: {0, 3} -> 2; 3: {1, 0} -> 3; 7: {3, 12} -> 5; 12: {7, 3} -> 9
    np.testing.assert_allclose(memory.kdist.numpy(), [3.0, 2.0, 3.0, 5.0, 9.0], rtol=1e-6)


def test_query_on_the_hand_made_line() -> None:
    memory, _ = NeighborMemory.build(LINE, k=2, size=100, seed=0)
    result = memory.query(torch.tensor([[2.2], [20.0], [7.0]]))
    # 2.2: nearest 3 (0.8) and 1 (1.2); kdist of those: 3 and 2
    # 20: nearest 12 (8) and 7 (13); kdist 9 and 5
    # 7 (a bank row, not excluded): itself (0) and 3 (4); kdist 5 and 3
    np.testing.assert_allclose(result.distance.numpy(), [1.0, 10.5, 2.0], rtol=1e-5)
    np.testing.assert_allclose(result.density.numpy(), [1.2 / 2.5, 13.0 / 7.0, 4.0 / 4.0], rtol=1e-5)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), [[2.0], [9.5], [5.0]], rtol=1e-6)


def test_exclude_skips_the_named_bank_row_only_for_its_query() -> None:
    memory, _ = NeighborMemory.build(LINE, k=2, size=100, seed=0)
    q = torch.tensor([[7.0], [7.0], [1.0]])
    result = memory.query(q, torch.tensor([3, -1, 1]))
    # 7 without itself: 3 (4) and 12 (5), kdist 3 and 9; 7 with itself: as above; 1 without itself: 0 (1), 3 (2)
    np.testing.assert_allclose(result.distance.numpy(), [4.5, 2.0, 1.5], rtol=1e-5)
    np.testing.assert_allclose(result.density.numpy(), [5.0 / 6.0, 1.0, 2.0 / 3.0], rtol=1e-5)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), [[7.5], [5.0], [1.5]], rtol=1e-6)


def test_leave_one_out_query_of_every_bank_row_gives_its_kth_distance() -> None:
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    memory, _ = NeighborMemory.build(x, k=4, size=100, seed=0)
    result = memory.query(torch.from_numpy(x), torch.arange(40))
    kdist, distance, density, neighbour_mean = _brute(x, x, 4, np.arange(40))
    np.testing.assert_allclose(memory.kdist.numpy(), kdist, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.distance.numpy(), distance, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.density.numpy(), density, rtol=1e-4)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), neighbour_mean, rtol=1e-4, atol=1e-5)
    assert (distance > 0).all()   # the row itself was not counted


@pytest.mark.parametrize("k", [1, 3, 7])
def test_random_queries_match_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    q = rng.normal(scale=2.0, size=(25, 4)).astype(np.float32)
    memory, _ = NeighborMemory.build(x, k=k, size=1000, seed=0)
    result = memory.query(torch.from_numpy(q))
    kdist, distance, density, neighbour_mean = _brute(x, q, k)
    np.testing.assert_allclose(memory.kdist.numpy(), kdist, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.distance.numpy(), distance, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.density.numpy(), density, rtol=1e-4)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), neighbour_mean, rtol=1e-4, atol=1e-5)


def test_chunked_distances_give_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)).astype(np.float32)
    q = rng.normal(size=(17, 2)).astype(np.float32)
    exclude = torch.from_numpy(rng.integers(-1, 30, 17))
    whole, _ = NeighborMemory.build(x, k=3, size=1000, seed=0)
    expected = whole.query(torch.from_numpy(q), exclude)
    monkeypatch.setattr(training.memory, "_QUERY_ELEMENTS", 70)   # 2 query rows per chunk of a 30-row bank
    chunked, _ = NeighborMemory.build(x, k=3, size=1000, seed=0)
    np.testing.assert_allclose(chunked.kdist.numpy(), whole.kdist.numpy(), rtol=1e-6)   # matmul rounding only
    result = chunked.query(torch.from_numpy(q), exclude)
    np.testing.assert_allclose(result.distance.numpy(), expected.distance.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.density.numpy(), expected.density.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), expected.neighbour_mean.numpy(), rtol=1e-6)
    _, distance, _, _ = _brute(x, q, 3, exclude.numpy())
    np.testing.assert_allclose(result.distance.numpy(), distance, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 9])
@pytest.mark.parametrize("sort_bank", [False, True])
def test_two_stage_selection_over_a_large_bank_is_exact(k: int, sort_bank: bool) -> None:
    # 6,000 rows: 46 whole blocks of 128 and a tail of 112 columns, so the block-minimum stage runs; a sorted
    # bank puts each query's neighbours into one or two adjacent blocks (the case a wrong shortcut breaks)
    rng = np.random.default_rng(k)
    x = rng.normal(size=(6000, 3)).astype(np.float32)
    if sort_bank:
        x = x[np.argsort(x[:, 0])]
    x[5990:] = x[:10] + 1e-3          # near twins of early rows in the tail
    q = np.concatenate([rng.normal(size=(60, 3)), x[:5], x[5995:]]).astype(np.float32)
    exclude = torch.from_numpy(np.concatenate([rng.integers(-1, 6000, 60), np.arange(5), np.arange(5995, 6000)]))
    memory, _ = NeighborMemory.build(x, k=k, size=6000, seed=0)
    assert memory.bank.shape[0] // training.memory._BLOCK > 4 * k     # the two-stage path, not a plain top-k
    with torch.inference_mode():
        dist, idx = memory._nearest(torch.from_numpy(q), exclude)
    bank_t, bank_sq = memory._plain_parts()
    partial = torch.addmm(bank_sq, torch.from_numpy(q), bank_t, alpha=-2.0)
    partial[torch.arange(len(q))[exclude >= 0], exclude[exclude >= 0]] = float("inf")
    _, plain = torch.topk(partial, k, dim=1, largest=False, sorted=True)
    np.testing.assert_array_equal(idx.numpy(), plain.numpy())
    # the distances of the rows found are measured directly, ||q - b||, not from the expansion
    direct = np.sqrt(((q[:, None, :].astype(np.float64) - x.astype(np.float64)[idx.numpy()]) ** 2).sum(axis=2))
    np.testing.assert_allclose(dist.numpy(), direct, rtol=1e-6, atol=1e-6)
    d = np.sqrt(((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None, :, :]) ** 2).sum(axis=2))
    d[np.arange(len(q))[exclude.numpy() >= 0], exclude.numpy()[exclude.numpy() >= 0]] = np.inf
    near = np.argsort(d, axis=1, kind="stable")[:, :k]
    distance = np.take_along_axis(d, near, axis=1).mean(axis=1)
    neighbour_mean = x.astype(np.float64)[near].mean(axis=1)
    result = memory.query(torch.from_numpy(q), exclude)
    # the selection's float32 ||b||^2 - 2 q.b loses about 1e-3 absolute to cancellation (the twins at 1e-3)
    np.testing.assert_allclose(result.distance.numpy(), distance, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(result.neighbour_mean.numpy(), neighbour_mean, rtol=1e-4, atol=2e-3)


def test_duplicate_rows_are_each_others_neighbours_at_distance_zero() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [9.0, 0.0], [14.0, 0.0]], dtype=np.float32)
    memory, _ = NeighborMemory.build(x, k=1, size=100, seed=0)
    # leave-one-out skips only the row itself: its twin is still at distance 0
    np.testing.assert_allclose(memory.kdist.numpy(), [0.0, 0.0, 4.0, 4.0, 5.0], atol=1e-6)
    result = memory.query(torch.from_numpy(x), torch.arange(5))
    np.testing.assert_allclose(result.distance.numpy(), [0.0, 0.0, 4.0, 4.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(result.neighbour_mean.numpy()[:2], [[0.0, 0.0], [0.0, 0.0]], atol=1e-6)
    assert np.isfinite(result.density.numpy()).all()
    assert result.density[0] == 0.0   # 0 / (0 + eps), not NaN
    on_twin = memory.query(torch.tensor([[0.0, 0.0]]))
    assert on_twin.distance[0] == 0.0
    assert torch.isfinite(on_twin.density).all()


def test_memory_size_caps_the_bank_with_a_seeded_sample() -> None:
    x = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    memory, rows = NeighborMemory.build(x, k=3, size=20, seed=7)
    assert memory.bank.shape == (20, 3)
    assert len(rows) == 20
    assert len(np.unique(rows)) == 20
    assert (np.diff(rows) > 0).all()
    assert rows.min() >= 0 and rows.max() < 50
    np.testing.assert_array_equal(memory.bank.numpy(), x[rows])
    kdist, _, _, _ = _brute(x[rows], x[rows], 3)
    np.testing.assert_allclose(memory.kdist.numpy(), kdist, rtol=1e-4, atol=1e-5)   # within the sample only

    again, same_rows = NeighborMemory.build(x, k=3, size=20, seed=7)
    np.testing.assert_array_equal(same_rows, rows)
    np.testing.assert_array_equal(again.kdist.numpy(), memory.kdist.numpy())
    _, other_rows = NeighborMemory.build(x, k=3, size=20, seed=8)
    assert not np.array_equal(other_rows, rows)

    everything, all_rows = NeighborMemory.build(x, k=3, size=50, seed=7)
    np.testing.assert_array_equal(all_rows, np.arange(50))
    np.testing.assert_array_equal(everything.bank.numpy(), x)


def test_k_is_reduced_to_fit_a_tiny_bank() -> None:
    x = np.array([[0.0], [1.0], [3.0], [7.0]], dtype=np.float32)
    memory, _ = NeighborMemory.build(x, k=10, size=100, seed=0)
    assert 1 <= memory.k < 4
    result = memory.query(torch.from_numpy(x), torch.arange(4))
    kdist, distance, density, _ = _brute(x, x, memory.k, np.arange(4))
    np.testing.assert_allclose(memory.kdist.numpy(), kdist, rtol=1e-5)
    np.testing.assert_allclose(result.distance.numpy(), distance, rtol=1e-5)
    np.testing.assert_allclose(result.density.numpy(), density, rtol=1e-5)


def test_an_empty_query_gives_empty_results() -> None:
    memory, _ = NeighborMemory.build(LINE, k=2, size=100, seed=0)
    result = memory.query(torch.zeros((0, 1)))
    assert result.distance.shape == (0,)
    assert result.density.shape == (0,)
    assert result.neighbour_mean.shape == (0, 1)


@pytest.mark.parametrize(
    ("bank", "kdist", "k", "message"),
    [
        (torch.zeros(5), torch.zeros(5), 1, "bank must be"),
        (torch.zeros((5, 2)), torch.zeros(4), 1, "bank must be"),
        (torch.zeros((5, 2)), torch.zeros(5), 0, "k must be in"),
        (torch.zeros((5, 2)), torch.zeros(5), 5, "k must be in"),
    ],
)
def test_constructor_refuses_bad_shapes_and_k(bank: torch.Tensor, kdist: torch.Tensor, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NeighborMemory(bank, kdist, k)


@pytest.mark.parametrize("d", [48, 130])
def test_the_bfloat16_screen_finds_the_same_neighbours_as_float32(monkeypatch: pytest.MonkeyPatch, d: int) -> None:
    # correlated rows (4 factors plus noise, like the throughput benchmark's) and some far ones; queries
    # include bank rows with their own row excluded (leave-one-out) and exact twins
    rng = np.random.default_rng(d)
    x = (rng.normal(size=(3000, 4)) @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(3000, d))).astype(np.float32)
    x[2990:] = x[:10]
    x[:5] *= 20.0
    q = np.concatenate([rng.normal(size=(70, 4)) @ rng.normal(size=(4, d)), x[:20]]).astype(np.float32)
    exclude = torch.from_numpy(np.concatenate([np.full(70, -1), np.arange(20)]))
    monkeypatch.setattr(training.memory, "native_bf16", lambda: True)
    screened = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5)
    plain = NeighborMemory(torch.from_numpy(x), torch.ones(len(x)), 5)
    plain._screen = False
    with torch.inference_mode():
        dist, idx = screened._nearest(torch.from_numpy(q), exclude)
        plain_dist, plain_idx = plain._nearest(torch.from_numpy(q), exclude)
    assert isinstance(screened._screen, training.memory._Screen)      # the screen ran and passed its check
    np.testing.assert_array_equal(idx.numpy(), plain_idx.numpy())
    np.testing.assert_array_equal(dist.numpy(), plain_dist.numpy())
    full = np.sqrt(((q[:, None, :].astype(np.float64) - x.astype(np.float64)[None]) ** 2).sum(axis=2))
    full[np.arange(70, 90), np.arange(20)] = np.inf
    np.testing.assert_allclose(dist.numpy(), np.sort(full, axis=1)[:, :5], rtol=1e-5, atol=1e-5)


def test_the_screen_is_left_out_where_it_gains_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training.memory, "native_bf16", lambda: True)
    narrow = NeighborMemory(torch.randn(3000, 8), torch.ones(3000), 5)
    wide = NeighborMemory(torch.randn(3000, 64), torch.ones(3000), 5)
    assert narrow._screen_for(torch.zeros(1, 8)) is None and wide._screen_for(torch.zeros(1, 64)) is not None
    monkeypatch.setattr(training.memory, "native_bf16", lambda: False)
    assert NeighborMemory(torch.randn(3000, 64), torch.ones(3000), 5)._screen_for(torch.zeros(1, 64)) is None
