"""ImagePolicy engine: pure, synchronous parsing, matching and rule evaluation.

Nothing here performs I/O: registry facts and signature results come in as data, and
verdicts go out as frozen `Violation` / `Decision` values.
"""
