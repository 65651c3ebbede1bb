"""Watch-fed caches of Kubernetes objects, holding only a projection of each.

`Store` is pure: it applies a listing or a watch event to a dict of projections (the
few fields a caller needs, e.g. a workload's labels and images), refusing to grow past
`max_items`, optionally keeping them grouped by an index key (e.g. the PrePull a pod is
for) and telling a listener which projection changed from what to what. `Reflector`
feeds one Store from one list + watch (one label selector, one namespace or all),
re-listing after the watch breaks (410 Gone, a network error), so a refresh reads
memory instead of asking the API server again. A listing is projected page by page:
the whole objects of at most one page are in memory at once.

The official client's watch is blocking: it runs in a daemon thread and hands events
over to the loop, as `runtime.follow_policies` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
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


#: Told of every projection that changed: (key, before, after); None for absent.
Listener = Callable[[str, Any, Any], None]


class Store(Generic[T]):
    """Projections by `namespace/name` (or `name` for cluster-scoped objects).

    With `index`, projections are also grouped by `index(projection)` (None: in no
    group) in `groups`; with `on_update`, every change is reported as it is made.
    """

    def __init__(
        self,
        project: Callable[[Mapping[str, Any]], T | None],
        *,
        max_items: int,
        index: Callable[[T], Hashable | None] | None = None,
        on_update: Listener | None = None,
    ):
        self.project = project
        self.max_items = max_items
        self.index = index
        self.on_update = on_update
        self.items: dict[str, T] = {}
        self.groups: dict[Hashable, dict[str, T]] = {}
        self.overflowed = False
        """Some objects were left out because the store was full (max_items)."""

    def group(self, name: Hashable) -> Mapping[str, T]:
        """The projections of one index group (empty when there are none)."""
        return self.groups.get(name) or {}

    def _set(self, key: str, value: T | None) -> None:
        before = self.items.get(key)
        if before is not None and self.index is not None:
            group = self.index(before)
            if group is not None:
                members = self.groups.get(group)
                if members is not None:
                    members.pop(key, None)
                    if not members:
                        del self.groups[group]
        if value is None:
            self.items.pop(key, None)
        else:
            self.items[key] = value
            if self.index is not None:
                group = self.index(value)
                if group is not None:
                    self.groups.setdefault(group, {})[key] = value
        if self.on_update is not None:
            self.on_update(key, before, value)

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> bool:
        return self.replace_projected(
            (build_key(obj), value) for obj in objects if (value := self.project(obj)) is not None
        )

    def replace_projected(self, pairs: Iterable[tuple[str, T]]) -> bool:
        """A whole listing, already projected: what changed is set, what is gone dropped;
        True when anything changed."""
        wanted: dict[str, T] = {}
        overflowed = False
        for key, value in pairs:
            if len(wanted) >= self.max_items and key not in wanted:
                overflowed = True
                continue
            wanted[key] = value
        changed = False
        for key in [k for k in self.items if k not in wanted]:
            self._set(key, None)
            changed = True
        for key, value in wanted.items():
            if self.items.get(key) != value:
                self._set(key, value)
                changed = True
        self.overflowed = overflowed
        return changed

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        """ADDED / MODIFIED / DELETED; True when the store changed."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return False
        value = self.project(obj) if event_type != "DELETED" else None
        return self.apply_projected(event_type, build_key(obj), value)

    def apply_projected(self, event_type: str, key: str, value: T | None) -> bool:
        """`apply` of an event already projected (None: deleted, or nothing kept)."""
        if event_type == "DELETED" or value is None:
            if key not in self.items:
                return False
            self._set(key, None)
            return True
        if event_type not in ("ADDED", "MODIFIED"):
            return False
        if key not in self.items and len(self.items) >= self.max_items:
            self.overflowed = True
            return False
        if self.items.get(key) == value:
            return False
        self._set(key, value)
        return True


#: Events applied before the consumer lets the event loop run other work (a burst of
#: pod events during a rollout must not hold the admission webhook up).
_YIELD_EVERY = 64


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
        on_update: Listener | None = None,
        index: Callable[[T], Hashable | None] | None = None,
        watch_timeout: int = _WATCH_TIMEOUT,
        page_size: int = _PAGE_SIZE,
    ) -> None:
        self.kube = client
        self.what = what
        self.list_fn = list_fn
        self.args = args
        self.store: Store[T] = Store(project, max_items=max_items, index=index, on_update=on_update)
        self.page_size = page_size
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
                while True:
                    resource_version = await self._watch(resource_version)
                    # Reset only once a watch ran its course: a list can succeed where
                    # the watch fails at once (a missing CRD lists as None, 404), and
                    # resetting after the list would retry that every second forever.
                    backoff = _BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch (410 Gone, network): list again
                self.error = str(e) or type(e).__name__
                logger.info("%s: watch restarts in %.0fs: %s", self.what, backoff, self.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _list(self) -> str:
        # Each page is projected as it arrives (a page of 500 pods is ~10 MiB decoded;
        # 5,000 of them at once would be ten times that).
        projected: list[tuple[str, T]] = []
        token: str | None = None
        resource_version = ""
        while True:
            kwargs: dict[str, Any] = {**self.selectors, "limit": self.page_size}
            if token:
                kwargs["_continue"] = token
            page = await self.kube.call(f"list {self.what}", self.list_fn, *self.args, **kwargs)
            # Projected off the event loop too: hundreds of objects at once.
            projected.extend(await asyncio.to_thread(self._project_page, page))
            metadata = (page or {}).get("metadata") or {}
            resource_version = str(metadata.get("resourceVersion") or resource_version)
            token = metadata.get("continue")
            del page
            if not token:
                break
        changed = self.store.replace_projected(projected)
        if self.store.overflowed:
            logger.warning(
                "%s: more than %d objects; the rest are left out of the cache",
                self.what,
                self.store.max_items,
            )
        self.error = None
        self.synced.set()
        if changed:
            self._changed()
        return resource_version

    def _project_page(self, page: Mapping[str, Any] | None) -> list[tuple[str, T]]:
        pairs = []
        for obj in (page or {}).get("items") or []:
            value = self.store.project(obj)
            if value is not None:
                pairs.append((build_key(obj), value))
        return pairs

    async def _watch(self, resource_version: str) -> str:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[_Event[T] | BaseException | None] = asyncio.Queue()
        watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._watcher = watcher
        project = self.store.project

        def hand(item: _Event[T] | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
                loop.call_soon_threadsafe(events.put_nowait, item)

        def stream() -> None:
            # Decoded and projected here, in the watch's thread: the event loop gets only
            # the few fields kept (and is not held by a burst of large objects).
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
                    kind = str(event.get("type"))
                    body = event.get("object") or {}
                    version = str((body.get("metadata") or {}).get("resourceVersion") or "")
                    if kind == "ERROR":
                        hand(kube.KubeError(f"watch {self.what}", body.get("code"), str(body)))
                        return
                    value = project(body) if kind in ("ADDED", "MODIFIED") else None
                    hand(_Event(kind, build_key(body), value, version))
            except BaseException as e:
                hand(e)
            else:
                hand(None)

        threading.Thread(target=stream, name=f"watch {self.what}", daemon=True).start()
        try:
            applied = 0
            while (event := await events.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                resource_version = event.version or resource_version
                if event.kind != "BOOKMARK" and self.store.apply_projected(
                    event.kind, event.key, event.value
                ):
                    self._changed()
                applied += 1
                if applied % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]  # the thread ends at its next event or timeout
            self._watcher = None
        return resource_version


@dataclasses.dataclass(frozen=True, slots=True)
class _Event(Generic[T]):
    kind: str
    key: str
    value: T | None
    version: str
