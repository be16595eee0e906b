"""Host collector on a small procfs/sysfs tree with known numbers."""

from __future__ import annotations

import os

import pytest

from exporter.collectors.host import HostCollector, parse_cpulist
from tests.helpers import samples, scrape, series, value

STAT = """cpu  400 40 200 9000 100 10 20 5 0 0
cpu0 100 10 50 2000 30 1 2 1 0 0
cpu1 100 10 50 2000 30 2 3 1 0 0
cpu2 100 10 50 2500 20 3 5 1 0 0
cpu3 100 10 50 2500 20 4 10 2 0 0
intr 12345
ctxt 999
"""
MEMINFO = "MemTotal:       2097152 kB\nMemFree:         524288 kB\nMemAvailable:   1048576 kB\n"
PRESSURE_CPU = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
PRESSURE_IO = ("some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n"
               "full avg10=0.50 avg60=0.20 avg300=0.05 total=750000\n")


@pytest.fixture
def host_tree(tmp_path):
    procfs, sysfs = tmp_path / "proc", tmp_path / "sys"
    (procfs / "pressure").mkdir(parents=True)
    (procfs / "stat").write_text(STAT)
    (procfs / "meminfo").write_text(MEMINFO)
    (procfs / "pressure/cpu").write_text(PRESSURE_CPU)
    (procfs / "pressure/io").write_text(PRESSURE_IO)
    for node, cpus in (("node0", "0-1"), ("node1", "2,3")):
        (sysfs / "devices/system/node" / node).mkdir(parents=True)
        (sysfs / "devices/system/node" / node / "cpulist").write_text(cpus + "\n")
    (sysfs / "devices/system/node/possible").write_text("0-1\n")
    return str(sysfs), str(procfs)


def test_cpu_busy_per_numa_node(host_tree):
    parsed = samples(scrape([HostCollector(*host_tree)]))
    tick = 1 / os.sysconf("SC_CLK_TCK")
    # busy = user + nice + system + irq + softirq + steal
    assert value(parsed, "gpuscope_host_cpu_busy_seconds_total", numa_node="0") == pytest.approx((164 + 166) * tick)
    assert value(parsed, "gpuscope_host_cpu_busy_seconds_total", numa_node="1") == pytest.approx((169 + 176) * tick)
    assert value(parsed, "gpuscope_host_cpus", numa_node="0") == 2
    assert value(parsed, "gpuscope_host_cpus", numa_node="1") == 2


def test_memory_and_pressure(host_tree):
    parsed = samples(scrape([HostCollector(*host_tree)]))
    assert value(parsed, "gpuscope_host_memory_available_bytes") == 1048576 * 1024
    assert value(parsed, "gpuscope_host_memory_total_bytes") == 2097152 * 1024
    assert value(parsed, "gpuscope_host_pressure_stalled_seconds_total", resource="cpu", kind="some") == 1.5
    assert value(parsed, "gpuscope_host_pressure_stalled_seconds_total", resource="io", kind="full") == 0.75
    # No /proc/pressure/memory in this tree: that resource is simply absent.
    assert {s["resource"] for s in series(parsed, "gpuscope_host_pressure_stalled_seconds_total")} == {"cpu", "io"}


def test_without_numa_information_all_cpus_form_node_0(host_tree, tmp_path):
    parsed = samples(scrape([HostCollector(str(tmp_path / "empty"), host_tree[1])]))
    assert value(parsed, "gpuscope_host_cpus", numa_node="0") == 4


def test_missing_proc_stat_fails_the_collector_visibly(tmp_path):
    parsed = samples(scrape([HostCollector(str(tmp_path), str(tmp_path))]))
    assert value(parsed, "gpuscope_collector_success", collector="host") == 0


def test_parse_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("\n") == []
