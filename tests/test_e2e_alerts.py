"""Every fault scenario on a simulated cluster, through the real rules, Prometheus and Alertmanager.

Four simulated p5.48xlarge nodes (the peer medians need three or more; DGX H100s on InfiniBand for
the scenario that needs their ports), Prometheus evaluating the
generated rules with their durations divided by 60 (`shorten_durations`: 5m becomes 5s; timing
only, the expressions are the generated ones), and Alertmanager with the reference routes and
inhibitions delivering to a webhook. For each scenario: exactly the expected alerts fire in
Prometheus with the right node and GPU/device/target, the non-inhibited ones reach the webhook,
and everything resolves once the fault is cleared. The table is also in docs/alerts.md.
"""

from __future__ import annotations

import time

import pytest
import requests

from alerts.render import write_shortened_rules
from exporter.sim.cluster import Cluster, load_scenario
from exporter.sim.profiles import DEFAULT_PROFILE
from exporter.sim.stack import alertmanager, prometheus, webhook_receiver
from tests.helpers import wait_until
from tests.test_alertmanager import for_test

pytestmark = pytest.mark.e2e  # real Prometheus (and Alertmanager) over simulated nodes

# scenario -> (alerts firing in Prometheus, alerts notified through Alertmanager); an alert is
# (alertname, node, gpu/target); EFA error alerts name the node alone.
TABLE: dict[str, tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]] = {
    "healthy": (set(), set()),
    "straggler": ({("GpuStraggler", "node-1", "5")}, {("GpuStraggler", "node-1", "5")}),
    "thermal_throttle": (
        {("GpuThermalThrottling", "node-1", "3"), ("GpuTemperatureNearLimit", "node-1", "3"),
         ("GpuStraggler", "node-1", "3")},
        {("GpuThermalThrottling", "node-1", "3"), ("GpuTemperatureNearLimit", "node-1", "3")}),
    "power_brake": ({("GpuPowerBrakeSlowdown", "node-2", "0"), ("GpuStraggler", "node-2", "0")},
                    {("GpuPowerBrakeSlowdown", "node-2", "0")}),
    "collective_stall": ({("CollectiveStall", f"node-{n}", "") for n in range(4)},
                         {("CollectiveStall", f"node-{n}", "") for n in range(4)}),
    "efa_stall": ({("EfaTrafficStalled", "node-2", "")}, {("EfaTrafficStalled", "node-2", "")}),
    "efa_retransmit_storm": ({("EfaRetransmitTimeouts", "node-3", ""), ("EfaRemoteConnectionImpaired", "node-3", "")},
                             {("EfaRetransmitTimeouts", "node-3", ""), ("EfaRemoteConnectionImpaired", "node-3", "")}),
    "nvlink_errors": ({("NvlinkErrors", "node-0", "2")}, {("NvlinkErrors", "node-0", "2")}),
    "gpu_lost": ({("GpuLost", "node-3", "6"), ("GpuXidCritical", "node-3", "6")},
                 {("GpuLost", "node-3", "6"), ("GpuXidCritical", "node-3", "6")}),
    "ecc_uncorrectable": ({("GpuUncorrectableEccErrors", "node-1", "4"), ("GpuRowRemapPending", "node-1", "4"),
                           ("GpuRecoveryActionRequired", "node-1", "4")},
                          {("GpuUncorrectableEccErrors", "node-1", "4"), ("GpuRowRemapPending", "node-1", "4"),
                           ("GpuRecoveryActionRequired", "node-1", "4")}),
    "row_remap_failure": ({("GpuRowRemapFailure", "node-0", "7"), ("GpuUncorrectableEccErrors", "node-0", "7"),
                           ("GpuRecoveryActionRequired", "node-0", "7")},
                          {("GpuRowRemapFailure", "node-0", "7"), ("GpuUncorrectableEccErrors", "node-0", "7"),
                           ("GpuRecoveryActionRequired", "node-0", "7")}),
    "compute_straggler": ({("GpuStraggler", "node-1", "5")}, {("GpuStraggler", "node-1", "5")}),
    "nccl_late_arrival": ({("GpuStraggler", "node-2", "3")}, {("GpuStraggler", "node-2", "3")}),
    "nccl_bandwidth_drop": ({("NcclBandwidthDegraded", "node-3", "")}, {("NcclBandwidthDegraded", "node-3", "")}),
    "efa_device_missing": ({("EfaDeviceMissing", "node-2", "")}, {("EfaDeviceMissing", "node-2", "")}),
    "kernel_xid": ({("GpuXidCritical", "node-3", "6")}, {("GpuXidCritical", "node-3", "6")}),
    "sxid_fatal": ({("NvswitchFatalError", "node-1", "")}, {("NvswitchFatalError", "node-1", "")}),
    "nvlink_down": ({("NvlinkInactive", "node-0", "2")}, {("NvlinkInactive", "node-0", "2")}),
    "rdma_port_down": ({("RdmaPortDown", "node-1", "mlx5_3")}, {("RdmaPortDown", "node-1", "mlx5_3")}),
    "lustre_eviction": ({("LustreTargetDisconnected", "node-2", "OST0001"), ("LustreIoStalled", "node-2", "OST0001"),
                         ("LustreClientEvicted", "node-2", "OST0001")},
                        {("LustreTargetDisconnected", "node-2", "OST0001"), ("LustreIoStalled", "node-2", "OST0001"),
                         ("LustreClientEvicted", "node-2", "OST0001")}),
}

# The rank a job waits for is named from the hardware (busiest GPU) and from NCCL (its collectives
# shortest), or from NCCL alone when the rank is late without being busy.
EVIDENCE = {"compute_straggler": {"busiest_gpu", "nccl_early_rank"}, "nccl_late_arrival": {"nccl_early_rank"}}


def key(labels: dict[str, str]) -> tuple[str, str, str]:
    where = labels.get("gpu") or labels.get("target") or labels.get("device", "")
    return labels["alertname"], labels["instance"], where


def firing(prom) -> tuple[set[tuple[str, str, str]], list[dict]]:
    alerts = [a for a in prom.alerts() if a["state"] == "firing"]
    return {key(a["labels"]) for a in alerts}, alerts


def _stack(tmp_path_factory, profile: str):
    """The cluster of `profile` nodes, Prometheus and Alertmanager."""
    root = tmp_path_factory.mktemp("alerts-e2e")
    rules = write_shortened_rules(str(root / "rules.yml"), 60)
    cluster = Cluster(str(root), nodes=4, profile=profile, exporter_args=("--collector.gpu.gpm-interval=1s",))
    with cluster, webhook_receiver() as (url, hook), alertmanager(for_test(url)) as am:
        jobs = [{"job_name": "gpuscope",  # the default selector's job
                 "file_sd_configs": [{"files": [cluster.write_targets()], "refresh_interval": "1s"}]}]
        with prometheus(jobs, rule_files=[rules], alertmanager=am) as prom:
            prom.wait_for('count(up{job="gpuscope"} == 1) == 4')
            time.sleep(12)  # rate windows and GPM samples fill
            yield cluster, prom, hook


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Four p5.48xlarge nodes: every scenario that names no profile, one stack for all of them."""
    yield from _stack(tmp_path_factory, DEFAULT_PROFILE)


@pytest.fixture(scope="module")
def dgx_stack(tmp_path_factory):
    """Four DGX H100 nodes on InfiniBand, for the scenarios that need their ports."""
    yield from _stack(tmp_path_factory, "dgx-h100")


@pytest.mark.parametrize("name", [name for name in TABLE if load_scenario(name).profile == DEFAULT_PROFILE])
def test_scenario_fires_exactly_the_expected_alerts(stack, name):
    play(stack, name)


def test_every_scenario_of_the_table_runs_on_one_of_the_stacks():
    assert {load_scenario(name).profile for name in TABLE} == {DEFAULT_PROFILE, "dgx-h100"}


def play(stack, name: str) -> None:
    """Injects the scenario's faults: exactly the expected alerts fire and are notified, then resolve."""
    cluster, prom, hook = stack
    expected, notified = TABLE[name]
    wait_until(lambda: not firing(prom)[0], 60, f"alerts still firing before {name}: {firing(prom)[0]}")
    before = len(hook.received())
    for step in load_scenario(name).steps:
        if step.fault:
            cluster.inject(step.node, step.fault)
    try:
        # Everything that fires from the injection until 6 s after the last expected alert fired:
        # one-shot alerts (an ECC error, an XID) fire only for their window, so collect them all.
        seen: set[tuple[str, str, str]] = set()
        evidence: set[str] = set()
        most = 0
        deadline, settle = time.monotonic() + 60, None
        while settle is None or time.monotonic() < settle:
            got, alerts = firing(prom)
            seen |= got
            evidence |= {a["labels"]["evidence"] for a in alerts if "evidence" in a["labels"]}
            most = max(most, len(alerts))
            if settle is None and seen >= expected:
                settle = time.monotonic() + 6
            assert time.monotonic() < deadline, f"{name}: expected {expected}, seen {seen}"
            time.sleep(0.5)
        assert seen == expected, f"{name}: expected {expected}, got {seen}"
        if name == "efa_retransmit_storm":
            assert most == 2  # one alert per node and kind, not one per EFA device
        if name in EVIDENCE:  # which evidence named the waited-for rank
            assert evidence == EVIDENCE[name], f"{name}: evidence {evidence}"
        wait_until(lambda: {key(a["labels"]) for note in hook.received()[before:] for a in note["alerts"]
                            if a["status"] == "firing"} >= notified, 30, f"{name}: notifications missing")
        sent = {key(a["labels"]) for note in hook.received()[before:] for a in note["alerts"]
                if a["status"] == "firing"}
        assert sent == notified, f"{name}: notified {sent}, expected {notified} (the rest inhibited)"
        for note in hook.received()[before:]:
            for alert in note["alerts"]:
                assert alert["labels"]["instance"] in alert["annotations"]["description"]
                assert alert["annotations"]["runbook_url"].endswith("#" + alert["labels"]["alertname"].lower())
    finally:
        cluster.clear("job")
        for node in range(4):
            cluster.clear(node)
    wait_until(lambda: not firing(prom)[0], 90, f"{name}: alerts did not resolve: {firing(prom)[0]}")
    assert requests.get(f"{prom.base}/-/ready", timeout=5).status_code == 200


def test_a_restart_pages_nothing_and_a_gpu_missing_at_boot_pages_once_restarted(stack):
    """A healthy node's kernel log holds hours-old XIDs and driver noise: read again by a restarted
    exporter it pages nothing. A GPU that does not come up when the node (here its exporter and
    simulated NVML) starts pages GpuMissing from the first scrapes, with no history needed."""
    cluster, prom, hook = stack
    wait_until(lambda: not firing(prom)[0], 60, f"alerts firing before the restart: {firing(prom)[0]}")
    cluster.restart(0)
    deadline, seen = time.monotonic() + 15, set()
    while time.monotonic() < deadline:
        seen |= firing(prom)[0]
        time.sleep(0.5)
    assert seen == set(), seen
    before = len(hook.received())
    cluster.inject(1, {"kind": "gpu_missing_at_boot", "gpu": 6})
    cluster.restart(1)
    try:
        wait_until(lambda: ("GpuMissing", "node-1", "") in firing(prom)[0], 60, "GpuMissing did not fire")
        sent = {key(a["labels"]) for note in hook.received()[before:] for a in note["alerts"]}
        wait_until(lambda: ("GpuMissing", "node-1", "") in {key(a["labels"]) for note in hook.received()[before:]
                                                           for a in note["alerts"]}, 30, f"not notified: {sent}")
    finally:
        cluster.clear(1)
        cluster.restart(1)
    wait_until(lambda: not firing(prom)[0], 90, f"alerts did not resolve: {firing(prom)[0]}")


# Last: the p5 stack's scenarios are over before the DGX stack starts (both stay up until the module ends).
@pytest.mark.parametrize("name", [name for name in TABLE if load_scenario(name).profile == "dgx-h100"])
def test_infiniband_scenario_fires_exactly_the_expected_alerts(dgx_stack, name):
    play(dgx_stack, name)
