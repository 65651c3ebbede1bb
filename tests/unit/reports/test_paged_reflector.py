"""The scanner's caches project each page of a list as it arrives (never holding a whole
cluster's raw objects), and keep the base class's cap and change signal."""

from __future__ import annotations

import asyncio
from typing import Any

from imageward.reports import scanner


class Pages:
    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    async def call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        index = int(kwargs.get("_continue") or 0)
        more = index + 1 < len(self.pages)
        return {
            "items": self.pages[index],
            "metadata": {"resourceVersion": "7", "continue": str(index + 1) if more else None},
        }


def _obj(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"}}


def test_pages_are_projected_and_capped() -> None:
    pages = Pages([[_obj("a"), _obj("b")], [_obj("c"), _obj("skip")], [_obj("d")]])
    changes: list[int] = []
    follower: scanner.PagedReflector[str] = scanner.PagedReflector(
        pages,  # type: ignore[arg-type]
        what="things",
        list_fn=None,
        project=lambda o: None if o["metadata"]["name"] == "skip" else o["metadata"]["name"],
        max_items=3,
        on_change=lambda: changes.append(1),
    )
    version = asyncio.run(follower._list())
    assert version == "7"
    assert dict(follower.items) == {"shop/a": "a", "shop/b": "b", "shop/c": "c"}
    assert follower.store.overflowed and follower.synced.is_set()
    assert changes == [1] and follower.version == 1
    assert [c.get("_continue") for c in pages.calls] == [None, "1", "2"]
    asyncio.run(follower._list())  # the same again: no change signalled
    assert changes == [1]
