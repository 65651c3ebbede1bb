"""Run `imageward` with every event-loop callback timed in CPU seconds of its thread.

    python bench/loopwatch.py OUT.jsonl -m imageward run --standalone

The admission webhook shares the event loop with Kopf's controllers: a review waits
behind whatever callback runs when it arrives. Wall-clock latency on a shared machine
mostly measures the other processes; CPU time of the thread (`time.thread_time`) does
not: it is what each callback would take on a quiet core. Every callback that used more
than 0.5 ms of CPU is appended to OUT as {"t": monotonic, "cpu": s, "what": name}
(CLOCK_MONOTONIC is system-wide: the benchmark compares it with its own windows), and
so is, once a second, the CPU used by every other thread of the process (the watches
decoding JSON, which hold the GIL meanwhile), and every garbage collection over 0.5 ms
({"t", "gc": s of wall time, "generation", "loop_thread"}).

With LOOPWATCH_STACKS=1 in the environment (a diagnosis, not a measurement: the sampler
thread wakes 200 times a second and costs the process about 2.5% of a core), a
callback still running after `SLOW` seconds has the event loop thread's stack sampled
every `SAMPLE_EVERY` seconds while it runs; its record then carries the most frequent
innermost frames ("stacks": [[count, "file:line function <- caller ..."], ...]), which
names the code that held the loop rather than the task that happened to run it; and a
full collection over `SLOW` carries the count of objects it left in generation 2 and
their most common types ("survivors", "kinds").
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import pathlib
import runpy
import sys
import threading
import time
import traceback
from typing import Any

THRESHOLD = 0.0005
SLOW = 0.02
SAMPLE_EVERY = 0.005
STACK_DEPTH = 6


def main() -> None:
    out_path, rest = sys.argv[1], sys.argv[2:]
    if rest[:1] != ["-m"] or len(rest) < 2:
        raise SystemExit("usage: loopwatch.py OUT -m MODULE ARGS...")
    module = rest[1]
    sys.argv = [module, *rest[2:]]
    # As under `python -m`: the working directory first, not bench/ (whose modules
    # would otherwise shadow same-named ones the operator imports).
    sys.path[0] = os.getcwd()
    pending: list[dict[str, Any]] = []
    lock = threading.Lock()
    original = asyncio.events.Handle._run
    loop_thread = threading.get_ident()
    # The callback now running (its start on the monotonic clock; None between
    # callbacks) and the stacks sampled during it: shared with the sampler thread.
    running: dict[str, Any] = {"since": None, "samples": collections.Counter()}

    def timed(self: asyncio.events.Handle) -> None:
        started = time.thread_time()
        samples: collections.Counter[str] = collections.Counter()
        running["samples"] = samples
        running["since"] = time.monotonic()
        try:
            original(self)
        finally:
            running["since"] = None
        used = time.thread_time() - started
        if used > THRESHOLD:
            callback = getattr(self, "_callback", None)
            what = getattr(callback, "__qualname__", None) or repr(callback)[:80]
            if what.endswith("__step") or "Task" in what:
                task = getattr(callback, "__self__", None)
                coro = getattr(task, "get_coro", lambda: None)()
                what = getattr(coro, "__qualname__", what)
            record: dict[str, Any] = {"t": time.monotonic(), "cpu": used, "what": what}
            if samples:
                record["stacks"] = [[n, stack] for stack, n in samples.most_common(5)]
            with lock:
                pending.append(record)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    main_clock = time.pthread_getcpuclockid(threading.get_ident())

    def flush_forever() -> None:
        with open(out_path, "a") as out:
            while True:
                time.sleep(1.0)
                # CPU of every thread but the event loop's (the process's, dead threads
                # included, minus the main thread's), cumulative.
                others = time.process_time() - time.clock_gettime(main_clock)
                with lock:
                    taken = pending[:]
                    pending.clear()
                for item in taken:
                    out.write(json.dumps(item) + "\n")
                out.write(json.dumps({"t": time.monotonic(), "threads_cpu": others}) + "\n")
                out.flush()

    def sample_forever() -> None:
        while True:
            time.sleep(SAMPLE_EVERY)
            since = running["since"]
            if since is None or time.monotonic() - since < SLOW:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                continue
            frames = traceback.extract_stack(frame, limit=STACK_DEPTH)[::-1]
            stack = " <- ".join(
                f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in frames
            )
            running["samples"][stack] += 1

    gc_started: dict[int, float] = {}
    diagnose = os.environ.get("LOOPWATCH_STACKS") == "1"

    def time_collections(phase: str, info: dict[str, int]) -> None:
        # Collections run in whichever thread allocates; a pause in the loop's thread is
        # a pause of every review. Those over THRESHOLD are logged like callbacks.
        if phase == "start":
            gc_started[threading.get_ident()] = time.perf_counter()
            return
        began = gc_started.pop(threading.get_ident(), None)
        if began is None:
            return
        took = time.perf_counter() - began
        if took > THRESHOLD:
            record: dict[str, Any] = {
                "t": time.monotonic(),
                "gc": took,
                "generation": info.get("generation"),
                "loop_thread": threading.get_ident() == loop_thread,
            }
            if diagnose and took > SLOW and info.get("generation") == 2:
                # What the slow full collection walked: every survivor is in generation 2
                # now (frozen objects are not). Costly, hence only when diagnosing.
                survivors = gc.get_objects(generation=2)
                kinds = collections.Counter(
                    f"{type(o).__module__}.{type(o).__qualname__}" for o in survivors
                )
                record["survivors"] = len(survivors)
                record["kinds"] = kinds.most_common(12)
                del survivors
            with lock:
                pending.append(record)

    gc.callbacks.append(time_collections)
    threading.Thread(target=flush_forever, name="loopwatch", daemon=True).start()
    if diagnose:
        threading.Thread(target=sample_forever, name="loopwatch-sampler", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
