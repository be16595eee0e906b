"""NCCL RAS for a simulated node: the client port of NCCL's `src/ras/client_support.cc`, answering
STATUS with the job-wide view every node of the simulated job agrees on.

The view is a pure function of the job (its nodes' addresses in rank order, when it started), the
job's faults (each stamped with the wall time it was injected) and the time, so every node's server
tells the same story and whichever a client reaches answers for the whole job, as RAS does. Ranks:
one process per GPU, rank = node position x GPUs + GPU, the NVML index the GPU's; communicators as
the simulated Inspector's: World and DP Group 0 (every rank), TP Group <node> (a node's GPUs), PP
Group <gpu> (one GPU position on every node). Healthy collectives outpace the query: ranks of the
large communicators differ by one operation from one query to the next, while their progress moves.

Faults (scenario kinds, aimed with `node` and `gpu`): `nccl_hang` (one rank never launches the next
collective; the others launch it and wait), `nccl_hang_launched` (every rank launched it and the
kernel hangs: frozen counts, no mismatch), `nccl_process_dead` (a rank's process dies: unresponsive
after 5 s, considered dead after 60 s, both times scaled by the job's `ras_timeout_factor` as
NCCL_RAS_TIMEOUT_FACTOR does), `ras_slow` (the report takes `seconds` to come), `ras_off` (the job
runs without RAS: the node stops its server, nothing listens).

Formats: JSON on a server of 2.28.7 or later (`SET FORMAT json`), written line by line as
jsonWriteHeader/jsonStartCommunicator/jsonWriteRankData/jsonWriteMissingRank/jsonWriteFooter print
it; the text report before, with the MISMATCH, INCOMPLETE and DEAD lines rasClientRunComms prints.
"""

from __future__ import annotations

import hashlib
import logging
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.faults import HANG_KINDS

log = logging.getLogger("gpuscope.sim.ras")

KINDS = ("Broadcast", "Reduce", "AllGather", "ReduceScatter", "AllReduce")  # ncclFunc_t order
# Collectives each communicator launches per second, and the kind its counts go to.
COMMUNICATORS = (("World", 12.0, "AllReduce"), ("DP Group 0", 8.0, "ReduceScatter"),
                 ("TP Group {node}", 40.0, "AllGather"), ("PP Group {gpu}", 6.0, "AllReduce"))
JITTERED = ("World", "DP Group 0")  # large communicators: a rank or two a launch behind at any query
INIT_SECONDS = 2.0  # counts at 0, init in progress, this long after the job starts
UNRESPONSIVE_SECONDS, DEAD_SECONDS = 5.0, 60.0  # NCCL's RAS timeouts
IN_PROGRESS = 7  # ncclInProgress: the init_state while a communicator initializes
JSON_SINCE = (2, 28, 7)


@dataclass
class SimRank:
    rank: int
    host: str
    pid: int
    gpu: int
    counts: dict[str, int]
    init_state: int = 0
    missing: str = ""  # "", "unresponsive", "dead"


@dataclass
class SimComm:
    hash: int
    size: int
    ranks: list[SimRank] = field(default_factory=list)

    @property
    def present(self) -> list[SimRank]:
        return [rank for rank in self.ranks if not rank.missing]


@dataclass(frozen=True)
class Job:
    """The simulated job as each node's job.yaml gives it."""

    id: str
    hosts: tuple[str, ...]  # every node's RAS address host, in rank order
    gpus: int
    started: float  # wall time
    version: str = "2.29.2"
    timeout_factor: float = 1.0


def job_view(job: Job, faults: list[dict[str, Any]], now: float) -> list[SimComm]:
    """Every communicator of the job as RAS would gather it at wall time `now`."""
    hang = next((f for f in faults if f["kind"] in HANG_KINDS), None)
    at = min(now, hang["since"]) if hang else now
    launched = max(0.0, at - job.started - INIT_SECONDS)
    culprit = (hang.get("node"), hang.get("gpu")) if hang and hang["kind"] != "nccl_hang_launched" else None
    comms = []
    for name, rate, kind in COMMUNICATORS:
        for members in _members(name, job):
            comm = SimComm(_hash(job.id, name.format(node=members[0][0], gpu=members[0][1])), len(members))
            for rank, (node, gpu) in enumerate(members):
                count = int(launched * rate)
                if (node, gpu) == culprit:
                    count -= 1  # it never launched the operation the others wait in
                elif not hang and name in JITTERED and count and rank == int(now * 10) % len(members):
                    count -= 1  # healthy: the query raced a rank's launch
                counts = dict.fromkeys(KINDS, 0)
                counts[kind] = count
                comm.ranks.append(SimRank(rank, job.hosts[node], 10_000 + 100 * node + gpu, gpu, counts,
                                          IN_PROGRESS if now - job.started < INIT_SECONDS else 0))
            comms.append(comm)
    if hang and hang["kind"] == "nccl_process_dead":
        _kill(comms, job, hang, now)
    return comms


def _members(name: str, job: Job) -> list[list[tuple[int, int]]]:
    """The (node, gpu) of each rank of each communicator of that name."""
    nodes, gpus = range(len(job.hosts)), range(job.gpus)
    if "{node}" in name:
        return [[(node, gpu) for gpu in gpus] for node in nodes]
    if "{gpu}" in name:
        return [[(node, gpu) for node in nodes] for gpu in gpus]
    return [[(node, gpu) for node in nodes for gpu in gpus]]


def _kill(comms: list[SimComm], job: Job, fault: dict[str, Any], now: float) -> None:
    """The dead rank's process: listed, a launch behind, until RAS finds it unresponsive, then dead."""
    since = now - fault["since"]
    if since < UNRESPONSIVE_SECONDS * job.timeout_factor:
        return
    state = "dead" if since >= DEAD_SECONDS * job.timeout_factor else "unresponsive"
    for comm in comms:
        for rank in comm.ranks:
            if rank.host == job.hosts[fault["node"]] and rank.gpu == fault["gpu"]:
                rank.missing = state


def _hash(job_id: str, name: str) -> int:
    return int(hashlib.sha1(f"{job_id}/{name}".encode()).hexdigest()[:16], 16)


def format_json(job: Job, comms: list[SimComm], timestamp: str, collection: float) -> str:
    """The report as NCCL's json* functions print it, line for line."""
    out = ["{\n", f'  "nccl_version": "{job.version}",\n', '  "cuda_runtime_version": 12090,\n',
           '  "cuda_driver_version": 12090,\n', f'  "timestamp": "{timestamp}",\n',
           f'  "communicators_count": {len(comms)},\n', '  "communicators": [\n']
    for index, comm in enumerate(comms):
        missing = [rank for rank in comm.ranks if rank.missing]
        if index:
            out.append(",\n")
        out += ["    {\n", f'      "hash": "0x{comm.hash:x}",\n', '      "secondary_hash": "0x1a2b3c:0x4d5e6f",\n',
                f'      "size": {comm.size},\n', f'      "ranks_count": {len(comm.present)},\n',
                f'      "missing_ranks_count": {len(missing)},\n', '      "ranks": [\n']
        for number, rank in enumerate(comm.present):
            counts = ",\n".join(f'            "{kind}": {rank.counts[kind]}' for kind in KINDS)
            out += [",\n" if number else "", "        {\n", *_rank_head(rank), '          "status": {\n',
                    f'            "init_state": {rank.init_state},\n', '            "async_error": 0,\n',
                    '            "finalize_called": false,\n', '            "destroy_flag": false,\n',
                    '            "abort_flag": false\n', "          },\n", '          "collective_counts": {\n',
                    counts + "\n", "          }\n", "        }"]
        out += ["\n      ],\n", '      "missing_ranks": [\n']
        for number, rank in enumerate(missing):
            out += [",\n" if number else "", "        {\n", *_rank_head(rank), '          "status": {\n',
                    f'            "unresponsive": {"true" if rank.missing else "false"},\n',
                    f'            "considered_dead": {"true" if rank.missing == "dead" else "false"}\n',
                    "          }\n", "        }"]
        out += ["\n      ]\n", "    }"]
    out += ["\n  ],\n", '  "ras": {\n', f'    "collection_time_sec": {collection:.3f},\n', '    "timeouts_count": 0\n',
            "  }\n", "}\n"]
    return "".join(out)


def _rank_head(rank: SimRank) -> list[str]:
    return [f'          "rank": {rank.rank},\n', f'          "host": "{rank.host}",\n',
            f'          "pid": {rank.pid},\n', f'          "cuda_dev": {rank.gpu},\n',
            f'          "nvml_dev": {rank.gpu},\n']


def format_text(job: Job, comms: list[SimComm], collection: float) -> str:
    """The text report's lines that name problems, as rasClientRunComms prints them (the summary
    table abridged to its header): a communicator's MISMATCH of one kind's counts, its INCOMPLETE
    ranks, and the job's DEAD processes."""
    out = [f"NCCL version {job.version} compiled with CUDA 12.9\n",
           "CUDA runtime version 12090, driver version 12090\n\n",
           "Job summary\n===========\n\n", f"\nCommunicators... ({collection:.3f}s)\n=============\n\n",
           "\nErrors\n======\n\n"]
    dead = {(r.host, r.pid, r.gpu) for comm in comms for r in comm.ranks if r.missing == "dead"}
    if dead:
        out.append(f"DEAD\n  {len(dead)} job process{'es are' if len(dead) > 1 else ' is'} considered dead "
                   "(unreachable via the RAS network)\n")
        out += [f"  Process {pid} on node {host} managing GPU {gpu}\n" for host, pid, gpu in sorted(dead)]
        out.append("\n")
    for index, comm in enumerate(comms):
        lost = [rank for rank in comm.ranks if rank.missing]
        if lost:
            out.append(f"#0-{index} ({comm.hash:016x}) INCOMPLETE\n  Missing communicator data from {len(lost)} "
                       f"rank{'s' if len(lost) > 1 else ''}\n")
            out += [f"  Rank {r.rank} -- GPU {r.gpu} managed by process {r.pid} on node {r.host}\n" for r in lost]
            out.append("\n")
    out.append("Warnings\n========\n\n")
    for index, comm in enumerate(comms):
        out += _mismatch(index, comm)
    return "".join(out)


def _mismatch(index: int, comm: SimComm) -> list[str]:
    """A MISMATCH section for each collective kind whose counts differ across the present ranks."""
    lines: list[str] = []
    for kind in KINDS:
        groups: dict[int, list[SimRank]] = {}
        for rank in comm.present:
            groups.setdefault(rank.counts[kind], []).append(rank)
        if len(groups) < 2:
            continue
        if not lines:
            lines.append(f"#0-{index} ({comm.hash:016x}) MISMATCH\n")
        lines.append(f"  Communicator ranks have different {kind} operation counts\n")
        for count, ranks in sorted(groups.items(), key=lambda item: -len(item[1])):
            outlier = len(ranks) == 1 or (len(ranks) <= 10 and len(ranks) <= 0.25 * comm.size)
            if len(ranks) > 1:
                lines.append(f"  {len(ranks)} ranks have launched up to operation {count}\n")
            for rank in ranks if outlier else ():
                where = f"GPU {rank.gpu} managed by process {rank.pid} on node {rank.host}"
                lines.append(f"  Rank {rank.rank} -- {where}\n" if len(ranks) > 1 else
                             f"  Rank {rank.rank} has launched up to operation {count} -- {where}\n")
    return lines + (["\n"] if lines else [])


def json_supported(version: str) -> bool:
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3])
    return parts >= JSON_SINCE


class _ReusingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restarted node binds its address again at once, as NCCL's SO_REUSEADDR does


class RasServer:
    """The node's RAS client port: NCCL's line protocol, STATUS answered from `view()`."""

    def __init__(self, host: str, port: int, view: Callable[[], tuple[Job, list[dict[str, Any]]] | None]) -> None:
        self._view = view
        server = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self) -> None:
                server._serve(self.rfile, self.wfile)

        self._server = _ReusingServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-ras", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, rfile, wfile) -> None:
        as_json = False
        for raw in rfile:
            command = raw.decode("utf-8", "replace").strip()
            upper = command.upper()
            if upper.startswith("CLIENT PROTOCOL "):
                wfile.write(b"SERVER PROTOCOL 2\n")
            elif upper.startswith("TIMEOUT "):
                wfile.write(b"OK\n")
            elif upper.startswith("SET FORMAT "):
                current = self._view()
                wanted = command[len("SET FORMAT "):].strip().lower()
                if wanted == "text" or (wanted == "json" and current and json_supported(current[0].version)):
                    as_json = wanted == "json"
                    wfile.write(b"OK\n")
                else:
                    wfile.write(f"ERROR: Invalid format {wanted}\n".encode())
            elif upper in ("STATUS", "VERBOSE STATUS"):
                wfile.write(self._report(as_json).encode())
                return  # the server closes the connection after a report
            else:
                wfile.write(f"ERROR: Unknown command {command}\n".encode())
            wfile.flush()

    def _report(self, as_json: bool) -> str:
        started = time.monotonic()
        current = self._view()
        if current is None:
            return ""
        job, faults = current
        slow = next((f for f in faults if f["kind"] == "ras_slow"), None)
        if slow:
            time.sleep(float(slow.get("seconds", 10)))
        comms = job_view(job, faults, time.time())
        collection = time.monotonic() - started
        if as_json:
            return format_json(job, comms, time.strftime("%Y-%m-%d %H:%M:%S"), collection)
        return format_text(job, comms, collection)
