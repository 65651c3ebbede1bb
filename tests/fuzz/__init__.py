"""Coverage-guided fuzzing of the parsers an attacker feeds.

`targets` holds one function per parser and the contract it asserts, `mutate` the
structure-aware mutations shared by atheris (`bench/fuzz.py`) and the unit suite's
smoke run (`tests/unit/test_fuzz_smoke.py`), `seeds` writes the seed corpora under
`corpus/<target>/` from the shapes real tools produce. Crashers found are kept under
`crashers/<target>/` and replayed by the unit suite.
"""
