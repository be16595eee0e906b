"""`gpuscope simulate`: a simulated cluster in the foreground until its time is up or Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from simulator.cluster import Cluster, load_scenario
from simulator.faults import Scenario, Step, parse_duration


def prepare(args: dict[str, Any]) -> tuple[Scenario, float]:
    """The scenario and linger time of `simulate`/`demo` options; SIGTERM made a Ctrl-C.

    Raises ValueError (ScenarioError included) naming the option or scenario field at fault."""
    scenario = load_scenario(args["scenario"], args["profile"], args["nodes"])
    duration = parse_duration(args["duration"], "--duration")
    signal.signal(signal.SIGTERM, _interrupt)
    return scenario, duration


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def run_simulation(args: dict[str, Any]) -> int:
    try:
        scenario, duration = prepare(args)
    except ValueError as exc:
        print(f"gpuscope simulate: error: {exc}", file=sys.stderr)
        return 2
    root = os.path.abspath(args["out"])
    cluster = Cluster(root, scenario.nodes, scenario.profile, base_port=args["base_port"], jobs=scenario.jobs)
    try:
        cluster.start()
        print(f"{scenario.nodes} simulated {scenario.profile} nodes, scenario {scenario.name}: {scenario.description}")
        for node in cluster.nodes:
            print(f"  {node.name}: http://{node.address}/metrics  (faults: {node.directory}/faults.yaml)")
        print(f"Prometheus file_sd targets: {os.path.join(root, 'targets.json')}")
        print("  scrape_configs: [{job_name: gpuscope, file_sd_configs: [{files: [" + os.path.join(root, "targets.json")
              + "]}]}]")
        cluster.run(scenario, on_step=_announce, duration=duration if duration else float("inf"))
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"gpuscope simulate: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


def _announce(step: Step) -> None:
    where = "every node of the job" if step.node == "job" else f"node-{step.node}"
    what = f"inject {step.fault}" if step.fault else f"clear {step.clear}"
    print(f"[{step.at:6.0f}s] {where}: {what}", flush=True)
