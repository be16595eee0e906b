"""The kernel-log collector on real kmsg records and the driver's real XID lines: XIDs per GPU,
"fallen off the bus" as XID 79, SXIDs per switch, and what only looks like an XID."""

from __future__ import annotations

import time

import pytest

from exporter import catalog
from exporter.collectors import close
from exporter.collectors.kmsg import KernelEvents, KmsgCollector, parse_record
from tests.helpers import FIXTURES, samples, scrape, series, value
from tests.test_faults import as_nobody, scrape_as_nobody

KMSG = FIXTURES / "leptonai-gpud" / "pkg" / "kmsg" / "testdata"
DMESG_XID_119 = FIXTURES / "leptonai-gpud" / "components" / "accelerator" / "nvidia" / "xid" / "testdata" / \
    "dmesg-with-xid-119.log"
BOOT = 1_700_000_000
GPU4 = ("4", "GPU-509665ad-b600-ac93-3616-d754b23d636d")  # the GPU the capture names at 0000:9b:00


def kernel(message: str, usec: int, prio: int = 4, sequence: int = 1) -> str:
    return f"{prio},{sequence},{usec},-;{message}"


def events(*records: str) -> KernelEvents:
    found = KernelEvents()
    for raw in records:
        record = parse_record(raw)
        assert record is not None, raw
        found.add(record, BOOT)
    return found


def test_real_kmsg_records_parse_and_hold_no_xid():
    lines = [line for path in sorted(KMSG.glob("*.log")) for line in path.read_text().splitlines()]
    found = events(*lines)
    assert found.records == len(lines) == 55
    assert (found.xids, found.sxids) == ({}, {})


def test_the_drivers_xid_119_line_counts_with_the_kernels_time():
    line = next(line for line in DMESG_XID_119.read_text().splitlines() if "Xid" in line)
    message = line.split("] ", 1)[1]  # dmesg -T's "[date] " prefix off: the record's message
    found = events(kernel(message, 5_000_000), *(kernel(m.split("] ", 1)[1], 5_000_001, sequence=n)
                                                 for n, m in enumerate(DMESG_XID_119.read_text().splitlines())
                                                 if "Xid" not in m))
    assert found.xids == {("0000:9b:00", 119): [1, BOOT + 5.0]}


def test_fallen_off_the_bus_counts_as_xid_79():
    found = events(kernel("NVRM: The NVIDIA GPU 0000:b3:00.0", 9_000_000, sequence=1),
                   kernel("NVRM: (PCI ID: 10de:2330) installed in this system has", 9_000_000, sequence=2),
                   kernel("NVRM: fallen off the bus and is not responding to commands.", 9_000_001, sequence=3))
    assert found.xids == {("0000:b3:00", 79): [1, BOOT + 9.000001]}


def test_sxids_per_switch_fatal_or_not():
    found = events(kernel("nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress error", 1),
                   kernel("nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress error", 2),
                   kernel("nvidia-nvswitch0: SXid (PCI:0000:07:00.0): 24007, Fatal, Link 4 LTSSM Fault Up", 3))
    assert found.sxids == {("3", "0000:05:00.0", 12028, "non_fatal"): [2, BOOT + 2e-6],
                           ("0", "0000:07:00.0", 24007, "fatal"): [1, BOOT + 3e-6]}


@pytest.mark.parametrize("raw", [
    "13,5,100,-;NVRM: Xid (PCI:0000:9b:00): 79, pid=1, name=echo",  # a user wrote it (facility 1)
    kernel("python[42]: caught NVRM: Xid (PCI:0000:9b:00): 79 in a test log", 1),  # mentions one
    kernel("NVRM: fallen off the bus and is not responding to commands.", 1),  # no GPU named before it
    kernel("NVRM: Xid (PCI:zzzz:9b:00): 79,", 1),  # no address
])
def test_what_only_looks_like_an_xid_is_not_one(raw):
    assert events(raw).xids == {}


def test_the_collector_reads_the_log_since_boot_and_what_is_appended(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text(f"cpu  1 2 3\nbtime {BOOT}\n")
    log = tmp_path / "kmsg"
    log.write_text("".join(line + "\n" for line in (KMSG / "kmsg.1.log").read_text().splitlines()) +
                   kernel("NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-smi, Timeout", 7_000_000) + "\n")
    collector = KmsgCollector(str(log), str(tmp_path / "proc"), poll=0.05)
    collector.identify_with(lambda: {"0000:9b:00": GPU4})
    try:
        parsed = samples(scrape([collector]))
        labels = {"gpu": GPU4[0], "uuid": GPU4[1], "pci_address": "0000:9b:00", "xid": "119"}
        assert value(parsed, catalog.KERNEL_XID_ERRORS.name, **labels) == 1
        assert value(parsed, catalog.KERNEL_LAST_XID.name, **labels) == BOOT + 7
        assert value(parsed, catalog.KMSG_RECORDS.name) == 48
        with log.open("a") as handle:
            handle.write(kernel("nvidia-nvswitch2: SXid (PCI:0000:06:00.0): 24007, Fatal, Link 4", 8_000_000) + "\n")
            handle.write(kernel("NVRM: Xid (PCI:0000:9b:00): 119, pid=2024381, name=python, Timeout", 9_000_000) + "\n")
        time.sleep(0.3)
        parsed = samples(scrape([collector]))
        assert value(parsed, catalog.KERNEL_XID_ERRORS.name, **labels) == 2
        assert value(parsed, catalog.KERNEL_LAST_XID.name, **labels) == BOOT + 9
        assert value(parsed, catalog.NVSWITCH_SXID_ERRORS.name, switch="2", pci_address="0000:06:00.0",
                     sxid="24007", severity="fatal") == 1
    finally:
        close([collector])


def test_a_restart_reads_the_same_counts_again(tmp_path):
    (tmp_path / "stat").write_text(f"btime {BOOT}\n")
    log = tmp_path / "kmsg"
    log.write_text(kernel("NVRM: Xid (PCI:0000:9b:00): 48, pid=1, name=python, DBE", 1_000_000) + "\n")
    counts = []
    for _ in range(2):  # two exporter lifetimes over one ring buffer
        collector = KmsgCollector(str(log), str(tmp_path), poll=0.05)
        try:
            parsed = samples(scrape([collector]))
        finally:
            close([collector])
        counts.append([(s, value(parsed, catalog.KERNEL_LAST_XID.name, **s))
                       for s in series(parsed, catalog.KERNEL_LAST_XID.name)])
    assert counts[0] == counts[1] == [({"pci_address": "0000:9b:00", "xid": "48"},
                                       BOOT + 1.0)]


def test_no_permission_fails_the_collector_naming_cap_syslog(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text(kernel("NVRM: Xid (PCI:0000:9b:00): 48,", 1) + "\n")
    log.chmod(0o000)  # as /dev/kmsg is to a process without CAP_SYSLOG under dmesg_restrict (its owner too)
    collector = KmsgCollector(str(log), "/proc", poll=0.05)
    text = scrape_as_nobody([collector])
    parsed = samples(text)
    assert value(parsed, catalog.COLLECTOR_SUCCESS.name, collector="kmsg") == 0
    assert not [name for name, _ in parsed if name.startswith("gpuscope_gpu_kernel")]
    assert "CAP_SYSLOG" in as_nobody(lambda: failure(KmsgCollector(str(log), "/proc", poll=0.05)))


def failure(collector: KmsgCollector) -> str:
    """The message the collector fails with ("no error" when it does not)."""
    try:
        list(collector.collect())
    except RuntimeError as exc:
        return str(exc)
    return "no error"
