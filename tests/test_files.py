"""Counter files kept open between scrapes (issue 20): fresh values from the kernel's own files,
descriptors bounded and given back, a live simulated node seen through kept descriptors."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import socket
import subprocess

from exporter import files
from exporter.collectors.rdma import RdmaCollector
from exporter.files import CounterFiles, DescriptorBudget
from exporter.process import ProcessCollector, open_descriptors
from simulator.files import rewrite_in_place
from simulator.rdma_tree import p5_efa_devices, write_counters, write_rdma_tree
from tests.helpers import samples, scrape, series, value

LOOPBACK = "/sys/class/net/lo/statistics"


def send_on_loopback(size: int) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"x" * size)
                received = 0
                while received < size:
                    received += len(peer.recv(65536))


def test_a_kept_sysfs_attribute_reads_the_current_value():
    """sysfs makes the text afresh on every read from offset 0: the premise of keeping files open."""
    kept = CounterFiles(LOOPBACK, ["rx_bytes", "tx_bytes"], DescriptorBudget(10))
    before = kept.read()
    send_on_loopback(100_000)
    after = kept.read()
    kept.close()
    assert after[0] >= before[0] + 100_000
    assert after[1] >= before[1] + 100_000


def test_a_kept_procfs_file_reads_the_current_value():
    """The same on procfs: ns_last_pid is the last process id handed out."""
    kept = CounterFiles("/proc/sys/kernel", ["ns_last_pid"], DescriptorBudget(1))
    before = kept.read()[0]
    child = subprocess.run(["true"], check=True)
    after = kept.read()[0]
    kept.close()
    assert child.returncode == 0 and after != before


def test_files_are_kept_open_within_the_budget_and_given_back(tmp_path):
    for name, number in (("a", 1), ("b", 2), ("c", 3)):
        (tmp_path / name).write_text(f"{number}\n")
    budget = DescriptorBudget(3)
    kept = CounterFiles(str(tmp_path), ["a", "b", "c"], budget)
    second = CounterFiles(str(tmp_path), ["a", "b"], budget)  # over the budget: opened per read instead
    assert budget.kept == 3
    (tmp_path / "b").write_text("20\n")  # in place, as sysfs changes a value
    assert kept.read() == [1, 20, 3]
    assert second.read() == [1, 20]
    (tmp_path / "a").unlink()  # only a kept descriptor still reads it
    assert kept.read() == [1, 20, 3]
    assert second.read() == [None, 20]
    kept.close()
    assert budget.kept == 0


def test_a_file_that_cannot_be_opened_or_parsed_reads_as_none(tmp_path):
    (tmp_path / "good").write_text("5\n")
    (tmp_path / "garbage").write_text("x\n")
    (tmp_path / "negative").write_text("-5\n")
    kept = CounterFiles(str(tmp_path), ["good", "missing", "garbage", "negative"], DescriptorBudget(10))
    assert kept.read() == [5, None, None, None]
    kept.close()


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        raised = files.raise_descriptor_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        assert raised == hard
        assert files.descriptors.limit == raised - files.DESCRIPTOR_RESERVE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        files.descriptors.limit = max(0, soft - files.DESCRIPTOR_RESERVE)


def test_open_descriptors_is_the_exact_count():
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(50)]
    try:
        assert open_descriptors() == len(os.listdir("/proc/self/fd")) - 1
        with_extra = open_descriptors()
    finally:
        for fd in extra:
            os.close(fd)
    assert with_extra - open_descriptors() == 50
    reported = {m.name: m.samples[0].value for m in ProcessCollector().collect()}
    assert reported["process_open_fds"] == open_descriptors()
    assert reported["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_rewrite_in_place_keeps_the_file_and_never_shortens_it(tmp_path):
    path = tmp_path / "rx_bytes"
    path.write_text("12345\n")
    inode = path.stat().st_ino
    kept = CounterFiles(str(tmp_path), ["rx_bytes"], DescriptorBudget(1))
    rewrite_in_place(str(path), "7")  # a counter reset: padded, never truncated
    assert (path.read_text(), kept.read()) == ("    7\n", [7])
    rewrite_in_place(str(path), "123456789")
    assert (path.read_text(), kept.read()) == ("123456789\n", [123456789])
    assert path.stat().st_ino == inode
    kept.close()


def test_a_live_tree_update_is_read_through_kept_files_and_a_reprobed_device_reopened(tmp_path):
    gc.collect()  # collectors other tests dropped give their descriptors back now, not during this test
    sysfs = str(tmp_path / "sys")
    devices = p5_efa_devices()
    write_rdma_tree(sysfs, devices)
    none_kept = files.descriptors.kept
    collector = RdmaCollector(sysfs)
    first = samples(scrape([collector]))
    device = devices[5]
    device.port_counters["rx_bytes"] += 4096
    staging = tmp_path / "staging"
    staging.mkdir()
    write_counters(sysfs, device, staging=str(staging))  # the live simulator's path
    second = samples(scrape([collector]))
    name = device.name
    assert value(second, "gpuscope_efa_receive_bytes_total", device=name, port="1") == \
        value(first, "gpuscope_efa_receive_bytes_total", device=name, port="1") + 4096

    # Re-probed (a driver reload): a new directory, counters from zero; the old descriptors are closed.
    kept = files.descriptors.kept
    link = os.path.join(sysfs, "class", "infiniband", name)
    shutil.rmtree(os.path.dirname(os.path.dirname(os.path.realpath(link))))  # the PCI function with it
    os.unlink(link)
    assert name not in {labels["device"] for labels in series(samples(scrape([collector])),
                                                              "gpuscope_efa_receive_bytes_total")}
    assert files.descriptors.kept < kept
    device.port_counters["rx_bytes"] = 11
    write_rdma_tree(sysfs, [device])
    third = samples(scrape([collector]))
    assert value(third, "gpuscope_efa_receive_bytes_total", device=name, port="1") == 11
    assert files.descriptors.kept == kept > none_kept
    collector.close()
    assert files.descriptors.kept == none_kept

