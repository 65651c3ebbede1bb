"""Session fixtures: one real local control plane (and registries, containerd) per run.

Tests marked `cluster` use them. `make test` and CI run everything; while iterating,
`pytest -m "not cluster"` runs only the pure unit tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from imageward.localcluster import controlplane


@pytest.fixture(scope="session")
def cluster() -> Iterator[controlplane.ControlPlane]:
    with controlplane.ControlPlane(nodes=3) as plane:
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        try:
            yield plane
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@pytest.fixture
def namespace(cluster: controlplane.ControlPlane) -> Iterator[str]:
    """A fresh namespace per test (its default ServiceAccount already made)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
