"""The chart's agent rendered for a real node of the local cluster (helm template, no
cluster): the operator image by digest, the node's own containerd socket, only that node,
and the registries through their mirrors."""

from __future__ import annotations

from imageward.localcluster import nodeagent


def test_the_agent_daemonset_is_rendered_for_one_real_node() -> None:
    values = nodeagent.build_values(
        repository="127.0.0.1:5000/imageward/operator",
        digest="sha256:" + "a" * 64,
        containerd_socket="/var/lib/imageward-realnode/containerd.sock",
        node_selector={"imageward.io/node": "real"},
        tolerations=[{"key": "imageward.io/real-node", "operator": "Exists"}],
        insecure=["127.0.0.1:5000", "192.0.2.2:4000"],
        mirrors={"127.0.0.1:5000": "192.0.2.2:4000"},
    )
    objects = nodeagent.select_agent_objects(nodeagent.render_chart(values))
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "Role", "DaemonSet"}
    assert not [o for o in objects if o["kind"] == "Deployment"]
    daemonset = nodeagent.find_daemonset(objects)
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "127.0.0.1:5000/imageward/operator@sha256:" + "a" * 64
    socket = "/var/lib/imageward-realnode/containerd.sock"
    assert f"--containerd-socket={socket}" in container["args"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "containerd"]
    assert volume["hostPath"] == {"path": socket, "type": "Socket"}
    # helm merges maps: the chart's kubernetes.io/os=linux stays
    assert pod["nodeSelector"] == {"imageward.io/node": "real", "kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "imageward.io/real-node", "operator": "Exists"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IMAGEWARD_REGISTRY_MIRRORS"] == "127.0.0.1:5000=192.0.2.2:4000"
    assert env["IMAGEWARD_INSECURE_REGISTRIES"] == "127.0.0.1:5000,192.0.2.2:4000"
    assert nodeagent.build_selector_text(daemonset) == ",".join(
        f"{k}={v}" for k, v in sorted(daemonset["spec"]["selector"]["matchLabels"].items())
    )


def test_the_operator_is_told_how_the_chart_names_its_agents() -> None:
    values = nodeagent.build_values(
        repository="r/operator",
        digest="sha256:" + "b" * 64,
        containerd_socket="/s.sock",
        node_selector={},
        tolerations=[],
    )
    manifests = nodeagent.render_chart(values, release="demo", namespace="ns")
    env = nodeagent.select_operator_env(manifests)
    daemonset = nodeagent.find_daemonset(nodeagent.select_agent_objects(manifests))
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    selector = dict(item.split("=", 1) for item in env["IMAGEWARD_AGENT_SELECTOR"].split(","))
    assert selector.items() <= labels.items()
    assert env["IMAGEWARD_AGENT_KEY_SECRET"] == "demo-imageward-agent-key"  # fullname
    assert env["IMAGEWARD_AGENT_ENABLED"] == "true"
