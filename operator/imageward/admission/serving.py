"""The webhook server's certificates and the webhook configurations that point at it.

Three ways to get certificates: a directory someone else fills (cert-manager), a Secret
shared by replicas (the chart's default; the operator creates and renews it), or, with
neither, material made in memory for this process (`imageward dev`, tests).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import urllib.parse
from typing import Any

from imageward import kube, settings
from imageward.admission import tls, webhooks

logger = logging.getLogger(__name__)


def _names(config: settings.Settings) -> tuple[list[str], list[str]]:
    admission = config.admission
    if admission.service:
        return tls.build_service_dns_names(admission.service, config.namespace), []
    host = urllib.parse.urlsplit(admission.url).hostname if admission.url else admission.host
    host = host or "127.0.0.1"
    if host.replace(".", "").isdigit() or ":" in host:
        return ["localhost"], [host]
    return [host], []


def endpoint(config: settings.Settings) -> webhooks.Endpoint:
    admission = config.admission
    if admission.service:
        return webhooks.Endpoint(service_name=admission.service, service_namespace=config.namespace)
    url = admission.url or f"https://{admission.host}:{admission.port}"
    return webhooks.Endpoint(url=url)


async def obtain_material(config: settings.Settings, kube_api: kube.Kube) -> tls.Material:
    admission = config.admission
    dns_names, ips = _names(config)
    if admission.cert_dir:
        directory = pathlib.Path(admission.cert_dir)
        return tls.Material(
            ca_cert_pem=(directory / "ca.crt").read_bytes(),
            ca_key_pem=b"",
            cert_pem=(directory / "tls.crt").read_bytes(),
            key_pem=(directory / "tls.key").read_bytes(),
        )
    if not admission.tls_secret:
        return tls.build_material(dns_names, ips)
    return await _secret_material(config, kube_api, dns_names, ips)


async def _secret_material(
    config: settings.Settings, kube_api: kube.Kube, dns_names: list[str], ips: list[str]
) -> tls.Material:
    name, namespace = config.admission.tls_secret or "", config.namespace
    for _ in range(3):  # replicas may race; the loser re-reads what the winner wrote
        secret = await kube_api.read_secret(namespace, name)
        current = tls.Material.from_secret_data((secret or {}).get("data") or {})
        if secret is not None and current is not None and not current.needs_renewal():
            return current
        fresh = (
            tls.build_renewed(current, dns_names, ips)
            if current
            else tls.build_material(dns_names, ips)
        )
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": fresh.to_secret_data(),
        }
        try:
            if secret is None:
                if await kube_api.create_secret(namespace, body):
                    return fresh
                continue
            body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
            await kube_api.replace_secret(namespace, name, body)
            logger.info("renewed the webhook serving certificate in Secret %s/%s", namespace, name)
            return fresh
        except kube.KubeError as e:
            if e.status != 409:
                raise
    raise kube.KubeError(f"obtain TLS Secret {namespace}/{name}", 409, "kept conflicting")


async def apply_configurations(
    config: settings.Settings, kube_api: kube.Kube, ca_bundle: bytes
) -> None:
    """Create missing configurations (when allowed) and keep every caBundle current."""
    admission = config.admission
    excluded = [*admission.excluded_namespaces, config.namespace]
    target = endpoint(config)
    wanted = (
        (
            webhooks.VALIDATING_KIND,
            admission.validating_configuration,
            webhooks.build_validating_configuration,
        ),
        (
            webhooks.MUTATING_KIND,
            admission.mutating_configuration,
            webhooks.build_mutating_configuration,
        ),
    )
    for kind, name, build in wanted:
        if not name:
            continue  # not installed (the mutating one, when pinning is switched off)
        existing = await kube_api.read_webhook_configuration(kind, name)
        if existing is None:
            if not admission.create_configurations:
                logger.warning("%s %s does not exist; webhooks are not called", kind, name)
                continue
            body = build(
                name,
                target,
                ca_bundle,
                excluded_namespaces=excluded,
                timeout_seconds=admission.webhook_timeout,
                failure_policy=admission.failure_policy,
                labels={"app.kubernetes.io/managed-by": "imageward"},
            )
            await kube_api.create_webhook_configuration(kind, body)
            logger.info("created %s %s", kind, name)
            continue
        patch = webhooks.build_ca_bundle_patch(existing, ca_bundle)
        if patch:
            await kube_api.patch_webhook_configuration(kind, name, patch)
            logger.info("patched the caBundle of %s %s", kind, name)


async def keep_current(
    config: settings.Settings,
    kube_api: kube.Kube,
    directory: pathlib.Path,
    material: tls.Material,
) -> None:
    """Forever: renew before expiry, or pick up what another replica renewed.

    New files are written atomically; Kopf's server reloads them (file_check_interval)
    and keeps serving, and the caBundle is patched only if the CA itself changed.
    """
    current = material
    while True:
        await asyncio.sleep(config.admission.tls_check_interval)
        try:
            if config.admission.tls_secret:
                fresh = await _secret_material(config, kube_api, *_names(config))
            elif current.needs_renewal():
                fresh = tls.build_renewed(current, *_names(config))
            else:
                continue
            if fresh.cert_pem == current.cert_pem:
                continue
            fresh.write(directory)
            if fresh.ca_cert_pem != current.ca_cert_pem:
                await apply_configurations(config, kube_api, fresh.ca_cert_pem)
            logger.info("serving certificate replaced; valid until %s", fresh.not_after)
            current = fresh
        except kube.KubeError as e:
            logger.warning("could not check the serving certificate: %s", e)
