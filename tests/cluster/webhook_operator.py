"""A minimal Kopf operator for the harness test: one validating webhook on ConfigMaps.

Loaded by `kopf run` inside KopfRunner; the test passes the port and certificate paths
through environment variables.
"""

from __future__ import annotations

import os
from typing import Any

import kopf


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Kopf's own minimal kubeconfig reader: reads KUBECONFIG when called, not at import.
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1",
        host="127.0.0.1",
        port=int(os.environ["HARNESS_WEBHOOK_PORT"]),
        certfile=os.environ["HARNESS_WEBHOOK_CERT"],
        pkeyfile=os.environ["HARNESS_WEBHOOK_KEY"],
        cafile=os.environ["HARNESS_WEBHOOK_CA"],
    )
    settings.admission.managed = os.environ["HARNESS_WEBHOOK_CONFIG"]


@kopf.on.validate("configmaps", id="refuse-forbidden", operations=["CREATE"])
def refuse_forbidden(body: kopf.Body, **_: Any) -> None:
    if "forbidden" in (body.get("data") or {}):
        raise kopf.AdmissionError("harness webhook: key 'forbidden' is not allowed", code=403)
