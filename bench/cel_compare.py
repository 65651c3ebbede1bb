"""Compare Python CEL implementations for imageward's attestation conditions.

    python bench/cel_compare.py [--rounds 2000]

Runs in any virtualenv holding some of `cel-expr-python` (Google's cel-cpp),
`common-expression-language` (the Rust `cel` crate) and `cel-python` (pure Python,
`celpy`); the ones missing are reported as such. imageward itself depends only on the
one it chose (see the README's "CEL" section), so run this in a scratch venv:

    python3 -m venv /tmp/cel && /tmp/cel/bin/pip install cel-expr-python \
        common-expression-language cel-python && /tmp/cel/bin/python bench/cel_compare.py

Speed: compile time of a condition, evaluation time over a realistic Trivy cosign-vuln
predicate (20 targets x 30 findings, ~150 KB of JSON). Fidelity: cases whose answer in
Kubernetes (cel-go with the apiserver's options: type-checked at compile time,
heterogeneous equality, optional syntax, strings v2, bindings, errors that propagate)
is known; "compile error" and "eval error" count as answers.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)

#: (expression, Kubernetes' answer): a value, "compile error" or "eval error".
FIDELITY: list[tuple[str, object]] = [
    (
        "predicate.scanner.result.Results.all(r, "
        "!has(r.Vulnerabilities) || r.Vulnerabilities.size() < 50)",
        True,
    ),
    (
        "predicate.scanner.result.Results.exists(r, has(r.Vulnerabilities) && "
        "r.Vulnerabilities.exists(v, v.Severity == 'CRITICAL'))",
        True,
    ),
    ("predicate.scanner.result.Results.map(r, r.Target).size() == 20", True),
    ("predicate.scanner.result.Results.filter(r, r.Class == 'os-pkgs').size()", 10),
    ("has(predicate.nope)", False),
    ("predicate.nope == 1", "eval error"),  # no such key
    ("undeclared.field == 1", "compile error"),  # undeclared reference, caught at load
    ("predicate.scanner.version +", "compile error"),  # syntax
    ("1 == 1.0", "compile error"),  # literals of two types: no matching overload
    ("1 + 'a'", "compile error"),
    ("[1, 'a']", "compile error"),  # homogeneous aggregate literals
    ("dyn(1) == 1.0", True),  # heterogeneous equality at run time
    ("predicate.count == 3.0", True),
    ("predicate.big + 1 > 0", "eval error"),  # int64 overflow
    ("1 / predicate.zero == 0", "eval error"),  # division by zero
    ("false && (1 / predicate.zero == 0)", False),
    ("(1 / predicate.zero == 0) || true", True),  # commutative error absorption
    ("predicate.scanner.result.Results[99].Target == ''", "eval error"),  # index out of range
    ("predicate.nothing == null", True),
    ("'CVE-2026-0001'.matches('^CVE-[0-9]{4}-[0-9]+$')", True),
    ("'aa'.matches('(a)\\\\1')", "compile error"),  # RE2: no backreferences
    ("size('h\u00e9llo')", 5),  # code points
    ("timestamp(predicate.metadata.scanFinishedOn) > now - duration('168h')", True),
    ("duration('7d') > duration('1h')", "compile error"),  # no days; literal checked (1.29)
    ("predicate.?nope.orValue('x')", "x"),  # optional types
    ("cel.bind(r, predicate.scanner.result.Results, r.size())", 20),
    ("'A,B'.lowerAscii().split(',')", ["a", "b"]),  # strings v2
    ("['a', 'b'].join('-')", "a-b"),
    ("predicate.scanner.result.Results.exists_one(r, r.Target == 'target-0')", True),
    ("'Target' in predicate.scanner.result.Results[0]", True),
    ("int('12') + 1", 13),
    ("string(predicate.count)", "3"),
    ("type(predicate.count) == int", True),
    ("predicate.count > 2u", True),  # cross-type numeric comparison
]

CONDITION = (
    "predicate.scanner.result.Results.all(r, !has(r.Vulnerabilities) || "
    "r.Vulnerabilities.all(v, v.Severity != 'CRITICAL' || v.VulnerabilityID in ['CVE-2026-0001']))"
)


def predicate() -> dict[str, Any]:
    results = []
    for target in range(20):
        vulns = [
            {
                "VulnerabilityID": f"CVE-2026-{target * 100 + i:04d}",
                "PkgName": f"pkg{i}",
                "InstalledVersion": "1.0.0",
                "FixedVersion": "1.0.1",
                "Severity": ("LOW", "MEDIUM", "HIGH")[i % 3],
                "Title": "a finding " * 8,
                "References": [f"https://example.test/{target}/{i}"] * 3,
            }
            for i in range(30)
        ]
        results.append(
            {
                "Target": f"target-{target}",
                "Class": "os-pkgs" if target % 2 == 0 else "lang-pkgs",
                "Vulnerabilities": vulns,
            }
        )
    results[3]["Vulnerabilities"][0]["Severity"] = "CRITICAL"
    results[3]["Vulnerabilities"][0]["VulnerabilityID"] = "CVE-2026-0001"
    return {
        "invocation": {"parameters": None, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@v0.58.0",
            "version": "0.58.0",
            "db": {"uri": "", "version": ""},
            "result": {"SchemaVersion": 2, "Results": results},
        },
        "metadata": {
            "scanStartedOn": "2026-11-30T00:00:00Z",
            "scanFinishedOn": "2026-11-30T00:01:00Z",
        },
        "count": 3,
        "big": 2**63 - 1,
        "zero": 0,
        "nothing": None,
    }


class Candidate:
    name = ""
    package = ""

    def compile(self, source: str) -> Any: ...
    def run(self, program: Any, data: dict[str, Any]) -> Any: ...


class CelCpp(Candidate):
    name, package = "cel-expr-python 0.1.3 (cel-cpp)", "cel_expr_python"

    def __init__(self) -> None:
        from cel_expr_python import cel
        from cel_expr_python.ext import ext_bindings, ext_optional, ext_strings

        self.cel = cel
        self.env = cel.NewEnv(
            variables={
                "predicate": cel.Type.DYN,
                "statement": cel.Type.DYN,
                "now": cel.Type.TIMESTAMP,
            },
            extensions=[
                ext_strings.ExtStrings(),
                ext_optional.ExtOptional(),
                ext_bindings.ExtBindings(),
            ],
        )

    def compile(self, source: str) -> Any:
        return self.env.compile(source)

    def run(self, program: Any, data: dict[str, Any]) -> Any:
        value = program.eval(data=data)
        if value.type() == self.cel.Type.ERROR:
            raise RuntimeError(value.value())
        return value.plain_value()


class CelRust(Candidate):
    name, package = "common-expression-language 0.10.0 (Rust cel)", "cel"

    def __init__(self) -> None:
        import cel

        self.cel = cel

    def compile(self, source: str) -> Any:
        return self.cel.compile(source)

    def run(self, program: Any, data: dict[str, Any]) -> Any:
        return program.execute(data)


class CelPy(Candidate):
    name, package = "cel-python 0.5.0 (pure Python)", "celpy"

    def __init__(self) -> None:
        import celpy
        from celpy import celtypes

        self.celpy, self.celtypes = celpy, celtypes
        self.env = celpy.Environment()

    def compile(self, source: str) -> Any:
        return self.env.program(self.env.compile(source))

    def run(self, program: Any, data: dict[str, Any]) -> Any:
        activation = {
            "predicate": self.celpy.json_to_cel(data["predicate"]),
            "statement": self.celpy.json_to_cel(data["statement"]),
            "now": self.celtypes.TimestampType(data["now"]),
        }
        result = program.evaluate(activation)
        if isinstance(result, self.celpy.CELEvalError):
            raise RuntimeError(result)
        return result


def answer(candidate: Candidate, source: str, data: dict[str, Any]) -> object:
    try:
        program = candidate.compile(source)
    except Exception:
        return "compile error"
    try:
        value = candidate.run(program, data)
    except Exception:
        return "eval error"
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    return value


def timed(function: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(cls: type[Candidate], data: dict[str, Any], rounds: int) -> None:
    started = time.perf_counter()
    candidate = cls()
    imported = time.perf_counter() - started
    program = candidate.compile(CONDITION)
    compile_s = timed(lambda: candidate.compile(CONDITION), rounds)
    eval_s = timed(lambda: candidate.run(program, data), max(5, rounds // 10))
    small = {"predicate": {"metadata": data["predicate"]["metadata"]}, "statement": {}, "now": NOW}
    ts = candidate.compile("timestamp(predicate.metadata.scanFinishedOn) > now - duration('168h')")
    small_s = timed(lambda: candidate.run(ts, small), rounds)
    wrong = []
    for source, expected in FIDELITY:
        got = answer(candidate, source, data)
        if got != expected:
            wrong.append(f"    {source!r}: {got!r}, Kubernetes: {expected!r}")
    print(
        f"{cls.name}\n  import {imported * 1000:.0f} ms; compile {compile_s * 1e6:.0f} µs; "
        f"evaluate over the scan {eval_s * 1000:.2f} ms; a timestamp check "
        f"{small_s * 1e6:.0f} µs\n"
        f"  fidelity: {len(FIDELITY) - len(wrong)} of {len(FIDELITY)} as Kubernetes answers"
    )
    print("\n".join(wrong) + "\n" if wrong else "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    data = {"predicate": predicate(), "statement": {}, "now": NOW}
    size = len(json.dumps(data["predicate"]))
    print(f"predicate: {size / 1024:.0f} KiB of JSON; condition: {CONDITION[:60]}…\n")
    for cls in (CelCpp, CelRust, CelPy):
        if importlib.util.find_spec(cls.package) is None:
            print(f"{cls.name}: not installed\n")
            continue
        measure(cls, data, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
