from __future__ import annotations

import functools
import math
import random
from collections import abc

import pytest

from imageward import errors
from imageward.prepull import knapsack, planner
from tests.unit.prepull import fleets

GiB = 2**30


def objective(images: list[planner.PlanImage], planned: abc.Set[str]) -> float:
    """The product's definition, computed from the images themselves."""
    return math.fsum(
        img.weight * sum(lay.size for lay in planner.distinct_layers(img) if lay.digest in planned)
        for img in images
    )


def brute_force(images: list[planner.PlanImage], budget: int | None, min_share: int) -> float:
    """The best objective over every subset of eligible layers (memoised on the room left,
    which keeps 24 small layers cheap while still trying every subset)."""
    holders: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for index, img in enumerate(images):
        for lay in img.layers:
            holders.setdefault(lay.digest, set()).add(index)
            sizes[lay.digest] = lay.size
    eligible = sorted(d for d, users in holders.items() if len(users) >= min_share)
    values = [sizes[d] * math.fsum(images[i].weight for i in holders[d]) for d in eligible]
    room = sum(sizes.values()) if budget is None else budget

    @functools.cache
    def best(k: int, room: int) -> float:
        if k == len(eligible):
            return 0.0
        skip = best(k + 1, room)
        if sizes[eligible[k]] > room:
            return skip
        return max(skip, values[k] + best(k + 1, room - sizes[eligible[k]]))

    return best(0, room)


def check_invariants(
    images: list[planner.PlanImage], plan: planner.Plan, budget: int | None, min_share: int
) -> None:
    planned = {lay.digest for lay in plan.layers}
    assert len(planned) == len(plan.layers)
    assert plan.bytes == sum(lay.size for lay in plan.layers)
    if budget is not None:
        assert plan.bytes <= budget
    holders: dict[str, list[str]] = {}
    for img in images:
        for digest in dict.fromkeys(x.digest for x in img.layers):
            holders.setdefault(digest, []).append(img.image)
    for lay in plan.layers:
        assert list(lay.images) == holders[lay.digest]
        assert len(lay.images) >= min_share
    assert plan.saved_bytes == sum(
        sum(x.size for x in planner.distinct_layers(img) if x.digest in planned) for img in images
    )
    assert plan.total_bytes == sum(planner.image_bytes(img) for img in images)
    assert math.isclose(plan.expected_saved, objective(images, planned), rel_tol=1e-12)
    assert plan.expected_saved <= plan.upper_bound * (1 + 1e-12) + 1e-9
    order = [(-len(lay.images), -lay.size, lay.digest) for lay in plan.layers]
    assert order == sorted(order)


@pytest.mark.parametrize("seed", range(400))
def test_exact_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    images, budget, min_share = fleets.random_instance(rng, max_layers=24)
    plan = planner.build_plan(images, budget=budget, min_share=min_share)
    check_invariants(images, plan, budget, min_share)
    assert plan.optimal
    expected = brute_force(images, budget, min_share)
    assert math.isclose(plan.expected_saved, expected, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("solver", ["dynamic programming", "branch and bound"])
@pytest.mark.parametrize("seed", range(150))
def test_every_exact_solver_agrees_with_brute_force(
    seed: int, solver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Switch meet-in-the-middle off (and DP too for B&B) to prove the other paths exact.
    monkeypatch.setattr(knapsack, "MITM_MAX_ITEMS", 0)
    if solver == "branch and bound":
        monkeypatch.setattr(knapsack, "DP_MAX_CELLS", 0)
    rng = random.Random(10_000 + seed)
    images, budget, min_share = fleets.random_instance(rng, max_layers=20)
    plan = planner.build_plan(images, budget=budget, min_share=min_share, node_limit=10**7)
    check_invariants(images, plan, budget, min_share)
    assert plan.optimal
    expected = brute_force(images, budget, min_share)
    assert math.isclose(plan.expected_saved, expected, rel_tol=1e-9, abs_tol=1e-9)


def greedy_values(
    images: list[planner.PlanImage], budget: int, min_share: int
) -> tuple[float, float, float]:
    """Greedy without fill, greedy with fill, best single layer: the planner beats all."""
    holders: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for index, img in enumerate(images):
        for lay in planner.distinct_layers(img):
            holders.setdefault(lay.digest, []).append(index)
            sizes[lay.digest] = lay.size
    items = sorted(
        (-math.fsum(images[i].weight for i in users), -sizes[d], d)
        for d, users in holders.items()
        if len(users) >= min_share
    )
    ws = [-size for _, size, _ in items]
    rs = [-ratio for ratio, _, _ in items]
    plain = knapsack.solve_greedy(ws, rs, budget, fill=False).value
    filled = knapsack.solve_greedy(ws, rs, budget, fill=True).value
    single = max((w * r for w, r in zip(ws, rs, strict=True) if w <= budget), default=0.0)
    return plain, filled, single


@pytest.mark.parametrize(
    ("count", "seed", "mixed", "budget", "min_share"),
    [
        (10_000, 1, False, 20 * GiB, 1),
        (2_000, 2, False, 5 * GiB, 1),
        (2_000, 3, True, 5 * GiB, 1),
        (2_000, 4, True, 20 * GiB, 1),
        (2_000, 5, False, 1 * GiB, 1),
        (2_000, 6, True, 60 * GiB, 1),
        (2_000, 7, False, 3 * GiB, 2),
        (500, 8, True, 512 * 2**20, 1),
    ],
)
def test_large_fleet_within_two_percent_of_the_lp_bound(
    count: int, seed: int, mixed: bool, budget: int, min_share: int
) -> None:
    images = fleets.fleet(count, seed=seed, mixed_weights=mixed)
    plan = planner.build_plan(images, budget=budget, min_share=min_share)
    check_invariants(images, plan, budget, min_share)
    lp = knapsack_bound(images, budget, min_share)
    assert plan.upper_bound == pytest.approx(lp, rel=1e-12)
    assert plan.expected_saved >= 0.98 * lp
    for baseline in greedy_values(images, budget, min_share):
        assert plan.expected_saved >= baseline


def knapsack_bound(images: list[planner.PlanImage], budget: int, min_share: int) -> float:
    """The greedy-by-ratio fractional bound, computed without the planner's code."""
    holders: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for index, img in enumerate(images):
        for lay in img.layers:
            holders.setdefault(lay.digest, set()).add(index)
            sizes[lay.digest] = lay.size
    items = sorted(
        (
            (math.fsum(images[i].weight for i in users), sizes[d])
            for d, users in holders.items()
            if len(users) >= min_share
        ),
        reverse=True,
    )
    bound, room = 0.0, budget
    for ratio, size in items:
        if ratio > 0 and size <= budget:  # a layer above the whole budget never fits
            take = min(size, room)
            bound += take * ratio
            room -= take
    return bound


@pytest.mark.parametrize("seed", range(60))
def test_never_worse_than_greedy_on_hard_instances(seed: int) -> None:
    # Few big layers against the budget: the LP bound is loose, greedy is poor, and the
    # core is too big for the exact solvers, so branch and bound must do the work.
    rng = random.Random(seed)
    layers = [fleets.layer(f"big-{k}", rng.randint(10**6, 10**9)) for k in range(300)]
    images = [
        fleets.image(
            f"app-{i}:1", *rng.sample(layers, rng.randint(1, 12)), weight=rng.choice([1, 2, 3])
        )
        for i in range(120)
    ]
    budget = rng.randint(10**9, 2 * 10**10)
    plan = planner.build_plan(images, budget=budget)
    check_invariants(images, plan, budget, 1)
    for baseline in greedy_values(images, budget, 1):
        assert plan.expected_saved >= baseline


def test_beats_greedy_where_greedy_is_poor() -> None:
    # Greedy takes the 60-byte layer first and then nothing fits; two 50s are better.
    images = [
        fleets.image("a:1", fleets.layer("sixty", 60), weight=10),
        fleets.image("b:1", fleets.layer("fifty-1", 50), weight=9.9),
        fleets.image("c:1", fleets.layer("fifty-2", 50), weight=9.9),
    ]
    plan = planner.build_plan(images, budget=100)
    assert {lay.digest for lay in plan.layers} == {
        fleets.digest("fifty-1"),
        fleets.digest("fifty-2"),
    }
    assert plan.expected_saved == pytest.approx(990)
    assert plan.optimal


def test_realistic_example_numbers() -> None:
    base, python = fleets.layer("debian", 30), fleets.layer("python", 50)
    images = [
        fleets.image("web:1", base, python, fleets.layer("web", 80)),
        fleets.image("api:2", base, python, fleets.layer("api", 10), weight=3),
        fleets.image("worker:3", base, fleets.layer("worker", 700)),
    ]
    plan = planner.build_plan(images, budget=100)
    assert [(lay.size, lay.images) for lay in plan.layers] == [
        (30, ("web:1", "api:2", "worker:3")),
        (50, ("web:1", "api:2")),
        (10, ("api:2",)),
    ]
    assert plan.bytes == 90
    assert plan.budget == 100
    assert plan.saved_bytes == 30 * 3 + 50 * 2 + 10
    assert plan.total_bytes == 160 + 90 + 730
    assert plan.expected_saved == 30 * 5 + 50 * 4 + 10 * 3
    assert plan.upper_bound == 380 + 10 * 1  # 10 more bytes of the web layer, cut
    assert plan.optimal


def test_unlimited_budget_plans_every_eligible_layer() -> None:
    shared = fleets.layer("shared", 5)
    images = [
        fleets.image("a:1", shared, fleets.layer("a", 7)),
        fleets.image("b:1", shared, fleets.layer("b", 9)),
    ]
    everything = planner.build_plan(images, budget=None)
    assert {lay.size for lay in everything.layers} == {5, 7, 9}
    assert everything.saved_bytes == everything.total_bytes == 26
    assert everything.budget is None
    assert everything.optimal
    only_shared = planner.build_plan(images, budget=None, min_share=2)
    assert [lay.digest for lay in only_shared.layers] == [shared.digest]
    assert only_shared.saved_bytes == 10
    assert planner.build_plan(images, budget=None, min_share=3).layers == ()


def test_zero_budget_plans_only_empty_layers() -> None:
    empty = fleets.layer("empty", 0)
    images = [
        fleets.image("a:1", empty, fleets.layer("a", 7)),
        fleets.image("b:1", fleets.layer("b", 1)),
    ]
    plan = planner.build_plan(images, budget=0)
    assert [lay.digest for lay in plan.layers] == [empty.digest]
    assert plan.bytes == plan.saved_bytes == 0
    assert plan.optimal


def test_budget_above_everything_takes_everything() -> None:
    images = [
        fleets.image("a:1", fleets.layer("a", 7), fleets.layer("c", 3)),
        fleets.image("b:1", fleets.layer("b", 1)),
    ]
    plan = planner.build_plan(images, budget=10**12)
    assert plan.bytes == 11
    assert plan.saved_bytes == plan.total_bytes


def test_weight_zero_images_are_not_worth_planning() -> None:
    shared = fleets.layer("shared", 5)
    images = [
        fleets.image("a:1", shared, fleets.layer("a", 7), weight=0),
        fleets.image("b:1", shared, fleets.layer("b", 9)),
    ]
    plan = planner.build_plan(images, budget=None)
    assert {lay.size for lay in plan.layers} == {5, 9}
    assert plan.layers[0].images == ("a:1", "b:1")


def test_a_layer_listed_twice_counts_once() -> None:
    twice = fleets.layer("twice", 4)
    images = [fleets.image("a:1", twice, fleets.layer("a", 1), twice)]
    assert planner.build_plan(images, budget=None, min_share=2).layers == ()
    plan = planner.build_plan(images, budget=None)
    assert plan.total_bytes == plan.saved_bytes == 5
    assert plan.expected_saved == 5
    assert plan.layers[0].images == ("a:1",)


def test_ties_go_to_the_smaller_digest() -> None:
    images = [fleets.image(f"app-{k}:1", fleets.layer(f"layer-{k}", 10)) for k in range(6)]
    plan = planner.build_plan(images, budget=25)
    smallest = sorted(fleets.digest(f"layer-{k}") for k in range(6))[:2]
    assert [lay.digest for lay in plan.layers] == smallest


@pytest.mark.parametrize("seed", range(20))
def test_the_plan_does_not_depend_on_input_order(seed: int) -> None:
    rng = random.Random(seed)
    images = fleets.fleet(300, seed=seed, layers_per_image=8, mixed_weights=seed % 2 == 1)
    budget = rng.randint(1, 8) * GiB
    plan = planner.build_plan(images, budget=budget)
    shuffled = images[:]
    rng.shuffle(shuffled)
    again = planner.build_plan(shuffled, budget=budget)
    assert [lay.digest for lay in again.layers] == [lay.digest for lay in plan.layers]
    assert (again.bytes, again.saved_bytes, again.total_bytes) == (
        plan.bytes,
        plan.saved_bytes,
        plan.total_bytes,
    )
    assert again.expected_saved == plan.expected_saved
    assert planner.build_plan(images, budget=budget) == plan


def test_empty_input() -> None:
    plan = planner.build_plan([], budget=100)
    assert plan == planner.Plan(
        layers=(),
        bytes=0,
        budget=100,
        saved_bytes=0,
        total_bytes=0,
        expected_saved=0.0,
        upper_bound=0.0,
        optimal=True,
        min_share=1,
    )


@pytest.mark.parametrize(
    ("images", "budget", "min_share", "message"),
    [
        ([fleets.image("a:1", fleets.layer("a", 1))], -1, 1, "budgetPerNode"),
        ([fleets.image("a:1", fleets.layer("a", 1))], 10, 0, "minShare"),
        ([fleets.image("a:1", fleets.layer("a", 1), weight=-1)], 10, 1, "weight"),
        ([fleets.image("a:1", fleets.layer("a", 1), weight=math.nan)], 10, 1, "weight"),
        ([fleets.image("a:1", fleets.layer("a", 1), weight=math.inf)], 10, 1, "weight"),
        ([fleets.image("a:1", fleets.layer("a", -5))], 10, 1, "negative size"),
        (
            [fleets.image("a:1", fleets.layer("a", 1)), fleets.image("a:1", fleets.layer("b", 1))],
            10,
            1,
            "listed twice",
        ),
        (
            [fleets.image("a:1", fleets.layer("x", 1)), fleets.image("b:1", fleets.layer("x", 2))],
            10,
            1,
            "1 bytes in a:1 but 2 bytes in b:1",
        ),
    ],
)
def test_bad_input_is_refused_clearly(
    images: list[planner.PlanImage], budget: int, min_share: int, message: str
) -> None:
    with pytest.raises(planner.PlanError, match=message) as info:
        planner.build_plan(images, budget=budget, min_share=min_share)
    assert isinstance(info.value, errors.ImagewardError)
    assert isinstance(info.value, ValueError)
