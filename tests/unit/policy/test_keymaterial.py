"""The key-material follower without a cluster: which objects it follows for which
policies, and that a changed object (or one that could not be read) reloads exactly the
policies using it, once per distinct object whatever the number of policies."""

from __future__ import annotations

import asyncio
from typing import Any

from imageward import keymaterial, kube

KEY = keymaterial.Ref(keymaterial.SECRET, "imageward-system", "release-key")
ROOT = keymaterial.Ref(keymaterial.CONFIG_MAP, "sigstore", "trusted-root")


class FakeKube:
    """Answers `get` from a dict of resourceVersions (None: 404; an exception: raised)."""

    def __init__(self, versions: dict[keymaterial.Ref, Any]) -> None:
        self.versions = versions
        self.reads: list[keymaterial.Ref] = []

    async def _read(self, ref: keymaterial.Ref) -> dict[str, Any] | None:
        self.reads.append(ref)
        value = self.versions.get(ref)
        if isinstance(value, Exception):
            raise value
        return None if value is None else {"metadata": {"resourceVersion": value}}

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(keymaterial.Ref(keymaterial.SECRET, namespace, name))

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(keymaterial.Ref(keymaterial.CONFIG_MAP, namespace, name))


def test_versions_as_noted() -> None:
    assert keymaterial.build_version(None) == keymaterial.MISSING
    assert keymaterial.build_version({"metadata": {"resourceVersion": "5"}}) == "5"
    assert keymaterial.build_version({"metadata": {}}) == keymaterial.UNKNOWN


def test_one_read_per_object_and_reloads_of_its_users_only() -> None:
    async def run() -> tuple[list[tuple[list[str], str]], FakeKube]:
        reloaded: list[tuple[list[str], str]] = []

        async def reload(names: Any, trigger: str) -> None:
            reloaded.append((list(names), trigger))

        fake = FakeKube({KEY: "1", ROOT: "7"})
        follower = keymaterial.Follower(
            fake,  # type: ignore[arg-type]
            interval=0.01,
            reload=reload,
            watch=False,
        )
        follower.note("a", {KEY: "1"})
        follower.note("b", {KEY: "1", ROOT: "7"})
        follower.note("plain", {})
        assert follower.users == {KEY: {"a", "b"}, ROOT: {"b"}}
        await asyncio.sleep(0.05)
        assert reloaded == []  # nothing changed: nothing loaded again
        reads = len(fake.reads)
        assert reads >= 2 and set(fake.reads) == {KEY, ROOT}
        assert abs(fake.reads.count(KEY) - fake.reads.count(ROOT)) <= 1  # per object, not user

        fake.versions[KEY] = "2"
        await asyncio.sleep(0.05)
        assert reloaded == [(["a", "b"], "poll")]

        # Forgotten policies are no longer followed; an object nobody uses is dropped.
        follower.forget("b")
        assert follower.users == {KEY: {"a"}}
        assert ROOT not in follower.polled
        await follower.close()
        return reloaded, fake

    reloaded, _ = asyncio.run(run())
    assert len(reloaded) == 1


def test_a_read_that_failed_is_retried_when_the_object_is_seen() -> None:
    async def run() -> list[str]:
        reloaded: list[str] = []

        async def reload(names: Any, trigger: str) -> None:
            reloaded.extend(names)

        fake = FakeKube({KEY: kube.KubeError("get Secret", 503, "unavailable")})
        follower = keymaterial.Follower(
            fake,  # type: ignore[arg-type]
            interval=0.01,
            reload=reload,
            watch=False,
        )
        follower.note("a", {KEY: keymaterial.UNKNOWN})
        await asyncio.sleep(0.05)
        assert reloaded == []  # still failing: nothing to gain
        fake.versions[KEY] = "3"
        await asyncio.sleep(0.05)
        await follower.close()
        return reloaded

    assert asyncio.run(run()) == ["a"]


def test_a_missing_object_that_appears_reloads() -> None:
    async def run() -> list[str]:
        reloaded: list[str] = []

        async def reload(names: Any, trigger: str) -> None:
            reloaded.extend(names)

        fake = FakeKube({})
        follower = keymaterial.Follower(
            fake,  # type: ignore[arg-type]
            interval=0.01,
            reload=reload,
            watch=False,
        )
        follower.note("a", {KEY: keymaterial.MISSING})
        await asyncio.sleep(0.05)
        assert reloaded == []
        fake.versions[KEY] = "1"
        await asyncio.sleep(0.05)
        await follower.close()
        return reloaded

    assert asyncio.run(run()) == ["a"]
