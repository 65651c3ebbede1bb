"""The operator's long-lived state and the effectful services handlers call.

Built once at start-up from Settings; `main.py` handlers stay thin by delegating here.
Pure decisions live in `policy/`, `admission/`, `signatures/`, `prepull/`; this module
only fetches what they need (policies' key material, pull secrets, namespace labels)
with short-lived caches, and posts Events. Policies are followed by a watch, and the
key material they reference by `keymaterial.Follower` (a watch per object where RBAC
allows it, else one read per object per interval), in every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import pathlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cachetools
import kubernetes

from imageward import (
    checker,
    constants,
    errors,
    imagesource,
    keymaterial,
    kube,
    policystore,
    settings,
)
from imageward.admission import decisions, workloads
from imageward.exceptions import store as exceptions_store
from imageward.policy import model as policy_model
from imageward.registry import auth as registry_auth

logger = logging.getLogger(__name__)

#: imagePullSecrets read per review (the pod's, then its ServiceAccount's): each is a
#: Secret GET outside the admission deadline and an entry in the lookup cache.
MAX_PULL_SECRETS = 32
_LOOKUP_TTL = 30.0  # seconds a Secret, ServiceAccount or Namespace read is reused


def load_operator_credentials(config: settings.Settings) -> list[registry_auth.DockerConfig]:
    """The operator's own docker config, scoped to `docker_config_registries` (if set):
    tried for every pod's images after the pod's own pull secrets."""
    if not config.docker_config:
        return []
    path = pathlib.Path(config.docker_config)
    parsed = registry_auth.parse_docker_config(path.read_bytes(), source=str(path))
    return [registry_auth.build_scoped_config(parsed, config.docker_config_registries)]


class Runtime:
    def __init__(
        self,
        config: settings.Settings,
        kube_api: kube.Kube,
        source: imagesource.RegistryImageSource,
        operator_credentials: Sequence[registry_auth.DockerConfig] = (),
    ) -> None:
        self.settings = config
        self.kube = kube_api
        self.source = source
        self.store = policystore.PolicyStore()
        #: ImagePolicyExceptions, followed by a watch once `exceptions.start()` ran.
        self.exceptions = exceptions_store.ExceptionCache()
        self.operator_credentials = tuple(operator_credentials)
        self._lookups: cachetools.TTLCache[tuple[str, ...], Any] = cachetools.TTLCache(
            maxsize=4096, ttl=_LOOKUP_TTL
        )
        self._background: set[asyncio.Task[None]] = set()
        self._bodies: dict[str, Mapping[str, Any]] = {}
        self._signals: dict[str, asyncio.Event] = {}
        registry = config.registry
        ttls = (
            config.admission.decision_cache_ttl,
            registry.tag_cache_ttl,
            registry.signature_cache_ttl,
            registry.negative_cache_ttl,
        )
        #: Outcomes given again to reviews asking the same question within a moment.
        self.decisions = decisions.DecisionMemo(min(ttls) if min(ttls) > 0 else 0.0)
        self.key_material = keymaterial.Follower(
            kube_api, interval=config.policy.key_material_refresh, reload=self._reload_policies
        )

    @classmethod
    def build(cls, config: settings.Settings) -> Runtime:
        return cls(
            config,
            kube.Kube(kube.build_api_client()),
            imagesource.RegistryImageSource(config.registry),
            load_operator_credentials(config),
        )

    async def close(self) -> None:
        await self.key_material.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.exceptions.close()
        await self.source.client.close()
        self.kube.close()

    # -- policies ---------------------------------------------------------------------------

    async def load_policy(self, body: Mapping[str, Any]) -> policystore.LoadedPolicy:
        """Load a policy (reading its key material), put it in the store, and note what
        it read for the key-material follower."""
        reads: dict[keymaterial.Ref, str] = {}

        async def read(ref: keymaterial.Ref) -> dict[str, Any] | None:
            try:
                body = await keymaterial.read_object(self.kube, ref)
            except kube.KubeError:
                reads[ref] = keymaterial.UNKNOWN
                raise
            reads[ref] = keymaterial.build_version(body)
            return body

        async def read_secret(ref: policy_model.SecretKeyRef) -> bytes | None:
            secret = await read(keymaterial.Ref(keymaterial.SECRET, ref.namespace, ref.name))
            return policystore.decode_secret_value(secret, ref.key)

        async def read_config_map(ref: policy_model.ConfigMapKeyRef) -> str | None:
            config_map = await read(
                keymaterial.Ref(keymaterial.CONFIG_MAP, ref.namespace, ref.name)
            )
            value = ((config_map or {}).get("data") or {}).get(ref.key)
            return value if isinstance(value, str) else None

        loaded = await policystore.load_policy(
            body, read_secret=read_secret, read_config_map=read_config_map
        )
        self.store.put(loaded)
        self._bodies[loaded.name] = body
        self.key_material.note(loaded.name, reads)
        return loaded

    def _unchanged(self, body: Mapping[str, Any]) -> bool:
        """A policy event that changes nothing loaded (its status, its metadata): the
        spec's generation is the one in the store. Key material is the follower's."""
        metadata = body.get("metadata") or {}
        name = metadata.get("name")
        loaded = self.store.get(name) if isinstance(name, str) else None
        if loaded is None or loaded.generation != metadata.get("generation"):
            return False
        self._bodies[loaded.name] = body
        return True

    def remove_policy(self, name: str) -> None:
        self.store.remove(name)
        self._bodies.pop(name, None)
        self.key_material.forget(name)
        signal = self._signals.pop(name, None)
        if signal is not None:
            signal.set()

    def policy_signal(self, name: str) -> asyncio.Event:
        """Set when the policy was loaded again because its key material changed (its
        status may have to change; changes of the policy itself are Kopf's handlers')."""
        signal = self._signals.get(name)
        if signal is None:
            signal = self._signals[name] = asyncio.Event()
        return signal

    async def _reload_policies(self, names: Sequence[str], trigger: str) -> None:
        for name in names:
            body = self._bodies.get(name)
            if body is not None:
                await self.load_policy(body)
                self.policy_signal(name).set()

    async def load_all_policies(self) -> str:
        """Load every ImagePolicy (before the webhook serves, so a restart never fails
        open); drop those gone. Returns the list's resourceVersion to watch from."""
        listing = await self.kube.call(
            "list ImagePolicies",
            self.kube.custom.list_cluster_custom_object,
            constants.GROUP,
            constants.VERSION,
            constants.IMAGEPOLICY_PLURAL,
        )
        items = (listing or {}).get("items") or []
        names = set()
        for item in items:
            names.add((await self.load_policy(item)).name)
        for stale in {p.name for p in self.store.snapshot()} - names:
            self.remove_policy(stale)
        resource_version: str = ((listing or {}).get("metadata") or {}).get("resourceVersion", "")
        return resource_version

    async def follow_policies(self, resource_version: str) -> None:
        """Forever: keep the store current from a watch of ImagePolicies.

        Kopf's handlers only run in the replica that holds the peering lead; the other
        replica serves the webhook too, so every replica follows policies itself.
        """
        while True:
            try:
                # A watch ends after its timeout: go on from the last version seen.
                resource_version = await self._watch_policies(resource_version)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the watch broke (410 Gone, network): list again
                logger.info("ImagePolicy watch restarts: %s", e)
            await asyncio.sleep(1.0)
            try:
                resource_version = await self.load_all_policies()
            except kube.KubeError as e:
                logger.warning("could not list ImagePolicies: %s", e)

    async def _watch_policies(self, resource_version: str) -> str:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]

        def hand(item: dict[str, Any] | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
                loop.call_soon_threadsafe(events.put_nowait, item)

        def stream() -> None:
            # The client's watch is blocking: run it in a thread, hand events over.
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    self.kube.custom.list_cluster_custom_object,
                    constants.GROUP,
                    constants.VERSION,
                    constants.IMAGEPOLICY_PLURAL,
                    resource_version=resource_version,
                    timeout_seconds=60,
                ):
                    hand(event)
            except BaseException as e:
                hand(e)
            else:
                hand(None)

        # A daemon thread, not the loop's executor: a blocking read cannot be interrupted,
        # and the process must be able to exit while one is pending.
        threading.Thread(target=stream, name="imagepolicy-watch", daemon=True).start()
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                body = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise kube.KubeError("watch ImagePolicies", body.get("code"), str(body))
                resource_version = (body.get("metadata") or {}).get(
                    "resourceVersion", resource_version
                )
                if event.get("type") == "DELETED":
                    self.remove_policy((body.get("metadata") or {}).get("name", ""))
                elif event.get("type") in ("ADDED", "MODIFIED") and not self._unchanged(body):
                    await self.load_policy(body)
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]  # the thread ends at its next event or timeout
        return resource_version

    # -- admission inputs --------------------------------------------------------------------

    async def _cached(self, key: tuple[str, ...], fetch: Any) -> Any:
        if key in self._lookups:
            return self._lookups[key]
        value = await fetch()
        self._lookups[key] = value
        return value

    async def namespace_labels(self, namespace: str | None) -> dict[str, str]:
        if not namespace:
            return {}
        body = await self._cached(("ns", namespace), lambda: self.kube.read_namespace(namespace))
        labels = ((body or {}).get("metadata") or {}).get("labels") or {}
        return dict(labels)

    async def _pull_secret(self, namespace: str, name: str) -> registry_auth.DockerConfig | None:
        async def fetch() -> registry_auth.DockerConfig | None:
            secret = await self.kube.read_secret(namespace, name)
            if secret is None:
                return None
            try:
                return registry_auth.parse_pull_secret(secret)
            except errors.ImagewardError as e:
                logger.warning("pull secret %s/%s is unusable: %s", namespace, name, e)
                return None

        result: registry_auth.DockerConfig | None = await self._cached(
            ("secret", namespace, name), fetch
        )
        return result

    def _inputs_cached(self, view: workloads.PodView) -> bool:
        """Whether the namespace and ServiceAccount reads of `view` are cached (its pull
        secrets are read one after the other anyway)."""
        namespace = view.namespace
        if not namespace:
            return True
        return ("ns", namespace) in self._lookups and (
            "sa",
            namespace,
            view.service_account,
        ) in self._lookups

    async def credentials_for(self, view: workloads.PodView) -> list[registry_auth.DockerConfig]:
        """The pod's imagePullSecrets, then its ServiceAccount's, then the operator's."""
        namespace = view.namespace or ""
        names = list(view.image_pull_secrets)
        if namespace:
            account = await self._cached(
                ("sa", namespace, view.service_account),
                lambda: self.kube.read_service_account(namespace, view.service_account),
            )
            for entry in (account or {}).get("imagePullSecrets") or []:
                if len(names) > MAX_PULL_SECRETS:
                    break  # the `in` below is quadratic in a hostile list's length
                name = entry.get("name") if isinstance(entry, Mapping) else None
                if isinstance(name, str) and name not in names:
                    names.append(name)
        if len(names) > MAX_PULL_SECRETS:
            logger.warning(
                "a pod in namespace %r with ServiceAccount %r names more than %d "
                "imagePullSecrets (its own and its ServiceAccount's); only the first %d "
                "are read",
                namespace,
                view.service_account,
                MAX_PULL_SECRETS,
                MAX_PULL_SECRETS,
            )
            names = names[:MAX_PULL_SECRETS]
        found = [await self._pull_secret(namespace, name) for name in names] if namespace else []
        return [c for c in found if c is not None] + list(self.operator_credentials)

    async def check_view(
        self, view: workloads.PodView, *, deadline: float | None = None
    ) -> checker.Outcome:
        started = time.monotonic()
        budget = self.settings.admission.deadline if deadline is None else deadline
        if self._inputs_cached(view):
            # Both from the lookup cache, neither suspends: two tasks fewer per review.
            namespace_labels = await self.namespace_labels(view.namespace)
            credentials = await self.credentials_for(view)
        else:
            namespace_labels, credentials = await asyncio.gather(
                self.namespace_labels(view.namespace), self.credentials_for(view)
            )
        snapshot = self.store.snapshot()
        exceptions = self.exceptions.for_namespace(view.namespace)
        memo = self.decisions
        key = decisions.build_key(view, namespace_labels) if memo.enabled else None

        async def check(tally: list[Any]) -> checker.Outcome:
            remaining = max(0.1, budget - (time.monotonic() - started))
            return await checker.check_images(
                view.images,
                snapshot,
                checker.Context(
                    namespace_labels=namespace_labels,
                    pod_labels=view.pod_labels,
                    platform=workloads.parse_platform(view),
                    credentials=credentials,
                    namespace=view.namespace,
                    exceptions=exceptions,
                ),
                source=self.source,
                deadline=remaining,
                tally=tally,
            )

        if key is None:
            return await check([])
        return await memo.decide(
            key,
            check,
            snapshot=snapshot,
            credentials=credentials,
            exceptions=exceptions,
            started=started,
        )

    # -- events ------------------------------------------------------------------------------

    def post_event(
        self,
        *,
        namespace: str,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        type_: str = "Warning",
    ) -> None:
        """Post an Event without delaying the caller; failures are logged, never raised."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "imageward-", "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "imageward"},
            "reportingComponent": "imageward.io/operator",
            "reportingInstance": "imageward",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        async def send() -> None:
            try:
                await self.kube.create_event(namespace, event)
            except kube.KubeError as e:
                logger.warning("could not post Event %s: %s", reason, e)

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
