"""The hostile-input corpus: what someone who can push to a registry would try, through
the real webhook (kubectl against the real apiserver) and `imageward check`, against
real registries, with images and indexes built by hand and signatures made by real
cosign. Each case asserts the decision and that the message names what was wrong.

The review of the first round found each of these open (issue "Trust decisions that
hold against an attacker who can push"); every case here was admitted by that main.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from imageward import errors, settings
from imageward.localcluster import controlplane, cosign, faultproxy, images, registries
from imageward.registry import auth, client, reference
from imageward.registry import model as registry_model
from tests import utils
from tests.cluster import helpers
from tests.cluster.test_check_cli import Check
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

DENIED = 'admission webhook "validate.imageward.io" denied the request'
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
WINDOWS_AMD64 = images.Platform("windows", "amd64")
LINUX_ARM64 = images.LINUX_ARM64


@pytest.fixture(scope="module")
def release_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"hostile-{helpers.uid()}")


@pytest.fixture
def prefix() -> str:
    return f"hostile{helpers.uid()}"


@pytest.fixture
def check(tmp_path: pathlib.Path, registry_set: registries.Registries) -> Check:
    return Check(tmp_path, registry_set)


def _dry_run(
    cluster: controlplane.ControlPlane, namespace: str, pod: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --dry-run=server`: the webhook decides, nothing is created."""
    return cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )


def _signed_only(release_key: cosign.KeyPair, **spec: Any) -> dict[str, Any]:
    return {
        "signatures": {
            "authorities": [{"name": "release", "key": {"pem": release_key.public_pem}}]
        },
        **spec,
    }


def _push_tree(registry: registries.Registry, repository: str, top: images.Manifest) -> str:
    """Push an index and everything under it (nested indexes too); returns the image."""
    client = registry.client()

    def push(manifest: images.Manifest) -> None:
        for child in manifest.children:
            push(child)
        client.push(repository, manifest)

    for child in top.children:
        push(child)
    client.push(repository, top, tag="1.0")
    return f"{registry.host}/{repository}:1.0"


def _image(name: str, platform: images.Platform, *, user: str = "65532") -> images.Manifest:
    return images.small_image(name, platform=platform, user=user)


def _with_annotations(manifest: images.Manifest, annotations: dict[str, str]) -> images.Manifest:
    return dataclasses.replace(manifest, index_annotations=tuple(sorted(annotations.items())))


def _nested(children: Sequence[images.Manifest]) -> images.Manifest:
    """An index whose only entry is another index (no platform: every node walks it)."""
    inner = images.build_index(children)
    document = {
        "schemaVersion": 2,
        "mediaType": images.OCI_INDEX,
        "manifests": [inner.descriptor()],
    }
    return images.Manifest.of(document, images.OCI_INDEX, children=(inner,))


# -- indexes: a signature counts only for what the runtime pulls ------------------------------

# Each case: (id, build(uid) -> (index, children to sign), pod spec, admitted?, text in refusal)
IndexCase = tuple[
    str,
    Callable[[str], tuple[images.Manifest, list[images.Manifest]]],
    dict[str, Any],
    bool,
    str,
]


def _mixed(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
    amd, arm = _image(f"amd-{uid}", images.LINUX_AMD64), _image(f"arm-{uid}", LINUX_ARM64)
    return images.build_index([amd, arm]), [amd]


def _duplicate(
    unsigned_first: bool,
) -> Callable[[str], tuple[images.Manifest, list[images.Manifest]]]:
    def build(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
        signed = _image(f"signed-{uid}", images.LINUX_AMD64)
        attacker = _image(f"attacker-{uid}", images.LINUX_AMD64)
        order = [attacker, signed] if unsigned_first else [signed, attacker]
        return images.build_index(order), [signed]

    return build


def _annotated(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
    amd = _image(f"amd-{uid}", images.LINUX_AMD64)
    # An attacker's arm64 image that merely claims to be an attestation.
    disguised = _with_annotations(
        _image(f"arm-{uid}", LINUX_ARM64),
        {"vnd.docker.reference.type": "attestation-manifest"},
    )
    return images.build_index([amd, disguised]), [amd]


def _nested_case(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
    # A signed amd64 entry, and an index without a platform holding an unsigned arm64
    # image: an arm64 node finds no arm64 entry at the top, so it walks the nested one.
    amd = _image(f"amd-{uid}", images.LINUX_AMD64)
    inner = images.build_index([_image(f"arm-{uid}", LINUX_ARM64)])
    document = {
        "schemaVersion": 2,
        "mediaType": images.OCI_INDEX,
        "manifests": [amd.descriptor(), inner.descriptor()],
    }
    return images.Manifest.of(document, images.OCI_INDEX, children=(amd, inner)), [amd]


def _windows(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
    linux = _image(f"linux-{uid}", images.LINUX_AMD64)
    windows = _image(f"windows-{uid}", WINDOWS_AMD64)
    return images.build_index([linux, windows]), [linux]


def _all_entries(uid: str) -> tuple[images.Manifest, list[images.Manifest]]:
    amd, arm = _image(f"amd-{uid}", images.LINUX_AMD64), _image(f"arm-{uid}", LINUX_ARM64)
    return images.build_index([amd, arm], attestations=True), [amd, arm]


AMD64_NODE = {"nodeSelector": {"kubernetes.io/arch": "amd64"}}
ARM64_NODE = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}

INDEX_CASES: list[IndexCase] = [
    ("mixed-anywhere", _mixed, {}, False, "signs linux/amd64"),
    ("mixed-on-amd64", _mixed, AMD64_NODE, True, ""),
    ("mixed-on-arm64", _mixed, ARM64_NODE, False, "no signature found"),
    ("duplicate-unsigned-first", _duplicate(True), AMD64_NODE, False, "no signature found"),
    ("duplicate-signed-first", _duplicate(False), AMD64_NODE, True, ""),
    ("annotated-entry", _annotated, {}, False, "linux/arm64/v8"),
    ("nested-index", _nested_case, {}, False, "linux/arm64/v8"),
    ("windows-pod", _windows, {"os": {"name": "windows"}}, False, "windows/amd64"),
    (
        "windows-entry-linux-pod",
        _windows,
        {"nodeSelector": {"kubernetes.io/os": "linux"}},
        True,
        "",
    ),
    ("windows-entry-any-pod", _windows, {}, False, "windows/amd64"),
    ("every-entry-signed", _all_entries, {}, True, ""),
]


@pytest.mark.parametrize(
    ("build", "spec", "admitted", "names"),
    [case[1:] for case in INDEX_CASES],
    ids=[case[0] for case in INDEX_CASES],
)
def test_index_signatures_cover_what_nodes_pull(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    prefix: str,
    build: Callable[[str], tuple[images.Manifest, list[images.Manifest]]],
    spec: dict[str, Any],
    admitted: bool,
    names: str,
) -> None:
    index, signed = build(helpers.uid())
    repository = f"{prefix}/app"
    image = _push_tree(anonymous, repository, index)
    for child in signed:
        cosign_tool.sign(f"{anonymous.host}/{repository}@{child.digest}", release_key)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], _signed_only(release_key))

    answer = _dry_run(cluster, namespace, helpers.pod("app", image, **spec))
    if admitted:
        assert answer.returncode == 0, answer.stderr
    else:
        assert answer.returncode != 0
        assert DENIED in answer.stderr
        assert f"ImagePolicy {name}: {image}" in answer.stderr
        assert "is verified by 0 of 1 authorities" in answer.stderr
        assert names in answer.stderr, answer.stderr


def test_sizes_follow_the_entry_a_windows_or_nested_node_runs(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    small = _image(f"small-{helpers.uid()}", images.LINUX_AMD64)
    big_layer = images.random_layer(3 * 1024 * 1024, seed=helpers.uid())
    big = images.build_image([big_layer], platform=LINUX_ARM64, user="65532")
    image = _push_tree(anonymous, f"{prefix}/sizes", _nested([small, big]))
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"maxCompressedSize": "1Mi"})

    anywhere = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert anywhere.returncode != 0
    assert f"ImagePolicy {name}: {image}" in anywhere.stderr
    assert "linux/arm64/v8) is 3.0MiB compressed, over maxCompressedSize 1Mi" in anywhere.stderr
    on_amd64 = _dry_run(cluster, namespace, helpers.pod("app", image, **AMD64_NODE))
    assert on_amd64.returncode == 0, on_amd64.stderr


# -- root spellings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "rules", "refused"),
    [
        ("+0", {"forbidRootUser": True}, 'runs as root (config User "+0")'),
        ("-0:0", {"forbidRootUser": True}, 'runs as root (config User "-0:0")'),
        ("000", {"forbidRootUser": True}, 'runs as root (config User "000")'),
        ("app", {"requireNumericUser": True}, "runs as named user 'app'"),
        ("app", {"forbidRootUser": True}, None),
        ("+1000", {"requireNumericUser": True}, None),
    ],
)
def test_root_spellings(
    check: Check,
    anonymous: registries.Registry,
    prefix: str,
    user: str,
    rules: dict[str, Any],
    refused: str | None,
) -> None:
    image, digest = helpers.push(
        anonymous, images.small_image(f"u-{helpers.uid()}", user=user), prefix=prefix
    )
    policy = check.policy_file(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "users"},
            "spec": {"match": {"images": [f"{anonymous.host}/{prefix}/**"]}, "rules": rules},
        }
    )
    status, report = check.json("--policy", policy, image)
    (item,) = report["images"]
    if refused is None:
        assert status == 0, report
        return
    assert status == 1
    (violation,) = item["violations"]
    assert violation["rule"] == "forbidRootUser"
    assert refused in violation["message"]
    assert digest[7:19] in violation["message"]


# -- content a pusher controls is never an outage ----------------------------------------------


def _push_legacy_sig(
    registry: registries.Registry, repository: str, digest: str, payload: bytes
) -> None:
    """A `.sig` manifest whose one simple-signing layer is `payload` (not a valid signature)."""
    layer = images.Blob.of(
        payload, SIMPLESIGNING, annotations={"dev.cosignproject.cosign/signature": "AAAA"}
    )
    manifest = images.build_artifact(
        [layer], config=images.Blob.of(b"{}", "application/vnd.oci.image.config.v1+json")
    )
    registry.client().push(repository, manifest, tag=f"sha256-{digest[7:]}.sig")


def _oversized_signature(
    registry: registries.Registry,
    repository: str,
    digest: str,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
) -> str:
    _push_legacy_sig(registry, repository, digest, random.randbytes(300 * 1024))
    return "over the limit of 262144 for one signature"


def _missing_signature_blob(
    registry: registries.Registry,
    repository: str,
    digest: str,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
) -> str:
    cosign_tool.sign(f"{registry.host}/{repository}@{digest}", release_key, legacy=True)
    client = registry.client()
    sig = client.get_manifest(repository, f"sha256-{digest[7:]}.sig").document
    client.delete_blob(repository, sig["layers"][0]["digest"])
    return "cannot be fetched"


@pytest.mark.parametrize("failure_policy", ["Fail", "Ignore"])
@pytest.mark.parametrize(
    "attack", [_oversized_signature, _missing_signature_blob], ids=["oversized", "missing"]
)
def test_hostile_signature_content_refuses_under_both_failure_policies(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    check: Check,
    prefix: str,
    failure_policy: str,
    attack: Callable[..., str],
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"s-{helpers.uid()}"), prefix=prefix
    )
    _, repository = helpers.repository_of(image)
    names = attack(anonymous, repository, digest, cosign_tool, release_key)
    rules = _signed_only(release_key)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], rules, failurePolicy=failure_policy)

    refused = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert refused.returncode != 0, refused.stderr
    assert DENIED in refused.stderr
    assert "allowed by failurePolicy Ignore" not in refused.stderr
    assert f"ImagePolicy {name}: {image}" in refused.stderr and names in refused.stderr

    policy = check.policy_file(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "cli"},
            "spec": {
                "failurePolicy": failure_policy,
                "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                "rules": rules,
            },
        }
    )
    status, report = check.json("--policy", policy, image)
    assert status == 1
    (violation,) = report["images"][0]["violations"]
    assert violation["rule"] == "signatures" and names in violation["message"]


# -- hostile Notation signatures: refusals under either failure policy, never outages ------


def _notation_authority() -> dict[str, Any]:
    from tests.unit.notation import pki

    root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))
    return {
        "signatures": {
            "authorities": [
                {
                    "name": "acme",
                    "notation": {
                        "trustStore": {"pem": root.pem.decode()},
                        "trustedIdentities": ["*"],
                    },
                }
            ]
        }
    }


def _notation_oversized(registry: registries.Registry, repository: str, digest: str) -> str:
    helpers.push_notation_referrer(registry, repository, digest, random.randbytes(300 * 1024))
    return "over the limit of 262144 for one signature"


def _notation_junk(registry: registries.Registry, repository: str, digest: str) -> str:
    helpers.push_notation_referrer(registry, repository, digest, b'{"payload": [1, 2')
    return "JWS envelope is not valid JSON"


def _notation_cbor_bomb(registry: registries.Registry, repository: str, digest: str) -> str:
    bomb = b"\xd2\x84" + b"\x81" * 5000 + b"\x00"
    helpers.push_notation_referrer(
        registry, repository, digest, bomb, media_type="application/cose"
    )
    return "COSE envelope nests or counts too many CBOR items"


def _notation_missing(registry: registries.Registry, repository: str, digest: str) -> str:
    layer = helpers.push_notation_referrer(registry, repository, digest, b"{}")
    registry.client().delete_blob(repository, layer)
    return "cannot be fetched"


@pytest.mark.parametrize("failure_policy", ["Fail", "Ignore"])
@pytest.mark.parametrize(
    "attack",
    [_notation_oversized, _notation_junk, _notation_cbor_bomb, _notation_missing],
    ids=["oversized", "junk", "cbor-bomb", "missing"],
)
def test_hostile_notation_signatures_refuse_under_both_failure_policies(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    check: Check,
    prefix: str,
    failure_policy: str,
    attack: Callable[..., str],
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"n-{helpers.uid()}"), prefix=prefix
    )
    _, repository = helpers.repository_of(image)
    names = attack(anonymous, repository, digest)
    rules = _notation_authority()
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], rules, failurePolicy=failure_policy)

    refused = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert refused.returncode != 0, refused.stderr
    assert DENIED in refused.stderr
    assert "allowed by failurePolicy Ignore" not in refused.stderr
    assert f"ImagePolicy {name}: {image}" in refused.stderr and names in refused.stderr

    policy = check.policy_file(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "cli"},
            "spec": {
                "failurePolicy": failure_policy,
                "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                "rules": rules,
            },
        }
    )
    status, report = check.json("--policy", policy, image)
    assert status == 1
    (violation,) = report["images"][0]["violations"]
    assert violation["rule"] == "signatures" and names in violation["message"], violation


def test_oversized_config_refuses_the_user_rule_under_ignore(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    # 3 MiB of labels: a config over the 2 MiB cap (the review's case was 9 MiB).
    labels = {f"pad{i}": "x" * 1000 for i in range(3 * 1024)}
    bloated = images.build_image(
        [images.random_layer(10, seed=helpers.uid())], user="65532", labels=labels
    )
    image, digest = helpers.push(anonymous, bloated, prefix=prefix)
    users = policies.apply(
        [f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True}, failurePolicy="Ignore"
    )
    refused = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert refused.returncode != 0
    assert f"ImagePolicy {users}: {image} (sha256:{digest[7:19]}…) cannot be checked for " in (
        refused.stderr
    )
    assert "over the limit of 2097152" in refused.stderr
    policies.delete_all()
    # Rules that do not read the config still decide: the layers are fine.
    policies.apply([f"{anonymous.host}/{prefix}/**"], {"maxLayers": 5}, failurePolicy="Ignore")
    assert _dry_run(cluster, namespace, helpers.pod("app", image)).returncode == 0


def test_outage_is_still_a_lookup_that_ignore_admits(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
) -> None:
    # The contrast to the above: an unreachable registry is an outage.
    from imageward.localcluster import processes

    unreachable = f"127.0.0.1:{processes.free_port()}"
    policies.apply([f"{unreachable}/**"], {"maxLayers": 10}, failurePolicy="Ignore")
    admitted = _dry_run(cluster, namespace, helpers.pod("app", f"{unreachable}/x/y:1"))
    assert admitted.returncode == 0, admitted.stderr
    assert "Warning: allowed by failurePolicy Ignore" in admitted.stderr
    assert "lookup failed" in admitted.stderr


# -- duplicate authorities, host aliases ---------------------------------------------------------


def test_the_same_key_twice_makes_the_policy_unusable(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"d-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), release_key)
    twice = {
        "signatures": {
            "threshold": 2,
            "authorities": [
                {"name": "release", "key": {"pem": release_key.public_pem}},
                {"name": "release-again", "key": {"pem": release_key.public_pem}},
            ],
        }
    }
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], twice, ready="False")
    condition = policies.ready_condition(name)
    assert condition is not None
    assert "authorities release and release-again have the same key" in condition["message"]
    refused = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert refused.returncode != 0
    assert "the policy is not usable: authorities release and release-again" in refused.stderr


@pytest.mark.parametrize("alias", ["0{port}", "00{port}"])
def test_host_aliases_do_not_escape_a_policy(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    release_key: cosign.KeyPair,
    prefix: str,
    alias: str,
) -> None:
    image, _ = helpers.push(anonymous, images.nonroot_image(f"h-{helpers.uid()}"), prefix=prefix)
    host, port = anonymous.host.rsplit(":", 1)
    aliased = image.replace(anonymous.host, f"{host}:{alias.format(port=port)}")
    assert aliased != image
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], _signed_only(release_key))
    refused = _dry_run(cluster, namespace, helpers.pod("app", aliased))
    assert refused.returncode != 0, refused.stderr
    assert f"ImagePolicy {name}: {aliased}" in refused.stderr
    assert "release: no signature found" in refused.stderr


def test_inet_aton_alias_of_the_registry_is_the_same_host(
    check: Check, anonymous: registries.Registry, prefix: str
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"a-{helpers.uid()}"), prefix=prefix)
    host, port = anonymous.host.rsplit(":", 1)
    assert host == "127.0.0.1"
    aliased = image.replace(anonymous.host, f"127.1:{port}")
    policy = check.policy_file(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "users"},
            "spec": {
                "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                "rules": {"forbidRootUser": True},
            },
        }
    )
    status, report = check.json("--policy", policy, aliased)
    assert status == 1, report
    assert report["images"][0]["violations"][0]["rule"] == "forbidRootUser"


# -- pinDigest on UPDATE and ephemeral containers ------------------------------------------------


def test_pin_digest_pins_images_an_update_or_kubectl_debug_brings(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    first, _ = helpers.push(anonymous, images.nonroot_image(f"p1-{helpers.uid()}"), prefix=prefix)
    second, second_digest = helpers.push(
        anonymous, images.nonroot_image(f"p2-{helpers.uid()}"), prefix=prefix
    )
    debug, debug_digest = helpers.push(
        anonymous, images.nonroot_image(f"p3-{helpers.uid()}"), prefix=prefix
    )
    policies.apply([f"{anonymous.host}/{prefix}/**"], {}, pinDigest=True)
    created = helpers.create(cluster, namespace, helpers.pod("app", first))
    assert created.returncode == 0, created.stderr
    pinned_first = cluster.get_json("pod", "app", "-n", namespace)["spec"]["containers"][0]["image"]
    assert "@sha256:" in pinned_first

    cluster.kubectl("set", "image", "-n", namespace, "pod/app", f"app={second}")
    pod = cluster.get_json("pod", "app", "-n", namespace)
    assert pod["spec"]["containers"][0]["image"] == f"{second}@{second_digest}"

    cluster.kubectl(
        "debug", "-n", namespace, "app", f"--image={debug}", "--container=dbg", "--attach=false"
    )

    def ephemeral() -> str | None:
        spec = cluster.get_json("pod", "app", "-n", namespace)["spec"]
        found = [c["image"] for c in spec.get("ephemeralContainers") or [] if c["name"] == "dbg"]
        return found[0] if found else None

    assert utils.wait_for("the debug container", ephemeral) == f"{debug}@{debug_digest}"
    # The running container was not touched by the ephemeral container's update.
    pod = cluster.get_json("pod", "app", "-n", namespace)
    assert pod["spec"]["containers"][0]["image"] == f"{second}@{second_digest}"


# -- referrers Link targets ---------------------------------------------------------------------


async def test_referrers_next_page_elsewhere_gets_no_credentials(
    htpasswd_registry: registries.Registry, prefix: str
) -> None:
    pushed = htpasswd_registry.client().push(
        f"{prefix}/paged", images.nonroot_image(f"l-{helpers.uid()}"), tag="1.0"
    )
    repository, digest = f"{prefix}/paged", pushed.digest
    empty = json.dumps({"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": []})
    assert htpasswd_registry.credentials is not None
    with (
        faultproxy.FaultProxy(htpasswd_registry.url) as registry,
        faultproxy.FaultProxy(htpasswd_registry.url) as elsewhere,
    ):

        def page(link: str) -> faultproxy.Fault:
            return faultproxy.Fault(
                path=r"/referrers/",
                status=200,
                headers=(("Content-Type", images.OCI_INDEX), ("Link", f'<{link}>; rel="next"')),
                body=empty.encode(),
                times=1,
            )

        # Page 1 points to page 2 on the same origin, page 2 to another host.
        registry.add(page(f"/v2/{repository}/referrers/{digest}?page=2"))
        registry.add(page(f"http://{elsewhere.host}/v2/{repository}/referrers/{digest}?page=3"))
        config = settings.RegistrySettings(insecure_registries=(registry.host, elsewhere.host))
        entry = htpasswd_registry.docker_config()["auths"][htpasswd_registry.host]
        credentials = auth.parse_docker_config(
            {"auths": {registry.host: entry}}, source="test pull secret"
        )
        ref = reference.parse_reference(f"{registry.host}/{repository}:1.0")
        async with client.RegistryClient(config) as registry_client:
            await registry_client.resolve(ref, credentials=[credentials])  # learns the challenge
            # Elsewhere (really the same registry behind another port) is asked without
            # credentials: whatever it answers, they never went there.
            with contextlib.suppress(errors.RegistryError):
                await registry_client.fetch_referrers(
                    ref, registry_model.Digest(digest), credentials=[credentials]
                )
        own = [s for s in registry.seen if "/referrers/" in s.path]
        assert len(own) == 2 and all(s.header("Authorization") for s in own)
        foreign = [s for s in elsewhere.seen if "/referrers/" in s.path]
        assert foreign and all(s.header("Authorization") is None for s in foreign)


# -- a hostile registry cannot exhaust the operator --------------------------------------------

CHART_MEMORY_LIMIT = 512 * 1024 * 1024  # charts/imageward/values.yaml resources.limits.memory


def _rss(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_hostile_registry_cannot_exhaust_memory_or_the_deadline(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    # Images just under every cap: 1,000-layer manifests of ~1 MiB and configs of ~1.9 MiB
    # of labels. Each is allowed (the policy is satisfied), so all of it would be kept
    # by caches bounded only by entry count (the review: "caches bounded by entry count,
    # not bytes"): 160 of them are ~480 MiB of hostile content.
    count = 160
    client = anonymous.client()
    repository = f"{prefix}/flood"
    labels = {f"k{i:04d}": "x" * 1000 for i in range(1900)}
    config = images.Blob.of(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"User": "65532", "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode(),
        images.OCI_CONFIG,
    )
    layer = images.random_layer(64, seed=prefix)
    for blob in (config.data, layer.data):
        client.push_blob(repository, blob)
    pushed: list[str] = []
    for index in range(count):
        document = {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.blob(images.OCI_LAYER_GZIP).descriptor()] * 1000,
            "annotations": {"pad": f"{index}-" + "p" * 800_000},
        }
        body = json.dumps(document).encode()
        assert len(body) < 1024 * 1024
        client.push_manifest(repository, f"v{index}", body, images.OCI_MANIFEST)
        pushed.append(f"{anonymous.host}/{repository}:v{index}")
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"], {"maxLayers": 2000, "forbidRootUser": True}
    )
    pid = imageward_operator.process.pid
    assert pid is not None
    before = _rss(pid)
    slowest = 0.0
    for image in pushed:
        started = time.monotonic()
        answer = _dry_run(cluster, namespace, helpers.pod("app", image))
        slowest = max(slowest, time.monotonic() - started)
        assert answer.returncode == 0, answer.stderr
        assert "deadline" not in answer.stderr
    after = _rss(pid)
    grown = after - before
    print(
        f"hostile flood: {count} images, operator RSS {before >> 20} -> {after >> 20} MiB, "
        f"slowest admission {slowest:.2f}s"
    )
    # The caches hold at most ~32 MiB each of manifests, platform images and facts.
    assert after < CHART_MEMORY_LIMIT, f"operator RSS {after >> 20} MiB"
    assert grown < 200 * 1024 * 1024, f"operator grew {grown >> 20} MiB for {count} images"
    # Every admission answered well inside the webhook's timeout (10 s here).
    assert slowest < 5.0, f"slowest admission {slowest:.1f}s"
    # And the operator still answers an ordinary image promptly.
    ordinary, _ = helpers.push(anonymous, images.nonroot_image(f"o-{helpers.uid()}"), prefix=prefix)
    assert _dry_run(cluster, namespace, helpers.pod("ok", ordinary)).returncode == 0
    del name
