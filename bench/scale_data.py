"""The cluster-scale benchmark's data: a fleet of simulated p5.48xlarge nodes as six hours of history.

Series shapes come from the simulator itself. A capture cluster of 20 simulated nodes runs the jobs
and faults of `CAPTURE` (a hung NCCL job, a job waiting for a busy rank, a job waiting for a rank
late at every collective, an 8-node job whose members carry one node fault each, a 1-node job, a
1-node job writing a checkpoint, an idle node); every node is scraped twice. A counter's rate and a
gauge's range between the two scrapes are its node's template, named by the node's role.

The fleet (`Layout`) is N nodes in a job mix: one job over half the fleet, jobs of 16 nodes, 1-node
jobs, idle nodes. Each fleet node copies its role's template with its own instance, GPU UUIDs,
job, NCCL communicators and RAS host; for the last two hours (five minutes for the events: a fatal
SXID, a GPU off the bus) faulty templates replace healthy ones on a few nodes and jobs, counters
carrying on from where they were. Unix-time gauges (the kernel's last XID and SXID) keep their age:
from the start of the history for what the kernel logged before the faults, from the fault's onset
for what the fault logged; a gauge that counted seconds in the capture (a stall's duration) counts
on from the onset.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog as c
from receiver.engine import OUTCOMES
from simulator.cluster import Cluster, ras_host

JOB_NODES = 16  # nodes of the mid-sized jobs
FIRST_JOB = 10000
CLUSTER = "scale"
FAULT_HOURS = 2.0  # faults cover the last two hours of the history
EVENT_SECONDS = 300  # events (a fatal SXID, a GPU off the bus) happen this long before the end
GPUS = 8


@dataclass(frozen=True)
class CaptureJob:
    """A job of the capture cluster: each node's role (its template's name), the first node leading
    NCCL RAS, and a job-wide fault aimed at the last node's `gpu` where it names one."""

    id: str
    roles: tuple[str, ...]
    fault: dict | None = None


# The hung job comes first: RAS aims a hang at the job's node index, the hardware at the cluster's.
CAPTURE = (
    CaptureJob("31", ("hang_leader", "hang_member", "hang_culprit"), {"kind": "nccl_hang", "gpu": 2}),
    CaptureJob("32", ("waits_leader", "waits_member", "waits_culprit"), {"kind": "compute_straggler", "gpu": 5}),
    CaptureJob("33", ("late_leader", "late_member", "late_culprit"), {"kind": "nccl_late_arrival", "gpu": 3}),
    CaptureJob("34", ("leader", "member", "straggler", "thermal_throttle", "efa_stall", "sxid_fatal",
                      "efa_device_missing", "gpu_lost")),
    CaptureJob("35", ("single",)),
    CaptureJob("36", ("checkpoint",), {"kind": "checkpoint"}),
    CaptureJob("", ("idle",)),  # no job
)
NODE_FAULTS = {
    "straggler": {"kind": "straggler", "gpu": 5},
    "thermal_throttle": {"kind": "thermal_throttle", "gpu": 3},
    "efa_stall": {"kind": "efa_stall"},
    "sxid_fatal": {"kind": "sxid", "switch": 2, "sxid": 24007, "fatal": True},
    "efa_device_missing": {"kind": "efa_device_missing"},
    "gpu_lost": {"kind": "gpu_lost", "gpu": 6},
}
EVENTS = ("sxid_fatal", "gpu_lost")  # faults that are an event: onset EVENT_SECONDS before the end
ROLES = tuple(role for job in CAPTURE for role in job.roles)  # the capture cluster's nodes, in order
JOB_FAULT_GPU = {job.roles[0].split("_")[0]: job.fault["gpu"] for job in CAPTURE if job.fault and "gpu" in job.fault}


@dataclass(frozen=True)
class Series:
    name: str
    labels: tuple[tuple[str, str], ...]
    counter: bool  # a counter, or a gauge that counted seconds between the scrapes
    first: float
    second: float
    seconds: float  # between the two scrapes
    age: float | None = None  # a Unix-time gauge: seconds before the first scrape
    of_fault: bool = False  # ... logged by the capture's fault, not before it

    @property
    def rate(self) -> float:
        return max(0.0, (self.second - self.first) / self.seconds) if self.counter else 0.0


Template = dict[tuple[str, tuple[tuple[str, str], ...]], Series]


def _is_clock(first: float, second: float, seconds: float) -> bool:
    """A gauge that rose by about the time between the scrapes: a duration still running."""
    return first >= 0 and abs((second - first) - seconds) <= 0.25 * seconds


def _parse(text: str, second: str, seconds: float, scraped: float, injected: float) -> Template:
    later = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(second) for s in family.samples}
    template: Template = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in later or sample.name == c.GPU_JOB_INFO.name:  # jobs are laid out by the fleet
                continue
            value, after = sample.value, later[key]
            if sample.name.endswith("_timestamp_seconds"):
                template[key] = Series(sample.name, key[1], False, value, value, seconds, scraped - value,
                                       value >= injected - 1)
            else:
                counter = family.type == "counter" or _is_clock(value, after, seconds)
                template[key] = Series(sample.name, key[1], counter, value, after, seconds)
    return template


def capture_templates(root: str, settle: float = 25.0, apart: float = 10.0) -> dict[str, Template]:
    """Each role's template, from a live simulated cluster playing `CAPTURE`; kept in root for reuse."""
    cache = f"{root}/templates.json"
    try:
        with open(cache, encoding="utf-8") as handle:
            return {role: {(s["name"], tuple(map(tuple, s["labels"]))): Series(**{**s, "labels": tuple(
                map(tuple, s["labels"]))}) for s in series} for role, series in json.load(handle).items()}
    except FileNotFoundError:
        pass
    jobs, first = [], 0
    for job in CAPTURE:
        if job.id:
            jobs.append((job.id, tuple(range(first, first + len(job.roles)))))
        first += len(job.roles)
    with Cluster(f"{root}/capture", nodes=len(ROLES), jobs=jobs,
                 exporter_args=("--collector.gpu.gpm-interval=1s", "--collector.gpu.profiling=dcgm")) as cluster:
        time.sleep(5)  # jobs initialised, RAS leaders found
        injected = time.time()
        for (job_id, nodes), job in zip(jobs, (j for j in CAPTURE if j.id), strict=True):
            if job.fault:
                cluster.inject(f"job:{job_id}", {**job.fault, **({"node": nodes[-1]} if "gpu" in job.fault else {})})
        for index, role in enumerate(ROLES):
            if role in NODE_FAULTS:
                cluster.inject(index, NODE_FAULTS[role])
        urls = [f"http://{node.address}/metrics" for node in cluster.nodes]
        while time.time() < injected + settle:  # faults applied, rates and RAS stalls settled, each exporter
            for url in urls:  # scraped as Prometheus would (a collector reads a file once it held still)
                _fetch(url)
            time.sleep(1)
        scraped = time.time()
        first_texts = [_fetch(url) for url in urls]
        started = time.monotonic()
        time.sleep(apart)
        second_texts = [_fetch(url) for url in urls]
        seconds = time.monotonic() - started
    for role, first_text, second_text in zip(ROLES, first_texts, second_texts, strict=True):
        for number, text in ((1, first_text), (2, second_text)):
            with open(f"{root}/capture/{role}.{number}.prom", "w", encoding="utf-8") as handle:
                handle.write(text)
    templates = {role: _parse(first_texts[i], second_texts[i], seconds, scraped, injected)
                 for i, role in enumerate(ROLES)}
    _check_leaders(templates)
    with open(cache, "w", encoding="utf-8") as handle:
        json.dump({role: [asdict(s) for s in t.values()] for role, t in templates.items()}, handle)
    return templates


def _check_leaders(templates: dict[str, Template]) -> None:
    """The fleet puts each job's RAS view on its first node, as the capture must have."""
    for job in CAPTURE:
        for position, role in enumerate(job.roles if job.id else ()):
            leads = any(s.name == c.NCCL_RAS_LEADER.name and s.first == 1 for s in templates[role].values())
            if leads != (position == 0):
                raise RuntimeError(f"capture job {job.id}: node {position} ({role}) "
                                   f"{'leads' if leads else 'does not lead'} NCCL RAS")


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


# --- the fleet ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    first: int  # its first node
    nodes: int
    fault: str = ""  # hang, waits, late (aimed at `culprit`, a node position) or checkpoint
    culprit: int = -1


@dataclass(frozen=True)
class Placement:
    """What one fleet node runs: its job and position in it, its role's templates before and
    during its fault, and when the fault begins (seconds before the end)."""

    job: Job | None
    position: int
    before: str
    during: str
    onset_ago: int


@dataclass
class Layout:
    """The job mix, which nodes and jobs carry which fault, and what must fire (nothing else may)."""

    nodes: int
    jobs: list[Job] = field(default_factory=list)
    node_faults: dict[int, str] = field(default_factory=dict)

    @classmethod
    def spread(cls, nodes: int) -> Layout:
        """Half the fleet in one job (a busy rank it waits for), 3/8 in jobs of 16 nodes (one with a rank
        late at every collective, one hung, four with node faults), 3/32 in 1-node jobs (one writing a
        checkpoint for two hours: a trap), 1/32 idle."""
        if nodes < 256 or nodes % 128:
            raise SystemExit("--nodes must be a multiple of 128 and at least 256")
        layout = cls(nodes)
        half, mids, singles = nodes // 2, 3 * nodes // 128, 3 * nodes // 32
        layout.jobs.append(Job(str(FIRST_JOB), 0, half, "waits", nodes // 4 + 3))
        for i in range(mids):
            fault, culprit = {0: ("late", 4), mids - 1: ("hang", 2)}.get(i, ("", -1))
            layout.jobs.append(Job(str(FIRST_JOB + 1 + i), half + JOB_NODES * i, JOB_NODES, fault, culprit))
        for i in range(singles):
            layout.jobs.append(Job(str(FIRST_JOB + 1 + mids + i), half + JOB_NODES * mids + i, 1,
                                   "checkpoint" if i == 0 else ""))
        faulty = {1: {3: "straggler", 6: "thermal_throttle"}, 2: {3: "straggler", 9: "efa_stall"},
                  3: {3: "straggler", 6: "thermal_throttle", 12: "sxid_fatal"},
                  4: {3: "efa_device_missing", 6: "gpu_lost"}}
        for i, faults in faulty.items():
            layout.node_faults.update({half + JOB_NODES * i + position: f for position, f in faults.items()})
        return layout

    @property
    def idle_from(self) -> int:
        last = self.jobs[-1]
        return last.first + last.nodes

    def job_of(self, node: int) -> Job | None:
        for job in self.jobs:
            if job.first <= node < job.first + job.nodes:
                return job
        return None

    def placement(self, node: int) -> Placement:
        job = self.job_of(node)
        fault_ago = int(FAULT_HOURS * 3600)
        if job is None:
            return Placement(None, 0, "idle", "idle", fault_ago)
        position = node - job.first
        healthy = "single" if job.nodes == 1 else ("leader" if position == 0 else "member")
        if node in self.node_faults:
            fault = self.node_faults[node]
            return Placement(job, position, healthy, fault, EVENT_SECONDS if fault in EVENTS else fault_ago)
        if job.fault == "checkpoint":
            return Placement(job, position, healthy, "checkpoint", fault_ago)
        if job.fault:
            part = "leader" if position == 0 else "culprit" if position == job.culprit else "member"
            return Placement(job, position, healthy, f"{job.fault}_{part}", fault_ago)
        return Placement(job, position, healthy, healthy, fault_ago)

    def _faulty(self, fault: str) -> list[int]:
        return sorted(node for node, f in self.node_faults.items() if f == fault)

    def _culprit(self, fault: str) -> tuple[str, str]:
        job = next(j for j in self.jobs if j.fault == fault)
        return instance(job.first + job.culprit), str(JOB_FAULT_GPU[fault])

    def _job_nodes(self, fault: str) -> set[tuple[str, ...]]:
        job = next(j for j in self.jobs if j.fault == fault)
        return {(instance(n),) for n in range(job.first, job.first + job.nodes)}

    def expected_alerts(self, ago: int) -> dict[str, set[tuple[str, ...]]]:
        """Alert name -> the (instance,) or (instance, gpu) it must name `ago` seconds before the end
        (inside the fault window), and nothing else."""
        gpus = {f: {(instance(n), str(NODE_FAULTS[f]["gpu"])) for n in self._faulty(f)}
                for f in ("straggler", "thermal_throttle", "gpu_lost")}
        nodes = {f: {(instance(n),) for n in self._faulty(f)} for f in ("efa_stall", "efa_device_missing",
                                                                        "sxid_fatal")}
        hung = self._job_nodes("hang")
        expected = {
            # the slow GPUs, the throttled ones (they lag their node's peers too) and the ranks two jobs wait for
            "GpuStraggler": gpus["straggler"] | gpus["thermal_throttle"] | {self._culprit("waits"),
                                                                            self._culprit("late")},
            "GpuThermalThrottling": gpus["thermal_throttle"],
            "GpuTemperatureNearLimit": gpus["thermal_throttle"],
            "CollectiveStall": hung,
            "NodeStraggler": hung,  # a hung node's SM activity is near zero
            "EfaTrafficStalled": nodes["efa_stall"] | hung,
            "NcclCollectiveHang": {self._culprit("hang")},
            "EfaDeviceMissing": nodes["efa_device_missing"],
        }
        if ago < EVENT_SECONDS:
            expected.update(NvswitchFatalError=nodes["sxid_fatal"], GpuLost=gpus["gpu_lost"],
                            GpuXidCritical=gpus["gpu_lost"])
        return expected

    def expected_losses(self) -> set[tuple[str, str]]:
        """The (job, cause) pairs that lose GPU time at the end: each fault's job and cause."""
        by_node = {"gpu_lost": "lost_gpu", "efa_stall": "stall", "thermal_throttle": "throttle"}
        by_job = {"hang": "stall", "waits": "straggler", "late": "straggler", "checkpoint": "idle_allocated"}
        losses = {(job.id, by_job[job.fault]) for job in self.jobs if job.fault}
        for node, fault in self.node_faults.items():
            if fault in by_node:
                losses.add((self.job_of(node).id, by_node[fault]))
        # A job with a lost GPU loses by that cause alone; a stalled job by stalling alone.
        for first in ("lost_gpu", "stall"):
            jobs = {job for job, cause in losses if cause == first}
            losses = {(job, cause) for job, cause in losses if job not in jobs or cause == first}
        return losses

    def describe(self) -> dict:
        """The job mix and faults, for the results."""
        sizes = [job.nodes for job in self.jobs]
        return {"jobs": {"half_fleet": 1, "16_nodes": sizes.count(JOB_NODES), "1_node": sizes.count(1)},
                "idle_nodes": self.nodes - self.idle_from, "job_faults": {j.fault: j.id for j in self.jobs if j.fault},
                "node_faults": {instance(n): f for n, f in sorted(self.node_faults.items())}}


def instance(node: int) -> str:
    return f"node-{node:04d}"


def host(node: int) -> str:
    """The node's address as NCCL RAS names it."""
    return f"10.{node >> 16}.{(node >> 8) & 255}.{node & 255}"


def _uuid(node: int, gpu_uuid: str) -> str:
    """A per-node GPU UUID: the simulator's UUIDs are the same on every node."""
    return f"GPU-{node:08x}{gpu_uuid[12:]}"


def _comm_hash(job: str, comm: str) -> str:
    return hashlib.sha1(f"{job}/{comm}".encode()).hexdigest()[:16]


CAPTURE_NODES = {role: len(job.roles) for job in CAPTURE for role in job.roles}
CAPTURE_HOSTS = {ras_host(index): role for index, role in enumerate(ROLES)}


def _fleet_node(role: str, place: Placement, node: int) -> int:
    """The fleet node playing a capture role of this node's job (leader, culprit, else a member)."""
    job = place.job
    if job is None:
        return node
    position = {"leader": 0, "culprit": job.culprit}.get(role.rsplit("_", 1)[-1], 1 if job.nodes > 1 else 0)
    return job.first + position


def labels_for(series: Series, node: int, place: Placement, role: str) -> dict[str, str]:
    """The series' labels on a fleet node: its instance, GPU UUIDs, job, communicators and RAS hosts."""
    labels = dict(series.labels)
    job, span = place.job, CAPTURE_NODES[role]
    if "uuid" in labels:
        labels["uuid"] = _uuid(node, labels["uuid"])
    if "instance_id" in labels:
        labels["instance_id"] = f"i-{node:017x}"
    if job and "job_id" in labels:
        labels["job_id"] = job.id
    if job and "nranks" in labels:  # an NCCL Inspector communicator (simulator/inspector.py's four)
        comm = labels["comm"]
        if comm.startswith("TP Group"):
            labels["comm"] = f"TP Group {place.position}"
        labels["nranks"] = str({"TP": GPUS, "PP": job.nodes}.get(comm[:2], GPUS * job.nodes))
    if job and "comm" in labels and "nranks" not in labels:  # NCCL RAS: the job's own communicator hashes
        labels["comm"] = _comm_hash(job.id, labels["comm"])
    if job and "ranks" in labels:  # ... and sizes scaled with the job
        size = int(labels["ranks"])
        labels["ranks"] = str(size if size == GPUS else GPUS * job.nodes if size == GPUS * span else
                              job.nodes if size == span else size)
    if "host" in labels:
        captured = CAPTURE_HOSTS.get(labels["host"], role)
        fleet = node if captured == role or not job else _fleet_node(captured, place, node)
        labels["host"] = host(fleet)
        if "rank" in labels and job:  # World's rank order: node position, then GPU
            labels["rank"] = str((fleet - job.first) * GPUS + int(labels["rank"]) % GPUS)
    labels.update(instance=instance(node), job="gpuscope", cluster=CLUSTER)
    return labels


def _node_series(templates: dict[str, Template], place: Placement) -> Iterator[tuple[Series | None, Series | None]]:
    """(before, during) the fault for each series of one node; None where it does not exist."""
    before, during = templates[place.before], templates[place.during]
    if place.before == place.during:
        yield from ((series, series) for series in before.values())
        return
    for key in [*before, *(key for key in during if key not in before)]:
        yield before.get(key), during.get(key)


def _jitter(step: int, salt: int) -> float:
    """A cheap, repeatable pseudo-random number in [0, 1)."""
    return ((step * 2654435761 + salt * 40503) % 1000) / 1000


@dataclass(frozen=True)
class Window:
    """The history's time axis."""

    start: int
    steps: int
    interval: int

    @property
    def end(self) -> int:
        return self.start + self.steps * self.interval

    def step_of(self, ago: int) -> int:
        return self.steps - ago // self.interval


def _values(before: Series | None, during: Series | None, window: Window, onset_ago: int,
            salt: int) -> list[str | None]:
    """Each step's value as text, None where the series does not exist; counters carry on across."""
    fault_step = window.step_of(onset_ago)
    present = [s for s in (before, during) if s is not None]
    if present[0].age is not None:  # a Unix time: its age kept from the start, or from the onset if the fault's
        onset = window.end - onset_ago
        stamp = {id(s): repr(float(round((onset if s.of_fault else window.start) - s.age))) for s in present}
        return [None if s is None else stamp[id(s)] for s in
                (during if step >= fault_step else before for step in range(window.steps))]
    integral = all(float(s.first).is_integer() and float(s.second).is_integer() for s in present)
    out: list[str | None] = []
    value = present[0].first
    for step in range(window.steps):
        series = during if step >= fault_step else before
        if series is None:
            out.append(None)
        elif series.counter:
            out.append(str(round(value)) if integral else f"{value:.3f}")
            value += series.rate * window.interval
        elif series.first == series.second:
            out.append(repr(series.first))
        else:
            out.append(f"{series.first + (series.second - series.first) * _jitter(step, salt):.6g}")
    return out


class Writer:
    """Series histories as a backfill file: OpenMetrics text for promtool, or VictoriaMetrics' JSON
    lines (/api/v1/import: one line a series, every value and timestamp in it)."""

    def __init__(self, path: str, window: Window, victoria: bool) -> None:
        self.path, self.victoria = path, victoria
        self.out: TextIO = open(path, "w", encoding="ascii", buffering=1 << 22)  # noqa: SIM115 (closed in close())
        if victoria:
            self.stamps = [str((window.start + step * window.interval) * 1000) for step in range(window.steps)]
            self.all_stamps = ",".join(self.stamps)
        else:
            self.stamps = [f" {window.start + step * window.interval}\n" for step in range(window.steps)]
        self.samples = 0

    def series(self, labels: dict[str, str], name: str, values: list[str | None]) -> None:
        if None in values:
            kept = [(v, s) for v, s in zip(values, self.stamps, strict=True) if v is not None]
            values, stamps = [v for v, _ in kept], [s for _, s in kept]
        else:
            stamps = self.stamps
        if not values:
            return
        self.samples += len(values)
        if self.victoria:
            metric = json.dumps({"__name__": name, **labels}, separators=(",", ":"))
            times = self.all_stamps if stamps is self.stamps else ",".join(stamps)
            self.out.write(f'{{"metric":{metric},"values":[{",".join(values)}],"timestamps":[{times}]}}\n')
            return
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{inner}}} "
        if len(set(values)) == 1:  # most series: one value throughout, one join
            self.out.write(f"{prefix}{values[0]}".join(["", *stamps]))
        else:
            self.out.write("".join(prefix + value + stamp for value, stamp in zip(values, stamps, strict=True)))

    def close(self) -> None:
        if not self.victoria:
            self.out.write("# EOF\n")
        self.out.close()


def write_history(writers: list[Writer], templates: dict[str, Template], layout: Layout, nodes: range,
                  window: Window) -> None:
    """`nodes`' history (and the remediation receiver's with node 0) into each writer."""
    for node in nodes:
        place = layout.placement(node)
        for salt, (before, during) in enumerate(_node_series(templates, place)):
            series = before or during
            role = place.before if before else place.during
            values = _values(before, during, window, place.onset_ago, salt + node)
            labels = labels_for(series, node, place, role)
            for writer in writers:
                writer.series(labels, series.name, values)
        for name, labels, value in _node_extras(templates[place.before], node, place):
            for writer in writers:
                writer.series(labels, name, [value] * window.steps)
        if node == 0:
            for name, labels, value in _receiver():
                for writer in writers:
                    writer.series(labels, name, [value] * window.steps)


def _node_extras(template: Template, node: int, place: Placement) -> Iterator[tuple[str, dict[str, str], str]]:
    """`up` and the Slurm job of each GPU, constant over the history."""
    where = {"cluster": CLUSTER, "instance": instance(node), "job": "gpuscope"}
    yield "up", where, "1"
    if place.job is None:
        return
    for series in template.values():
        if series.name == c.GPU_INFO.name:
            labels = dict(series.labels)
            yield c.GPU_JOB_INFO.name, {**where, "gpu": labels["gpu"], "job_id": place.job.id,
                                        "uuid": _uuid(node, labels["uuid"])}, "1"


def _receiver() -> Iterator[tuple[str, dict[str, str], str]]:
    """The remediation receiver's scrape: `up` and its decisions, all at 0 (it refused nothing)."""
    where = {"cluster": CLUSTER, "instance": "remediate-0", "job": "gpuscope-remediate"}
    yield "up", where, "1"
    for action, outcome, reason in OUTCOMES:
        yield c.REMEDIATION_DECISIONS.name + "_total", {**where, "action": action, "outcome": outcome,
                                                        "reason": reason}, "0"
