"""The dashboards: up to date, structurally sound, and every panel query answered by a real Prometheus.

Live part: two simulated p5 nodes, Prometheus evaluating the generated rules (the recording rules
feed the straggler panels). Slurm job 4242 runs on node-0; a real pod-resources server gives both
nodes pod trainer-0 (namespace ml) on GPUs 0-3, so the job view is checked by Slurm job and by pods.
Every panel must return data on the healthy cluster, except those documented `empty_when_healthy`,
which must return data once faults are injected (a thermal throttle, an XID, a lost GPU).
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from alerts import records
from alerts.render import write_shortened_rules
from alerts.rules import Record, groups
from alerts.settings import Settings
from dashboards.build import dashboard_json
from dashboards.render import resolve_derived, substitute
from dashboards.views import DASHBOARDS, JOB
from exporter.catalog import CATALOG
from simulator.cluster import Cluster
from simulator.stack import prometheus
from tests.helpers import REPO, json_reply
from tests.kubelet import compiled_api, serving, two_pods

GENERATED = REPO / "dashboards" / "generated"
RECORDS = {rule.record for group in groups(Settings()) for rule in group.rules if isinstance(rule, Record)}
PANELS = [(make.__name__, panel) for make in DASHBOARDS for panel in make().panels]
SPEC_PANELS = {make().uid: make().panels for make in DASHBOARDS}


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
    (annotation,) = data["annotations"]["list"]
    assert annotation["expr"].startswith("ALERTS{") and annotation["datasource"] == "${datasource}"


# A Slurm job opens on its first collective (alphabetically), as Grafana opens a single-choice variable.
SLURM_JOB = {"job_id": "4242", "collective": "AllGather", "namespace": "", "pod": ".*"}
ML_PODS = {"job_id": "", "collective": "", "namespace": "ml", "pod": ".*"}


def selection(prom, instance: str = "node-0", gpu: str = "3", job: dict[str, str] = SLURM_JOB) -> dict[str, str]:
    """Template variable values as Grafana would set them, the hidden derived ones resolved live."""
    values = {"__rate_interval": "15s", "cluster": ".*", "instance": instance, "gpu": gpu, **job}
    for data in dashboard_json().values():
        values = resolve_derived(data, prom.base, values)
    return values


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboards")
    rules = write_shortened_rules(str(root / "rules.yml"), 60)
    with compiled_api(root / "api") as (pb, pb_grpc), serving(pb_grpc, two_pods(pb), str(root / "kubelet.sock")):
        cluster = Cluster(str(root), nodes=2, job_nodes=(0,), exporter_args=(  # profiling and health from DCGM
            "--collector.gpu.gpm-interval=1s", f"--collector.gpu.pod-resources-socket={root / 'kubelet.sock'}",
            "--collector.gpu.profiling=dcgm"))
        with cluster:
            jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()],
                                                                  "refresh_interval": "1s"}]}]
            with prometheus(jobs, rule_files=[rules]) as prom:
                prom.wait_for('count(up{job="gpuscope"} == 1) == 2')
                prom.wait_for("count(gpuscope_gpu_pod_info) == 10")
                time.sleep(18)  # 15 s rate windows fill
                yield cluster, prom


def empty_queries(prom, panels, values: dict[str, str], pods: bool = False) -> list[str]:
    """The queries without data; a job view's queries of the chosen pods' GPUs only when `pods`
    (the selection is pods, not a Slurm job), the others only when not."""
    empty = []
    for name, panel in panels:
        for query in panel.queries:
            if ("$pod_nodes" in query.expr) != pods:
                continue
            if not prom.query(substitute(query.expr, values)):
                empty.append(f"{name}/{panel.title}: {query.expr}")
    return empty


@pytest.mark.e2e
def test_every_panel_has_data_on_a_healthy_cluster(live):
    _, prom = live
    healthy = [(name, panel) for name, panel in PANELS if not panel.empty_when_healthy]
    assert empty_queries(prom, healthy, selection(prom)) == []
    assert empty_queries(prom, healthy, selection(prom, job=ML_PODS), pods=True) == []


@pytest.mark.parametrize(("job", "gpus"), [
    (SLURM_JOB, {("node-0", str(gpu)) for gpu in range(8)}),
    (ML_PODS, {(node, str(gpu)) for node in ("node-0", "node-1") for gpu in range(4)}),
])
@pytest.mark.e2e
def test_job_view_shows_exactly_the_jobs_gpus(live, job, gpus):
    """Each query answers for the chosen job alone: a Slurm job through the per-job records (pods have
    none), pods through their own GPUs at query time (a Slurm job reads nothing there); per-node
    panels show the job's nodes, per-GPU tables its GPUs, and each spread is ordered low to high."""
    _, prom = live
    values = selection(prom, job=job)
    assert values["job_nodes"] == ("(node-0)" if job is SLURM_JOB else "(node-0|node-1)")
    assert values["pod_nodes"] == ("()" if job is SLURM_JOB else "(node-0|node-1)")
    for panel in SPEC_PANELS["gpuscope-job"]:
        answers = {}
        for query in panel.queries:
            result = prom.query(substitute(query.expr, values))
            by_slurm_job = 'job_id="$job_id"' in query.expr and "$pod_nodes" not in query.expr
            if panel.empty_when_healthy:  # the cluster is healthy
                assert result == [], panel.title
            elif query.expr == JOB:
                assert {(r["metric"]["instance"], r["metric"]["gpu"]) for r in result} == gpus, panel.title
            elif "$pod_nodes" in query.expr:  # the pods' GPUs, aggregated
                assert len(result) == (0 if job is SLURM_JOB else 1), (panel.title, query.legend)
            elif by_slurm_job and job is not SLURM_JOB:
                assert result == [], panel.title  # NCCL and the per-job records are keyed by the Slurm job id
            elif records.JOB_SM_ACTIVE in query.expr:  # the five busiest and five least active of its busy GPUs
                busy = len(prom.query(f'{records.JOB_SM_ACTIVE}{{job_id="4242"}}'))  # equals: the same five both ways
                assert 0 < busy <= 8 and min(busy, 5) <= len(result) <= min(busy, 10), panel.title
                assert {(r["metric"]["instance"], r["metric"]["gpu"]) for r in result} <= gpus, panel.title
            elif panel.kind == "table":
                assert {(r["metric"]["instance"], r["metric"]["gpu"]) for r in result} == gpus, panel.title
            elif by_slurm_job:  # one series per job, or per communicator of the job
                assert result and {r["metric"]["job_id"] for r in result} == {"4242"}, (panel.title, query.legend)
            else:
                assert {r["metric"]["instance"] for r in result} == {node for node, _ in gpus}, panel.title
            if len(result) == 1:
                answers[query.legend] = float(result[0]["value"][1])
        edges = [answers[legend] for legend in ("lowest", "median", "highest", "slowest", "fastest")
                 if legend in answers]
        assert edges == sorted(edges), panel.title


@pytest.mark.e2e
def test_gpu_limits_are_threshold_lines(live):
    """Each limit query is mapped to a threshold by configFromData and answers with the GPU's own limit."""
    _, prom = live
    expected = {"limit": 700.0, "slowdown": 89.0, "shutdown": 92.0}  # the p5 profile's limits
    for uid in ("gpuscope-node", "gpuscope-gpu"):
        for panel in dashboard_json()[uid]["panels"]:
            configs = {t["options"]["configRefId"]: t["options"]["mappings"] for t in panel.get("transformations", [])
                       if t["id"] == "configFromData"}
            for target in panel["targets"]:
                if target["refId"] not in configs:
                    continue
                assert configs[target["refId"]] == [{"fieldName": target["legendFormat"], "handlerKey": "threshold1",
                                                     "reducerId": "lastNotNull"}]
                assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
                (result,) = prom.query(substitute(target["expr"], selection(prom)))
                assert float(result["value"][1]) == expected[target["legendFormat"]], panel["title"]
    titled = {p["title"] for uid in ("gpuscope-node", "gpuscope-gpu") for p in dashboard_json()[uid]["panels"]
              if p.get("transformations")}
    assert titled == {"Power against the enforced limit", "Temperature against the slowdown limit",
                      "Temperatures against the slowdown and shutdown limits"}


@pytest.mark.e2e
def test_render_draws_every_dashboard_from_live_data(live, tmp_path):
    from dashboards.render import render_dashboard

    _, prom = live
    values = {"instance": "node-0", "gpu": "3", "cluster": ".*", "__rate_interval": "15s", **SLURM_JOB}
    for uid, data in dashboard_json().items():
        path = tmp_path / f"{uid}.png"
        drawn = render_dashboard(data, prom.base, values, str(path), minutes=1)
        healthy = [p for p in SPEC_PANELS[uid] if not p.empty_when_healthy]
        assert drawn >= len(healthy), uid  # every panel with data on a healthy cluster was drawn with it
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


@pytest.mark.e2e
def test_fault_panels_have_data_once_faults_are_injected(live):
    cluster, prom = live
    cluster.inject(1, {"kind": "thermal_throttle", "gpu": 3})
    cluster.inject(1, {"kind": "xid", "gpu": 3, "xid": 48})
    cluster.inject(1, {"kind": "gpu_lost", "gpu": 6})
    cluster.inject(1, {"kind": "nvlink_errors", "gpu": 2})
    cluster.inject(1, {"kind": "efa_retransmit_storm"})
    cluster.inject(1, {"kind": "lustre_eviction"})
    cluster.inject(1, {"kind": "dcgm_health", "gpu": 3, "system": "memory", "result": "fail"})
    cluster.inject("job", {"kind": "nccl_hang", "node": 0, "gpu": 3})  # RAS: the rank the job's collectives wait for
    faulty = [(name, panel) for name, panel in PANELS if panel.empty_when_healthy]
    assert faulty
    deadline = time.monotonic() + 60
    values = selection(prom, instance="node-1")
    while (empty := empty_queries(prom, faulty, values)):
        assert time.monotonic() < deadline, empty
        time.sleep(1)


class FakeGrafana:
    """Grafana's HTTP API as far as push uses it: health, folders, dashboards, bearer tokens."""

    def __init__(self, version: str = "11.3.0", token: str = "s3cret") -> None:
        self.version, self.token = version, token
        self.dashboards: dict[str, dict] = {}
        self.folders: set[str] = set()


@pytest.fixture
def grafana():
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            json_reply(self, status, body)

        def do_GET(self):
            if self.path == "/api/health":
                self._reply(200, {"database": "ok", "version": fake.version})

        def do_POST(self):
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._reply(401, {"message": "invalid API key"})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/api/folders":
                exists = body["uid"] in fake.folders
                fake.folders.add(body["uid"])
                self._reply(412 if exists else 200, {"uid": body["uid"]})
            elif self.path == "/api/dashboards/db":
                assert body["overwrite"] is True and body["folderUid"] in fake.folders
                fake.dashboards[body["dashboard"]["uid"]] = body["dashboard"]
                self._reply(200, {"status": "success", "url": f"/d/{body['dashboard']['uid']}/x"})

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", fake
    server.shutdown()
    server.server_close()


def test_push_uploads_every_dashboard_and_updates_on_repeat(grafana, tmp_path):
    from tests.procs import run_gpuscope

    url, fake = grafana
    (tmp_path / "token").write_text("s3cret\n")
    for _ in range(2):  # the second push finds the folder and overwrites by uid
        result = run_gpuscope("dashboards", "push", f"--grafana-url={url}", f"--token-file={tmp_path / 'token'}")
        assert result.returncode == 0, result.stderr
    assert set(fake.dashboards) == set(dashboard_json())
    assert fake.dashboards["gpuscope-node"]["panels"] == dashboard_json()["gpuscope-node"]["panels"]
    assert f"{url}/d/gpuscope-fleet/x" in result.stdout


@pytest.mark.parametrize(("setup", "env", "message"), [
    (lambda fake: setattr(fake, "token", "other"), {"GPUSCOPE_GRAFANA_TOKEN": "s3cret"},
     "Grafana refused the API token (HTTP 401"),
    (lambda fake: setattr(fake, "version", "8.5.2"), {"GPUSCOPE_GRAFANA_TOKEN": "s3cret"},
     "Grafana 8.5.2 is too old for these dashboards: 9.0 or newer needed"),
    (lambda fake: None, {"GPUSCOPE_GRAFANA_TOKEN": ""}, "no Grafana API token"),
])
def test_push_problems_are_one_clear_line(grafana, setup, env, message):
    from tests.procs import run_gpuscope

    url, fake = grafana
    setup(fake)
    result = run_gpuscope("dashboards", "push", f"--grafana-url={url}", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not fake.dashboards


def test_push_to_nothing_listening(tmp_path):
    from tests.helpers import free_port
    from tests.procs import run_gpuscope

    result = run_gpuscope("dashboards", "push", f"--grafana-url=http://127.0.0.1:{free_port()}",
                          env={"GPUSCOPE_GRAFANA_TOKEN": "t"})
    assert result.returncode == 1 and "cannot reach Grafana" in result.stderr
