"""The kustomize base: renders, validates against the Kubernetes API schemas, and is as locked down as
the docs say. The Helm chart is not written yet (no Helm binary installs here either)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.helpers import REPO

BASE = REPO / "deploy" / "kubernetes" / "base"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: scripts/test installs it"
    result = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    path.write_text(result.stdout)
    return str(path), [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifests_pass_strict_validation(rendered, version):
    path, documents = rendered
    binary = shutil.which("kubernetes-validate")
    assert binary, "kubernetes-validate missing: it is a test dependency"
    result = subprocess.run([binary, "-k", version, "--strict", path], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(d["kind"] for d in documents) == ["ConfigMap"] * 6 + [
        "DaemonSet", "Namespace", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]


def test_prometheusrule_is_the_generated_one_and_promtool_clean(rendered, tmp_path):
    generated = yaml.safe_load((REPO / "alerts" / "generated" / "prometheusrule.yaml").read_text())
    shipped = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    assert shipped == generated, "cp alerts/generated/prometheusrule.yaml deploy/kubernetes/base/"
    rule = next(d for d in rendered[1] if d["kind"] == "PrometheusRule")
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(tmp_path / "spec.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_are_the_generated_ones():
    shipped = (BASE / "dashboards.yaml").read_text()
    assert shipped == (REPO / "dashboards" / "generated" / "configmaps.yaml").read_text(), \
        "cp dashboards/generated/configmaps.yaml deploy/kubernetes/base/dashboards.yaml"


def test_daemonset_is_locked_down(rendered):
    daemonset = next(d for d in rendered[1] if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}}
    assert all(mount["readOnly"] for mount in container["volumeMounts"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})  # sees GPUs without taking one
    assert daemonset["metadata"]["namespace"] == "gpuscope"


def test_servicemonitor_names_instances_after_nodes(rendered):
    monitor = next(d for d in rendered[1] if d["kind"] == "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in endpoint["relabelings"]


def test_dockerfile_is_multi_stage_and_runs_as_nobody():
    """No container engine runs here, so the image is not built: its structure is checked."""
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) == 2 and lines[stages[0]].endswith(" AS build")
    final = lines[stages[1]:]
    assert "USER 65534:65534" in final and final[-2:] == ['ENTRYPOINT ["gpuscope"]', 'CMD ["exporter"]']
    assert not [line for line in final if "apt-get" in line or "gcc" in line]  # no compilers in the image
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
