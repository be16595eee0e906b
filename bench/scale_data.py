"""The cluster-scale benchmark's data: a fleet of simulated p5.48xlarge nodes as OpenMetrics history.

Series shapes come from the simulator itself: a five-node simulated cluster runs with one node
healthy and one node per fault (a straggler GPU, a thermally throttled GPU, a collective stall, an
EFA stall), and each node is scraped twice. A counter's rate and a gauge's range between the two
scrapes are its node template. The fleet is N copies of the healthy template (own instance, own GPU
UUIDs, Slurm jobs of 16 nodes), with the faulty templates swapped in on a few nodes for the last
two hours, counters continuing from where they were.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog as c
from exporter.sim.cluster import Cluster

JOB_NODES = 16  # nodes per Slurm job
FIRST_JOB = 10000
CLUSTER = "scale"
FAULT_HOURS = 2.0  # faults cover the last two hours of the history
# Template name -> the fault injected on its node of the five-node capture cluster.
FAULTS = {
    "straggler": {"kind": "straggler", "gpu": 5},
    "thermal_throttle": {"kind": "thermal_throttle", "gpu": 3},
    "collective_stall": {"kind": "collective_stall"},
    "efa_stall": {"kind": "efa_stall"},
}


@dataclass(frozen=True)
class Series:
    name: str
    labels: tuple[tuple[str, str], ...]
    counter: bool
    first: float
    second: float
    seconds: float  # between the two scrapes

    @property
    def rate(self) -> float:
        return max(0.0, (self.second - self.first) / self.seconds) if self.counter else 0.0


Template = dict[tuple[str, tuple[tuple[str, str], ...]], Series]


def _parse(text: str, second: str, seconds: float) -> Template:
    later = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(second) for s in family.samples}
    template: Template = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in later and sample.name != c.GPU_JOB_INFO.name:  # jobs are laid out by the fleet
                template[key] = Series(sample.name, key[1], family.type == "counter", sample.value, later[key],
                                       seconds)
    return template


def capture_templates(root: str, settle: float = 20.0, apart: float = 10.0) -> dict[str, Template]:
    """The healthy and faulty node templates, from a live five-node simulated cluster."""
    names = ["healthy", *FAULTS]
    with Cluster(root, nodes=len(names), job_nodes=(names.index("collective_stall"),),
                 exporter_args=("--collector.gpu.gpm-interval=1s",)) as cluster:
        for index, name in enumerate(names[1:], start=1):
            cluster.inject("job" if name == "collective_stall" else index, FAULTS[name])
        time.sleep(settle)  # faults applied, GPM and EFA rates settled
        urls = [f"http://{node.address}/metrics" for node in cluster.nodes]
        first = [_fetch(url) for url in urls]
        started = time.monotonic()
        time.sleep(apart)
        second = [_fetch(url) for url in urls]
        seconds = time.monotonic() - started
    return {name: _parse(first[i], second[i], seconds) for i, name in enumerate(names)}


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


@dataclass
class Layout:
    """Which nodes carry which fault, and the alerts each must raise (everything else stays silent)."""

    nodes: int
    faults: dict[int, str] = field(default_factory=dict)

    @classmethod
    def spread(cls, nodes: int) -> Layout:
        """Faults spread over the fleet; the last job of 16 nodes hangs in a collective."""
        if nodes < 4 * JOB_NODES or nodes % JOB_NODES:
            raise SystemExit(f"--nodes must be a multiple of {JOB_NODES} and at least {4 * JOB_NODES}")
        span = nodes - JOB_NODES
        layout = cls(nodes)
        for k in (1, 3, 5):
            layout.faults[span * k // 7] = "straggler"
        for k in (2, 4):
            layout.faults[span * k // 7 + 1] = "thermal_throttle"
        layout.faults[span * 6 // 7 + 1] = "efa_stall"
        layout.faults.update({node: "collective_stall" for node in range(span, nodes)})
        assert len(layout.faults) == 6 + JOB_NODES, "fault positions collide"
        return layout

    def expected_alerts(self) -> dict[str, set[tuple[str, ...]]]:
        """Alert name -> the (instance,) or (instance, gpu) it must name, and nothing else."""
        gpus = {name: {(instance(n), str(FAULTS[name]["gpu"])) for n, f in self.faults.items() if f == name}
                for name in ("straggler", "thermal_throttle")}
        nodes = {name: {(instance(n),) for n, f in self.faults.items() if f == name}
                 for name in ("collective_stall", "efa_stall")}
        return {
            "GpuStraggler": gpus["straggler"] | gpus["thermal_throttle"],  # throttled GPUs lag their peers too
            "GpuThermalThrottling": gpus["thermal_throttle"],
            "GpuTemperatureNearLimit": gpus["thermal_throttle"],
            "CollectiveStall": nodes["collective_stall"],
            "NodeStraggler": nodes["collective_stall"],  # a hung node's SM activity is near zero
            "EfaTrafficStalled": nodes["efa_stall"] | nodes["collective_stall"],
        }


def instance(node: int) -> str:
    return f"node-{node:04d}"


def _uuid(node: int, gpu_uuid: str) -> str:
    """A per-node GPU UUID: the simulator's UUIDs are the same on every node."""
    return f"GPU-{node:08x}{gpu_uuid[12:]}"


def _prefix(series: Series, node: int) -> str:
    labels = dict(series.labels)
    if "uuid" in labels:
        labels["uuid"] = _uuid(node, labels["uuid"])
    labels.update(instance=instance(node), job="gpuscope", cluster=CLUSTER)
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{series.name}{{{inner}}} "


def _node_series(templates: dict[str, Template], node: int,
                 layout: Layout) -> Iterator[tuple[Series | None, Series | None]]:
    """(before, during) the fault window for each series of one node; None where it does not exist."""
    healthy = templates["healthy"]
    if node not in layout.faults:
        yield from ((series, series) for series in healthy.values())
        return
    faulty = templates[layout.faults[node]]
    for key in healthy.keys() | faulty.keys():
        yield healthy.get(key), faulty.get(key)


def _jitter(step: int, salt: int) -> float:
    """A cheap, repeatable pseudo-random number in [0, 1)."""
    return ((step * 2654435761 + salt * 40503) % 1000) / 1000


def _values(before: Series | None, during: Series | None, steps: int, fault_step: int, interval: int,
            salt: int) -> list[str | None]:
    """Each step's value as text, None where the series does not exist; counters carry on across."""
    out: list[str | None] = []
    present = [s for s in (before, during) if s is not None]
    integral = all(float(s.first).is_integer() and float(s.second).is_integer() for s in present)
    value = present[0].first
    for step in range(steps):
        series = during if step >= fault_step else before
        if series is None:
            out.append(None)
        elif series.counter:
            out.append(str(round(value)) if integral else f"{value:.3f}")
            value += series.rate * interval
        elif series.first == series.second:
            out.append(repr(series.first))
        else:
            out.append(f"{series.first + (series.second - series.first) * _jitter(step, salt):.6g}")
    return out


def write_openmetrics(path: str, templates: dict[str, Template], layout: Layout, nodes: range, start: int,
                      steps: int, interval: int) -> int:
    """One file of `nodes`' history, every series' samples together; returns the number of samples."""
    fault_step = steps - int(FAULT_HOURS * 3600 / interval)
    stamps = [f" {start + step * interval}\n" for step in range(steps)]
    samples = 0
    with open(path, "w", encoding="ascii", buffering=1 << 22) as out:
        for node in nodes:
            for salt, (before, after) in enumerate(_node_series(templates, node, layout)):
                prefix = _prefix(before or after, node)
                values = _values(before, after, steps, fault_step, interval, salt + node)
                lines = [prefix + value + stamp for value, stamp in zip(values, stamps, strict=True)
                         if value is not None]
                out.write("".join(lines))
                samples += len(lines)
            samples += _write_node_extras(out, templates["healthy"], node, stamps)
        out.write("# EOF\n")
    return samples


def _write_node_extras(out: TextIO, healthy: Template, node: int, stamps: list[str]) -> int:
    """`up` and the Slurm job of each GPU (jobs of 16 consecutive nodes), constant over the history."""
    job = FIRST_JOB + node // JOB_NODES
    lines = [f'up{{cluster="{CLUSTER}",instance="{instance(node)}",job="gpuscope"}} 1']
    for series in healthy.values():
        if series.name == c.GPU_INFO.name:
            labels = dict(series.labels)
            lines.append(f'{c.GPU_JOB_INFO.name}{{cluster="{CLUSTER}",gpu="{labels["gpu"]}",instance='
                         f'"{instance(node)}",job="gpuscope",job_id="{job}",uuid="{_uuid(node, labels["uuid"])}"}} 1')
    out.write("".join(line + stamp for line in lines for stamp in stamps))
    return len(lines) * len(stamps)
