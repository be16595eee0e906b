"""remote_write bandwidth of one node: what a Prometheus agent sends VictoriaMetrics per gpuscope scrape.

Starts a simulated p5.48xlarge exporter (default flags), VictoriaMetrics, and two Prometheus agents
scraping that exporter at `--interval` for `--seconds`, one with remote_write's default batch (500
samples) and one with deploy/scale-out/prometheus-agent.yml's (2,000). Each agent's own counters
(prometheus_remote_storage_bytes_total: bytes after compression; ..._samples_total) give bytes per
sample, and with the node's series count, bytes per second per node; the docs' projection
(docs/scale-out.md) multiplies them out. Run:

    python -m bench.remote_write [--interval 15s] [--seconds 120]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import ExitStack

from bench.rdma_scrape import fetch, machine, wait_up
from simulator.cluster import free_port
from simulator.stack import Prometheus, prometheus_agent, victoria_metrics

BATCHES = (500, 2000)


def agent_counter(agent: str, name: str) -> float:
    for line in fetch(f"{agent}/metrics").decode().splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise SystemExit(f"{agent} does not export {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    port = free_port()
    target = f"127.0.0.1:{port}"
    exporter = subprocess.Popen([sys.executable, "-m", "gpuscope", "exporter", "--simulate=p5.48xlarge",
                                 f"--web.listen-address={target}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://{target}/metrics")
        with ExitStack() as running:
            vm: Prometheus = running.enter_context(victoria_metrics())
            agents = {}
            for batch in BATCHES:
                job = {"job_name": "gpuscope", "static_configs": [{"targets": [target],
                                                                   "labels": {"batch": str(batch)}}]}
                agents[batch] = running.enter_context(prometheus_agent(
                    [job], f"{vm.base}/api/v1/write", interval=args.interval, max_samples_per_send=batch))
            time.sleep(args.seconds)
            series = len(vm.query('{job="gpuscope", batch="500"}'))
            print(machine())
            print(f"one simulated p5.48xlarge, {series} series, scraped every {args.interval} for "
                  f"{args.seconds:g} s; Prometheus agent remote_write 1.0 (snappy)")
            print(f"{'batch (samples per send)':<28}{'samples':>10}{'bytes':>12}{'bytes/sample':>14}"
                  f"{'bytes/s per node':>18}")
            per_second = series / float(args.interval.rstrip("s"))
            for batch, agent in agents.items():
                sent = agent_counter(agent, "prometheus_remote_storage_bytes_total")
                samples = agent_counter(agent, "prometheus_remote_storage_samples_total")
                print(f"{batch:<28}{samples:>10.0f}{sent:>12.0f}{sent / samples:>14.1f}"
                      f"{sent / samples * per_second:>18.0f}")
    finally:
        exporter.terminate()
        exporter.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
