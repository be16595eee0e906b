"""A simulated cluster: N nodes, each a real `gpuscope exporter --simulate` process on loopback.

The controller owns the processes and the faults: it writes each node's `faults.yaml`, which the
node's exporter picks up at its next update. `gpuscope simulate`, `gpuscope demo` and the
end-to-end tests all drive clusters through this class.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from simulator.faults import JOB_KINDS, Scenario, ScenarioError, Step, check_fault, parse_scenario
from simulator.node import SimulatedNode
from simulator.nvml import load_profile
from simulator.profiles import DEFAULT_PROFILE
from simulator.scenarios import SCENARIOS


def load_scenario(name_or_path: str, profile: str | None = None, nodes: int | None = None) -> Scenario:
    """A built-in scenario by name, or a user's scenario file by path, on `profile` (default: the one
    the scenario names, else p5.48xlarge). A scenario that needs another profile is refused."""
    if name_or_path in SCENARIOS:
        source = f"scenario {name_or_path}"
        text = resources.files("simulator.scenarios").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        source = name_or_path
        try:
            with open(name_or_path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ScenarioError(f"scenario {name_or_path}: cannot read ({exc.strerror}); built-in scenarios: "
                                f"{', '.join(SCENARIOS)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    needs = data.get("profile") if isinstance(data, dict) else None
    if needs and profile and needs != profile:
        raise ScenarioError(f"{source}: runs on profile {needs}, not {profile} (leave --profile out)")
    chosen = profile or needs or DEFAULT_PROFILE
    scenario = parse_scenario(data, source, load_profile(chosen)["gpu"]["count"], nodes)
    return replace(scenario, profile=chosen)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ras_host(index: int) -> str:
    """Node i's own loopback address, where its RAS server listens and which RAS names it by."""
    return f"127.0.0.{index + 2}"


@dataclass
class SimNode:
    index: int
    name: str
    directory: str
    port: int
    process: subprocess.Popen | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Cluster:
    """Starts, faults and stops N simulated nodes; every process is stopped by its own pid."""

    def __init__(self, root: str, nodes: int = 4, profile: str = DEFAULT_PROFILE, job_nodes: Sequence[int] = (),
                 interval: str = "1s", exporter_args: Sequence[str] = (), base_port: int = 0,
                 job_id: str = "4242", jobs: Sequence[tuple[str, Sequence[int]]] = (), ras_interval: str = "1s",
                 ras_version: str = "2.29.2", ras_timeout_factor: float = 1.0,
                 node_args: dict[int, Sequence[str]] | None = None) -> None:
        """One job (`job_id` on `job_nodes`, default every node) or several (`jobs`: id and nodes).
        Each node of a job answers NCCL RAS on its own loopback address (node i: 127.0.0.<i+2>, so
        RAS's `host` tells the nodes apart) as NCCL `ras_version` would, its exporter asking it every
        `ras_interval` when it leads; `ras_timeout_factor` scales RAS's 5 s / 60 s timeouts. `node_args`:
        more exporter flags for some nodes (by index), after `exporter_args`."""
        self.root = root
        self.jobs = tuple((str(i), tuple(n)) for i, n in jobs) or ((job_id, tuple(job_nodes) or tuple(range(nodes))),)
        self.job_id, self.job_nodes = self.jobs[0]
        self.profile_name = profile
        self.profile = load_profile(profile)
        self._interval = interval
        self._exporter_args = tuple(exporter_args)
        self._node_args = {index: tuple(args) for index, args in (node_args or {}).items()}
        self._ras = {"port": free_port(), "interval": ras_interval, "version": ras_version,
                     "timeout_factor": ras_timeout_factor}
        self.nodes = [SimNode(i, f"node-{i}", os.path.join(root, f"node-{i}"),
                              base_port + i if base_port else free_port()) for i in range(nodes)]

    # --- processes ---------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            os.makedirs(node.directory, exist_ok=True)
            self._write_faults(node)
            self._write_job(node)
            self._launch(node)
        self.write_targets()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait_ready(node, deadline)

    def restart(self, node: int, timeout: float = 30.0) -> None:
        """Stops one node's exporter and starts it again on the same node directory: its kernel log,
        its boot time and the faults present now (a GPU missing at boot) carry over."""
        target = self.nodes[node]
        if target.process and target.process.poll() is None:
            target.process.terminate()
            target.process.wait(timeout=10)
        self._launch(target)
        self._wait_ready(target, time.monotonic() + timeout)

    def _launch(self, node: SimNode) -> None:
        log = open(os.path.join(node.directory, "exporter.log"), "ab")  # noqa: SIM115 (kept by the child)
        node.process = subprocess.Popen(
            [sys.executable, "-m", "gpuscope", "exporter", f"--simulate={self.profile_name}",
             f"--simulate.dir={node.directory}", f"--simulate.interval={self._interval}",
             f"--collector.gpu.job-mapping-dir={node.directory}/job-mapping",
             f"--web.listen-address={node.address}", f"--collector.nccl.ras-address={self.ras_address(node)}",
             f"--collector.nccl.ras-hosts={ras_host(node.index)}",
             f"--collector.nccl.ras-interval={self._ras['interval']}", f"--collector.train.dir={node.directory}/train",
             *self._exporter_args,
             *self._node_args.get(node.index, ())],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def ras_address(self, node: SimNode) -> str:
        return f"{ras_host(node.index)}:{self._ras['port']}"

    def _wait_ready(self, node: SimNode, deadline: float) -> None:
        while time.monotonic() < deadline:
            if node.process and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exporter exited with {node.process.returncode}; "
                                   f"see {node.directory}/exporter.log")
            try:
                with urllib.request.urlopen(f"http://{node.address}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{node.name} exporter not ready in time; see {node.directory}/exporter.log")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def write_targets(self) -> str:
        """A Prometheus file_sd file naming each node: `instance` is the node name, as deploy configs set it."""
        path = os.path.join(self.root, "targets.json")
        targets = [{"targets": [node.address], "labels": {"instance": node.name, "cluster": "simulated"}}
                   for node in self.nodes]
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(targets, handle, indent=2)
        return path

    # --- faults ------------------------------------------------------------------------------------

    def inject(self, node: int | str, fault: dict[str, Any]) -> None:
        """Adds a fault to a node, or to every node of the job with node="job"."""
        check_fault(fault, "fault", self.profile["gpu"]["count"])
        if fault["kind"] in JOB_KINDS and not str(node).startswith("job"):
            raise ScenarioError(f"fault {fault['kind']} affects a whole job: inject it with node='job'")
        fault = {**fault, "since": fault.get("since", time.time())} if fault["kind"] in JOB_KINDS else fault
        for target in self._targets(node):
            target.faults.append(dict(fault))
            self._write_faults(target)

    def clear(self, node: int | str, kind: str = "all") -> None:
        for target in self._targets(node):
            target.faults = [f for f in target.faults if kind != "all" and f["kind"] != kind]
            self._write_faults(target)

    def apply(self, step: Step) -> None:
        if step.fault is None:
            self.clear(step.node, step.clear)
        else:
            self.inject(step.node, step.fault)

    def run(self, scenario: Scenario, until: Callable[[], bool] = lambda: False,
            on_step: Callable[[Step], None] = lambda step: None, duration: float = 0.0) -> None:
        """Plays the scenario's steps at their times (seconds from now); returns after the last step and
        `duration` more seconds (0: after the last step), or when `until()` says so."""
        start = time.monotonic()
        end = (scenario.steps[-1].at if scenario.steps else 0.0) + duration
        pending = list(scenario.steps)
        while time.monotonic() - start < end or pending:
            if until():
                return
            now = time.monotonic() - start
            while pending and pending[0].at <= now:
                step = pending.pop(0)
                self.apply(step)
                on_step(step)
            time.sleep(0.1)

    def _write_job(self, node: SimNode) -> None:
        """The node's Slurm job as deploy/slurm/prolog.sh records it (one file per GPU), and job.yaml,
        from which the simulated node writes the job's NCCL Inspector files."""
        mapping = os.path.join(node.directory, "job-mapping")
        os.makedirs(mapping, exist_ok=True)
        for job_id, nodes in self.jobs:
            if node.index in nodes:
                for gpu in range(self.profile["gpu"]["count"]):
                    with open(os.path.join(mapping, str(gpu)), "w", encoding="ascii") as handle:
                        handle.write(f"{job_id}\n")
                SimulatedNode.write_job(node.directory, job_id, node.index, len(nodes), {
                    "address": self.ras_address(node), "hosts": [ras_host(i) for i in nodes], "started": time.time(),
                    "version": self._ras["version"], "timeout_factor": self._ras["timeout_factor"]})

    def _targets(self, node: int | str) -> list[SimNode]:
        if node == "job":
            return [self.nodes[i] for i in self.job_nodes]
        if str(node).startswith("job:"):
            nodes = dict(self.jobs).get(str(node)[4:])
            if nodes is None:
                raise ScenarioError(f"no job {str(node)[4:]} in this cluster (jobs: {', '.join(dict(self.jobs))})")
            return [self.nodes[i] for i in nodes]
        return [self.nodes[int(node)]]

    def _write_faults(self, node: SimNode) -> None:
        path = os.path.join(node.directory, "faults.yaml")
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            yaml.safe_dump(node.faults, handle)
        os.replace(tmp, path)
