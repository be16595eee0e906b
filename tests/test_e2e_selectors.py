"""Rules and dashboards fitted to a user's labels, against a real Prometheus.

Four simulated nodes are scraped twice. Job "gpu-nodes" is the user's: its relabelling names the
node `node` and the cluster `region`, and gives `instance` one value for every node, so a rule that
still grouped or joined by `instance` would lump the nodes together. Job "other" scrapes the same
exporters with gpuscope's usual labels (a federated copy, a second Prometheus job). The rules and
dashboards are built from one settings file (selector `job="gpu-nodes"`, node label `node`,
cluster label `region`): promtool accepts the rules, a straggler fires exactly one alert naming the
node by `node`, the second job's copies change no alert, and the panels count each GPU once.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from alerts.render import write_shortened_rules
from alerts.rules import load
from dashboards.build import dashboard_json
from dashboards.render import substitute
from simulator.cluster import Cluster, load_scenario
from simulator.stack import prometheus
from tests.helpers import TWICE_A_SCRAPE

pytestmark = pytest.mark.e2e

SETTINGS = 'selector: job="gpu-nodes"\nnode_label: node\ncluster_label: region\n'
RELABEL = [{"source_labels": ["instance"], "target_label": "node"},
           {"source_labels": ["cluster"], "target_label": "region"},
           {"action": "labeldrop", "regex": "cluster"},
           {"target_label": "instance", "replacement": "shared"}]


def firing(prom) -> set[tuple[str, str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("node", ""), a["labels"].get("gpu", ""))
            for a in prom.alerts() if a["state"] == "firing"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("selectors")
    (root / "settings.yml").write_text(SETTINGS)
    settings = load(str(root / "settings.yml"))
    rules = write_shortened_rules(str(root / "rules.yml"), 60, settings)
    cluster = Cluster(str(root), nodes=4, interval=TWICE_A_SCRAPE, exporter_args=("--collector.gpu.gpm-interval=1s",))
    with cluster:
        targets = [{"files": [cluster.write_targets()], "refresh_interval": "1s"}]
        jobs = [{"job_name": "gpu-nodes", "file_sd_configs": targets, "relabel_configs": RELABEL},
                {"job_name": "other", "file_sd_configs": targets}]
        with prometheus(jobs, rule_files=[rules]) as prom:
            prom.wait_for('count(up{job="gpu-nodes"} == 1) == 4 and count(up{job="other"} == 1) == 4')
            time.sleep(12)  # rate windows and GPM samples fill
            yield settings, cluster, prom, root


def test_promtool_accepts_the_fitted_rules(stack):
    _, _, _, root = stack
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(root / "rules.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_count_each_gpu_once_by_the_users_labels(stack):
    settings, _, prom, _ = stack
    boards = dashboard_json(settings)
    fleet = {p["title"]: p["targets"][0]["expr"] for p in boards["gpuscope-fleet"]["panels"]}
    values = {"cluster": "simulated", "instance": "node-2", "gpu": ".*", "__rate_interval": "5s"}
    assert prom.query(substitute(fleet["GPUs up"], values))[0]["value"][1] == "32"  # 4 nodes x 8, not twice
    node = {p["title"]: p["targets"][0]["expr"] for p in boards["gpuscope-node"]["panels"]}
    clocks = prom.query(substitute(node["SM clock"], values))
    assert sorted(int(r["metric"]["gpu"]) for r in clocks) == list(range(8))
    assert {(r["metric"]["node"], r["metric"]["job"]) for r in clocks} == {("node-2", "gpu-nodes")}


def test_a_straggler_fires_once_by_node_and_the_second_job_changes_nothing(stack):
    _, cluster, prom, _ = stack
    time.sleep(6)
    assert firing(prom) == set(), "a healthy cluster fires nothing"
    for step in load_scenario("straggler").steps:
        if step.fault:
            cluster.inject(step.node, step.fault)
    try:
        deadline, seen = time.monotonic() + 60, set()
        while not seen:
            assert time.monotonic() < deadline, "GpuStraggler did not fire"
            seen = firing(prom)
            time.sleep(0.5)
        time.sleep(6)
        seen |= firing(prom)
        assert seen == {("GpuStraggler", "node-1", "5")}
        alerts = [a for a in prom.alerts() if a["state"] == "firing"]
        assert {a["labels"]["job"] for a in alerts} == {"gpu-nodes"}
        assert all("node-1" in a["annotations"]["description"] for a in alerts)
    finally:
        for node in range(4):
            cluster.clear(node)
