"""Every generated file has one writer, scripts/generate, and a stale copy anywhere is named."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.helpers import REPO

HELM_RULES = "deploy/helm/gpuscope/files/prometheus-rules.yml"


def generate(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "scripts" / "generate.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_every_generated_file_is_current():
    result = generate(REPO, "--check")
    assert result.returncode == 0, result.stderr


def test_a_stale_copy_is_named_with_the_command_and_rewritten(tmp_path):
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, tmp_path / name, follow_symlinks=False)
    (tmp_path / HELM_RULES).write_text("groups: []\n")
    (tmp_path / "docs" / "metrics.md").write_text((REPO / "docs" / "metrics.md").read_text()
                                                   .replace("gpuscope_gpu_up", "gpuscope_gpu_upp"))
    result = generate(tmp_path, "--check")
    assert result.returncode == 1
    assert result.stderr.strip() == f"stale: {HELM_RULES}, docs/metrics.md; run scripts/generate"
    assert (tmp_path / HELM_RULES).read_text() == "groups: []\n"  # --check writes nothing
    assert generate(tmp_path).returncode == 0
    assert (tmp_path / HELM_RULES).read_text() == (REPO / "alerts" / "generated" / "prometheus-rules.yml").read_text()
    assert generate(tmp_path, "--check").returncode == 0


def test_each_generated_file_has_one_copy_and_the_build_directories_link_to_the_deployments():
    """The chart and the kustomize base hold the rules and dashboards they need; alerts/generated/ and
    dashboards/generated/ link to them (the Grafana-managed rules are alerts/generated/'s own)."""
    links = {path.name: path.resolve().relative_to(REPO).as_posix()
             for folder in ("alerts/generated", "dashboards/generated") for path in (REPO / folder).iterdir()
             if path.is_symlink()}
    assert links["prometheus-rules.yml"] == HELM_RULES
    assert links["prometheusrule.yaml"] == "deploy/kubernetes/base/prometheusrule.yaml"
    assert links["configmaps.yaml"] == "deploy/kubernetes/base/dashboards.yaml"
    assert links["gpuscope-node.json"] == "deploy/helm/gpuscope/files/dashboards/gpuscope-node.json"
    assert not (REPO / "alerts" / "generated" / "grafana-alert-rules.yaml").is_symlink()
