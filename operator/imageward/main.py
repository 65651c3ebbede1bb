"""Every Kopf handler of imageward, and nothing else: each one is a thin call into a
plain module (style.md). Decisions live in `policy/`, `signatures/`, `prepull/`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from imageward import metrics, settings

logger = logging.getLogger(__name__)

#: Set by `operator_runner.run` before the operator starts; tests may replace it.
SETTINGS = settings.Settings()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Kopf's own readers: in-cluster ServiceAccount first, then KUBECONFIG (read when
    # called, unlike the kubernetes client which fixes its default path at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("settings", SETTINGS)
    # Handler log lines are not Events (Kopf >= 1.44); Events are posted on purpose only.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "imageward.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="imageward.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="imageward.io", key="last-handled-configuration"
    )
    settings.peering.name = "imageward"
    settings.peering.mandatory = False
    if config.metrics_port:
        metrics.start_http_server(config.metrics_port)
        logger.info("metrics on :%d/metrics", config.metrics_port)
