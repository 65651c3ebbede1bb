from __future__ import annotations

import math
import random

import pytest

from imageward.prepull import knapsack


def test_fractional_bound_cuts_the_break_item() -> None:
    assert knapsack.fractional_bound([10, 10], [3.0, 1.0], 15) == 35.0
    assert knapsack.fractional_bound([10, 10], [3.0, 1.0], None) == 40.0
    assert knapsack.fractional_bound([10, 10], [3.0, 1.0], 0) == 0.0


def test_fractional_bound_skips_items_larger_than_the_capacity() -> None:
    assert knapsack.fractional_bound([100, 10, 10], [5.0, 2.0, 1.0], 15) == 25.0


def test_worthless_items_are_never_chosen_and_free_ones_always() -> None:
    solution = knapsack.solve([0, 5, 0, 5], [2.0, 1.0, 1.0, 0.0], 4)
    assert solution.chosen == (0, 2)
    assert solution.cost == 0
    assert solution.optimal


def test_unlimited_capacity_takes_everything_worth_something() -> None:
    solution = knapsack.solve([3, 4, 5], [2.0, 1.0, 0.0], None)
    assert solution.chosen == (0, 1)
    assert solution.value == solution.upper_bound == 10.0


def test_same_value_for_fewer_bytes() -> None:
    # Both single items are worth 2; the 1-byte one is the better plan.
    solution = knapsack.solve([1, 2], [2.0, 1.0], 2)
    assert solution.chosen == (0,)
    assert solution.cost == 1


def test_greedy_variants() -> None:
    sizes, ratios = [6, 5, 3], [3.0, 2.0, 1.0]
    assert knapsack.solve_greedy(sizes, ratios, 10, fill=False).chosen == (0,)
    assert knapsack.solve_greedy(sizes, ratios, 10, fill=True).chosen == (0, 2)
    best = knapsack.solve(sizes, ratios, 10)
    assert best.chosen == (0, 2)  # 21 beats 5 + 3 = 13
    assert best.optimal


@pytest.mark.parametrize("seed", range(40))
def test_node_limit_zero_still_beats_greedy(seed: int) -> None:
    rng = random.Random(seed)
    pairs = sorted(
        ((rng.choice([1.0, 2.0, 3.5, 7.0]), rng.randint(1, 10**6)) for _ in range(200)),
        key=lambda pair: (-pair[0], -pair[1]),
    )
    sizes = [size for _, size in pairs]
    ratios = [ratio for ratio, _ in pairs]
    capacity = sum(sizes) // 7
    solution = knapsack.solve(sizes, ratios, capacity, node_limit=0)
    assert solution.cost <= capacity
    assert solution.value == pytest.approx(math.fsum(sizes[i] * ratios[i] for i in solution.chosen))
    assert list(solution.chosen) == sorted(set(solution.chosen))
    for fill in (False, True):
        assert solution.value >= knapsack.solve_greedy(sizes, ratios, capacity, fill=fill).value
    assert solution.value <= solution.upper_bound
    longer = knapsack.solve(sizes, ratios, capacity)
    assert longer.value >= solution.value


@pytest.mark.parametrize(
    ("sizes", "ratios", "capacity", "message"),
    [
        ([1], [1.0, 2.0], 1, "sizes but"),
        ([1, 1], [1.0, 2.0], 1, "by ratio"),
        ([1], [1.0], -1, "capacity"),
        ([-1], [1.0], 1, "negative"),
        ([1], [math.nan], 1, "finite"),
    ],
)
def test_bad_input(sizes: list[int], ratios: list[float], capacity: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        knapsack.solve(sizes, ratios, capacity)
