"""A 0/1 knapsack solver for the layer planner: exact when it can be, close when not.

Item i costs `sizes[i]` bytes and is worth `ratios[i] * sizes[i]`. Callers pass the items
already in their canonical order (ratio descending, ties broken however the caller wants
them broken), so every choice below is deterministic: the same input always gives the
same answer, and no step depends on wall-clock time.

How `solve` proceeds:
1. Items worth nothing are dropped, free items (size 0) are always taken, items larger
   than the capacity can never be taken; if the rest fit, take them all.
2. Greedy by ratio, filled with every later item that still fits, and the best single
   item give a lower bound; the fractional (LP) relaxation gives an upper bound.
3. Dembo-Hammer reduction: an item whose flip away from its LP value costs more than the
   gap between the bounds is fixed. What is left is the "core" (items of ratio near the
   break item's).
4. The core is solved exactly by meet-in-the-middle (few items) or dynamic programming
   over capacity (small capacity in units of the sizes' gcd); otherwise by Pisinger's
   expanding-core branch and bound, which is exact when it finishes within the node
   limit and otherwise returns the best it found.
5. The result is filled greedily and never worse than step 2's lower bound.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence

MITM_MAX_ITEMS = 30
"""Cores up to this size are solved by meet-in-the-middle (2 x 2**15 subsets at most)."""

DP_MAX_CELLS = 1_000_000
"""Cores whose items x capacity units stay below this are solved by dynamic programming."""

DEFAULT_NODE_LIMIT = 100_000
"""Branch-and-bound steps before giving up on a proof (some 30-100 ms of pure Python)."""

# Relative slack for float comparisons when weights are not integers: pruning with a
# little slack only forgoes improvements smaller than this, never returns a worse plan.
_REL_TOL = 1e-12

# Below this, integer-valued objectives and their half steps are exact in binary floats.
_EXACT_FLOAT_LIMIT = float(2**50)


@dataclasses.dataclass(frozen=True, slots=True)
class Solution:
    chosen: tuple[int, ...]
    """Indices into the caller's sequences, ascending."""

    value: float
    """Sum of ratio x size over the chosen items."""

    cost: int
    """Sum of sizes over the chosen items."""

    upper_bound: float
    """The fractional (LP) relaxation's value: no selection can be worth more."""

    optimal: bool
    """True when `value` is proven to be the best possible."""

    method: str
    """Which step settled the answer (for benchmarks and debugging)."""


def solve(
    sizes: Sequence[int],
    ratios: Sequence[float],
    capacity: int | None,
    *,
    node_limit: int = DEFAULT_NODE_LIMIT,
) -> Solution:
    """Choose items maximising value within `capacity` bytes (None: no limit)."""
    _check(sizes, ratios, capacity)
    useful = [i for i in range(len(sizes)) if ratios[i] > 0]
    free = [i for i in useful if sizes[i] == 0]
    if capacity is None:
        return _everything(useful, sizes, ratios, "unlimited")
    items = [i for i in useful if 0 < sizes[i] <= capacity]
    if sum(sizes[i] for i in items) <= capacity:
        return _everything(sorted(free + items), sizes, ratios, "all fit")

    ws = [sizes[i] for i in items]
    rs = [float(ratios[i]) for i in items]
    ps = [w * r for w, r in zip(ws, rs, strict=True)]
    problem = _Problem(ws, rs, ps, capacity)

    incumbent = problem.greedy(fill=True)
    method = "greedy"
    single = max(range(len(ps)), key=ps.__getitem__)
    if ps[single] > _value(incumbent, ps):
        incumbent, method = [single], "best single item"
    lower = _value(incumbent, ps)
    upper = problem.upper
    optimal = upper <= _bar(lower, integral=problem.integral)

    if not optimal:
        better, optimal, how = problem.improve(lower, node_limit=node_limit)
        # Equal value for fewer bytes is better too: less to fetch and to keep on disk.
        if better is not None and (_value(better, ps), -_cost(better, ws)) > (
            lower,
            -_cost(incumbent, ws),
        ):
            incumbent, method = better, how
        elif optimal:
            method += f" (proved by {how})"
    chosen = sorted([*free, *(items[k] for k in incumbent)])
    return Solution(
        chosen=tuple(chosen),
        value=math.fsum(sizes[i] * ratios[i] for i in chosen),
        cost=sum(sizes[i] for i in chosen),
        upper_bound=upper,
        optimal=optimal,
        method=method,
    )


def solve_greedy(
    sizes: Sequence[int], ratios: Sequence[float], capacity: int | None, *, fill: bool
) -> Solution:
    """Greedy by ratio only: stop at the first item that does not fit, or skip it (fill).

    A baseline for benchmarks; `solve` is never worse than either variant.
    """
    _check(sizes, ratios, capacity)
    useful = [i for i in range(len(sizes)) if ratios[i] > 0]
    if capacity is None:
        return _everything(useful, sizes, ratios, "unlimited")
    chosen: list[int] = []
    room = capacity
    for i in useful:
        if sizes[i] <= room:
            chosen.append(i)
            room -= sizes[i]
        elif not fill:
            break
    solution = _everything(chosen, sizes, ratios, "greedy with fill" if fill else "greedy")
    return dataclasses.replace(
        solution,
        upper_bound=fractional_bound(sizes, ratios, capacity),
        optimal=len(chosen) == len(useful),
    )


def fractional_bound(sizes: Sequence[int], ratios: Sequence[float], capacity: int | None) -> float:
    """The LP relaxation's value: items by ratio, the last one cut to fit."""
    _check(sizes, ratios, capacity)
    useful = [(size, ratio) for size, ratio in zip(sizes, ratios, strict=True) if ratio > 0]
    if capacity is None:
        return math.fsum(size * ratio for size, ratio in useful)
    total = 0.0
    room = capacity
    for size, ratio in useful:
        if size <= room:
            total += size * ratio
            room -= size
        elif size <= capacity:
            return total + room * ratio
        # Items larger than the whole capacity can never be taken, so they take no part
        # in the relaxation either: a tighter bound, still valid.
    return total


class _Problem:
    """Items with 0 < size <= capacity, ratio > 0, ratio non-increasing, total > capacity."""

    __slots__ = ("break_index", "capacity", "integral", "ps", "rs", "upper", "ws")

    def __init__(self, ws: list[int], rs: list[float], ps: list[float], capacity: int) -> None:
        self.ws = ws
        self.rs = rs
        self.ps = ps
        self.capacity = capacity
        used, value, b = 0, 0.0, 0
        while ws[b] <= capacity - used:  # total > capacity, so this stops in range
            used += ws[b]
            value += ps[b]
            b += 1
        self.break_index = b
        self.upper = value + (capacity - used) * rs[b]
        # With integer ratios every selection is worth an integer, which proves
        # optimality far sooner than float slack does (see `_bar`).
        self.integral = self.upper < _EXACT_FLOAT_LIMIT and all(map(float.is_integer, rs))

    def greedy(self, *, fill: bool) -> list[int]:
        chosen = list(range(self.break_index))
        room = self.capacity - sum(self.ws[: self.break_index])
        if fill:
            for k in range(self.break_index + 1, len(self.ws)):
                if self.ws[k] <= room:
                    chosen.append(k)
                    room -= self.ws[k]
        return chosen

    def improve(self, lower: float, *, node_limit: int) -> tuple[list[int] | None, bool, str]:
        """Look for a selection worth more than `lower`.

        Returns (selection or None, whether the answer is proven optimal, method).
        """
        ws, rs, ps, b = self.ws, self.rs, self.ps, self.break_index
        r_break = rs[b]
        # Dembo-Hammer: flipping item k away from its LP value (in before the break item,
        # out after it) loses at least size x |ratio - break ratio| against the LP bound;
        # when that loss leaves no room to beat `lower`, item k keeps its LP value.
        slack = self.upper - _bar(lower, integral=self.integral)
        core = [k for k in range(len(ws)) if ws[k] * abs(rs[k] - r_break) < slack]
        in_core = set(core)
        fixed_in = [k for k in range(b) if k not in in_core]
        room = self.capacity - sum(ws[k] for k in fixed_in)
        threshold = lower - math.fsum(ps[k] for k in fixed_in)
        core_ws = [ws[k] for k in core]
        core_rs = [rs[k] for k in core]
        core_ps = [ps[k] for k in core]

        picked: list[int] | None
        if sum(core_ws) <= room:
            picked, proven, how = list(range(len(core))), True, "reduction"
        elif len(core) <= MITM_MAX_ITEMS:
            picked, proven, how = (
                _meet_in_the_middle(core_ws, core_ps, room),
                True,
                "meet in the middle",
            )
        elif len(core) * (room // _gcd(core_ws) + 1) <= DP_MAX_CELLS:
            picked, proven, how = (
                _dynamic_programming(core_ws, core_ps, room),
                True,
                "dynamic programming",
            )
        else:
            search = _ExpandingCore(core_ws, core_rs, core_ps, room, integral=self.integral)
            picked, proven = search.run(threshold, node_limit=node_limit)
            how = "branch and bound"
        if picked is None:
            return None, proven, how
        chosen = sorted(fixed_in + [core[k] for k in picked])
        return self._fill(chosen), proven, how

    def _fill(self, chosen: list[int]) -> list[int]:
        taken = set(chosen)
        room = self.capacity - sum(self.ws[k] for k in chosen)
        for k in range(len(self.ws)):
            if k not in taken and self.ws[k] <= room:
                chosen.append(k)
                room -= self.ws[k]
        return sorted(chosen)


class _ExpandingCore:
    """Pisinger's expknap (1995) without recursion: start from the break solution and
    branch on adding items after the break item (when there is room) or removing items
    before it (when over capacity), nearest first, pruned by the ratio bound."""

    __slots__ = ("break_index", "break_value", "capacity", "integral", "ps", "rs", "ws")

    def __init__(
        self, ws: list[int], rs: list[float], ps: list[float], capacity: int, *, integral: bool
    ) -> None:
        self.ws, self.rs, self.ps, self.capacity = ws, rs, ps, capacity
        self.integral = integral
        used, value, b = 0, 0.0, 0
        while b < len(ws) and ws[b] <= capacity - used:
            used += ws[b]
            value += ps[b]
            b += 1
        self.break_index = b
        self.break_value = value

    def run(self, threshold: float, *, node_limit: int) -> tuple[list[int] | None, bool]:
        """Best selection worth more than `threshold` (None if not found), and whether the
        search finished (so that nothing better exists)."""
        ws, rs, ps, c = self.ws, self.rs, self.ps, self.capacity
        n, b = len(ws), self.break_index
        best_value = threshold
        best_flips: list[int] | None = None
        # The prune test inlined for speed: continue only while bound > bar.
        bar = _bar(best_value, integral=self.integral)

        flips: list[int] = []
        # Frame k: P, W fixed; s (next removable) or t (next addable) advances.
        stack_p = [self.break_value]
        stack_w = [sum(ws[:b])]
        stack_s = [b - 1]
        stack_t = [b]
        if stack_p[0] > bar:  # the break solution itself may already be better
            best_value, best_flips = stack_p[0], []
            bar = _bar(best_value, integral=self.integral)
        nodes = 0
        while stack_p:
            nodes += 1
            if nodes > node_limit:
                return self._selection(best_flips), False
            top = len(stack_p) - 1
            p, w = stack_p[top], stack_w[top]
            if w <= c:
                t = stack_t[top]
                if t < n and p + (c - w) * rs[t] > bar:
                    stack_t[top] = t + 1
                    p, w = p + ps[t], w + ws[t]
                    flips.append(t)
                    stack_p.append(p)
                    stack_w.append(w)
                    stack_s.append(stack_s[top])
                    stack_t.append(t + 1)
                    if w <= c and p > bar:
                        best_value, best_flips = p, list(flips)
                        bar = _bar(best_value, integral=self.integral)
                    continue
            else:
                s = stack_s[top]
                if s >= 0 and p - (w - c) * rs[s] > bar:
                    stack_s[top] = s - 1
                    p, w = p - ps[s], w - ws[s]
                    flips.append(s)
                    stack_p.append(p)
                    stack_w.append(w)
                    stack_s.append(s - 1)
                    stack_t.append(stack_t[top])
                    if w <= c and p > bar:
                        best_value, best_flips = p, list(flips)
                        bar = _bar(best_value, integral=self.integral)
                    continue
            stack_p.pop()
            stack_w.pop()
            stack_s.pop()
            stack_t.pop()
            if flips:
                flips.pop()
        return self._selection(best_flips), True

    def _selection(self, flips: list[int] | None) -> list[int] | None:
        if flips is None:
            return None
        toggled = set(flips)
        return [k for k in range(len(self.ws)) if (k < self.break_index) != (k in toggled)]


def _meet_in_the_middle(ws: list[int], ps: list[float], capacity: int) -> list[int]:
    """Exact: every subset of each half, joined through the Pareto frontier of one half."""
    half = len(ws) // 2
    left = _subsets(ws[:half], ps[:half], capacity)
    right = _subsets(ws[half:], ps[half:], capacity)
    right.sort(key=lambda entry: (entry[0], -entry[1], entry[2]))
    costs: list[int] = []
    frontier: list[tuple[int, float, int]] = []
    for entry in right:
        if not frontier or entry[1] > frontier[-1][1]:
            costs.append(entry[0])
            frontier.append(entry)
    best = (-1.0, 0, 0, 0)  # value, -cost, left mask, right mask
    for cost, value, mask in left:
        other = frontier[bisect.bisect_right(costs, capacity - cost) - 1]
        candidate = (value + other[1], -(cost + other[0]), mask, other[2])
        if candidate[:2] > best[:2]:
            best = candidate
    mask = best[2] | (best[3] << half)
    return [k for k in range(len(ws)) if mask >> k & 1]


def _subsets(ws: list[int], ps: list[float], capacity: int) -> list[tuple[int, float, int]]:
    subsets: list[tuple[int, float, int]] = [(0, 0.0, 0)]
    for k, (w, p) in enumerate(zip(ws, ps, strict=True)):
        bit = 1 << k
        subsets += [(c + w, v + p, m | bit) for c, v, m in subsets if c + w <= capacity]
    return subsets


def _dynamic_programming(ws: list[int], ps: list[float], capacity: int) -> list[int]:
    """Exact: best value per capacity (in units of the sizes' gcd), one pass per item."""
    unit = _gcd(ws)
    units = [w // unit for w in ws]
    size = capacity // unit
    best = [0.0] * (size + 1)  # best value within c units: non-decreasing in c
    took: list[bytes] = []  # took[k][c - units[k]]: item k improved capacity c
    for w, p in zip(units, ps, strict=True):
        if w > size:
            took.append(b"")
            continue
        added = [v + p for v in best[: size + 1 - w]]
        kept = best[w:]
        took.append(bytes([a > k for a, k in zip(added, kept, strict=True)]))
        best = best[:w] + [a if a > k else k for a, k in zip(added, kept, strict=True)]
    # The smallest capacity reaching the best value: same saving, fewer bytes.
    c = best.index(best[size])
    chosen: list[int] = []
    for k in range(len(ws) - 1, -1, -1):
        if c >= units[k] and took[k] and took[k][c - units[k]]:
            chosen.append(k)
            c -= units[k]
    return sorted(chosen)


def _bar(value: float, *, integral: bool) -> float:
    """What a bound must exceed for a selection it bounds to be worth more than `value`."""
    if integral:
        # Integer ratios make every selection worth an integer: beating v means reaching
        # v + 1, and below 2**50 the half step is exact.
        return value + 0.5
    return value + _REL_TOL * max(1.0, abs(value))


def _gcd(ws: list[int]) -> int:
    return math.gcd(*ws) or 1


def _value(chosen: list[int], ps: list[float]) -> float:
    return math.fsum(ps[k] for k in chosen)


def _cost(chosen: list[int], ws: list[int]) -> int:
    return sum(ws[k] for k in chosen)


def _everything(
    chosen: list[int], sizes: Sequence[int], ratios: Sequence[float], method: str
) -> Solution:
    value = math.fsum(sizes[i] * ratios[i] for i in chosen)
    return Solution(
        chosen=tuple(chosen),
        value=value,
        cost=sum(sizes[i] for i in chosen),
        upper_bound=value,
        optimal=True,
        method=method,
    )


def _check(sizes: Sequence[int], ratios: Sequence[float], capacity: int | None) -> None:
    if len(sizes) != len(ratios):
        raise ValueError(f"{len(sizes)} sizes but {len(ratios)} ratios")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must not be negative, got {capacity}")
    if min(sizes, default=0) < 0:
        raise ValueError("sizes must not be negative")
    if not all(map(math.isfinite, ratios)):
        raise ValueError("ratios must be finite")
    # Sorting sorted data is one linear pass in C.
    if sorted(ratios, reverse=True) != list(ratios):
        raise ValueError("items must come by ratio, highest first")
