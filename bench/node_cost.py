"""Series, bytes, CPU and memory of one exporter serving a simulated p5.48xlarge with default flags.

Starts `gpuscope exporter --simulate p5.48xlarge` on loopback (its node counters frozen, so the
simulation adds no CPU of its own), scrapes it back to back, and reports: series and bytes per
scrape (plain and gzip), CPU per scrape from /proc/<pid>/stat, and resident memory at the half
and at the end, so growth shows. Run:

    python bench/node_cost.py [--scrapes 10000] [--profile p5.48xlarge]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
import urllib.request

from bench.rdma_scrape import cpu_seconds, fetch, rss_mib, wait_up
from exporter.sim.cluster import free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=10_000)
    parser.add_argument("--profile", default="p5.48xlarge")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen([sys.executable, "-m", "exporter", f"--simulate={args.profile}",
                             "--simulate.interval=1h", "--collector.gpu.gpm-interval=15s",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(url)
        time.sleep(16)  # two GPM samples, so the profiling series are there
        body = fetch(url)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            zipped = len(response.read())
        cpu_start, wall_start = cpu_seconds(proc.pid), time.perf_counter()
        half = 0.0
        for number in range(args.scrapes):
            fetch(url)
            if number == args.scrapes // 2:
                half = rss_mib(proc.pid)
        cpu = (cpu_seconds(proc.pid) - cpu_start) / args.scrapes
        wall = (time.perf_counter() - wall_start) / args.scrapes
        end = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    print(f"{args.profile} (simulated), default flags")
    print(f"series per scrape     {series}")
    print(f"bytes per scrape      {len(body)} plain, {zipped} gzip ({len(gzip.compress(body))} at level 9)")
    print(f"CPU per scrape        {cpu * 1000:.2f} ms   wall {wall * 1000:.2f} ms   over {args.scrapes} scrapes")
    print(f"resident memory       {half:.1f} MiB after {args.scrapes // 2} scrapes, {end:.1f} MiB after {args.scrapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
