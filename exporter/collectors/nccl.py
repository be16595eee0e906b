"""NCCL's own per-rank collective timing, from NCCL Inspector's Prometheus-mode files.

Inspector (NVIDIA/nccl `plugins/profiler/inspector/`, `NCCL_INSPECTOR_PROM_DUMP=1`) writes one file
per GPU into its dump directory, `nccl_inspector_metrics_<uuid>.prom`, the CUDA UUID being NVML's
UUID without `GPU-`. Every interval (30 s or more) it rewrites the file in place: it truncates it,
then appends two lines per bucket with `fwrite` and `fflush`. So a reader can meet an empty or a
half-written file; a file is taken only when it ends with a newline and has not changed for a
second, else that file's last complete snapshot is served. Inspector rewrites a file only when
collectives completed since its last dump: a file not rewritten for three intervals belongs to a job
that ended (Inspector leaves the last one behind) or one that hangs. Its series go, but its age
stays, labelled with the job that wrote it: the rules read a hung job's files going stale.

Lines carry no HELP or TYPE and their labels come in a fixed order: version, slurm_job_id, node,
gpu (a CUDA ordinal inside the job's process, not the NVML index), comm_name (written unescaped, so
it may hold a quote), n_nodes, nranks, then collective or p2p_operation, message_size and (for
collectives) algo_proto. The parser anchors on that order instead of trusting the quoting.

By default each collective is one series per rank and communicator (message-size buckets
aggregated: bus bandwidth as a geometric mean, as Inspector itself averages it, exec time as an
arithmetic mean; every rank of a communicator runs the same collectives, so ranks stay comparable),
marked `message_size="all"`; `--collector.nccl.message-sizes` adds one series per bucket.

NCCL RAS (`--collector.nccl.ras-address`) is asked in a background thread (nccl_ras.RasPoller, its
own cadence and deadline, never in the scrape path); the scrape serves what the last query left:
every node whether its queries work, the node leading a job's queries the job-wide view.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter import catalog
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.collectors.nccl_ras import Cadence, RasPoller, RasView, interface_addresses
from exporter.files import list_dir, read_bytes
from exporter.options import Option, parse_names
from toolkit.configfile import parse_bool, parse_count
from toolkit.durations import positive_seconds

FILE_NAME = re.compile(r"^nccl_inspector_metrics_([0-9a-fA-F-]{36})\.prom$")
LINE = re.compile(
    r'^(?P<name>nccl_[a-z0-9_]+)\{version="[^"]*",slurm_job_id="(?P<job>[^"]*)",node="[^"]*",gpu="[^"]*"'
    r'(?:,comm_name="(?P<comm>.*)",n_nodes="\d+",nranks="(?P<nranks>\d+)",'
    r'(?:collective="(?P<collective>[^"]*)"|p2p_operation="(?P<p2p>[^"]*)"),message_size="(?P<size>[^"]*)"'
    r'(?:,algo_proto="[^"]*")?)?\} (?P<value>\S+)$')
# Inspector's names -> (gpuscope metric, factor to base units); bandwidths and times per bucket.
BUCKET_METRICS = {
    "nccl_bus_bandwidth_gbs": (catalog.NCCL_BUS_BANDWIDTH, 1e9),
    "nccl_collective_exec_time_microseconds": (catalog.NCCL_EXEC_TIME, 1e-6),
    "nccl_p2p_bus_bandwidth_gbs": (catalog.NCCL_P2P_BUS_BANDWIDTH, 1e9),
    "nccl_p2p_exec_time_microseconds": (catalog.NCCL_P2P_EXEC_TIME, 1e-6),
}
DEVICE_METRICS = {
    "nccl_collectives_total": (catalog.NCCL_OPERATIONS, "collective"),
    "nccl_p2p_total": (catalog.NCCL_OPERATIONS, "p2p"),
    "nccl_collectives_dropped_total": (catalog.NCCL_OPERATIONS_DROPPED, "collective"),
    "nccl_p2p_dropped_total": (catalog.NCCL_OPERATIONS_DROPPED, "p2p"),
}
BANDWIDTHS = {catalog.NCCL_BUS_BANDWIDTH.name, catalog.NCCL_P2P_BUS_BANDWIDTH.name}
STALE_INTERVALS = 3
# A dump thread (or a simulator sped up for a test) starved of CPU writes late: this much later than
# three intervals a file is still fresh, so a busy host does not blink a rank's series out and reset
# an alert's pending time.
DUMP_SLACK_SECONDS = 5.0
# A file is read once it has been still this long (Inspector rewrites it in place), or a third of the
# dump interval where dumps come faster than every 3 s (a simulator sped up for a test).
SETTLE_SECONDS = 1.0
# The leader's job-wide view within the series budget: the largest communicators (those with a rank behind,
# missing or in error first) and the ranks named; the rest counted in gpuscope_nccl_dropped_total{what="ras"}.
RAS_MAX_COMMUNICATORS = 6
RAS_MAX_RANKS = 64


@dataclass(frozen=True)
class Line:
    """One understood line: Inspector's metric name, its job, and for buckets the communicator."""

    name: str
    job: str
    value: float
    comm: str = ""
    nranks: str = ""
    operation: str = ""
    size: str = ""


def parse(text: str) -> tuple[list[Line], int]:
    """The lines of an Inspector file that are understood, and how many were not."""
    lines, malformed = [], 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        match = LINE.match(raw)
        known = match and (match["name"] in BUCKET_METRICS if match["comm"] is not None
                           else match["name"] in DEVICE_METRICS)
        value = _number(match["value"]) if known else None
        if value is None:
            malformed += 1
            continue
        lines.append(Line(match["name"], match["job"], value, match["comm"] or "", match["nranks"] or "",
                          match["collective"] or match["p2p"] or "", match["size"] or ""))
    return lines, malformed


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def complete(data: bytes) -> bool:
    """A whole dump: something written and the last line finished (Inspector truncates, then appends)."""
    return bool(data) and data.endswith(b"\n")


@dataclass(frozen=True)
class NcclOptions:
    directory: str = ""  # Inspector's NCCL_INSPECTOR_DUMP_DIR; empty: the collector is off
    interval: float = 30.0  # Inspector's dump interval (NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS)
    max_files: int = 32
    max_series: int = 400
    message_sizes: bool = False
    ras_address: str = ""  # host:port of the node's NCCL RAS server; empty: RAS is not asked
    ras_hosts: tuple[str, ...] = ()  # this node's addresses as RAS names hosts; empty: its interfaces'
    ras_cadence: Cadence = field(default_factory=Cadence)


# One aggregated series of a file: its metric, the labels that follow `job_id` in the catalog's order,
# and its value (a file is one job's: the job is the snapshot's).
Series = tuple[catalog.Metric, tuple[str, ...], float]


@dataclass(frozen=True)
class _Snapshot:
    mtime: float
    series: list[Series]
    job: str  # the job that wrote it: the file's, else the GPU's when the file was read fresh ("" unknown)


def aggregate(lines: list[Line], message_sizes: bool) -> list[Series]:
    """A file's series, its buckets aggregated once when the file is read, not at every scrape."""
    buckets: dict[tuple[catalog.Metric, tuple[str, ...]], list[float]] = defaultdict(list)
    for line in lines:
        if line.name in DEVICE_METRICS:
            metric, kind = DEVICE_METRICS[line.name]
            buckets[metric, (kind,)].append(line.value)
            continue
        metric, factor = BUCKET_METRICS[line.name]
        labels = (line.comm, line.nranks, line.operation)
        buckets[metric, (*labels, "all")].append(line.value * factor)
        if message_sizes:
            buckets[metric, (*labels, line.size)].append(line.value * factor)
    return [(metric, labels, _mean(metric, values)) for (metric, labels), values in buckets.items()]


# uuid ("GPU-…", lower case) -> ((gpu, uuid) labels of the GPU collector, the GPU's jobs from attribution)
Identities = Callable[[], dict[str, tuple[tuple[str, str], tuple[str, ...]]]]


class NcclCollector:
    """Serves the last complete snapshot of every fresh Inspector file under gpuscope's names."""

    name = "nccl"

    def __init__(self, options: NcclOptions, clock: Callable[[], float] = time.time) -> None:
        self._options = options
        self._clock = clock
        self._snapshots: dict[str, _Snapshot] = {}
        self._malformed = 0
        self._dropped = {"files": 0, "series": 0, "ras": 0}
        self._identities: Identities = dict
        self._jobs: frozenset[str] = frozenset()
        self._ras: RasPoller | None = None
        if options.ras_address:
            hosts = frozenset(options.ras_hosts) or interface_addresses()
            self._ras = RasPoller(options.ras_address, hosts, options.ras_cadence)
            self._ras.start()

    def close(self) -> None:
        if self._ras:
            self._ras.stop()

    def identify_with(self, identities: Identities) -> None:
        """Where the NVML index and the job of a GPU come from (the GPU collector, when it runs)."""
        self._identities = identities

    def collect(self) -> Iterable[Family]:
        now = self._clock()
        identities = self._identities()
        snapshots = self._read_files(now, identities)
        scrape = Scrape()
        budget = self._options.max_series
        for uuid, snapshot in sorted(snapshots.items()):
            gpu, uuid_label = identities.get(uuid.lower(), (("", uuid), ()))[0]
            age = max(0.0, now - snapshot.mtime)
            scrape.add(catalog.NCCL_SNAPSHOT_AGE, age, gpu, uuid_label, snapshot.job)
            if self._fresh(age):
                budget = self._add_series(scrape, snapshot, gpu, uuid_label, budget)
        if self._ras:
            self._add_ras(scrape, self._ras.view(), identities, now)
        scrape.add(catalog.NCCL_MALFORMED_LINES, self._malformed)
        for what, count in self._dropped.items():
            scrape.add(catalog.NCCL_DROPPED, count, what)
        return scrape.families.values()

    def _add_ras(self, scrape: Scrape, view: RasView, identities: dict, now: float) -> None:
        """How this node's RAS queries go and, where it leads a job and its report is fresh, the job's
        view. A new job on the node's GPUs asks at once instead of at the hourly member cadence."""
        assert self._ras is not None
        jobs = {gpu: jobs for (gpu, _), jobs in identities.values()}
        all_jobs = frozenset(job for gpu_jobs in jobs.values() for job in gpu_jobs)
        if all_jobs - self._jobs:
            self._ras.poke()
        self._jobs = all_jobs
        scrape.add(catalog.NCCL_RAS_UP, 1.0 if view.report else 0.0)
        scrape.add(catalog.NCCL_RAS_QUERY_DURATION, view.duration)
        scrape.add(catalog.NCCL_RAS_QUERIES, view.queries)
        scrape.add(catalog.NCCL_RAS_QUERY_FAILURES, view.refused, "refused")
        scrape.add(catalog.NCCL_RAS_QUERY_FAILURES, view.errors, "error")
        scrape.add(catalog.NCCL_RAS_LEADER, 1.0 if view.role == "leader" else 0.0)
        for host in sorted(self._ras.hosts):
            scrape.add(catalog.NCCL_RAS_HOST, 1.0, host)
        cadence = self._ras.cadence
        fresh = now - view.at <= STALE_INTERVALS * cadence.leader + cadence.deadline  # a slow report is still news
        if view.report and view.role == "leader" and fresh:
            self._add_job_view(scrape, view, jobs)

    def _add_job_view(self, scrape: Scrape, view: RasView, jobs: dict[str, tuple[str, ...]]) -> None:
        """Each communicator's progress and stall, and the ranks behind, missing or in error, within caps."""
        assert view.report is not None and self._ras is not None
        hosts = self._ras.hosts
        report = view.report
        behind = {c.hash: report.behind(c) for c in report.communicators}
        troubled = [c for c in report.communicators if behind[c.hash] or c.missing
                    or any(rank.async_error for rank in c.ranks)]
        ordered = troubled + sorted((c for c in report.communicators if c not in troubled),
                                    key=lambda c: (-c.size, c.hash))
        # A report is one job's: the job of any of this node's GPUs holding one of its ranks.
        job = next((j for comm in report.communicators for rank in comm.ranks if rank.host in hosts
                    for j in jobs.get(str(rank.nvml_dev), ())), "")
        ranks_left = RAS_MAX_RANKS
        for comm in ordered[:RAS_MAX_COMMUNICATORS]:
            labels = (job, comm.hash, str(comm.size))
            if comm.hash:
                scrape.add(catalog.NCCL_RAS_PROGRESS, comm.progress, *labels)
                scrape.add(catalog.NCCL_RAS_STALLED, view.stalled.get(comm.hash, 0.0), *labels)
                scrape.add(catalog.NCCL_RAS_LATE, len(behind[comm.hash]) + len(comm.missing), *labels)
            # A rank behind a communicator that moves is a query racing a launch: named only once the
            # progress stood still across two reports (no series churn from healthy jobs).
            stood_still = view.stalled.get(comm.hash, 0.0) > 0
            named = [(catalog.NCCL_RAS_BEHIND, rank, float(late), ()) for rank, late in behind[comm.hash]
                     if stood_still]
            named += [(catalog.NCCL_RAS_MISSING, rank, 1.0, (rank.missing,)) for rank in comm.missing]
            named += [(catalog.NCCL_RAS_ASYNC_ERROR, rank, float(rank.async_error), ())
                      for rank in comm.ranks if rank.async_error]
            for metric, rank, value, extra in named[:ranks_left]:
                scrape.add(metric, value, job, comm.hash, str(rank.rank), rank.host, str(rank.nvml_dev), *extra)
            self._dropped["ras"] += max(0, len(named) - ranks_left)
            ranks_left = max(0, ranks_left - len(named))
        self._dropped["ras"] += max(0, len(ordered) - RAS_MAX_COMMUNICATORS)

    def _read_files(self, now: float, identities: dict) -> dict[str, _Snapshot]:
        """{uuid: snapshot} of the Inspector files in the directory, at most max_files of them."""
        directory = self._options.directory
        names = sorted(name for name in list_dir(directory) if FILE_NAME.match(name))
        self._dropped["files"] += max(0, len(names) - self._options.max_files)
        found: dict[str, _Snapshot] = {}
        for name in names[:self._options.max_files]:
            uuid = "GPU-" + FILE_NAME.match(name)[1].lower()
            snapshot = self._refresh(os.path.join(directory, name), uuid, now, identities)
            if snapshot:
                found[uuid] = snapshot
        self._snapshots = found
        return found

    def _refresh(self, path: str, uuid: str, now: float, identities: dict) -> _Snapshot | None:
        """The file's snapshot: re-read when it changed and settled, kept when it is being rewritten."""
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        previous = self._snapshots.get(uuid)
        if previous and previous.mtime == mtime:
            return previous
        if now - mtime < min(SETTLE_SECONDS, self._options.interval / 3):
            return previous
        try:
            data = read_bytes(path)
        except OSError:
            data = b""
        if not complete(data):
            return previous
        lines, malformed = parse(data.decode("utf-8", "replace"))
        self._malformed += malformed
        return _Snapshot(mtime, aggregate(lines, self._options.message_sizes),
                         self._writer(lines, uuid, now - mtime, identities))

    def _writer(self, lines: list[Line], uuid: str, age: float, identities: dict) -> str:
        """The job that wrote a file: the one it names (Slurm), else the GPU's if the file is fresh; a
        stale file of a job without Slurm stays unattributed (it may be a finished pod's)."""
        named = next((line.job for line in lines if line.job not in ("", "unknown")), "")
        if named or not self._fresh(age):
            return named
        jobs = identities.get(uuid.lower(), ((), ()))[1]
        return jobs[0] if jobs else ""

    def _fresh(self, age: float) -> bool:
        """A file Inspector rewrote within three dump intervals (and the slack for a late dump): its job
        is still completing collectives."""
        return age <= STALE_INTERVALS * self._options.interval + DUMP_SLACK_SECONDS

    def _add_series(self, scrape: Scrape, snapshot: _Snapshot, gpu: str, uuid: str, budget: int) -> int:
        """Adds one file's series within the remaining series budget; returns what is left of it."""
        for metric, labels, value in snapshot.series:
            if budget <= 0:
                self._dropped["series"] += 1
                continue
            scrape.add(metric, value, gpu, uuid, snapshot.job, *labels)
            budget -= 1
        return budget


def _mean(metric: catalog.Metric, values: list[float]) -> float:
    """Bandwidths average geometrically over buckets (as Inspector does within one), the rest arithmetically."""
    if metric.name not in BANDWIDTHS:
        return sum(values) / len(values)
    positive = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else 0.0


def parse_ras_address(value: Any) -> str:
    """The NCCL RAS server to ask, `host:port` (NCCL_RAS_ADDR's form), or empty for none."""
    text = str(value or "").strip()
    host, _, port = text.rpartition(":")
    if text and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"invalid RAS address {value!r} (expected host:port, e.g. 127.0.0.1:28028)")
    return text


OPTIONS = (
    Option("collector.nccl.inspector-dir", "", str,
           "NCCL Inspector's Prometheus dump directory (NCCL_INSPECTOR_DUMP_DIR); the nccl collector runs only "
           "when this names one"),
    Option("collector.nccl.interval", "30s", positive_seconds,
           "Inspector's dump interval (NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS); a file not rewritten "
           "for 3 intervals belongs to an ended job and its series go"),
    Option("collector.nccl.max-files", "32", parse_count, "most Inspector files read per scrape; the rest are "
           "counted in gpuscope_nccl_dropped_total{what=\"files\"}"),
    Option("collector.nccl.max-series", "400", parse_count, "most NCCL series per scrape; the rest are counted in "
           "gpuscope_nccl_dropped_total{what=\"series\"}"),
    Option("collector.nccl.ras-address", "127.0.0.1:28028", parse_ras_address,
           "the node's NCCL RAS server (NCCL >= 2.24, NCCL_RAS_ADDR), asked in the background which rank a job waits "
           "for; empty: not asked"),
    Option("collector.nccl.ras-hosts", "", lambda v: parse_names(v) if str(v).strip() else (),
           "this node's addresses as RAS names hosts (comma-separated); empty: its interfaces' IPv4 addresses"),
    Option("collector.nccl.ras-interval", "10s", positive_seconds,
           "how often the node leading a job asks RAS (the others ask at start, on a new job and hourly)"),
    Option("collector.nccl.message-sizes", False, parse_bool,
           "also export each message-size bucket (message_size label), not only their aggregate", is_flag=True),
)


def _settings(values: dict[str, Any]) -> NcclOptions:
    return NcclOptions(directory=values["collector.nccl.inspector-dir"], interval=values["collector.nccl.interval"],
                       max_files=values["collector.nccl.max-files"], max_series=values["collector.nccl.max-series"],
                       message_sizes=values["collector.nccl.message-sizes"],
                       ras_address=values["collector.nccl.ras-address"], ras_hosts=values["collector.nccl.ras-hosts"],
                       ras_cadence=Cadence(leader=values["collector.nccl.ras-interval"]))


register(Registration(
    "nccl", "NCCL Inspector's per-rank collective bandwidth and time, joined to the NVML GPU and its job (when "
            "--collector.nccl.inspector-dir names a directory), and NCCL RAS's job-wide view: each communicator's "
            "progress, the ranks behind, missing or dead (--collector.nccl.ras-address)",
    lambda roots, options: NcclCollector(options), OPTIONS, _settings,
    wanted=lambda values: bool(values["collector.nccl.inspector-dir"] or values["collector.nccl.ras-address"])))
