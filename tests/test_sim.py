"""Every fault kind, through a simulated node's faults.yaml, shows its documented signature in a scrape."""

from __future__ import annotations

import time

import pytest
import yaml

from exporter.collectors import Roots, build, close
from exporter.collectors.gpu import GpuOptions
from exporter.registry import ScrapeRegistry
from exporter.sim.cluster import load_scenario
from exporter.sim.faults import ScenarioError, node_effects
from exporter.sim.node import EFA_RATES, LUSTRE_READ_RATE, SimulatedNode
from exporter.sim.nvml import SimulatedNvml, load_profile
from exporter.sim.scenarios import SCENARIOS
from tests.helpers import samples, series, value

PROFILE = load_profile("p5.48xlarge")


class Node:
    """One simulated node read by the real collectors, its clock moved by hand."""

    def __init__(self, root) -> None:
        self.now = 1000.0
        clock = lambda: self.now  # noqa: E731
        self.nvml = SimulatedNvml(PROFILE, clock=clock)
        self.node = SimulatedNode(str(root), PROFILE, self.nvml, clock=clock)
        self.collectors = build(("gpu", "rdma", "lustre"), Roots(self.node.sysfs, str(root / "none"), nvml=self.nvml,
                                                                  gpu=GpuOptions(gpm_interval=3600)))
        self.registry = ScrapeRegistry(self.collectors, 5.0)

    def faults(self, *faults: dict) -> None:
        with open(self.node.faults_file, "w") as handle:
            yaml.safe_dump(list(faults), handle)

    def step(self, seconds: float) -> dict:
        self.now += seconds
        self.node.advance()
        return samples(self.registry.render())


@pytest.fixture
def node(tmp_path):
    made = Node(tmp_path)
    made.step(0)
    yield made
    close(made.collectors)


def uuid(node: Node, gpu: int) -> str:
    return node.nvml.nvmlDeviceGetUUID(node.nvml.nvmlDeviceGetHandleByIndex(gpu))


def gpu_value(parsed, node: Node, name: str, gpu: int, **labels) -> float:
    return value(parsed, name, gpu=str(gpu), uuid=uuid(node, gpu), **labels)


def efa_growth(before, after, name: str, device: str = "rdmap79s0") -> float:
    key = {"device": device, "port": "1"}
    return value(after, name, **key) - value(before, name, **key)


def test_healthy_node_moves_at_the_documented_rates(node):
    before = node.step(0)
    after = node.step(10)
    assert efa_growth(before, after, "gpuscope_efa_transmit_bytes_total") == pytest.approx(10 * EFA_RATES["tx_bytes"],
                                                                                          abs=1)
    assert value(after, "gpuscope_lustre_read_bytes_total", fs="fsx") - \
        value(before, "gpuscope_lustre_read_bytes_total", fs="fsx") == pytest.approx(10 * LUSTRE_READ_RATE, abs=1)
    assert not [s for s in series(after, "gpuscope_gpu_clock_event_active")
                if value(after, "gpuscope_gpu_clock_event_active", **s) == 1]


def test_straggler_is_slow_with_no_throttle_reason(node):
    node.faults({"kind": "straggler", "gpu": 5})
    parsed = node.step(1)
    assert gpu_value(parsed, node, "gpuscope_gpu_sm_clock_hertz", 5) == round(0.72 * 1980) * 1e6
    assert gpu_value(parsed, node, "gpuscope_gpu_sm_clock_hertz", 4) == 1980e6
    assert gpu_value(parsed, node, "gpuscope_gpu_power_watts", 5) == pytest.approx(0.78 * 640)
    assert not [s for s in series(parsed, "gpuscope_gpu_clock_event_active") if s["gpu"] == "5"
                and value(parsed, "gpuscope_gpu_clock_event_active", **s) == 1]


def test_thermal_throttle_signature(node):
    node.faults({"kind": "thermal_throttle", "gpu": 3})
    node.step(1)
    parsed = node.step(30)
    assert gpu_value(parsed, node, "gpuscope_gpu_clock_event_active", 3, reason="hw_thermal_slowdown") == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_temperature_celsius", 3) == 89  # the H100 slowdown limit
    assert gpu_value(parsed, node, "gpuscope_gpu_temperature_slowdown_margin_celsius", 3) == 0
    assert gpu_value(parsed, node, "gpuscope_gpu_violation_seconds_total", 3, policy="thermal") == pytest.approx(30)


def test_power_brake_signature(node):
    node.faults({"kind": "power_brake", "gpu": 0})
    parsed = node.step(1)
    assert gpu_value(parsed, node, "gpuscope_gpu_clock_event_active", 0, reason="hw_power_brake") == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_power_watts", 0) == pytest.approx(0.35 * 700)


def test_collective_stall_signature(node):
    before = node.step(0)
    healthy = node.step(5)
    node.faults({"kind": "collective_stall"})
    start = node.step(1)
    after = node.step(10)
    for gpu in range(8):
        assert gpu_value(after, node, "gpuscope_gpu_utilization_ratio", gpu) == 1.0
        assert gpu_value(after, node, "gpuscope_gpu_power_watts", gpu) == pytest.approx(77)
    assert efa_growth(start, after, "gpuscope_efa_transmit_bytes_total") == 0
    assert efa_growth(before, healthy, "gpuscope_efa_transmit_bytes_total") > 0
    assert gpu_value(after, node, "gpuscope_gpu_nvlink_transmit_bytes_total", 0) == \
        gpu_value(start, node, "gpuscope_gpu_nvlink_transmit_bytes_total", 0)


def test_efa_retransmit_storm_signature(node):
    node.faults({"kind": "efa_retransmit_storm"})
    start = node.step(0)
    after = node.step(10)
    assert efa_growth(start, after, "gpuscope_efa_retransmit_timeout_events_total") == pytest.approx(20, abs=1)
    assert efa_growth(start, after, "gpuscope_efa_unresponsive_remote_events_total") == pytest.approx(10, abs=1)
    assert efa_growth(start, after, "gpuscope_efa_impaired_remote_connection_events_total") == pytest.approx(10, abs=1)
    assert efa_growth(start, after, "gpuscope_efa_transmit_bytes_total") > 0  # traffic still flows


def test_nvlink_errors_signature(node):
    node.faults({"kind": "nvlink_errors", "gpu": 2})
    node.step(0)
    parsed = node.step(10)
    assert gpu_value(parsed, node, "gpuscope_gpu_nvlink_errors_total", 2, type="replay") == 20
    assert gpu_value(parsed, node, "gpuscope_gpu_nvlink_errors_total", 2, type="recovery") == 2
    assert gpu_value(parsed, node, "gpuscope_gpu_nvlink_errors_total", 1, type="replay") == 0


def test_gpu_lost_signature(node):
    node.faults({"kind": "gpu_lost", "gpu": 6})
    node.step(1)
    deadline = time.monotonic() + 5
    while True:  # the XID arrives through the event thread
        parsed = node.step(0)
        if series(parsed, "gpuscope_gpu_xid_errors_total") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    up6 = [s for s in series(parsed, "gpuscope_gpu_up") if s["gpu"] == "6"]
    assert [value(parsed, "gpuscope_gpu_up", **s) for s in up6] == [0]
    assert [s["xid"] for s in series(parsed, "gpuscope_gpu_xid_errors_total") if s["gpu"] == "6"] == ["79"]
    assert len([s for s in series(parsed, "gpuscope_gpu_up") if value(parsed, "gpuscope_gpu_up", **s) == 1]) == 7


def test_memory_fault_signatures(node):
    node.faults({"kind": "ecc_uncorrectable", "gpu": 4}, {"kind": "row_remap_failure", "gpu": 7})
    parsed = node.step(1)
    assert gpu_value(parsed, node, "gpuscope_gpu_ecc_errors_total", 4, type="uncorrected", scope="volatile") == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_remapped_rows_pending", 4) == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_recovery_action", 4) == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_remapped_rows_failure", 7) == 1
    assert gpu_value(parsed, node, "gpuscope_gpu_remapped_rows_failure", 4) == 0


def test_lustre_eviction_signature(node):
    node.faults({"kind": "lustre_eviction", "target": "OST0001"})
    start = node.step(0)
    after = node.step(10)
    ost1, ost2 = {"fs": "fsx", "target": "OST0001"}, {"fs": "fsx", "target": "OST0002"}
    assert value(after, "gpuscope_lustre_import_state", **ost1) == 2  # DISCONN
    assert value(after, "gpuscope_lustre_import_healthy", **ost1) == 0
    assert value(after, "gpuscope_lustre_import_healthy", **ost2) == 1
    assert value(after, "gpuscope_lustre_import_rpcs_in_flight", **ost1) == 8
    assert value(after, "gpuscope_lustre_import_rpc_timeouts_total", **ost1) == 10
    assert value(after, "gpuscope_lustre_read_bytes_total", fs="fsx") == \
        value(start, "gpuscope_lustre_read_bytes_total", fs="fsx")


def test_clearing_faults_restores_the_node(node):
    node.faults({"kind": "efa_stall"}, {"kind": "thermal_throttle", "gpu": 1})
    node.step(1)
    node.faults()
    start = node.step(1)
    after = node.step(5)
    assert efa_growth(start, after, "gpuscope_efa_transmit_bytes_total") == pytest.approx(5 * 1.5e9, abs=1)
    assert gpu_value(after, node, "gpuscope_gpu_clock_event_active", 1, reason="hw_thermal_slowdown") == 0


def test_a_broken_faults_file_is_ignored_and_logged(node, caplog):
    node.faults({"kind": "thermal_throttle", "gpu": 3})
    node.step(1)
    with open(node.node.faults_file, "w") as handle:
        handle.write("- {kind: meltdown}\n")
    parsed = node.step(1)
    assert gpu_value(parsed, node, "gpuscope_gpu_clock_event_active", 3, reason="hw_thermal_slowdown") == 1
    assert any("ignoring simulated faults file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", SCENARIOS)
def test_built_in_scenarios_load(name):
    scenario = load_scenario(name, 8)
    assert scenario.nodes == 4
    for step in scenario.steps:
        if step.fault:
            node_effects([step.fault], PROFILE)  # every fault of every scenario is simulatable


def test_unknown_scenario_names_the_built_in_ones():
    with pytest.raises(ScenarioError, match="built-in scenarios: healthy, straggler"):
        load_scenario("/no/such/scenario.yml", 8)
