"""CPU cost per scrape: gpuscope's rdma collector vs node_exporter's infiniband collector, and the floor.

Both exporters serve the same synthetic 32-device Mellanox-style sysfs tree (ports/1/counters and
ports/1/hw_counters, about 1,900 counter files) on loopback, each with only that collector. The
script scrapes them in turn (interleaved, so both see the same machine) and reads each process's
CPU time from /proc/<pid>/stat; then it times the floor, bare Python loops over the same files:
by path, relative to a directory fd, and kept open and re-read with pread. Each of `--rounds`
rounds gives a figure; the table shows minimum / median / maximum. Run:

    python bench/rdma_scrape.py [--scrapes 150] [--rounds 3]

It needs Debian's prometheus-node-exporter (apt-get install prometheus-node-exporter).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

from simulator.rdma_tree import mlx5_devices, write_rdma_tree

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
    """The same reads opened relative to each directory's fd."""
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


def raw_kept_read_seconds(sysfs: str, rounds: int) -> float:
    """Every file kept open and re-read with pread at offset 0 and parsed: the cheapest way Python has."""
    fds = [os.open(path, os.O_RDONLY) for path in counter_files(sysfs)]
    try:
        start = time.process_time()
        for _ in range(rounds):
            for fd in fds:
                int(os.pread(fd, 64, 0))
        return (time.process_time() - start) / rounds
    finally:
        for fd in fds:
            os.close(fd)


FLOORS: dict[str, Callable[[str, int], float]] = {
    "floor: open by path, read, close": raw_read_seconds,
    "floor: open by dir fd, read, close": raw_relative_read_seconds,
    "floor: kept open, pread": raw_kept_read_seconds,
}


def machine() -> str:
    """What the figures were taken on: CPU model, cores, kernel, Python."""
    model = ""
    with open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    return (f"machine: {model or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def spread(values: list[float], scale: float = 1000.0) -> str:
    """min / median / max, in ms by default."""
    return " / ".join(f"{v * scale:.2f}" for v in (min(values), statistics.median(values), max(values)))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return kib / 1024


def series_count(text: bytes, prefix: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(prefix.encode()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=150, help="scrapes of each exporter per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not node_exporter:
        raise SystemExit("node_exporter not found: apt-get install prometheus-node-exporter")

    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-") as work:
        sysfs = os.path.join(work, "sys")
        write_rdma_tree(sysfs, mlx5_devices(32), driver="mlx5_core", vendor="0x15b3", firmware="28.39.1002")
        others = [f"--no-collector.{name}" for name in ("gpu", "lustre", "host", "identity", "kmsg")]
        procs = {
            "node_exporter": subprocess.Popen(
                [node_exporter, f"--path.sysfs={sysfs}", "--collector.disable-defaults", "--collector.infiniband",
                 "--web.listen-address=127.0.0.1:19491"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "gpuscope": subprocess.Popen(
                [sys.executable, "-m", "gpuscope", "exporter", f"--path.sysfs={sysfs}", *others,
                 "--web.listen-address=127.0.0.1:19492", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        urls = {"node_exporter": "http://127.0.0.1:19491/metrics", "gpuscope": "http://127.0.0.1:19492/metrics"}
        cpu: dict[str, list[float]] = {name: [] for name in urls}
        rss: dict[str, list[float]] = {name: [] for name in urls}
        floors: dict[str, list[float]] = {name: [] for name in FLOORS}
        try:
            for url in urls.values():
                wait_up(url)
            bodies = {}
            for name, url in urls.items():
                for _ in range(20):  # warm-up: imports, caches, Go GC sizing
                    bodies[name] = fetch(url)
            for _ in range(args.rounds):
                used = {name: 0.0 for name in urls}
                for _ in range(args.scrapes):
                    for name, url in urls.items():  # interleaved, so both see the same machine state
                        before = cpu_seconds(procs[name].pid)
                        fetch(url)
                        used[name] += cpu_seconds(procs[name].pid) - before
                for name, proc in procs.items():
                    cpu[name].append(used[name] / args.scrapes)
                    rss[name].append(rss_mib(proc.pid))
                for name, floor in FLOORS.items():
                    floors[name].append(floor(sysfs, 20))
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait()
        files = len(counter_files(sysfs))

    print(machine())
    print(f"tree: 32 mlx5 devices, {files} counter files; {args.rounds} rounds of {args.scrapes} scrapes each, "
          "interleaved; min / median / max over the rounds")
    print(f"series: node_exporter node_infiniband_* {series_count(bodies['node_exporter'], 'node_infiniband_')}, "
          f"gpuscope gpuscope_rdma_* {series_count(bodies['gpuscope'], 'gpuscope_rdma_')}")
    print(f"{'':<36}{'CPU ms/scrape':>24}{'RSS MiB':>26}")
    for name in urls:
        print(f"{name:<36}{spread(cpu[name]):>24}{spread(rss[name], 1.0):>26}")
    for name, values in floors.items():
        print(f"{name:<36}{spread(values):>24}")
    ratios = [g / n for g, n in zip(cpu["gpuscope"], cpu["node_exporter"], strict=True)]
    kept = [g / f for g, f in zip(cpu["gpuscope"], floors["floor: kept open, pread"], strict=True)]
    print(f"gpuscope / node_exporter CPU, round by round: {spread(ratios, 1.0)}x; "
          f"gpuscope / kept-open floor: {spread(kept, 1.0)}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
