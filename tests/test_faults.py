"""Faults cost only the collector or device they hit: hung reads, exceptions, garbage, vanishing files."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from exporter import registry as registry_module
from exporter.collectors.host import HostCollector
from exporter.collectors.lustre import LustreCollector
from exporter.collectors.rdma import RdmaCollector
from exporter.registry import ScrapeRegistry
from simulator.rdma_tree import p5_efa_devices, write_rdma_tree
from tests.helpers import samples, scrape, series, value
from tests.test_lustre import HPE

TIMEOUT = 0.5


@pytest.fixture
def efa_sysfs(tmp_path):
    sysfs = tmp_path / "sys"
    write_rdma_tree(str(sysfs), p5_efa_devices())
    return sysfs


@pytest.fixture
def fifos():
    """Creates FIFOs that block readers; at the end lets every blocked collector thread go.

    A collector thread may reach its FIFO only after the test is over (a slow machine), and a
    released one may walk on into the next FIFO, so release is repeated until no collector thread
    is left: a thread leaked into the next test would spoil its thread count.
    """
    made: list[str] = []

    def make(path) -> None:
        os.unlink(path)
        os.mkfifo(path)
        made.append(str(path))

    yield make
    deadline = time.monotonic() + 10
    while collector_threads() and time.monotonic() < deadline:
        for path in made:
            with contextlib.suppress(OSError):  # no reader on this one yet
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.01)
    assert not collector_threads(), "collector threads still blocked after the test"


def port_counter(sysfs, device: str, name: str):
    return sysfs / "class/infiniband" / device / "ports/1/hw_counters" / name


def collector_threads(name: str = "") -> int:
    """Live collector worker threads: of one collector, or of any."""
    prefix = f"collector-{name}"
    return sum(1 for thread in threading.enumerate()
               if thread.name == prefix or (not name and thread.name.startswith(prefix)))


def test_hung_read_costs_one_scrape_then_only_its_device(efa_sysfs, fifos, tmp_path):
    fifos(port_counter(efa_sysfs, "rdmap113s0", "rx_bytes"))
    scrapes = ScrapeRegistry([RdmaCollector(str(efa_sysfs)), HostCollector(str(tmp_path), "/proc")], TIMEOUT)

    started = time.monotonic()
    first = samples_of(scrapes)
    assert time.monotonic() - started < TIMEOUT + 0.3
    assert value(first, "gpuscope_collector_success", collector="rdma") == 0
    assert value(first, "gpuscope_collector_success", collector="host") == 1
    assert series(first, "gpuscope_host_memory_available_bytes")

    for _ in range(5):
        later = samples_of(scrapes)
        assert value(later, "gpuscope_collector_success", collector="rdma") == 1
        assert value(later, "gpuscope_rdma_device_read_success", device="rdmap113s0") == 0
        assert value(later, "gpuscope_rdma_device_read_success", device="rdmap114s0") == 1
        devices = {s["device"] for s in series(later, "gpuscope_efa_receive_bytes_total")}
        assert len(devices) == 31 and "rdmap113s0" not in devices
    # The hung thread stays parked on its device; no new thread joins it.
    assert collector_threads("rdma") == 1


def test_a_collector_stuck_everywhere_is_not_reentered_by_a_pile_of_threads(efa_sysfs, fifos):
    for device in ("rdmap79s0", "rdmap80s0", "rdmap81s0", "rdmap82s0", "rdmap96s0", "rdmap97s0"):
        fifos(efa_sysfs / "class/infiniband" / device / "fw_ver")
    scrapes = ScrapeRegistry([RdmaCollector(str(efa_sysfs))], TIMEOUT)
    for _ in range(8):
        parsed = samples_of(scrapes)
        assert value(parsed, "gpuscope_collector_success", collector="rdma") == 0
    assert collector_threads("rdma") == registry_module.MAX_PARKED_RUNS


def test_lustre_target_on_a_dead_server_costs_only_that_target(fixtures, fifos, tmp_path):
    root = tmp_path / "lustre"
    shutil.copytree(fixtures / HPE, root, symlinks=True)
    fifos(root / "proc/fs/lustre/osc/lustrefs-OST0004-osc-ffff88105db50000/import")
    scrapes = ScrapeRegistry([LustreCollector(str(root / "sys"), str(root / "proc"))], TIMEOUT)
    assert value(samples_of(scrapes), "gpuscope_collector_success", collector="lustre") == 0
    later = samples_of(scrapes)
    assert value(later, "gpuscope_collector_success", collector="lustre") == 1
    assert value(later, "gpuscope_lustre_target_read_success", fs="lustrefs", target="OST0004") == 0
    assert len(series(later, "gpuscope_lustre_import_state")) == 7
    assert value(later, "gpuscope_lustre_write_bytes_total", fs="lustrefs") == 93813797294080


def test_a_hung_llite_stats_read_costs_only_that_filesystems_io_and_recovers(fixtures, fifos, tmp_path):
    """A filesystem's llite stats that block (a hung mount) used to fail the whole Lustre collector
    on every scrape, healthy targets included, until the read returned (issue 21)."""
    root = tmp_path / "lustre"
    shutil.copytree(fixtures / HPE, root, symlinks=True)
    stats = root / "proc/fs/lustre/llite/lustrefs-ffff88105db50000/stats"
    saved = stats.read_text()
    fifos(stats)
    scrapes = ScrapeRegistry([LustreCollector(str(root / "sys"), str(root / "proc"))], TIMEOUT)
    assert value(samples_of(scrapes), "gpuscope_collector_success", collector="lustre") == 0  # the read hangs
    later = samples_of(scrapes)
    assert value(later, "gpuscope_collector_success", collector="lustre") == 1
    assert value(later, "gpuscope_lustre_stats_read_success", fs="lustrefs") == 0
    assert not series(later, "gpuscope_lustre_read_bytes_total")
    assert len(series(later, "gpuscope_lustre_import_state")) == 8  # every target still there
    os.close(os.open(stats, os.O_WRONLY))  # the mount answers: the blocked read returns (empty)
    stats.unlink()
    stats.write_text(saved)
    deadline = time.monotonic() + 5
    while value(samples_of(scrapes), "gpuscope_lustre_stats_read_success", fs="lustrefs") != 1:
        assert time.monotonic() < deadline, "the filesystem's stats did not come back"
    assert value(samples_of(scrapes), "gpuscope_lustre_write_bytes_total", fs="lustrefs") == 93813797294080


class Exploding:
    name = "exploding"

    def collect(self):
        raise RuntimeError("boom")


def test_an_exception_costs_only_its_collector(efa_sysfs):
    parsed = samples(scrape([Exploding(), RdmaCollector(str(efa_sysfs))]))
    assert value(parsed, "gpuscope_collector_success", collector="exploding") == 0
    assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1
    assert len(series(parsed, "gpuscope_efa_transmit_bytes_total")) == 32


class Slow:
    """Counts its runs; each takes a while, so concurrent scrapes overlap it."""

    name = "slow"

    def __init__(self) -> None:
        self.runs = 0

    def collect(self):
        self.runs += 1
        time.sleep(0.3)
        return []


def test_concurrent_scrapes_share_one_run_and_all_answer(efa_sysfs):
    slow = Slow()
    scrapes = ScrapeRegistry([slow, RdmaCollector(str(efa_sysfs))], 2.0)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(samples_of(scrapes))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert slow.runs == 1
    assert len(results) == 8
    assert all(r == results[0] for r in results)
    assert len(series(results[0], "gpuscope_efa_transmit_bytes_total")) == 32


def test_garbage_vanished_and_removed(efa_sysfs):
    port_counter(efa_sysfs, "rdmap130s0", "tx_bytes").write_text("garbage\n")
    port_counter(efa_sysfs, "rdmap132s0", "rx_drops").write_text("-5\n")  # never a negative counter (issue 21)
    vanished = port_counter(efa_sysfs, "rdmap131s0", "rx_bytes")
    vanished.unlink()
    vanished.symlink_to("gone")  # listed by readdir, gone when opened
    scrapes = ScrapeRegistry([RdmaCollector(str(efa_sysfs))], 2.0)
    parsed = samples_of(scrapes)
    assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap130s0") == 0
    assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap131s0") == 0
    assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap132s0") == 0
    assert ("gpuscope_efa_receive_drops_total", frozenset({("device", "rdmap132s0"), ("port", "1")})) not in parsed
    assert ("gpuscope_efa_transmit_bytes_total", frozenset({("device", "rdmap130s0"), ("port", "1")})) not in parsed
    assert value(parsed, "gpuscope_efa_receive_bytes_total", device="rdmap130s0", port="1") > 0
    assert value(parsed, "gpuscope_efa_transmit_bytes_total", device="rdmap131s0", port="1") > 0
    assert len(series(parsed, "gpuscope_efa_transmit_bytes_total")) == 31
    assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1

    # A device removed while the exporter runs (driver unload, hot-unplug) just disappears.
    link = efa_sysfs / "class/infiniband/rdmap201s0"
    shutil.rmtree(link.resolve())
    after = samples_of(scrapes)
    assert "rdmap201s0" not in {s["device"] for s in series(after, "gpuscope_efa_transmit_bytes_total")}
    assert len(series(after, "gpuscope_efa_receive_bytes_total")) == 30  # rdmap131s0's is still gone
    assert value(after, "gpuscope_collector_success", collector="rdma") == 1


def samples_of(scrapes: ScrapeRegistry):
    return samples(scrapes.render())


def scrape_as_nobody(collectors) -> str:
    """A scrape by an unprivileged process (root reads everything, so permission tests drop to nobody)."""
    return as_nobody(lambda: scrape(collectors))


def as_nobody(work) -> str:
    """What `work()` returns when an unprivileged process does it (directly when not root)."""
    if os.geteuid() != 0:
        return work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: modules are already imported, so nothing under /root is needed
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, work().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def readable_tree(fixtures) -> tuple[str, str, str]:
    """A p5's EFA tree and HPE's Lustre capture that an unprivileged process can read:
    (root to remove, sysfs, lustre)."""
    import tempfile

    root = tempfile.mkdtemp(prefix="gpuscope-perm-")
    os.chmod(root, 0o755)
    sysfs = os.path.join(root, "sys")
    write_rdma_tree(sysfs, p5_efa_devices())
    lustre = os.path.join(root, "lustre")
    shutil.copytree(fixtures / HPE, lustre, symlinks=True)
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return root, sysfs, lustre


def test_permission_denied_costs_only_that_device_and_target(fixtures):
    root, sysfs, lustre = readable_tree(fixtures)
    try:
        os.chmod(port_counter(Path(sysfs), "rdmap98s0", "rdma_read_bytes"), 0)
        os.chmod(os.path.join(lustre, "proc/fs/lustre/osc/lustrefs-OST0001-osc-ffff88105db50000/import"), 0)

        parsed = samples(scrape_as_nobody([RdmaCollector(sysfs),
                                           LustreCollector(os.path.join(lustre, "sys"),
                                                           os.path.join(lustre, "proc"))]))
        assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap98s0") == 0
        assert value(parsed, "gpuscope_efa_rdma_write_bytes_total", device="rdmap98s0", port="1") > 0
        assert len(series(parsed, "gpuscope_efa_rdma_read_bytes_total")) == 31
        assert value(parsed, "gpuscope_lustre_target_read_success", fs="lustrefs", target="OST0001") == 0
        assert len(series(parsed, "gpuscope_lustre_import_state")) == 7
        assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1
        assert value(parsed, "gpuscope_collector_success", collector="lustre") == 1
    finally:
        shutil.rmtree(root)


def test_an_unreadable_counter_directory_costs_only_its_device_and_recovers(fixtures):
    """chmod 000 on one device's ports/1/hw_counters used to fail the whole RDMA collector (all 32
    EFA devices gone, issue 21); now that device alone reads as failed, and comes back by itself."""
    root, sysfs, _ = readable_tree(fixtures)
    counters = os.path.join(sysfs, "class", "infiniband", "rdmap113s0", "ports", "1", "hw_counters")
    try:
        collector = RdmaCollector(sysfs)
        os.chmod(counters, 0)
        parsed = samples(scrape_as_nobody([collector]))
        assert value(parsed, "gpuscope_collector_success", collector="rdma") == 1
        assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap113s0") == 0
        assert len(series(parsed, "gpuscope_efa_transmit_bytes_total")) == 31
        os.chmod(counters, 0o755)
        parsed = samples(scrape_as_nobody([collector]))
        assert value(parsed, "gpuscope_rdma_device_read_success", device="rdmap113s0") == 1
        assert len(series(parsed, "gpuscope_efa_transmit_bytes_total")) == 32
    finally:
        shutil.rmtree(root)
