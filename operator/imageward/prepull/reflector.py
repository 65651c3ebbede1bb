"""Watch-fed caches of Kubernetes objects, holding only a projection of each.

`Store` is pure: it applies a listing or a watch event to a dict of projections (the
few fields a caller needs, e.g. a workload's labels and images), refusing to grow past
`max_items`. `Reflector` feeds one Store from one list + watch (one label selector,
one namespace or all), re-listing after the watch breaks (410 Gone, a network error),
so a refresh reads memory instead of asking the API server again.

The official client's watch is blocking: it runs in a daemon thread and hands events
over to the loop, as `runtime.follow_policies` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import kubernetes

from imageward import kube

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE_SIZE = 500
_WATCH_TIMEOUT = 300
_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 30.0


def build_key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    name = str(metadata.get("name") or "")
    return f"{namespace}/{name}" if namespace else name


class Store(Generic[T]):
    """Projections by `namespace/name` (or `name` for cluster-scoped objects)."""

    def __init__(self, project: Callable[[Mapping[str, Any]], T | None], *, max_items: int):
        self.project = project
        self.max_items = max_items
        self.items: dict[str, T] = {}
        self.overflowed = False
        """Some objects were left out because the store was full (max_items)."""

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        items: dict[str, T] = {}
        overflowed = False
        for obj in objects:
            value = self.project(obj)
            if value is None:
                continue
            if len(items) >= self.max_items:
                overflowed = True
                continue
            items[build_key(obj)] = value
        self.items, self.overflowed = items, overflowed

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        """ADDED / MODIFIED / DELETED; True when the store changed."""
        key = build_key(obj)
        if event_type == "DELETED":
            return self.items.pop(key, None) is not None
        if event_type not in ("ADDED", "MODIFIED"):
            return False
        value = self.project(obj)
        if value is None:
            return self.items.pop(key, None) is not None
        if key not in self.items and len(self.items) >= self.max_items:
            self.overflowed = True
            return False
        if self.items.get(key) == value:
            return False
        self.items[key] = value
        return True


class Reflector(Generic[T]):
    """One list + watch feeding one Store; `start()` returns once the first list is in."""

    def __init__(
        self,
        client: kube.Kube,
        *,
        what: str,
        list_fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        project: Callable[[Mapping[str, Any]], T | None],
        max_items: int,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_change: Callable[[], None] | None = None,
        watch_timeout: int = _WATCH_TIMEOUT,
    ) -> None:
        self.kube = client
        self.what = what
        self.list_fn = list_fn
        self.args = args
        self.store: Store[T] = Store(project, max_items=max_items)
        self.selectors: dict[str, str] = {}
        if label_selector:
            self.selectors["label_selector"] = label_selector
        if field_selector:
            self.selectors["field_selector"] = field_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.synced = asyncio.Event()
        self.error: str | None = None
        self.version = 0
        """Bumped on every change of the store."""
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None

    @property
    def items(self) -> Mapping[str, T]:
        return self.store.items

    async def start(self, *, wait: float = 60.0) -> None:
        """Start following (once) and wait until the first list is in the store; raises
        kube.KubeError naming what could not be listed when that takes over `wait` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"reflector {self.what}")
        if self.synced.is_set():
            return
        try:
            await asyncio.wait_for(self.synced.wait(), wait)
        except TimeoutError:
            raise kube.KubeError(
                f"list {self.what}", None, self.error or f"no answer in {wait:.0f}s"
            ) from None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                resource_version = await self._list()
                backoff = _BACKOFF_FIRST
                while True:
                    resource_version = await self._watch(resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch (410 Gone, network): list again
                self.error = str(e) or type(e).__name__
                logger.info("%s: watch restarts in %.0fs: %s", self.what, backoff, self.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _list(self) -> str:
        objects: list[Mapping[str, Any]] = []
        token: str | None = None
        resource_version = ""
        while True:
            kwargs: dict[str, Any] = {**self.selectors, "limit": _PAGE_SIZE}
            if token:
                kwargs["_continue"] = token
            page = await self.kube.call(f"list {self.what}", self.list_fn, *self.args, **kwargs)
            objects.extend((page or {}).get("items") or [])
            metadata = (page or {}).get("metadata") or {}
            resource_version = str(metadata.get("resourceVersion") or resource_version)
            token = metadata.get("continue")
            if not token:
                break
        before = dict(self.store.items)
        self.store.replace(objects)
        if self.store.overflowed:
            logger.warning(
                "%s: more than %d objects; the rest are left out of the cache",
                self.what,
                self.store.max_items,
            )
        self.error = None
        self.synced.set()
        if before != self.store.items:
            self._changed()
        return resource_version

    async def _watch(self, resource_version: str) -> str:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._watcher = watcher

        def hand(item: dict[str, Any] | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
                loop.call_soon_threadsafe(events.put_nowait, item)

        def stream() -> None:
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    self.list_fn,
                    *self.args,
                    resource_version=resource_version,
                    timeout_seconds=self.watch_timeout,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    **self.selectors,
                ):
                    hand(event)
            except BaseException as e:
                hand(e)
            else:
                hand(None)

        threading.Thread(target=stream, name=f"watch {self.what}", daemon=True).start()
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                kind = event.get("type")
                body = event.get("object") or {}
                if kind == "ERROR":
                    raise kube.KubeError(f"watch {self.what}", body.get("code"), str(body))
                resource_version = str(
                    (body.get("metadata") or {}).get("resourceVersion") or resource_version
                )
                if kind != "BOOKMARK" and self.store.apply(str(kind), body):
                    self._changed()
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]  # the thread ends at its next event or timeout
            self._watcher = None
        return resource_version
