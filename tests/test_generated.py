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
            shutil.copy(REPO / name, tmp_path / name)
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
