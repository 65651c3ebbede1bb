"""A short pass of every fuzz target in the unit suite, without atheris.

Each target of `tests/fuzz/targets.py` runs over its seed corpus, the crashers kept
for it, and a fixed number of mutants of those (the structural JSON mutator and plain
byte edits, from a fixed seed, so a failure reproduces): a parser that starts raising
something other than its own error, or breaks an invariant, fails here in `make test`
long before anyone runs `make fuzz`. About three seconds for all targets.
"""

from __future__ import annotations

import random
import zlib

import pytest

from tests.fuzz import mutate, targets

MUTANTS_PER_TARGET = 300


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_target_keeps_its_contract(name: str) -> None:
    target = targets.TARGETS[name]
    inputs = [path.read_bytes() for path in targets.corpus_of(name)]
    assert inputs, f"no seed corpus for {name}: run python -m tests.fuzz.seeds"
    for data in inputs:
        target.run(data)
    rng = random.Random(zlib.crc32(name.encode()))
    for _ in range(MUTANTS_PER_TARGET):
        parent = rng.choice(inputs)
        # Stack a few mutations: one edit from a valid seed rarely gets far from it.
        for _ in range(rng.randint(1, 3)):
            parent = mutate.mutate(
                parent, target.max_len, rng, json_from=target.json_from, tokens=target.tokens
            )
        try:
            target.run(parent)
        except Exception as e:
            raise AssertionError(f"{name}: input {parent[:300]!r} broke the contract") from e


def test_seeds_cover_every_target() -> None:
    for name in targets.TARGETS:
        assert (targets.CORPUS / name).is_dir(), name
        assert all(p.stat().st_size <= 64 * 1024 for p in (targets.CORPUS / name).iterdir())
