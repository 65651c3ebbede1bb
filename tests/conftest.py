"""Session fixtures: one real local control plane (and registries, containerd) per run.

Tests marked `cluster` use them. `make test` and CI run everything; while iterating,
`pytest -m "not cluster"` runs only the pure unit tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from imageward.localcluster import containerd, controlplane, cosign, registries


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


@pytest.fixture(scope="session")
def registry_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registries.Registries]:
    """The three real registry variants: anonymous, htpasswd (Basic) and token (Bearer)."""
    with registries.start_all(workdir=tmp_path_factory.mktemp("registries")) as started:
        yield started


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[containerd.Containerd]:
    with containerd.Containerd() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def cosign_tool(tmp_path_factory: pytest.TempPathFactory) -> cosign.Cosign:
    return cosign.Cosign(tmp_path_factory.mktemp("cosign"))
