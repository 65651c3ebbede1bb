"""The operator image as users get it: built from the Dockerfile (hack/build-image.sh,
no Docker), pushed to a real registry, pulled and run by real containerd (`ctr run`,
read-only root file system, the image's own user), checking itself with `imageward check`.

The size caps below are the documented limits (README, "The operator image"): a change
that grows the image past them fails here.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

import imageward
from imageward.localcluster import containerd, cosign, images, operatorimage, registries
from tests.cluster import helpers

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(operatorimage.DEFAULT_BUILD_TIMEOUT)]

MiB = images.MiB
MAX_COMPRESSED_SIZE = 90 * MiB
#: base, passwd entry, static helper, dependencies, imageward: a release re-pulls the last.
LAYERS = 5
MAX_OWN_LAYER_SIZE = 2 * MiB


@pytest.fixture(scope="module")
def pushed(
    operator_image: operatorimage.BuiltImage, anonymous_registry: registries.Registry
) -> images.Pushed:
    return operatorimage.push(operator_image, anonymous_registry, repository="imageward/operator")


@pytest.fixture(scope="module")
def pulled(pushed: images.Pushed, containerd_daemon: containerd.Containerd) -> str:
    containerd_daemon.pull(pushed.ref)
    return pushed.ref


def ctr_run(
    daemon: containerd.Containerd,
    image: str,
    *args: str,
    mounts: Sequence[tuple[pathlib.Path, str]] = (),
) -> subprocess.CompletedProcess[str]:
    """`ctr run` as the chart runs the pod: read-only root, the image's user, host network
    (to reach the loopback registry). Args replace the image's entrypoint and command."""
    options = ["--rm", "--read-only", "--net-host"]
    for source, target in mounts:
        options += ["--mount", f"type=bind,src={source},dst={target},options=rbind:ro"]
    return daemon.ctr("run", *options, image, f"iw-{helpers.uid()}", *args, check=False)


def test_a_second_build_comes_from_the_cache(operator_image: operatorimage.BuiltImage) -> None:
    started = time.monotonic()
    again = operatorimage.ensure_built()

    assert time.monotonic() - started < 10  # it hashes the inputs (~0.2 s) and stops
    assert again.digest == operator_image.digest


def test_make_image_pushes_the_same_digest_where_asked(
    operator_image: operatorimage.BuiltImage, anonymous_registry: registries.Registry
) -> None:
    """`make image IMAGE_REGISTRY=...` runs this: skopeo from the cached layout, digest kept."""
    root = operatorimage.repository_root()
    reference = f"{anonymous_registry.host}/make/imageward:{helpers.uid()}"
    result = subprocess.run(
        ["bash", str(root / operatorimage.BUILD_SCRIPT), "--push", reference],
        capture_output=True,
        text=True,
        timeout=operatorimage.DEFAULT_BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(operator_image.layout)

    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    assert anonymous_registry.client().manifest_digest(repository, tag) == operator_image.digest


def test_the_pushed_image_is_configured_as_users_rely_on(
    pushed: images.Pushed, anonymous_registry: registries.Registry
) -> None:
    client = anonymous_registry.client()
    fetched = client.get_manifest(pushed.repository, pushed.tag or "")
    assert fetched.digest == pushed.digest
    manifest = fetched.document
    config_json: dict[str, Any] = json.loads(
        client.get_blob(pushed.repository, manifest["config"]["digest"])
    )
    config = config_json["config"]

    assert (config_json["os"], config_json["architecture"]) == ("linux", "amd64")
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["imageward"]
    assert config["Cmd"] == ["run", "--liveness=http://0.0.0.0:8081/healthz"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp", "9443/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/imageward/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert config["Labels"]["org.opencontainers.image.title"] == "imageward"
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_image_stays_small_and_layered_for_releases(pushed: images.Pushed) -> None:
    layers = [layer.size for layer in pushed.manifest.layers]
    sizes = ", ".join(f"{size / MiB:.2f}" for size in layers)

    assert len(layers) == LAYERS, f"{len(layers)} layers: {sizes} MiB"
    assert sum(layers) <= MAX_COMPRESSED_SIZE, f"{sum(layers) / MiB:.1f} MiB: {sizes} MiB"
    assert layers[-1] <= MAX_OWN_LAYER_SIZE, f"imageward's own layer: {layers[-1] / MiB:.2f} MiB"
    assert layers[2] < MiB, "the static helper layer"


def test_it_runs_as_its_non_root_user_on_a_read_only_root(
    pulled: str, containerd_daemon: containerd.Containerd
) -> None:
    probe = "import getpass, os; print(os.getuid(), os.getgid(), getpass.getuser())"
    who = ctr_run(containerd_daemon, pulled, "python3", "-c", probe)
    assert (who.returncode, who.stdout.strip()) == (0, "65532 65532 imageward"), who.stderr

    version = ctr_run(containerd_daemon, pulled, "imageward", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"imageward {imageward.__version__}")

    for command in ("check", "agent"):  # the chart's agent DaemonSet runs `imageward agent`
        usage = ctr_run(containerd_daemon, pulled, "imageward", command, "--help")
        assert usage.returncode == 0, usage.stderr
        assert usage.stdout.startswith(f"usage: imageward {command}")


def test_the_static_helper_is_where_prepull_runs_it(
    pulled: str, containerd_daemon: containerd.Containerd
) -> None:
    # prepull/daemonset.py runs HELPER_SOURCE from the helper image (default: this one).
    from imageward.prepull import daemonset

    for command in (daemonset.HELPER_SOURCE, "imageward-helper"):
        result = ctr_run(containerd_daemon, pulled, command)
        assert (result.returncode, result.stdout) == (0, "imageward-helper: ok\n"), command


def test_every_module_loads_without_the_build_tools(
    pulled: str, containerd_daemon: containerd.Containerd
) -> None:
    """The final stage's base has no pip, compiler or headers, and the virtualenv was
    trimmed: every imageward module (hence every dependency it imports) still loads, and
    cel-cpp evaluates a condition with the CEL extensions the image keeps."""
    script = (
        "import importlib, importlib.util, pkgutil, imageward\n"
        "names = [m.name for m in pkgutil.walk_packages(imageward.__path__, 'imageward.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "trimmed = ('pip', 'setuptools', 'kubernetes.aio', 'cel_expr_python.ext.ext_math')\n"
        "present = [m for m in trimmed if importlib.util.find_spec(m) is not None]\n"
        # cel-cpp with the extensions imageward keeps (strings, optional types): it runs.
        "import datetime\n"
        "from imageward.attestations import cel\n"
        "program = cel.compile_condition(\"predicate.name.lowerAscii() == 'ok' && \"\n"
        '                                "predicate.?missing.orValue(1) == 1")\n'
        "now = datetime.datetime.now(datetime.timezone.utc)\n"
        "assert cel.evaluate(program, {}, {'name': 'OK'}, now) == cel.Answer(True)\n"
        "print(len(names), present)\n"
    )
    result = ctr_run(containerd_daemon, pulled, "python3", "-c", script)

    assert result.returncode == 0, result.stderr
    count, present = result.stdout.split(maxsplit=1)
    assert int(count) > 50
    assert present.strip() == "[]"


def _policy(name: str, host: str, rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"mode": "Enforce", "match": {"images": [f"{host}/**"]}, "rules": rules},
    }


def test_imageward_check_in_the_image_verifies_the_image_itself(
    pushed: images.Pushed,
    pulled: str,
    containerd_daemon: containerd.Containerd,
    anonymous_registry: registries.Registry,
    cosign_tool: cosign.Cosign,
    tmp_path: pathlib.Path,
) -> None:
    """What a release pipeline does: sign the image, then hold it to the policy users will
    apply to it (signed, non-root, under the size caps), with the image's own CLI."""
    key = cosign_tool.generate_key_pair(f"release-{helpers.uid()}")
    cosign_tool.sign(pushed.pinned, key)
    host = anonymous_registry.host
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755)  # read by the image's user, 65532
    strict = {
        "signatures": {"authorities": [{"name": "release", "key": {"pem": key.public_pem}}]},
        "forbidRootUser": True,
        "maxCompressedSize": f"{MAX_COMPRESSED_SIZE // MiB}Mi",
        "maxLayers": LAYERS,
    }
    (policies / "release.yaml").write_text(yaml.safe_dump(_policy("release", host, strict)))
    tiny = {"maxCompressedSize": "10Mi"}
    (policies / "tiny.yaml").write_text(yaml.safe_dump(_policy("tiny", host, tiny)))

    def check(policy: str) -> tuple[int, dict[str, Any]]:
        result = ctr_run(
            containerd_daemon,
            pulled,
            "imageward",
            "check",
            "--output=json",
            f"--insecure-registry={host}",
            f"--policy=/policies/{policy}",
            pushed.ref,
            mounts=[(policies, "/policies")],
        )
        assert result.returncode in (0, 1), result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return result.returncode, report

    status, report = check("release.yaml")
    (image,) = report["images"]
    assert (status, image["decision"], image["violations"]) == (0, "allow", [])
    assert image["digest"] == pushed.digest

    status, report = check("tiny.yaml")
    (image,) = report["images"]
    assert (status, image["decision"]) == (1, "deny")
    assert [v["rule"] for v in image["violations"]] == ["maxCompressedSize"]
