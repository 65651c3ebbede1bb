"""Run `imageward` with every event-loop callback timed in CPU seconds of its thread.

    python bench/loopwatch.py OUT.jsonl -m imageward run --standalone

The admission webhook shares the event loop with Kopf's controllers: a review waits
behind whatever callback runs when it arrives. Wall-clock latency on a shared machine
mostly measures the other processes; CPU time of the thread (`time.thread_time`) does
not: it is what each callback would take on a quiet core. Every callback that used more
than 0.5 ms of CPU is appended to OUT as {"t": monotonic, "cpu": s, "what": name}
(CLOCK_MONOTONIC is system-wide: the benchmark compares it with its own windows), and
so is, once a second, the CPU used by every other thread of the process (the watches
decoding JSON, which hold the GIL meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

THRESHOLD = 0.0005


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

    def timed(self: asyncio.events.Handle) -> None:
        started = time.thread_time()
        original(self)
        used = time.thread_time() - started
        if used > THRESHOLD:
            callback = getattr(self, "_callback", None)
            what = getattr(callback, "__qualname__", None) or repr(callback)[:80]
            if what.endswith("__step") or "Task" in what:
                task = getattr(callback, "__self__", None)
                coro = getattr(task, "get_coro", lambda: None)()
                what = getattr(coro, "__qualname__", what)
            with lock:
                pending.append({"t": time.monotonic(), "cpu": used, "what": what})

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

    threading.Thread(target=flush_forever, name="loopwatch", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
