"""Coverage-guided fuzzing of the parsers an attacker feeds, with atheris (libFuzzer).

    .venv/bin/python bench/fuzz.py [--seconds 60] [--target NAME ...] [--workdir .fuzz]
    make fuzz [FUZZ_ARGS="--seconds 120 --target manifest"]

Each target of `tests/fuzz/targets.py` runs for `--seconds` in a child process of its
own (one after the other: the project machine has two cores), under libFuzzer with
imageward's modules instrumented, its seed corpus (`tests/fuzz/corpus/<target>/`), a
dictionary of the format's words and the structure-aware JSON mutator
(`tests/fuzz/mutate.py`) alternating with libFuzzer's own mutations.

A contract violation does not stop the run: the child records it (one input per
distinct exception type and place), minimises it, and goes on fuzzing. libFuzzer's own
findings (a hang past `--timeout`, memory past `--rss-limit-mb`) end the child; it is
restarted for the rest of the budget. Printed per target: executions, coverage and
corpus growth, and crashes with where they were saved
(`<workdir>/<target>/crashes/crash-<id>`, with a `.txt` traceback beside it). The
corpus grown in `<workdir>/<target>/corpus/` is reused by the next run.

Exit status 1 when any target crashed, 2 when atheris is missing (`make fuzz` installs
it: `pip install -e '.[fuzz]'`, a prebuilt wheel with libFuzzer inside, nothing to
compile). `--replay FILE...` runs one target on given inputs without atheris and
prints what each did.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import random
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.fuzz` is not installed: it lives in the checkout

DEFAULT_SECONDS = 60
MINIMISE_SECONDS = 10.0


# ---------------------------------------------------------------------------- crashes


def _where(frame: traceback.FrameSummary) -> str:
    return f"{pathlib.Path(frame.filename).name}:{frame.lineno}"


def crash_signature(error: BaseException) -> str:
    """What tells two crashes apart: the exception type, the innermost frame in our code
    (imageward or the target), and the innermost frame when that is elsewhere (stdlib)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    ours = [f for f in frames if "/imageward/" in f.filename or "/tests/fuzz/" in f.filename]
    where = _where(ours[-1]) if ours else _where(frames[-1])
    if ours and ours[-1] is not frames[-1]:
        where += f" ({_where(frames[-1])})"
    return f"{type(error).__name__} at {where}"


def is_instrumentation(error: BaseException) -> bool:
    """An exception raised by atheris's own hooks (its regex hook cannot take every str)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and "/atheris/" in frames[-1].filename


def crash_id(signature: str) -> str:
    return hashlib.sha1(signature.encode()).hexdigest()[:12]


def run_once(run: Callable[[bytes], None], data: bytes) -> str | None:
    """The crash signature of one input, or None when the target kept its contract."""
    try:
        run(data)
    except Exception as e:
        return crash_signature(e)
    return None


def minimise(run: Callable[[bytes], None], data: bytes, signature: str) -> bytes:
    """A smaller input with the same crash signature (chunks removed, halving), time-bounded."""
    deadline = time.monotonic() + MINIMISE_SECONDS
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        start, shrunk = 0, False
        while start < len(data) and time.monotonic() < deadline:
            candidate = data[:start] + data[start + chunk :]
            if run_once(run, candidate) == signature:
                data, shrunk = candidate, True
            else:
                start += chunk
        if not shrunk:
            chunk //= 2
    return data


def save_crash(folder: pathlib.Path, data: bytes, error: BaseException) -> pathlib.Path:
    signature = crash_signature(error)
    path = folder / f"crash-{crash_id(signature)}"
    path.write_bytes(data)
    text = "".join(traceback.format_exception(error))
    path.with_suffix(".txt").write_text(f"{signature}\n\n{text}")
    return path


# ---------------------------------------------------------------------------- child


def libfuzzer_dictionary(tokens: Sequence[str]) -> str:
    lines = []
    for token in dict.fromkeys(tokens):
        raw = token.encode("utf-8", "surrogatepass")
        escaped = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in raw
        )
        lines.append(f'"{escaped}"')
    return "\n".join(lines) + "\n"


def child(name: str, seconds: int, workdir: pathlib.Path, args: argparse.Namespace) -> None:
    """Fuzz one target under libFuzzer until its time is up (runs in its own process)."""
    import atheris  # a bench-only dependency: the `fuzz` extra

    # Third-party modules first, uninstrumented and before the regex hook (which cannot
    # take the bytes patterns `cryptography` compiles): only imageward is under test.
    import cryptography.hazmat.primitives.serialization  # noqa: F401
    import jsonpatch  # noqa: F401
    import sigstore.verify.verifier  # noqa: F401

    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["imageward"]):
        from tests.fuzz import mutate, targets
    target = targets.TARGETS[name]
    corpus, crashes = workdir / name / "corpus", workdir / name / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    dictionary = workdir / name / "tokens.dict"
    dictionary.write_text(libfuzzer_dictionary(target.tokens))
    known = {path.stem.removeprefix("crash-") for path in crashes.glob("crash-*.txt")}

    reported: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            target.run(data)
        except Exception as e:
            if is_instrumentation(e):
                return  # not imageward's behaviour: the same input runs clean without atheris
            signature = crash_signature(e)
            if signature not in reported:
                reported.add(signature)
                print(f"\n=== imageward contract violation: {signature}", flush=True)
            if crash_id(signature) in known:
                return
            known.add(crash_id(signature))
            small = minimise(target.run, data, signature)
            try:
                target.run(small)
            except Exception as again:
                e = again
            path = save_crash(crashes, small, e)
            print(f"    new, saved {path}", flush=True)
            traceback.print_exception(e)

    def byte_mutator(data: bytes, max_size: int, rng: random.Random) -> bytes:
        mutated: bytes = atheris.Mutate(data, max_size)
        return mutated

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate.mutate(
            data,
            max_size,
            random.Random(seed),
            json_from=target.json_from,
            tokens=target.tokens,
            byte_mutator=byte_mutator,
        )

    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-max_len={target.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-dict={dictionary}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        str(corpus),
        str(targets.CORPUS / name),
    ]
    if args.seed is not None:
        argv.insert(1, f"-seed={args.seed}")
    atheris.Setup(argv, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


# ---------------------------------------------------------------------------- parent

_STATUS = re.compile(r"^#(\d+)\s+(INITED|pulse|NEW|REDUCE|DONE|RELOAD)\s+cov: (\d+) ft: (\d+)")
_CORPUS = re.compile(r"corp: (\d+)/")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_VIOLATION = re.compile(r"^=== imageward contract violation: (.+)$")


@dataclasses.dataclass
class Report:
    name: str
    seconds: float = 0.0
    executions: int = 0
    coverage_start: int | None = None
    coverage_end: int = 0
    features_end: int = 0
    corpus_start: int | None = None
    corpus_end: int = 0
    restarts: int = 0
    signatures: list[str] = dataclasses.field(default_factory=list)
    """Every distinct contract violation hit in this run, new or already saved."""
    crashes: list[str] = dataclasses.field(default_factory=list)
    """Where each new one was saved, and libFuzzer's own findings (hangs, memory)."""

    @property
    def line(self) -> str:
        rate = self.executions / self.seconds if self.seconds else 0.0
        found = sum("libFuzzer" in crash or "exited" in crash for crash in self.crashes)
        crashes = len(self.signatures) + found
        return (
            f"{self.name:<18} {self.seconds:5.0f}s {self.executions:>9,} execs "
            f"{rate:>7,.0f}/s  cov {self.coverage_start or 0:>4} -> {self.coverage_end:<4} "
            f"ft {self.features_end:<5} corpus {self.corpus_start or 0:>3} -> "
            f"{self.corpus_end:<4} crashes {crashes}"
        )


def _read_log(log: str, report: Report) -> tuple[int, list[str]]:
    executions, artifacts = 0, []
    for line in log.splitlines():
        violation = _VIOLATION.match(line)
        if violation and violation.group(1) not in report.signatures:
            report.signatures.append(violation.group(1))
        status = _STATUS.match(line)
        if status:
            executions = max(executions, int(status.group(1)))
            coverage, features = int(status.group(3)), int(status.group(4))
            if status.group(2) == "INITED" and report.coverage_start is None:
                report.coverage_start = coverage
                corpus = _CORPUS.search(line)
                report.corpus_start = int(corpus.group(1)) if corpus else None
            report.coverage_end = max(report.coverage_end, coverage)
            report.features_end = max(report.features_end, features)
            corpus = _CORPUS.search(line)
            if corpus:
                report.corpus_end = int(corpus.group(1))
        executed = _EXECUTED.search(line)
        if executed:
            executions = max(executions, int(executed.group(1)))
        artifact = _ARTIFACT.search(line)
        if artifact:
            artifacts.append(artifact.group(1))
    return executions, artifacts


def fuzz_target(name: str, args: argparse.Namespace) -> Report:
    report = Report(name)
    workdir = pathlib.Path(args.workdir).resolve()
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    crashes = folder / "crashes"
    before = set(crashes.glob("crash-*")) if crashes.is_dir() else set()
    started = time.monotonic()
    deadline = started + args.seconds
    while (remaining := int(deadline - time.monotonic())) >= 1:
        command = [sys.executable, __file__, "--child", name, "--seconds", str(remaining)]
        command += ["--workdir", str(workdir), "--timeout", str(args.timeout)]
        command += ["--rss-limit-mb", str(args.rss_limit_mb)]
        if args.seed is not None:
            command += ["--seed", str(args.seed)]
        log_path = folder / f"log-{report.restarts}.txt"
        with log_path.open("w") as log_file:
            result = subprocess.run(
                command, stdout=log_file, stderr=subprocess.STDOUT, check=False, cwd=ROOT
            )
        executions, artifacts = _read_log(log_path.read_text(errors="replace"), report)
        report.executions += executions
        for artifact in artifacts:
            report.crashes.append(f"libFuzzer finding {artifact} (log {log_path})")
        if result.returncode == 0 or not artifacts or report.restarts >= args.max_restarts:
            if result.returncode != 0 and not artifacts:
                report.crashes.append(f"child exited {result.returncode} (log {log_path})")
            break
        report.restarts += 1
    report.seconds = time.monotonic() - started
    if crashes.is_dir():
        for path in sorted(set(crashes.glob("crash-*.txt")) - before):
            signature = path.read_text().partition("\n")[0]
            note = "" if reproduces(name, path.with_suffix("")) else NOT_REPRODUCED
            report.crashes.append(f"new: {signature}: {path.with_suffix('')}{note}")
    return report


NOT_REPRODUCED = (
    " (does not fail without atheris: a nesting depth right at the recursion limit, which"
    " atheris's frames push over; deepen it before keeping it)"
)


def reproduces(name: str, path: pathlib.Path) -> bool:
    """Whether a saved input also fails in a plain interpreter (no instrumentation)."""
    command = [sys.executable, __file__, "--target", name, "--replay", str(path)]
    return subprocess.run(command, capture_output=True, check=False, cwd=ROOT).returncode != 0


def replay(name: str, files: Sequence[str]) -> int:
    from tests.fuzz import targets

    target = targets.TARGETS[name]
    failed = 0
    for file in files:
        data = pathlib.Path(file).read_bytes()
        try:
            target.run(data)
        except Exception as e:
            failed += 1
            print(f"{file}: {crash_signature(e)}")
            traceback.print_exception(e)
        else:
            print(f"{file}: contract kept")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=DEFAULT_SECONDS, help="per target")
    parser.add_argument("--target", action="append", help="a target name (repeatable)")
    parser.add_argument("--workdir", default=str(ROOT / ".fuzz"))
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--rss-limit-mb", type=int, default=3072)
    parser.add_argument("--max-restarts", type=int, default=5)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--list", action="store_true", help="print the targets and exit")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run --target on FILEs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.seconds, pathlib.Path(args.workdir), args)
        return 0
    from tests.fuzz import targets

    try:
        names = targets.names(args.target)
    except KeyError as e:
        parser.error(str(e.args[0]))
    if args.list:
        print("\n".join(names))
        return 0
    if args.replay:
        if len(names) != 1:
            parser.error("--replay needs exactly one --target")
        return replay(names[0], args.replay)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]' (or make fuzz)", file=sys.stderr)
        return 2
    print(
        f"fuzzing {len(names)} target(s), {args.seconds}s each, workdir {args.workdir}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    reports = []
    for name in names:
        report = fuzz_target(name, args)
        reports.append(report)
        print(report.line, flush=True)
        for signature in report.signatures:
            print(f"    violation: {signature}", flush=True)
        for crash in report.crashes:
            print(f"    {crash}", flush=True)
    total = sum(report.executions for report in reports)
    crashed = [report.name for report in reports if report.signatures or report.crashes]
    print(f"total {total:,} executions; crashes in: {', '.join(crashed) or 'none'}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
