"""Renders the dashboards of a simulated cluster into docs/dashboards/ (the README shows them).

    .venv/bin/python scripts/render_dashboards.py

Four simulated p5.48xlarge nodes in one job, Prometheus with the generated rules (durations
divided by 4, so a 1 m rate window still holds three of the 5 s scrapes), three minutes of data,
then a thermal throttle and an XID on node-1's GPU 3 and a lost GPU 6, so the fault panels have
something to show.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from alerts.render import write_shortened_rules
from dashboards.render import render_all
from simulator.cluster import Cluster
from simulator.stack import prometheus

OUT = os.path.join(os.path.dirname(__file__), "..", "docs", "dashboards")


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        rules = write_shortened_rules(os.path.join(work, "rules.yml"), 4)
        with Cluster(os.path.join(work, "nodes"), nodes=4, exporter_args=("--collector.gpu.gpm-interval=5s",)) as c:
            jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [c.write_targets()]}]}]
            with prometheus(jobs, interval="5s", rule_files=[rules]) as prom:
                time.sleep(150)
                c.inject(1, {"kind": "thermal_throttle", "gpu": 3})
                c.inject(1, {"kind": "xid", "gpu": 3, "xid": 48})
                c.inject(1, {"kind": "gpu_lost", "gpu": 6})
                time.sleep(45)
                values = {"instance": "node-1", "gpu": "3", "job_id": "4242", "namespace": "", "pod": ".*",
                          "cluster": ".*", "__rate_interval": "30s"}
                print("\n".join(render_all(prom.base, OUT, values, minutes=3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
