"""Fixtures shared by the cluster test modules (the session ones live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imageward.localcluster import controlplane, operatorimage, registries
from tests.cluster import helpers
from tests.conftest import RunningOperator


@pytest.fixture(scope="session")
def operator_image() -> operatorimage.BuiltImage:
    """The operator image, built from the Dockerfile by hack/build-image.sh: from the cache
    (~0.2 s) when its inputs are unchanged, else rebuilt (about a minute after a source
    edit; minutes cold, which `make test` does before pytest). Push it where a test needs
    it with `operatorimage.push(operator_image, registry)`."""
    return operatorimage.ensure_built()


# Module-scoped: each module that asks gets registries of its own, started in ~0.1 s.
@pytest.fixture(scope="module")
def anonymous_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registries.Registry]:
    with registries.start_anonymous(workdir=tmp_path_factory.mktemp("anonymous")) as registry:
        yield registry


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registries.Registry]:
    with registries.start_htpasswd(workdir=tmp_path_factory.mktemp("htpasswd")) as registry:
        yield registry


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registries.Registry]:
    with registries.start_token(workdir=tmp_path_factory.mktemp("token")) as registry:
        yield registry


@pytest.fixture
def anonymous(registry_set: registries.Registries) -> registries.Registry:
    """The session's anonymous registry."""
    return registry_set.anonymous


@pytest.fixture
def policies(
    cluster: controlplane.ControlPlane, imageward_operator: RunningOperator
) -> Iterator[helpers.Policies]:
    """ImagePolicies made by one test, deleted after it (the operator is running)."""
    made = helpers.Policies(cluster)
    yield made
    made.delete_all()
