"""The one place imageward talks to the Kubernetes API outside Kopf's own machinery.

A thin async layer over the official client: every call runs in a worker thread and
returns plain dicts (the shapes the pure modules read), 404 becomes None, and errors carry
the verb and object they were about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kubernetes

from imageward import errors

if TYPE_CHECKING:
    import kopf

_SERVICE_ACCOUNT_DIR = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(errors.ImagewardError):
    def __init__(self, action: str, status: int | None, reason: str) -> None:
        self.action = action
        self.status = status
        super().__init__(f"{action}: HTTP {status}: {reason}" if status else f"{action}: {reason}")


def build_in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The apiserver URL a pod is given: KUBERNETES_SERVICE_HOST and _PORT, which the
    kubelet sets in every container (also with enableServiceLinks false), as client-go and
    the official Python client read them. None outside a pod (or if either is missing).
    Kopf's own in-cluster login names https://kubernetes.default.svc instead, which needs
    cluster DNS to resolve."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        return None
    if ":" in host or "%" in host:  # IPv6, as Go's net.JoinHostPort brackets it
        host = f"[{host}]"
    return f"https://{host}:{port}"


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's login (`main.login` is the registered handler): in-cluster ServiceAccount
    first, then KUBECONFIG (read when called, unlike the kubernetes client which fixes its
    default path at import). In a pod, the apiserver address the kubelet gives (as
    imageward's own client uses it), not Kopf's https://kubernetes.default.svc, which
    fails without cluster DNS."""
    import kopf  # here: the agent and the CLI import this module and never log in

    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is None:
        return kopf.login_with_kubeconfig(**kwargs)
    server = build_in_cluster_server(os.environ)
    return dataclasses.replace(in_cluster, server=server) if server else in_cluster


def build_api_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG (read now, not at import)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and (_SERVICE_ACCOUNT_DIR / "token").exists():
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        path = (
            kubeconfig or os.environ.get("KUBECONFIG") or str(pathlib.Path.home() / ".kube/config")
        )
        kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Async helpers over one ApiClient; safe to share between handlers."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.authorization = kubernetes.client.AuthorizationV1Api(api_client)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    async def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call in a thread; decode the JSON body; 404 -> None."""

        def call() -> Any:
            response = fn(*args, _preload_content=False, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
            return json.loads(data) if data else None

        try:
            return await asyncio.to_thread(call)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise KubeError(action, e.status, _reason(e)) from e
        except (OSError, ValueError) as e:
            raise KubeError(action, None, str(e)) from e

    async def call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Any client call by its method, e.g. `kube.call("list pods", kube.core.list_...)`."""
        return await self._call(action, fn, *args, **kwargs)

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get Secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace
        )
        return result

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Secret; False when one of that name exists already (another replica)."""
        try:
            await self._call(
                f"create Secret {namespace}/{body['metadata']['name']}",
                self.core.create_namespaced_secret,
                namespace,
                body,
            )
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def replace_secret(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Replace a Secret; the body's resourceVersion makes a concurrent change fail (409)."""
        await self._call(
            f"replace Secret {namespace}/{name}",
            self.core.replace_namespaced_secret,
            name,
            namespace,
            body,
        )

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get ConfigMap {namespace}/{name}",
            self.core.read_namespaced_config_map,
            name,
            namespace,
        )
        return result

    async def create_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            f"create ConfigMap {namespace}/{body['metadata']['name']}",
            self.core.create_namespaced_config_map,
            namespace,
            body,
        )
        return result

    async def replace_config_map(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace a ConfigMap; the body's resourceVersion makes a concurrent change fail (409)."""
        result: dict[str, Any] = await self._call(
            f"replace ConfigMap {namespace}/{name}",
            self.core.replace_namespaced_config_map,
            name,
            namespace,
            body,
        )
        return result

    async def delete_config_map(self, namespace: str, name: str) -> bool:
        """Delete a ConfigMap; False when it was not there."""
        result = await self._call(
            f"delete ConfigMap {namespace}/{name}",
            self.core.delete_namespaced_config_map,
            name,
            namespace,
        )
        return result is not None

    async def delete_daemon_set(self, namespace: str, name: str) -> bool:
        """Delete a DaemonSet and, in the background, its pods; False when it was not there."""
        result = await self._call(
            f"delete DaemonSet {namespace}/{name}",
            self.apps.delete_namespaced_daemon_set,
            name,
            namespace,
            propagation_policy="Background",
        )
        return result is not None

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get Pod {namespace}/{name}", self.core.read_namespaced_pod, name, namespace
        )
        return result

    async def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A strategic merge patch of a pod's status subresource (conditions merge by type)."""
        result: dict[str, Any] | None = await self._call(
            f"patch Pod {namespace}/{name} status",
            self.core.patch_namespaced_pod_status,
            name,
            namespace,
            patch,
            _content_type="application/strategic-merge-patch+json",
        )
        return result

    async def read_node(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get Node {name}", self.core.read_node, name
        )
        return result

    async def read_namespaced_custom_object(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get {plural}.{group} {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
        )
        return result

    async def patch_namespaced_custom_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """A JSON merge patch of a custom object's status subresource; None when the
        object is gone."""
        result: dict[str, Any] | None = await self._call(
            f"patch {plural}.{group} {namespace}/{name} status",
            self.custom.patch_namespaced_custom_object_status,
            group,
            version,
            namespace,
            plural,
            name,
            dict(patch),
            _content_type="application/merge-patch+json",
        )
        return result

    async def patch_cluster_custom_status(
        self, group: str, version: str, plural: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A JSON merge patch of a cluster-scoped custom object's status subresource."""
        result: dict[str, Any] | None = await self._call(
            f"patch {plural}.{group} {name} status",
            self.custom.patch_cluster_custom_object_status,
            group,
            version,
            plural,
            name,
            dict(patch),
            _content_type="application/merge-patch+json",
        )
        return result

    async def may(
        self, verb: str, resource: str, *, namespace: str, name: str, group: str = ""
    ) -> bool:
        """Whether this identity may `verb` the named object (a SelfSubjectAccessReview:
        asks instead of trying, so nothing is refused and logged as forbidden)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "namespace": namespace,
                    "name": name,
                }
            },
        }
        answer = await self._call(
            f"review {verb} {resource} {namespace}/{name}",
            self.authorization.create_self_subject_access_review,
            review,
        )
        return bool(((answer or {}).get("status") or {}).get("allowed"))

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get ServiceAccount {namespace}/{name}",
            self.core.read_namespaced_service_account,
            name,
            namespace,
        )
        return result

    async def read_namespace(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            f"get Namespace {name}", self.core.read_namespace, name
        )
        return result

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        await self._call(
            f"create Event in {namespace}", self.core.create_namespaced_event, namespace, event
        )

    async def read_webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        fn = (
            self.admission.read_validating_webhook_configuration
            if kind == "ValidatingWebhookConfiguration"
            else self.admission.read_mutating_webhook_configuration
        )
        result: dict[str, Any] | None = await self._call(f"get {kind} {name}", fn, name)
        return result

    async def create_webhook_configuration(self, kind: str, body: Mapping[str, Any]) -> None:
        fn = (
            self.admission.create_validating_webhook_configuration
            if kind == "ValidatingWebhookConfiguration"
            else self.admission.create_mutating_webhook_configuration
        )
        await self._call(f"create {kind} {body['metadata']['name']}", fn, body)

    async def patch_webhook_configuration(
        self, kind: str, name: str, patch: list[dict[str, Any]]
    ) -> None:
        fn = (
            self.admission.patch_validating_webhook_configuration
            if kind == "ValidatingWebhookConfiguration"
            else self.admission.patch_mutating_webhook_configuration
        )
        await self._call(f"patch {kind} {name}", fn, name, patch)

    async def delete_webhook_configuration(self, kind: str, name: str) -> None:
        fn = (
            self.admission.delete_validating_webhook_configuration
            if kind == "ValidatingWebhookConfiguration"
            else self.admission.delete_mutating_webhook_configuration
        )
        await self._call(f"delete {kind} {name}", fn, name)


def _reason(error: kubernetes.client.ApiException) -> str:
    try:
        body = json.loads(error.body or "")
    except ValueError:
        return str(error.reason)
    return str(body.get("message") or error.reason)
