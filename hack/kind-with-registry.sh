#!/usr/bin/env bash
# For machines with Docker and kind: create the kind cluster of kind-config.yaml and a
# local registry wired into every node's containerd, the way kind documents it.
set -euo pipefail
cluster=${KIND_CLUSTER_NAME:-imageward}
reg_name=kind-registry
reg_port=${REGISTRY_PORT:-5001}
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(docker inspect -f '{{.State.Running}}' "$reg_name" 2>/dev/null || true)" != 'true' ]; then
  docker run -d --restart=always -p "127.0.0.1:${reg_port}:5000" --network bridge --name "$reg_name" registry:2
fi
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --config "$here/../kind-config.yaml"

# Each node resolves localhost:<port> to the registry container through containerd's hosts.toml.
for node in $(kind get nodes --name "$cluster"); do
  dir="/etc/containerd/certs.d/localhost:${reg_port}"
  docker exec "$node" mkdir -p "$dir"
  printf '[host."http://%s:5000"]\n' "$reg_name" | docker exec -i "$node" cp /dev/stdin "$dir/hosts.toml"
done
docker network connect kind "$reg_name" 2>/dev/null || true

# Documented by KEP-1755 so tools can discover the registry.
kubectl apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${reg_port}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML
echo "registry: localhost:${reg_port} (push there; pods use the same name)"
