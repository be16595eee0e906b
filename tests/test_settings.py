"""One settings file for rules and dashboards, bad settings refused in one line, and a node agent
that loads none of the build tooling."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
import requests
import yaml

from gpuscope.cli import main
from tests.helpers import FIXTURES, free_port
from tests.procs import _wait_healthy, run_gpuscope

SETTINGS = """\
selector: 'job="gpu-nodes", env="prod"'
cluster_label: region
node_label: node
straggler_ratio: 0.8
alerts:
  GpuTemperatureNearLimit: {enabled: false}
  NvlinkErrors: {severity: critical}
"""


def build(tmp_path, what: str, settings: str) -> subprocess.CompletedProcess:
    (tmp_path / "settings.yml").write_text(settings)
    return run_gpuscope(what, "build", "--config", str(tmp_path / "settings.yml"), "--out", str(tmp_path / what))


def build_in_process(tmp_path, capsys, what: str, settings: str) -> tuple[int, str]:
    """The same command through the CLI's entry point in this process (exit status, stderr)."""
    (tmp_path / "settings.yml").write_text(settings)
    status = main([what, "build", "--config", str(tmp_path / "settings.yml"), "--out", str(tmp_path / what)])
    return status, capsys.readouterr().err


def test_one_file_fits_rules_and_dashboards_to_the_users_labels(tmp_path):
    assert build(tmp_path, "alerts", SETTINGS).returncode == 0
    assert build(tmp_path, "dashboards", SETTINGS).returncode == 0
    rules = [r for g in yaml.safe_load((tmp_path / "alerts" / "prometheus-rules.yml").read_text())["groups"]
             for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r and r["labels"].get("cause") != "missing"}
    assert "GpuTemperatureNearLimit" not in alerts
    assert {r["labels"]["severity"] for r in rules if r.get("alert") == "NvlinkErrors"} == {"critical"}
    assert alerts["GpuscopeExporterDown"]["expr"] == 'up{job="gpu-nodes", env="prod"} == 0'
    assert alerts["GpuLost"]["expr"] == 'gpuscope_gpu_up{job="gpu-nodes", env="prod"} == 0'
    assert "{{ $labels.node }}" in alerts["GpuLost"]["annotations"]["description"]
    records = {r["record"]: r["expr"] for r in rules if "record" in r}
    assert records["instance:gpuscope_gpus:count"] == 'count by (node) (gpuscope_gpu_up{job="gpu-nodes", env="prod"})'
    assert records["cluster:gpuscope_gpu_utilization_ratio:avg"] == \
        'avg by (region) (gpuscope_gpu_utilization_ratio{job="gpu-nodes", env="prod"})'
    assert any("< 0.8)" in r["expr"] for r in rules if r.get("alert") == "GpuStraggler")
    node = json.loads((tmp_path / "dashboards" / "gpuscope-node.json").read_text())
    variables = {v["name"]: v.get("query") for v in node["templating"]["list"]}
    assert variables["cluster"] == 'label_values(gpuscope_build_info{job="gpu-nodes", env="prod"}, region)'
    assert variables["instance"] == \
        'label_values(gpuscope_build_info{job="gpu-nodes", env="prod", region=~"$cluster"}, node)'
    clock = next(p for p in node["panels"] if p["title"] == "SM clock")["targets"][0]
    assert clock["expr"] == \
        'gpuscope_gpu_sm_clock_hertz{job="gpu-nodes", env="prod", region=~"$cluster", node=~"$instance", gpu=~"$gpu"}'


def test_every_view_filters_by_cluster():
    """Every raw series a panel reads is filtered by $cluster, and so is every query of gpuscope data
    (a recorded series on the right of a join is narrowed by the left side's filter)."""
    from dashboards.build import dashboard_json

    for uid, board in dashboard_json().items():
        assert "cluster" in [v["name"] for v in board["templating"]["list"]], uid
        for panel in board["panels"]:
            for expr in (target["expr"] for target in panel["targets"] if "gpuscope" in target["expr"]):
                raw = re.findall(r"(?<![\w:])gpuscope_\w+(\{[^}]*\})?", expr)
                assert all('cluster=~"$cluster"' in selector for selector in raw), (uid, expr)
                assert 'cluster=~"$cluster"' in expr, (uid, expr)


@pytest.mark.parametrize(("settings", "message"), [
    ("alerts: {GpuStragler: {enabled: false}}\n", "alerts.GpuStragler: no such alert"),
    ("alerts: {GpuLost: {severity: page}}\n", "alerts.GpuLost.severity: 'page' is not one of critical, warning, info"),
    ("alerts: {GpuLost: {enabled: maybe}}\n", "alerts.GpuLost.enabled: expected true or false"),
    ("alerts: {GpuLost: {mute: true}}\n", "alerts.GpuLost: must be a mapping with enabled and/or severity"),
    ("selector: gpuscope\n", "selector: 'gpuscope' is not a list of label matchers"),
    ("node_label: node-name\n", "node_label: 'node-name' is not a Prometheus label name"),
    ("straggler_ratio: [1]\n", "straggler_ratio: expected float"),
    ("exporter_job: gpuscope\n", "unknown setting 'exporter_job'"),
    ("gpu_hour_prices: {p5.48xlarge: cheap}\n", "gpu_hour_prices: must map instance types to dollars per GPU-hour"),
    ("remediation_selector: remediate\n", "remediation_selector: 'remediate' is not a list of label matchers"),
])
def test_bad_settings_are_one_line_naming_file_and_key(tmp_path, capsys, settings, message):
    for what in ("alerts", "dashboards"):
        status, err = build_in_process(tmp_path, capsys, what, settings)
        assert status == 2, err
        assert err.count("\n") == 1
        assert err.startswith(f"gpuscope {what}: error: settings {tmp_path / 'settings.yml'}: ") and message in err
        assert not (tmp_path / what).exists()


def test_build_commands_without_the_extra_say_how_to_install_it():
    # grafanalib made unimportable, as on a node where only `pip install gpuscope` ran
    code = ("import sys; sys.modules['grafanalib'] = None; from gpuscope.cli import main; "
            "sys.exit(main(['dashboards', 'build', '--out', '/nonexistent']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "pip install 'gpuscope[dashboards]'" in result.stderr and "Traceback" not in result.stderr


def test_the_node_agent_loads_no_other_product_grafanalib_or_requests():
    """A real exporter process, started, scraped and stopped, with every import it made logged."""
    port = free_port()
    command = [sys.executable, "-X", "importtime", "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}",
               f"--path.sysfs={FIXTURES / 'prometheus-procfs' / 'sys'}", "--path.procfs=/proc"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", None, {})
        assert "gpuscope_rdma" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    imported = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "exporter.collectors.rdma" in imported  # the log is complete
    unwanted = {m for m in imported if m.split(".")[0] in ("grafanalib", "requests", "alerts", "dashboards",
                                                            "simulator", "receiver", "gpuscope")}
    assert unwanted == set()


def test_gpu_hour_prices_replace_the_defaults(tmp_path):
    from alerts.records import GPU_PRICE
    from alerts.rules import groups
    from alerts.settings import Settings, load_settings

    def price_rule(settings) -> str:
        return next(rule.expr for group in groups(settings) for rule in group.rules
                    if getattr(rule, "record", "") == GPU_PRICE)

    assert 'instance_type="p5.48xlarge"' in price_rule(Settings()) and "4.916 *" in price_rule(Settings())
    path = tmp_path / "settings.yml"
    path.write_text("gpu_hour_prices: {p5en.48xlarge: 7.91}\n")
    custom = price_rule(load_settings(str(path)))
    assert custom == ('7.91 * max by (cluster, instance) '
                      '(gpuscope_node_info{job="gpuscope", instance_type="p5en.48xlarge"})')
