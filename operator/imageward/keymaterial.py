"""Key material ImagePolicies reference (key.secretRef Secrets, keyless trustedRoot
ConfigMaps), followed so that a rotation reaches the policies, in every replica.

What a policy references is learnt while it loads: `Runtime.load_policy` notes every
object read and the resourceVersion it had (`note`). Each distinct object is then
followed once, whatever the number of policies using it:

- by a watch of that one object (`fieldSelector=metadata.name=<name>`), where the
  operator may watch it (asked with a SelfSubjectAccessReview, never by trying): RBAC
  authorises such a watch by resourceNames, so an admin can grant it object by object
  (chart value `keyMaterial.watch`) without the right to list or watch every Secret;
- otherwise by one `get` per object every `settings.policy.key_material_refresh`
  seconds, in one loop for all policies (the chart grants only `get` on Secrets and
  ConfigMaps: what cannot be watched is read on a timer, and only what is referenced).

When an object's resourceVersion differs from the one a policy was loaded with, the
policies using it are loaded again (`reload`). A read that failed (not a 404) is noted
without a version, so the next sight of the object retries the policy: a policy made
unusable by an outage comes back without waiting for a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from imageward import kube, metrics
from imageward.prepull import reflector

logger = logging.getLogger(__name__)

SECRET = "Secret"
CONFIG_MAP = "ConfigMap"

#: What a load saw of an object: its resourceVersion, MISSING (404) or UNKNOWN (an error).
MISSING = ""
UNKNOWN = "?"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Ref:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def build_version(body: Mapping[str, Any] | None) -> str:
    """What `note` records of an object read: its resourceVersion, or MISSING."""
    if body is None:
        return MISSING
    return str((body.get("metadata") or {}).get("resourceVersion") or UNKNOWN)


async def read_object(client: kube.Kube, ref: Ref) -> dict[str, Any] | None:
    """The referenced Secret or ConfigMap (None: it does not exist)."""
    if ref.kind == SECRET:
        return await client.read_secret(ref.namespace, ref.name)
    return await client.read_config_map(ref.namespace, ref.name)


Reload = Callable[[Sequence[str], str], Awaitable[None]]
"""Load these policies again (their names), for this trigger (watch, poll)."""


class Follower:
    def __init__(
        self, client: kube.Kube, *, interval: float, reload: Reload, watch: bool = True
    ) -> None:
        self.kube = client
        self.interval = interval
        self.reload = reload
        self.watch = watch
        self.seen: dict[Ref, str] = {}
        """The version each followed object had when its policies were last loaded."""
        self.users: dict[Ref, set[str]] = {}
        self.uses: dict[str, set[Ref]] = {}
        self.watched: dict[Ref, reflector.Reflector[str]] = {}
        self.polled: set[Ref] = set()
        self._probing: set[Ref] = set()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what policies use -----------------------------------------------------------------

    def note(self, policy: str, reads: Mapping[Ref, str]) -> None:
        """`policy` was loaded reading these objects at these versions."""
        for ref in self.uses.get(policy, set()) - set(reads):
            self._drop_user(ref, policy)
        self.uses[policy] = set(reads)
        if not reads:
            del self.uses[policy]
        for ref, version in reads.items():
            self.users.setdefault(ref, set()).add(policy)
            self.seen[ref] = version
            self._follow(ref)

    def forget(self, policy: str) -> None:
        for ref in self.uses.pop(policy, set()):
            self._drop_user(ref, policy)

    def _drop_user(self, ref: Ref, policy: str) -> None:
        users = self.users.get(ref)
        if users is None:
            return
        users.discard(policy)
        if users:
            return
        del self.users[ref]
        self.seen.pop(ref, None)
        self.polled.discard(ref)
        watched = self.watched.pop(ref, None)
        if watched is not None:
            self._spawn(watched.close())

    # -- following -------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _follow(self, ref: Ref) -> None:
        if ref in self.watched or ref in self.polled or ref in self._probing:
            return
        if not self.watch:
            self._poll(ref)
            return
        self._probing.add(ref)
        self._spawn(self._start_watch(ref))

    def _poll(self, ref: Ref) -> None:
        self.polled.add(ref)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="key material poll"
            )

    def _list_fn(self, ref: Ref) -> Any:
        core = self.kube.core
        return (
            core.list_namespaced_secret if ref.kind == SECRET else core.list_namespaced_config_map
        )

    async def _start_watch(self, ref: Ref) -> None:
        """A watch of the one object where RBAC allows it, else a place in the poll."""
        try:
            selector = f"metadata.name={ref.name}"
            resource = "secrets" if ref.kind == SECRET else "configmaps"
            allowed = all(
                [
                    await self.kube.may(verb, resource, namespace=ref.namespace, name=ref.name)
                    for verb in ("list", "watch")
                ]
            )
            if not allowed:
                logger.info("%s may not be watched: read every %.0fs", ref, self.interval)
                if ref in self.users:
                    self._poll(ref)
                return
            if ref not in self.users:
                return

            def changed(_key: str, _before: Any, after: Any) -> None:
                self._seen_now(ref, after if after is not None else MISSING, "watch")

            watched: reflector.Reflector[str] = reflector.Reflector(
                self.kube,
                what=str(ref),
                list_fn=self._list_fn(ref),
                args=(ref.namespace,),
                field_selector=selector,
                project=build_version,
                max_items=1,
                on_update=changed,
            )
            self.watched[ref] = watched
            await watched.start()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the watch retries by itself; a failed probe polls instead
            logger.warning("following %s: %s; read every %.0fs instead", ref, e, self.interval)
            if ref in self.users and ref not in self.watched:
                self._poll(ref)
        finally:
            self._probing.discard(ref)

    def _seen_now(self, ref: Ref, version: str, trigger: str) -> None:
        if ref not in self.users or self.seen.get(ref) == version:
            return
        self.seen[ref] = version
        policies = sorted(self.users.get(ref, ()))
        logger.info("%s changed: loading %s again", ref, ", ".join(policies))
        metrics.policy_reloads.labels(trigger=trigger).inc(len(policies))
        self._spawn(self.reload(policies, trigger))

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for ref in sorted(self.polled):
                try:
                    body = await read_object(self.kube, ref)
                except kube.KubeError as e:
                    logger.info("reading %s: %s", ref, e)
                    continue
                self._seen_now(ref, build_version(body), "poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for watched in list(self.watched.values()):
            await watched.close()
        self.watched.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
