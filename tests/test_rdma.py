"""RDMA/EFA collector on real captures and on p5.48xlarge-shaped trees built from real counter values."""

from __future__ import annotations

import re

import pytest

from exporter import catalog
from exporter.collectors.rdma import RdmaCollector
from simulator.rdma_tree import (
    EFA_DEVICE_COUNTERS,
    EFA_PORT_COUNTERS,
    P5_EFA_BUSES,
    RdmaDevice,
    p5_efa_devices,
    write_rdma_tree,
)
from tests.helpers import samples, scrape, series, value


def efa_dump(path) -> dict[str, int]:
    """The `name :value` listing of a real efa_0 (linux-rdma/perftest#113)."""
    return {name: int(number) for name, number in re.findall(r"^(\w+) :(\d+)$", path.read_text(), re.M)}


@pytest.fixture(scope="module")
def client_counters(fixtures):
    return efa_dump(fixtures / "linux-rdma-perftest-issue-113" / "efa_0_hw_counters_client.txt")


def efa_scrape(tmp_path, devices, **tree_options):
    write_rdma_tree(str(tmp_path / "sys"), devices, **tree_options)
    return samples(scrape([RdmaCollector(str(tmp_path / "sys"))]))


def split_real_efa0(counters: dict[str, int]) -> RdmaDevice:
    return RdmaDevice("efa_0", 0x10, 0,
                      {k: v for k, v in counters.items() if k in EFA_PORT_COUNTERS},
                      {k: v for k, v in counters.items() if k in EFA_DEVICE_COUNTERS})


def test_real_efa0_counters_get_their_names(tmp_path, client_counters):
    parsed = efa_scrape(tmp_path, [split_real_efa0(client_counters)])
    port = {"device": "efa_0", "port": "1"}
    assert value(parsed, "gpuscope_efa_transmit_bytes_total", **port) == 2
    assert value(parsed, "gpuscope_efa_transmit_packets_total", **port) == 1
    assert value(parsed, "gpuscope_efa_send_work_requests_total", **port) == 1
    assert value(parsed, "gpuscope_efa_receive_drops_total", **port) == 0
    assert value(parsed, "gpuscope_efa_admin_command_errors_total", device="efa_0") == 0
    assert value(parsed, "gpuscope_efa_verbs_errors_total", device="efa_0") == 0
    # Admin command totals, keep-alives and the per-operation breakdown only with the detail flag.
    assert not series(parsed, "gpuscope_efa_admin_commands_total")
    assert not series(parsed, "gpuscope_efa_keep_alive_received_total")
    assert not series(parsed, "gpuscope_efa_verbs_operation_errors_total")
    # A driver older than 2.5 has no rdma_write_*, older than 2.17 no network counters: absent, not 0.
    assert not series(parsed, "gpuscope_efa_rdma_write_bytes_total")
    assert not series(parsed, "gpuscope_efa_retransmit_timeout_events_total")
    # Known EFA counters never fall into the raw families, and lifespan is not a counter.
    assert not series(parsed, "gpuscope_rdma_port_hw_stat_total")
    assert not series(parsed, "gpuscope_rdma_device_hw_stat_total")


def test_efa_device_detail_flag(tmp_path, client_counters):
    device = split_real_efa0(client_counters)
    device.device_counters.update(reg_mr_err=3, mmap_err=2)
    write_rdma_tree(str(tmp_path / "sys"), [device])
    parsed = samples(scrape([RdmaCollector(str(tmp_path / "sys"), efa_device_detail=True)]))
    admin = {o["outcome"]: value(parsed, "gpuscope_efa_admin_commands_total", **o)
             for o in series(parsed, "gpuscope_efa_admin_commands_total")}
    assert admin == {"submitted": 108, "completed": 105, "error": 0, "no_completion": 0}
    assert value(parsed, "gpuscope_efa_keep_alive_received_total", device="efa_0") == 87
    ops = {o["operation"]: value(parsed, "gpuscope_efa_verbs_operation_errors_total", **o)
           for o in series(parsed, "gpuscope_efa_verbs_operation_errors_total")}
    assert ops == {"alloc_pd": 0, "alloc_ucontext": 0, "create_ah": 0, "create_cq": 0, "create_qp": 0, "mmap": 2,
                   "reg_mr": 3}
    assert value(parsed, "gpuscope_efa_verbs_errors_total", device="efa_0") == 5
    assert value(parsed, "gpuscope_efa_admin_command_errors_total", device="efa_0") == 0


def test_combined_layout_exports_exactly_what_split_layout_does(tmp_path, client_counters):
    devices = [split_real_efa0(client_counters)]
    split = efa_scrape(tmp_path / "split", devices, layout="split")
    combined = efa_scrape(tmp_path / "combined", devices, layout="combined")
    assert split == combined


def test_p5_tree_has_32_efa_devices_with_every_network_counter(tmp_path):
    parsed = efa_scrape(tmp_path, p5_efa_devices())
    devices = sorted(s["device"] for s in series(parsed, "gpuscope_rdma_device_info"))
    assert devices == sorted(f"rdmap{bus}s0" for bus in P5_EFA_BUSES)
    for metric in catalog.EFA_PORT_COUNTERS.values():
        assert len(series(parsed, metric.name)) == 32, metric.name
    # Counter i of device d was written as 1000 * (i + 1) + d.
    index = EFA_PORT_COUNTERS.index("retrans_timeout_events")
    assert value(parsed, "gpuscope_efa_retransmit_timeout_events_total", device="rdmap80s0", port="1") == \
        1000 * (index + 1) + 1
    info = next(s for s in series(parsed, "gpuscope_rdma_device_info") if s["device"] == "rdmap201s0")
    assert info == {"device": "rdmap201s0", "driver": "efa", "pci_address": "0000:c9:00.0", "numa_node": "1",
                    "firmware": "0.0.0.0", "driver_version": "2.17.1g", "efa": "true", "link_layer": "Unspecified"}
    # (no gpu_pci_address: this tree has no GPUs, and empty labels are not exposed; see test_topology.py)
    assert all(v == 1 for (name, _), v in parsed.items() if name == "gpuscope_rdma_device_read_success")


def test_node_totals_are_the_exact_sums_over_the_efa_devices(tmp_path):
    parsed = efa_scrape(tmp_path, p5_efa_devices())
    assert len(catalog.EFA_NODE_COUNTERS) == 9
    for sysfs_name, metric in catalog.EFA_NODE_COUNTERS.items():
        index = EFA_PORT_COUNTERS.index(sysfs_name)  # counter i of device d was written as 1000 * (i + 1) + d
        assert value(parsed, metric.name) == sum(1000 * (index + 1) + d for d in range(32)), metric.name
        per_device = sum(value(parsed, catalog.EFA_PORT_COUNTERS[sysfs_name].name, **labels)
                         for labels in series(parsed, catalog.EFA_PORT_COUNTERS[sysfs_name].name))
        assert value(parsed, metric.name) == per_device
    assert not series(parsed, "gpuscope_efa_node_transmit_packets_total")  # only the counters rules read


def test_node_totals_are_absent_while_a_device_fails_to_read(tmp_path):
    """A partial sum would drop and look like a counter reset to rate(): no total is better."""
    sysfs = tmp_path / "sys"
    write_rdma_tree(str(sysfs), p5_efa_devices())
    broken = sysfs / "class/infiniband/rdmap80s0/ports/1/hw_counters/tx_pkts"
    broken.write_text("garbage\n")
    parsed = samples(scrape([RdmaCollector(str(sysfs))]))
    assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap80s0") == 0
    assert not [name for name, _ in parsed if name.startswith("gpuscope_efa_node_")]
    assert len(series(parsed, "gpuscope_efa_transmit_bytes_total")) == 32  # the devices' own series stay
    broken.write_text("7\n")
    parsed = samples(scrape([RdmaCollector(str(sysfs))]))
    assert value(parsed, "gpuscope_efa_node_transmit_bytes_total") > 0


def test_no_efa_devices_means_no_node_totals(fixtures):
    parsed = samples(scrape([RdmaCollector(str(fixtures / "prometheus-procfs" / "sys"))]))
    assert series(parsed, "gpuscope_rdma_port_stat_total")
    assert not [name for name, _ in parsed if name.startswith("gpuscope_efa_node_")]


def test_real_p5_packet_counts_round_trip(tmp_path, fixtures):
    """Packet counts of a real P5's 32 devices, written to a tree and read back, equal the capture."""
    capture = samples((fixtures / "awslabs-awsome-distributed-ai" / "node_amazonefa_tx_pkts_p5_exposition.prom")
                      .read_text())
    real = {dict(labels)["device"]: v for (name, labels), v in capture.items()
            if name == "node_amazonefa_tx_pkts_total"}
    assert len(real) == 32
    devices = [RdmaDevice(name, int(name[5:-2]), 0, {"tx_pkts": int(v)}) for name, v in real.items()]
    parsed = efa_scrape(tmp_path, devices)
    ours = {s["device"]: value(parsed, "gpuscope_efa_transmit_packets_total", **s)
            for s in series(parsed, "gpuscope_efa_transmit_packets_total")}
    assert ours == real


def test_efa_is_recognised_by_driver_or_vendor_not_by_name(tmp_path):
    sysfs = str(tmp_path / "sys")
    write_rdma_tree(sysfs, [RdmaDevice("efa_0", 0x20, 0, {"tx_bytes": 5})], vendor="0x0000", driver="efa")
    write_rdma_tree(sysfs, [RdmaDevice("rdmap99s0", 0x63, 0, {"tx_bytes": 6})], vendor="0x1d0f", driver="other")
    write_rdma_tree(sysfs, [RdmaDevice("efa_mimic", 0x30, 0, {"tx_bytes": 7})], vendor="0x15b3",
                    driver="mlx5_core")
    parsed = samples(scrape([RdmaCollector(sysfs)]))
    assert value(parsed, "gpuscope_efa_transmit_bytes_total", device="efa_0", port="1") == 5
    assert value(parsed, "gpuscope_efa_transmit_bytes_total", device="rdmap99s0", port="1") == 6
    assert value(parsed, "gpuscope_rdma_port_hw_stat_total", device="efa_mimic", port="1", counter="tx_bytes") == 7
    assert not [s for s in series(parsed, "gpuscope_efa_transmit_bytes_total") if s["device"] == "efa_mimic"]


def test_mellanox_capture_exports_raw_counters(fixtures):
    parsed = samples(scrape([RdmaCollector(str(fixtures / "prometheus-procfs" / "sys"))]))
    mlx5 = {"device": "mlx5_0", "port": "1"}
    assert value(parsed, "gpuscope_rdma_port_hw_stat_total", counter="out_of_buffer", **mlx5) == 0
    assert value(parsed, "gpuscope_rdma_port_stat_total", counter="port_xmit_data", device="hfi1_0",
                 port="1") == 273558326543
    assert value(parsed, "gpuscope_rdma_port_rate_bytes_per_second", device="mlx4_0", port="2") == 5e9
    assert not [s for s in series(parsed, "gpuscope_rdma_port_hw_stat_total") if s["counter"] == "lifespan"]
    assert {s["device"] for s in series(parsed, "gpuscope_rdma_device_info")} == {"hfi1_0", "mlx4_0", "mlx5_0"}
    assert all(s["efa"] == "false" for s in series(parsed, "gpuscope_rdma_device_info"))


def test_na_counters_are_skipped_not_errors(fixtures):
    parsed = samples(scrape([RdmaCollector(str(fixtures / "prometheus-node_exporter" / "sys"))]))
    assert value(parsed, "gpuscope_rdma_device_read_success", device="i40iw0") == 1
    assert not [s for s in series(parsed, "gpuscope_rdma_port_stat_total") if s["device"] == "i40iw0"]
    assert value(parsed, "gpuscope_rdma_port_stat_total", device="mlx4_0", port="1",
                 counter="port_xmit_data_64") > 0
    assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1


def test_no_infiniband_class_means_no_series_and_success(tmp_path):
    parsed = samples(scrape([RdmaCollector(str(tmp_path))]))
    assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1
    assert not [name for name, _ in parsed if name.startswith("gpuscope_rdma") or name.startswith("gpuscope_efa")]


def test_port_states_of_other_rdma_devices_not_of_efa(tmp_path, fixtures):
    """EFA hard-codes ACTIVE/LinkUp, so only other devices' ports carry their state."""
    from simulator.rdma_tree import mlx5_devices, p5_efa_devices

    write_rdma_tree(str(tmp_path), p5_efa_devices()[:2])
    write_rdma_tree(str(tmp_path), mlx5_devices(2), driver="mlx5_core", vendor="0x15b3")
    port = tmp_path / "class" / "infiniband" / "mlx5_1" / "ports" / "1"
    (port / "state").write_text("1: DOWN\n")
    (port / "phys_state").write_text("3: Disabled\n")
    parsed = samples(scrape([RdmaCollector(str(tmp_path))]))
    states = {(labels["device"], value(parsed, catalog.RDMA_PORT_STATE.name, **labels),
               value(parsed, catalog.RDMA_PORT_PHYSICAL_STATE.name, **labels))
              for labels in series(parsed, catalog.RDMA_PORT_STATE.name)}
    assert states == {("mlx5_0", 4, 5), ("mlx5_1", 1, 3)}
    real = samples(scrape([RdmaCollector(str(fixtures / "prometheus-node_exporter" / "sys"))]))
    assert value(real, catalog.RDMA_PORT_STATE.name, device="mlx4_0", port="2") == 4
