"""Series, bytes, CPU and memory of one exporter serving a simulated p5.48xlarge with default flags.

Starts `gpuscope exporter --simulate p5.48xlarge` on loopback (its node counters frozen, so the
simulation adds no CPU of its own), scrapes it back to back in `--rounds` rounds, and reports:
series and bytes per scrape (plain and gzip), CPU per scrape from /proc/<pid>/stat, gpuscope's own
share (the CPU of the simulated NVML's calls, timed in this process between rounds, taken off), and
resident memory after each round, so growth shows. Run:

    python bench/node_cost.py [--scrapes 10000] [--rounds 3] [--profile p5.48xlarge]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
import urllib.request

from bench.gpu_scrape import nvml_call_ms
from bench.rdma_scrape import cpu_seconds, fetch, machine, rss_mib, spread, wait_up
from simulator.cluster import free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=10_000, help="scrapes per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="p5.48xlarge")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen([sys.executable, "-m", "gpuscope", "exporter", f"--simulate={args.profile}",
                             "--simulate.interval=1h", "--collector.gpu.gpm-interval=15s",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu: list[float] = []
    nvml: list[float] = []
    rss: list[float] = []
    try:
        wait_up(url)
        time.sleep(16)  # two GPM samples, so the profiling series are there
        body = fetch(url)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            zipped = len(response.read())
        rss.append(rss_mib(proc.pid))
        for _ in range(args.rounds):
            start = cpu_seconds(proc.pid)
            for _ in range(args.scrapes):
                fetch(url)
            cpu.append((cpu_seconds(proc.pid) - start) / args.scrapes)
            rss.append(rss_mib(proc.pid))
            nvml.append(nvml_call_ms(args.profile, 200) / 1000)
    finally:
        proc.terminate()
        proc.wait()
    own = [c - n for c, n in zip(cpu, nvml, strict=True)]
    print(machine())
    print(f"{args.profile} (simulated), default flags; {args.rounds} rounds of {args.scrapes} scrapes, "
          "min / median / max over the rounds")
    print(f"series per scrape       {series}")
    print(f"bytes per scrape        {len(body)} plain, {zipped} gzip ({len(gzip.compress(body))} at level 9)")
    print(f"CPU per scrape          {spread(cpu)} ms")
    print(f"  simulated NVML calls  {spread(nvml)} ms")
    print(f"  gpuscope's own        {spread(own)} ms")
    print("resident memory         " + ", ".join(f"{value:.1f}" for value in rss)
          + f" MiB (after the first scrape, then after each round of {args.scrapes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
