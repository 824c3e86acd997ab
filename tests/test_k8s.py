"""deploy/k8s/ is valid against the Kubernetes API schemas (kubernetes-validate ships them:
offline) and gives the daemon what it needs on a node."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from snapd_daemon.server import config
from snapd_daemon.server.cli import serve

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
# the oldest Kubernetes release the manifests are meant for, and the newest the package knows
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    docs = _documents()
    assert {doc["kind"] for _, doc in docs} == {"Namespace", "ConfigMap", "Secret", "DaemonSet"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} ({doc['kind']}) against Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_daemonset_gives_the_daemon_the_host() -> None:
    docs = {doc["kind"]: doc for _, doc in _documents()}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["runtimeClassName"] == "nvidia"
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for name, path in (("state", "/var/lib/gpu-snapd"), ("run", "/run/gpu-snapd"), ("dev", "/dev"),
                       ("cgroup", "/sys/fs/cgroup")):
        assert host_paths[name] == path and mounts[name] == path
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}["remote-credentials"] == \
        docs["Secret"]["metadata"]["name"]


def test_configmap_holds_only_serve_options(tmp_path: Path) -> None:
    docs = {doc["kind"]: doc for _, doc in _documents()}
    toml = tmp_path / "config.toml"
    toml.write_text(docs["ConfigMap"]["data"]["config.toml"])
    values = config.load(toml, {p.name for p in serve.params if p.name})
    assert values["state_dir"] == "/var/lib/gpu-snapd" and values["remote_bucket"]
    assert values["remote_credentials_file"].startswith("/etc/gpu-snapd/remote/")
    assert "credentials" in docs["Secret"]["stringData"]


def test_daemonset_names_the_image_the_build_tags() -> None:
    """scripts/build-image.sh tags localhost/gpu-snapd:<pyproject version>; the image's own config
    holds only serve options, and the CRIU the ConfigMap names is the bundle's in that image."""
    docs = {doc["kind"]: doc for _, doc in _documents()}
    (container,) = docs["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"localhost/gpu-snapd:{version}"
    image_config = config.load(REPO / "deploy" / "image" / "config.toml", {p.name for p in serve.params if p.name})
    assert tomllib.loads(docs["ConfigMap"]["data"]["config.toml"])["criu"] == image_config["criu"]


def test_placeholder_pod_example_reserves_the_gpu_and_probes_the_server() -> None:
    """deploy/k8s/examples/placeholder-pod.yaml (docs/pods.md): valid, strictly; it requests a GPU
    and memory, waits, and is ready once the restored server answers on its port."""
    (doc,) = [d for d in yaml.safe_load_all((K8S / "examples" / "placeholder-pod.yaml").read_text()) if d]
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    spec = doc["spec"]
    assert doc["kind"] == "Pod" and spec["runtimeClassName"] == "nvidia"
    (container,) = spec["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["limits"]["memory"]
    assert "pause" in container["image"] and "command" not in container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == 8000
