"""End to end on a simulated cluster: real exporter processes, real Prometheus and Alertmanager, a webhook.

The harness self-test uses one probe rule written here; the product's alert rules are tested
against the same harness in their own files.
"""

from __future__ import annotations

import time

import pytest
import requests
import yaml

from simulator.cluster import Cluster
from simulator.stack import alertmanager, prometheus, webhook_only_config, webhook_receiver

pytestmark = pytest.mark.e2e  # real Prometheus (and Alertmanager) over simulated nodes

PROBE_RULES = {"groups": [{"name": "harness-probe", "rules": [{
    "alert": "HarnessProbeThermal",
    "expr": 'gpuscope_gpu_clock_event_active{reason="hw_thermal_slowdown"} == 1',
    "labels": {"severity": "warning"},
}]}]}
# Per p5.48xlarge node with default flags, one 8-GPU job with 4 NCCL communicators: 1,700, and 64 for
# the job's eight ranks writing the training spool (eight series a rank, docs/training.md).
SERIES_BUDGET = 1764
COLLECTORS = {"gpu", "rdma", "lustre", "host", "nccl", "identity", "kmsg", "train"}
SCRAPE_SYNTHETIC = 5  # up, scrape_duration_seconds, scrape_samples_*, scrape_series_added


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    rules = root / "probe-rules.yml"
    rules.write_text(yaml.safe_dump(PROBE_RULES))
    cluster = Cluster(str(root), nodes=2, exporter_args=("--collector.gpu.gpm-interval=1s",))
    with cluster, webhook_receiver() as (url, hook), alertmanager(webhook_only_config(url)) as am:
        jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()],
                                                                "refresh_interval": "1s"}]}]
        with prometheus(jobs, rule_files=[str(rules)], alertmanager=am) as prom:
            prom.wait_for('count(up{job="gpuscope"} == 1) == 2')
            yield cluster, prom, hook


def scalar(prom, expr: str) -> float:
    result = prom.wait_for(expr)
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_node_is_up_with_the_series_the_catalog_promises(stack):
    cluster, prom, _ = stack
    for node in cluster.nodes:
        where = f'instance="{node.name}"'
        assert scalar(prom, f"up{{{where}}}") == 1
        assert scalar(prom, f"count(gpuscope_gpu_up{{{where}}} == 1)") == 8
        assert scalar(prom, f"count(gpuscope_efa_transmit_bytes_total{{{where}}})") == 32
        assert scalar(prom, f"count(gpuscope_lustre_import_healthy{{{where}}} == 1)") == 5
        succeeding = prom.wait_for(f"gpuscope_collector_success{{{where}}} == 1")
        assert {r["metric"]["collector"] for r in succeeding} == COLLECTORS
        assert scalar(prom, f'count(gpuscope_gpu_job_info{{{where}, job_id="4242"}})') == 8
        # The EFA devices of each GPU, joined through the PCI hierarchy: four per GPU on a p5.
        per_gpu = prom.wait_for(
            f'count by (gpu) (gpuscope_rdma_device_info{{{where}}} * on (instance, gpu_pci_address) group_left (gpu)'
            f' label_replace(gpuscope_gpu_info{{{where}}}, "gpu_pci_address", "$1", "pci_bus_id", "(.+)"))')
        assert {r["metric"]["gpu"]: r["value"][1] for r in per_gpu} == {str(g): "4" for g in range(8)}
    time.sleep(3)  # GPM values need two background samples
    text = requests.get(f"http://{cluster.nodes[0].address}/metrics", timeout=5).text
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    assert samples <= SERIES_BUDGET, samples
    stored = scalar(prom, 'count({instance="node-0"})')
    assert abs(stored - (samples + SCRAPE_SYNTHETIC)) <= 0, (stored, samples)


def test_rates_in_prometheus_match_the_simulated_rates(stack):
    _, prom, _ = stack
    # Node files move once a second and Prometheus scrapes once a second, so a window holds one
    # update more or less than it lasts: over 15 s that is the 10 % tolerance below.
    time.sleep(12)
    efa = scalar(prom, 'sum(rate(gpuscope_efa_transmit_bytes_total{instance="node-0"}[15s]))')
    assert efa == pytest.approx(32 * 1.5e9, rel=0.10)  # EFA_RATES: 1.5 GB/s per device
    energy = scalar(prom, 'rate(gpuscope_gpu_energy_joules_total{instance="node-1", gpu="2"}[15s])')
    assert energy == pytest.approx(640, rel=0.03)  # NVML energy moves at every call: the busy power +-1 %
    reads = scalar(prom, 'rate(gpuscope_lustre_read_bytes_total{instance="node-0"}[15s])')
    assert reads == pytest.approx(400e6, rel=0.10)  # LUSTRE_READ_RATE


def test_injected_faults_reach_prometheus_and_the_webhook(stack):
    cluster, prom, hook = stack
    cluster.inject(0, {"kind": "thermal_throttle", "gpu": 3})
    cluster.inject(1, {"kind": "efa_stall"})
    deadline = time.monotonic() + 30
    while not [a for a in hook.alerts("firing") if a["labels"]["alertname"] == "HarnessProbeThermal"]:
        assert time.monotonic() < deadline, "no notification for the injected thermal throttle"
        time.sleep(0.2)
    fired = [a["labels"] for a in hook.alerts("firing")]
    assert {(labels["instance"], labels["gpu"]) for labels in fired} == {("node-0", "3")}
    time.sleep(6)
    assert scalar(prom, 'sum(rate(gpuscope_efa_transmit_bytes_total{instance="node-1"}[5s]))') == 0
    assert scalar(prom, 'sum(rate(gpuscope_efa_transmit_bytes_total{instance="node-0"}[5s]))') > 1e10
    cluster.clear(0)
    deadline = time.monotonic() + 30
    while not [a for a in hook.alerts("resolved") if a["labels"]["alertname"] == "HarnessProbeThermal"]:
        assert time.monotonic() < deadline, "no resolved notification after the fault was cleared"
        time.sleep(0.2)
