"""`gpuscope demo`: a simulated cluster, Prometheus and Alertmanager on loopback, faults, live alerts.

What a new user without a GPU runs to see gpuscope work: the simulated nodes (each a real exporter),
Prometheus evaluating the generated rules, Alertmanager with the reference routing and inhibitions
delivering to a receiver in this process, and a terminal view of alerts going pending, firing and
resolving while the scenario injects faults. Time runs DEMO_SPEEDUP times faster than production:
rule durations, the scrape and evaluation intervals (the shipped 15 s) and the GPM sampling are all
divided by it, so every rule window holds as many samples as in production and the default scenario
fits in about 20 minutes. Ctrl-C stops every process.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from importlib import resources
from typing import Any

import yaml

from simulator.cluster import Cluster
from simulator.faults import Step
from simulator.run import prepare
from simulator.stack import MissingBinary, alertmanager, find_binary, prometheus, routed_to_webhook, webhook_receiver

DEMO_SPEEDUP = 10
REFRESH_SECONDS = 2.0


def run_demo(args: dict[str, Any]) -> int:
    try:
        find_binary("prometheus")
        find_binary("prometheus-alertmanager", "alertmanager")
        scenario, linger = prepare(args)
    except (MissingBinary, ValueError) as exc:
        print(f"gpuscope demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="gpuscope-demo-") as work:
            _run(work, scenario, linger)
    except KeyboardInterrupt:
        print("\nstopped; every process has been shut down")
    except RuntimeError as exc:
        print(f"gpuscope demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _rules_file(work: str) -> tuple[str, str]:
    """The shortened rules file and the scrape interval it was shortened for."""
    from alerts.render import prometheus_duration, write_shortened_rules  # the daemon never loads alerts
    from alerts.settings import SCRAPE_INTERVAL
    from toolkit.durations import seconds

    scrape = seconds(SCRAPE_INTERVAL) / DEMO_SPEEDUP
    return (write_shortened_rules(os.path.join(work, "rules.yml"), DEMO_SPEEDUP, scrape_seconds=scrape),
            prometheus_duration(scrape))


def _run(work: str, scenario, linger: float) -> None:
    routing = yaml.safe_load(resources.files("alerts").joinpath("alertmanager.yml").read_text())
    rules, interval = _rules_file(work)
    cluster = Cluster(os.path.join(work, "nodes"), scenario.nodes, scenario.profile, jobs=scenario.jobs,
                      exporter_args=(f"--collector.gpu.gpm-interval={interval}",))
    print(f"starting {scenario.nodes} simulated {scenario.profile} nodes, Prometheus and Alertmanager ...", flush=True)
    with cluster, webhook_receiver() as (url, hook), alertmanager(routed_to_webhook(routing, url, DEMO_SPEEDUP)) as am:
        jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()]}]}]
        with prometheus(jobs, interval=interval, rule_files=[rules], alertmanager=am) as prom:
            print(f"Prometheus   {prom.base}/alerts\nAlertmanager http://{am}\n"
                  + "".join(f"{n.name:<12} http://{n.address}/\n" for n in cluster.nodes)
                  + f"scenario {scenario.name}: {scenario.description}\n"
                  f"(time runs {DEMO_SPEEDUP}x faster: rule durations and the {interval} scrape interval; "
                  "Ctrl-C stops everything)\n", flush=True)
            steps: list[str] = []
            done = threading.Event()
            view = threading.Thread(target=_watch, args=(prom, hook, steps, done), daemon=True)
            view.start()
            start = time.monotonic()
            cluster.run(scenario, on_step=lambda step: steps.append(_describe(step, time.monotonic() - start)),
                        duration=linger)
            done.set()
            view.join(timeout=REFRESH_SECONDS * 2)


def _describe(step: Step, elapsed: float) -> str:
    where = f"node-{step.node}" if isinstance(step.node, int) else \
        ("every node of the job" if step.node == "job" else f"every node of job {step.node[4:]}")
    target = step.fault or {}
    on = " ".join(part for part in (f"node-{target['node']}" if "node" in target else "",
                                    f"GPU {target['gpu']}" if "gpu" in target else "") if part)
    what = f"inject {target['kind']}" + (f" on {on}" if on else "") if step.fault else f"clear {step.clear}"
    return f"[{elapsed:5.0f}s] {where}: {what}"


def _watch(prom, hook, steps: list[str], done: threading.Event) -> None:
    """Prints every change of alert state, and the scenario's steps as they happen."""
    shown_steps = 0
    states: dict[tuple[str, ...], str] = {}
    status = ""
    start = time.monotonic()
    while not done.wait(REFRESH_SECONDS):
        for line in steps[shown_steps:]:
            print(line, flush=True)
        shown_steps = len(steps)
        try:
            alerts = prom.alerts()
        except OSError:
            continue
        now = {_alert_key(a["labels"]): a["state"] for a in alerts}
        elapsed = time.monotonic() - start
        for alert, state in sorted(now.items()):
            if states.get(alert) != state:
                print(f"[{elapsed:5.0f}s]   {state.upper():<8} {' '.join(alert)}", flush=True)
        for alert in sorted(set(states) - set(now)):
            print(f"[{elapsed:5.0f}s]   RESOLVED {' '.join(alert)}", flush=True)
        states = now
        notified = sum(len(note["alerts"]) for note in hook.received())
        line = f"{len(now)} alerts active, {notified} notifications delivered through Alertmanager"
        if line != status:
            print(f"[{elapsed:5.0f}s] {line}", flush=True)
            status = line


def _alert_key(labels: dict[str, str]) -> tuple[str, ...]:
    parts = [labels["alertname"], labels.get("severity", ""), labels.get("instance", "")]
    for name in ("gpu", "device", "fs", "target"):
        if name in labels:
            parts.append(f"{name}={labels[name]}")
    return tuple(parts)
