"""CPU cost per scrape: gpuscope's rdma collector vs node_exporter's infiniband collector.

Both exporters serve the same synthetic 32-device Mellanox-style sysfs tree (ports/1/counters and
ports/1/hw_counters, about 1,900 counter files) on loopback. The script scrapes them in turn and
reads each process's CPU time from /proc/<pid>/stat, then measures the floor: the same files read
with os.open/os.read/os.close in a bare loop. Run:

    python bench/rdma_scrape.py [--scrapes 300]

It needs Debian's prometheus-node-exporter (apt-get install prometheus-node-exporter).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from exporter.sim.rdma_tree import mlx5_devices, write_rdma_tree

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            fetch(url)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def counter_files(sysfs: str) -> list[str]:
    root = os.path.join(sysfs, "class", "infiniband")
    files = []
    for device in sorted(os.listdir(root)):
        base = os.path.join(root, device)
        for sub in ("hw_counters", "ports/1/counters", "ports/1/hw_counters"):
            directory = os.path.join(base, sub)
            if os.path.isdir(directory):
                files.extend(os.path.join(directory, name) for name in sorted(os.listdir(directory)))
    return files


def raw_read_seconds(sysfs: str, rounds: int) -> float:
    """CPU per round of listing the counter directories and reading every file once by its path."""
    start = time.process_time()
    for _ in range(rounds):
        for path in counter_files(sysfs):
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 64)
            os.close(fd)
    return (time.process_time() - start) / rounds


def raw_relative_read_seconds(sysfs: str, rounds: int) -> float:
    """The same reads opened relative to each directory's fd: the cheapest way Python has."""
    directories = sorted({os.path.dirname(path) for path in counter_files(sysfs)})
    start = time.process_time()
    for _ in range(rounds):
        for directory in directories:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            for name in os.listdir(dir_fd):
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                os.read(fd, 64)
                os.close(fd)
            os.close(dir_fd)
    return (time.process_time() - start) / rounds


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return kib / 1024


def series_count(text: bytes, prefix: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(prefix.encode()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not node_exporter:
        raise SystemExit("node_exporter not found: apt-get install prometheus-node-exporter")

    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-") as work:
        sysfs = os.path.join(work, "sys")
        write_rdma_tree(sysfs, mlx5_devices(32), driver="mlx5_core", vendor="0x15b3", firmware="28.39.1002")
        files = counter_files(sysfs)
        procs = {
            "node_exporter": subprocess.Popen(
                [node_exporter, f"--path.sysfs={sysfs}", "--collector.disable-defaults", "--collector.infiniband",
                 "--web.listen-address=127.0.0.1:19491"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "gpuscope": subprocess.Popen(
                [sys.executable, "-m", "exporter", f"--path.sysfs={sysfs}", "--no-collector.lustre",
                 "--no-collector.host", "--web.listen-address=127.0.0.1:19492", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        urls = {"node_exporter": "http://127.0.0.1:19491/metrics", "gpuscope": "http://127.0.0.1:19492/metrics"}
        try:
            for url in urls.values():
                wait_up(url)
            bodies = {}
            for name, url in urls.items():
                for _ in range(20):  # warm-up: imports, caches, Go GC sizing
                    bodies[name] = fetch(url)
            cpu = {name: 0.0 for name in urls}
            wall = {name: 0.0 for name in urls}
            for _ in range(args.scrapes):
                for name, url in urls.items():  # interleaved, so both see the same machine state
                    before, started = cpu_seconds(procs[name].pid), time.perf_counter()
                    fetch(url)
                    wall[name] += time.perf_counter() - started
                    cpu[name] += cpu_seconds(procs[name].pid) - before
            rss = {name: rss_mib(proc.pid) for name, proc in procs.items()}
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait()
        raw = raw_read_seconds(sysfs, 50)
        relative = raw_relative_read_seconds(sysfs, 50)

    per = {name: cpu[name] / args.scrapes for name in urls}
    print(f"tree: 32 mlx5 devices, {len(files)} counter files; {args.scrapes} scrapes each, interleaved")
    print(f"series: node_exporter node_infiniband_* {series_count(bodies['node_exporter'], 'node_infiniband_')}, "
          f"gpuscope gpuscope_rdma_* {series_count(bodies['gpuscope'], 'gpuscope_rdma_')}")
    print(f"{'':<34}{'CPU ms/scrape':>14}{'wall ms/scrape':>16}{'RSS MiB':>9}")
    for name in urls:
        print(f"{name:<34}{per[name] * 1000:>14.2f}{wall[name] / args.scrapes * 1000:>16.2f}{rss[name]:>9.1f}")
    print(f"{'raw reads by path (Python)':<34}{raw * 1000:>14.2f}")
    print(f"{'raw reads dir-relative (Python)':<34}{relative * 1000:>14.2f}")
    print(f"gpuscope / node_exporter CPU: {per['gpuscope'] / per['node_exporter']:.2f}x; "
          f"gpuscope / raw reads by path: {per['gpuscope'] / raw:.2f}x; "
          f"gpuscope / dir-relative reads: {per['gpuscope'] / relative:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
