"""The node agent's start: time until /-/healthy answers, and resident memory after its first scrape.

Starts `python -m exporter` (the node agent's own entry) from one or more checkouts, interleaved run
by run so machine noise falls on all of them alike, against the same sysfs tree (the procfs
capture's InfiniBand devices) and the host's /proc; no GPU, so the GPU collector reports NVML
missing as it would on a CPU node.

    python bench/startup.py [--runs 10] [CHECKOUT ...]     # default: this checkout

Prints, per checkout, the minimum, median and maximum over the runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from simulator.cluster import free_port

REPO = Path(__file__).resolve().parents[1]
SYSFS = REPO / "tests" / "fixtures" / "prometheus-procfs" / "sys"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return kib / 1024


def one_start(checkout: Path) -> tuple[float, float]:
    """Seconds from exec to a healthy answer, and MiB resident after one scrape."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}",
                             f"--path.sysfs={SYSFS}"], cwd=checkout,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/-/healthy", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() - started > 30:
                    raise SystemExit(f"{checkout}: the exporter did not start") from None
                time.sleep(0.005)
        healthy = time.monotonic() - started
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            response.read()
        return healthy, rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    low, mid, high = min(values) * scale, statistics.median(values) * scale, max(values) * scale
    return f"{low:.1f} / {mid:.1f} / {high:.1f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[REPO])
    args = parser.parse_args()
    starts: dict[Path, list[float]] = {c: [] for c in args.checkouts}
    rss: dict[Path, list[float]] = {c: [] for c in args.checkouts}
    for _ in range(args.runs):
        for checkout in args.checkouts:
            seconds, mib = one_start(checkout)
            starts[checkout].append(seconds)
            rss[checkout].append(mib)
    print(f"{args.runs} runs each, interleaved; min / median / max")
    for checkout in args.checkouts:
        print(f"{os.fspath(checkout)}: healthy after {spread(starts[checkout], 'ms', 1000)}; "
              f"RSS after the first scrape {spread(rss[checkout], 'MiB')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
