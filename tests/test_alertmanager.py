"""The reference Alertmanager config: amtool routes, and a real Alertmanager routing and inhibiting.

For the live test the receivers are pointed at the test's webhook and the grouping waits cut to a
second (`for_test`, a documented transformation); routes and inhibitions are the file's own.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests
import yaml

from simulator.stack import alertmanager, routed_to_webhook, webhook_receiver
from tests.helpers import REPO

CONFIG = REPO / "alerts" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("amtool")
    assert binary, "amtool missing: scripts/test installs Debian's prometheus-alertmanager package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_amtool_accepts_the_config():
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=GpuLost"], "remediate,pager"),  # a node to drain, and a page
    (["severity=critical", "alertname=CollectiveStall"], "pager"),  # nothing on the node to take out
    (["severity=warning", "alertname=GpuStraggler"], "ticket"),
    (["severity=info", "alertname=GpuXidWarning"], "nowhere"),
    (["alertname=SomethingUnlabelled"], "ticket"),
])
def test_each_severity_goes_where_the_docs_say(labels, receiver):
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}",
                    *labels)
    assert result.returncode == 0, result.stdout + result.stderr


def for_test(url: str) -> dict:
    return routed_to_webhook(yaml.safe_load(CONFIG.read_text()), url)


def post(am: str, *alerts: dict) -> None:
    payload = [{"labels": labels, "annotations": {"summary": "test"}} for labels in alerts]
    requests.post(f"http://{am}/api/v2/alerts", json=payload, timeout=5).raise_for_status()


@pytest.mark.e2e
def test_real_alertmanager_routes_and_inhibits():
    with webhook_receiver() as (url, hook), alertmanager(for_test(url)) as am:
        post(am,
             {"alertname": "GpuLost", "severity": "critical", "instance": "n1", "gpu": "6"},
             {"alertname": "GpuStraggler", "severity": "warning", "instance": "n1", "gpu": "3"},
             {"alertname": "GpuStraggler", "severity": "warning", "instance": "n2", "gpu": "3"},
             {"alertname": "GpuThermalThrottling", "severity": "critical", "instance": "n3", "gpu": "1"},
             {"alertname": "GpuStraggler", "severity": "warning", "instance": "n3", "gpu": "1"},
             {"alertname": "GpuStraggler", "severity": "warning", "instance": "n3", "gpu": "2"},
             {"alertname": "CollectiveStall", "severity": "critical", "instance": "n4"},
             {"alertname": "EfaTrafficStalled", "severity": "critical", "instance": "n4"},
             {"alertname": "GpuscopeExporterDown", "severity": "critical", "instance": "n5"},
             {"alertname": "LustreIoStalled", "severity": "critical", "instance": "n5", "fs": "fsx"},
             {"alertname": "GpuXidWarning", "severity": "info", "instance": "n6", "xid": "13"})
        expected = {("pager", "GpuLost", "n1"), ("remediate", "GpuLost", "n1"), ("ticket", "GpuStraggler", "n2"),
                    ("pager", "GpuThermalThrottling", "n3"), ("ticket", "GpuStraggler", "n3"),
                    ("pager", "CollectiveStall", "n4"), ("pager", "GpuscopeExporterDown", "n5")}
        deadline = time.monotonic() + 20
        while True:
            got = {(note["receiver"], alert["labels"]["alertname"], alert["labels"]["instance"])
                   for note in hook.received() for alert in note["alerts"]}
            if got >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(2)  # anything inhibited would have arrived by now too
        got = {(note["receiver"], alert["labels"]["alertname"], alert["labels"]["instance"],
                alert["labels"].get("gpu", "")) for note in hook.received() for alert in note["alerts"]}
        assert got == {("pager", "GpuLost", "n1", "6"), ("remediate", "GpuLost", "n1", "6"),
                       ("ticket", "GpuStraggler", "n2", "3"),
                       ("pager", "GpuThermalThrottling", "n3", "1"), ("ticket", "GpuStraggler", "n3", "2"),
                       ("pager", "CollectiveStall", "n4", ""), ("pager", "GpuscopeExporterDown", "n5", ""),
                       ("nowhere", "GpuXidWarning", "n6", "")}
        inhibited = {(a["labels"]["alertname"], a["labels"]["instance"], a["labels"].get("gpu", ""))
                     for a in requests.get(f"http://{am}/api/v2/alerts", timeout=5).json()
                     if a["status"]["inhibitedBy"]}
        assert inhibited == {("GpuStraggler", "n1", "3"), ("GpuStraggler", "n3", "1"),
                             ("EfaTrafficStalled", "n4", ""), ("LustreIoStalled", "n5", "")}
