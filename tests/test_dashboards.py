"""The dashboards: up to date, structurally sound, and every panel query answered by a real Prometheus.

Live part: two simulated p5 nodes in one Slurm job, Prometheus evaluating the generated rules (the
recording rules feed the straggler and job panels). Every panel must return data on the healthy
cluster, except those documented `empty_when_healthy`, which must return data once faults are
injected (a thermal throttle, an XID, a lost GPU).
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from alerts.render import prometheus_rules, shorten_durations
from alerts.rules import Record, groups
from alerts.settings import Settings
from dashboards.build import dashboard_json, render_files
from dashboards.views import DASHBOARDS
from exporter.catalog import CATALOG
from exporter.sim.cluster import Cluster
from exporter.sim.stack import prometheus
from tests.helpers import REPO

GENERATED = REPO / "dashboards" / "generated"
RECORDS = {rule.record for group in groups(Settings()) for rule in group.rules if isinstance(rule, Record)}
PANELS = [(make.__name__, panel) for make in DASHBOARDS for panel in make().panels]


def test_generated_files_are_up_to_date():
    for name, text in render_files().items():
        assert (GENERATED / name).read_text() == text, f"{name} is stale: run gpuscope dashboards build"


def test_configmaps_carry_every_dashboard_for_the_sidecar():
    maps = [doc for doc in yaml.safe_load_all((GENERATED / "configmaps.yaml").read_text()) if doc]
    assert {m["metadata"]["name"] for m in maps} == {f"{uid}-dashboard" for uid in dashboard_json()}
    assert all(m["metadata"]["labels"] == {"grafana_dashboard": "1"} for m in maps)


@pytest.mark.parametrize("uid", sorted(dashboard_json()))
def test_dashboard_structure(uid):
    data = dashboard_json()[uid]
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        assert panel["type"] in ("timeseries", "stat", "table", "bargauge", "heatmap", "state-timeline")
        assert panel["datasource"] == "${datasource}"
        assert all(t["datasource"] == "${datasource}" for t in panel["targets"])
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    variables = [v["name"] for v in data["templating"]["list"]]
    for name in variables:
        if name != "datasource":
            assert f"${name}" in exprs or any(f"${name}" in (v.get("query") or "")
                                              for v in data["templating"]["list"]), f"${name} unused"
    for metric in set(re.findall(r"\b(?:gpuscope_[a-z0-9_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", exprs)):
        assert metric in CATALOG or metric in RECORDS, f"{uid} uses unknown metric {metric}"
    assert data["uid"] == uid and not [p for p in panels if p["type"] in ("graph", "singlestat")]


def substitute(expr: str, instance: str, gpu: str) -> str:
    return (expr.replace("$__rate_interval", "15s").replace("$cluster", ".*").replace("$instance", instance)
            .replace("$gpu", gpu).replace("$job_id", "4242"))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboards")
    settings = Settings()
    rules = root / "rules.yml"
    rules.write_text(yaml.safe_dump(shorten_durations(prometheus_rules(groups(settings), settings), 60)))
    cluster = Cluster(str(root), nodes=2, exporter_args=("--collector.gpu.gpm-interval=1s",))
    with cluster:
        jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()],
                                                              "refresh_interval": "1s"}]}]
        with prometheus(jobs, rule_files=[str(rules)]) as prom:
            prom.wait_for('count(up{job="gpuscope"} == 1) == 2')
            time.sleep(18)  # 15 s rate windows fill
            yield cluster, prom


def empty_queries(prom, panels, instance: str, gpu: str) -> list[str]:
    empty = []
    for name, panel in panels:
        for query in panel.queries:
            if not prom.query(substitute(query.expr, instance, gpu)):
                empty.append(f"{name}/{panel.title}: {query.expr}")
    return empty


def test_every_panel_has_data_on_a_healthy_cluster(live):
    _, prom = live
    healthy = [(name, panel) for name, panel in PANELS if not panel.empty_when_healthy]
    assert empty_queries(prom, healthy, "node-0", "3") == []


def test_fault_panels_have_data_once_faults_are_injected(live):
    cluster, prom = live
    cluster.inject(1, {"kind": "thermal_throttle", "gpu": 3})
    cluster.inject(1, {"kind": "xid", "gpu": 3, "xid": 48})
    cluster.inject(1, {"kind": "gpu_lost", "gpu": 6})
    faulty = [(name, panel) for name, panel in PANELS if panel.empty_when_healthy]
    assert faulty
    deadline = time.monotonic() + 60
    while (empty := empty_queries(prom, faulty, "node-1", "3")):
        assert time.monotonic() < deadline, empty
        time.sleep(1)
