"""Every fault kind, through a simulated node's faults.yaml, shows its documented signature in a scrape."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import yaml

from exporter.collectors import Roots, build, close
from exporter.collectors.gpu import GpuOptions
from exporter.registry import ScrapeRegistry
from simulator.cluster import load_scenario
from simulator.faults import ScenarioError, node_effects
from simulator.node import EFA_RATES, LUSTRE_READ_RATE, SimulatedNode
from simulator.nvml import SimulatedNvml, load_profile
from simulator.scenarios import SCENARIOS
from tests.helpers import samples, series, value

PROFILE = load_profile("p5.48xlarge")


class Node:
    """One simulated node read by the real collectors, its clock moved by hand."""

    def __init__(self, root, profile: dict = PROFILE) -> None:
        self.now = 1000.0
        clock = lambda: self.now  # noqa: E731
        self.nvml = SimulatedNvml(profile, clock=clock)
        self.node = SimulatedNode(str(root), profile, self.nvml, clock=clock)
        self.collectors = build(("gpu", "rdma", "lustre"), Roots(self.node.sysfs, str(root / "none"), nvml=self.nvml,
                                                                  settings={"gpu": GpuOptions(gpm_interval=3600,
                                                                                              link_interval=0.05)}))
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
    scenario = load_scenario(name)
    # the 48-GPU job and a second job; the 32-GPU A100 job and a node of its own
    assert scenario.nodes == {"job_waits": 8, "a100_stragglers": 5}.get(name, 4)
    assert all(max(nodes) < scenario.nodes for _, nodes in scenario.jobs)
    for step in scenario.steps:
        if step.fault:
            node_effects([step.fault], PROFILE)  # every fault of every scenario is simulatable


def test_unknown_scenario_names_the_built_in_ones():
    with pytest.raises(ScenarioError, match="built-in scenarios: a100_stragglers, collective_stall"):
        load_scenario("/no/such/scenario.yml")


# --- the simulated job: NCCL Inspector files and the job-wide faults of issue 15 -----------------------

def inspector_lines(root, gpu: int) -> list:
    from exporter.collectors.nccl import parse
    from simulator.inspector import file_name
    from simulator.nvml import gpu_uuid

    lines, malformed = parse((root / "nccl" / file_name(gpu_uuid(gpu))).read_text())
    assert malformed == 0
    return lines


def bucket(lines: list, metric: str, comm: str, collective: str, size: str = "1-2GB") -> float:
    return next(line.value for line in lines if (line.name, line.comm, line.operation, line.size)
                == (metric, comm, collective, size))


@pytest.fixture
def job_node(tmp_path):
    """Node 1 of a 4-node job."""
    SimulatedNode.write_job(str(tmp_path), "4242", node=1, nodes=4)
    made = Node(tmp_path)
    made.step(0)
    yield made
    close(made.collectors)


def test_a_job_node_writes_inspector_files_for_every_gpu(job_node, tmp_path):
    assert len(list((tmp_path / "nccl").iterdir())) == 8
    lines = inspector_lines(tmp_path, 5)
    assert len(lines) == 4 * 2 * 2 * 2  # communicators x collectives x message sizes x (bandwidth, time)
    assert {(line.comm, line.nranks) for line in lines} == {
        ("World", "32"), ("DP Group 0", "32"), ("TP Group 1", "8"), ("PP Group 5", "4")}
    assert {line.job for line in lines} == {"4242"}
    assert bucket(lines, "nccl_collective_exec_time_microseconds", "World", "AllReduce") == 12000.0


def test_compute_straggler_the_rank_never_waits_the_others_do():
    straggler = {"kind": "compute_straggler", "node": 1, "gpu": 5}
    here, elsewhere = node_effects([straggler], PROFILE, node=1), node_effects([straggler], PROFILE, node=2)
    assert (here.gpus[5].activity_scale, here.gpus[5].power_watts) == (1.03, 640)
    assert (here.gpus[4].activity_scale, here.gpus[4].power_watts) == (0.66, pytest.approx(0.72 * 640))
    assert here.gpus[4].sm_clock_mhz is None and here.gpus[4].utilization is None  # full clocks, 100 %
    assert (here.nccl.exec_scale[5], here.nccl.exec_scale[4]) == (0.45, 1.7)
    assert {f.activity_scale for f in elsewhere.gpus.values()} == {0.66}
    assert set(elsewhere.nccl.exec_scale.values()) == {1.7}


def test_a_straggler_in_an_imbalanced_job_is_busiest_whatever_its_stage():
    faults = [{"kind": "pipeline_imbalance"}, {"kind": "compute_straggler", "node": 1, "gpu": 5}]
    effects = node_effects(faults, PROFILE, node=1)
    assert effects.gpus[5].activity_scale == 1.03
    assert effects.gpus[0].activity_scale == pytest.approx(0.66)  # a first stage, waiting too
    assert effects.gpus[3].activity_scale == pytest.approx(0.78 * 0.66)
    assert effects.nccl.exec_scale[0] == pytest.approx(0.55 * 1.7)


def test_nccl_faults_change_the_inspector_files(job_node, tmp_path):
    job_node.faults({"kind": "nccl_bandwidth_drop", "node": 1}, {"kind": "nccl_late_arrival", "node": 1, "gpu": 2})
    for _ in range(3):
        job_node.step(1)
    waited_for, waiting = inspector_lines(tmp_path, 2), inspector_lines(tmp_path, 3)
    assert bucket(waiting, "nccl_bus_bandwidth_gbs", "World", "AllReduce") == pytest.approx(45 * 0.3 / 1.7, rel=1e-5)
    assert bucket(waiting, "nccl_bus_bandwidth_gbs", "TP Group 1", "AllGather") == pytest.approx(360 / 1.7, rel=1e-5)
    assert bucket(waited_for, "nccl_collective_exec_time_microseconds", "World", "AllReduce") == \
        pytest.approx(12000 * 0.45 / 0.3, rel=1e-5)
    assert bucket(waiting, "nccl_collective_exec_time_microseconds", "World", "AllReduce") == \
        pytest.approx(12000 * 1.7 / 0.3, rel=1e-5)


def test_a_checkpoint_idles_the_gpus_and_stops_the_dumps(job_node, tmp_path):
    path = next((tmp_path / "nccl").iterdir())
    written = path.stat().st_mtime_ns
    job_node.faults({"kind": "checkpoint"})
    for _ in range(6):
        parsed = job_node.step(1)
    assert path.stat().st_mtime_ns == written
    assert gpu_value(parsed, job_node, "gpuscope_gpu_utilization_ratio", 4) == 0.03


def test_a_missing_efa_device_leaves_and_comes_back(node):
    def efa_devices(parsed) -> int:
        return sum(1 for labels in series(parsed, "gpuscope_rdma_device_info") if labels["efa"] == "true")

    node.faults({"kind": "efa_device_missing"})
    assert efa_devices(node.step(1)) == 31
    node.faults()
    assert efa_devices(node.step(1)) == 32


def test_an_infiniband_port_goes_down_and_comes_back_on_a_dgx(tmp_path):
    """The DGX profile's eight ConnectX-7 ports are ACTIVE; rdma_port_down takes one down (state 1,
    phys_state 3 Disabled) and counts it in link_downed; cleared, it is ACTIVE again."""
    dgx = Node(tmp_path, load_profile("dgx-h100"))
    try:
        parsed = dgx.step(0)
        port = {"device": "mlx5_3", "port": "1"}
        assert [s["device"] for s in series(parsed, "gpuscope_rdma_device_info")] == [f"mlx5_{n}" for n in range(8)]
        states = {value(parsed, "gpuscope_rdma_port_state", **s) for s in series(parsed, "gpuscope_rdma_port_state")}
        assert states == {4}
        assert value(parsed, "gpuscope_rdma_port_stat_total", counter="link_downed", **port) == 0
        dgx.faults({"kind": "rdma_port_down", "device": 3})
        parsed = dgx.step(1)
        assert value(parsed, "gpuscope_rdma_port_state", **port) == 1
        assert value(parsed, "gpuscope_rdma_port_physical_state", **port) == 3
        assert value(parsed, "gpuscope_rdma_port_stat_total", counter="link_downed", **port) == 1
        assert value(parsed, "gpuscope_rdma_port_state", device="mlx5_2", port="1") == 4
        dgx.faults()
        parsed = dgx.step(1)
        assert value(parsed, "gpuscope_rdma_port_state", **port) == 4
        assert value(parsed, "gpuscope_rdma_port_stat_total", counter="link_downed", **port) == 1
    finally:
        close(dgx.collectors)


def test_a_scenario_runs_on_the_profile_it_names():
    assert load_scenario("rdma_port_down").profile == "dgx-h100"
    assert load_scenario("healthy").profile == "p5.48xlarge"
    assert load_scenario("healthy", "dgx-h100").profile == "dgx-h100"
    with pytest.raises(ScenarioError, match=r"scenario rdma_port_down: runs on profile dgx-h100, not p5\.48xlarge"):
        load_scenario("rdma_port_down", "p5.48xlarge")


def test_kernel_log_faults_append_records_nvml_never_sees(node, tmp_path):
    from exporter.collectors.kmsg import KernelEvents, parse_record
    from simulator.kernel_log import BOOT_AGE

    def kernel_events() -> KernelEvents:
        found = KernelEvents()
        for line in (tmp_path / "kmsg").read_text().splitlines():
            found.add(parse_record(line), node.node.kernel_log.boot_time)
        return found

    healthy = kernel_events()
    assert {xid for _, xid in healthy.xids} == {13, 94}  # hours old, from the noise
    assert max(last for _, last in healthy.xids.values()) < node.node.kernel_log.boot_time + BOOT_AGE - 3600
    node.faults({"kind": "kernel_xid", "gpu": 6, "xid": 119}, {"kind": "sxid", "switch": 2, "sxid": 24007,
                                                               "fatal": True})
    parsed = node.step(1)
    found = kernel_events()
    assert found.xids[("0000:b9:00", 119)][0] == 1
    assert found.sxids[("2", "0000:07:00.0", 24007, "fatal")][0] == 1
    assert not series(parsed, "gpuscope_gpu_xid_errors_total")  # NVML's events never had it


def test_an_nvlink_down_is_counted_in_the_background(node):
    node.faults({"kind": "nvlink_down", "gpu": 3, "links": 2})
    node.step(1)
    deadline = time.monotonic() + 5
    while gpu_value(parsed := node.step(0), node, "gpuscope_gpu_nvlink_active_links", 3) != 16:
        assert time.monotonic() < deadline, "the link count did not change"
        time.sleep(0.05)
    assert gpu_value(parsed, node, "gpuscope_gpu_nvlink_active_links", 2) == 18


def test_a_gpu_missing_at_boot_is_not_enumerated_until_the_next_start(tmp_path):
    (tmp_path / "faults.yaml").write_text("- {kind: gpu_missing_at_boot, gpu: 6}\n")
    made = Node(tmp_path)
    try:
        parsed = made.step(0)
        assert len(series(parsed, "gpuscope_gpu_up")) == 7
        assert uuid(made, 6) == "GPU-00000007-5ca1-4e0d-9a7b-1d0f00007777"  # NVML renumbers the rest
        made.faults()
        assert len(series(made.step(1), "gpuscope_gpu_up")) == 7  # a booted node stays as it booted
    finally:
        close(made.collectors)


def test_stop_waits_for_the_update_in_progress_so_the_tree_can_be_removed(tmp_path, monkeypatch):
    """Issue 21: a SIGTERM while the node wrote its counters left `.staging` non-empty under the
    temporary directory's removal (exit 1, the tree left behind; 2 of 12 runs with
    --simulate.interval=50ms before stop() waited for the writer)."""
    node = SimulatedNode(str(tmp_path / "root"), PROFILE, SimulatedNvml(PROFILE))
    started, finished = threading.Event(), threading.Event()

    def slow_update() -> None:
        started.set()
        time.sleep(0.3)
        (tmp_path / "root" / ".staging" / "late").write_text("1\n")  # what the writer leaves while it runs
        os.unlink(tmp_path / "root" / ".staging" / "late")
        finished.set()

    monkeypatch.setattr(node, "advance", slow_update)
    node.start(0.01)
    assert started.wait(5)
    node.stop()
    assert finished.is_set()
    shutil.rmtree(tmp_path / "root")  # what TemporaryDirectory does next: nothing writes into it any more
