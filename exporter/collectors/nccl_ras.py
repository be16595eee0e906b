"""NCCL RAS: asking a running job which rank it waits for (NCCL >= 2.24), for the nccl collector.

Every NCCL process runs a RAS thread; the processes of a node share its client port (default
`localhost:28028`, `NCCL_RAS_ADDR`) and whichever answers gathers a job-wide report from every
process. The client speaks NCCL's `src/ras/client_support.cc` line protocol: `CLIENT PROTOCOL <n>`
-> `SERVER PROTOCOL <n>`; `TIMEOUT <s>` -> `OK` (the per-leg collection timeout); `SET FORMAT json`
-> `OK` on 2.28.7+, `ERROR: Invalid format json` before; `STATUS` -> the report, then the server
closes the connection. The JSON report lists every rank of every communicator with its launched
collective counts and every missing rank (unresponsive, considered dead); the text report of
2.24-2.28.6 prints only the outliers ("26 ranks have launched up to operation 6650", "Rank 7 has
launched up to operation 60 -- GPU 3 managed by process 1650386 on node node1", "Process 3487984
on node 172.16.64.213 managing GPU 5"), which is all the rules need: each communicator's progress
and who is behind or missing.

Parsing is pure (text in, a Report out), tested byte for byte on reports written from NCCL's
source and documentation (tests/fixtures/nccl_ras/); `query` is the only function that touches a
socket, always within one deadline.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

PROTOCOL = 2  # NCCL_RAS_CLIENT_PROTOCOL; the server answers with its own and ignores ours
MAX_REPORT_BYTES = 16 << 20  # a 2,048-node job's JSON report is a few MB


log = logging.getLogger("gpuscope.nccl.ras")


class RasError(Exception):
    """A query that gave no report: nothing listening, a timeout, a closed or garbled answer."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Rank:
    """One rank of a communicator as the report shows it."""

    rank: int
    host: str  # the node's IP address as RAS sees it
    pid: int
    nvml_dev: int  # the GPU's NVML index on that host (-1 unknown)
    launched: int  # collective operations launched (every kind summed); -1 where the report does not say
    async_error: int = 0  # ncclResult_t, 0 = none
    missing: str = ""  # "", "missing", "unresponsive" or "dead"


@dataclass(frozen=True)
class Communicator:
    hash: str
    size: int
    progress: int  # the highest launched count any rank reported
    ranks: tuple[Rank, ...]  # every rank (JSON) or the outliers only (text)
    missing: tuple[Rank, ...] = ()


@dataclass(frozen=True)
class Report:
    version: str
    format: str  # "json" or "text"
    communicators: tuple[Communicator, ...] = field(default_factory=tuple)
    collection_seconds: float = 0.0
    timeouts: int = 0

    def behind(self, comm: Communicator) -> list[tuple[Rank, int]]:
        """Ranks that launched fewer operations than the communicator's progress, and by how many."""
        return [(rank, comm.progress - rank.launched) for rank in comm.ranks
                if 0 <= rank.launched < comm.progress]


def parse_json(text: str) -> Report:
    """A `SET FORMAT json` STATUS report (NCCL 2.28.7+). Fields newer NCCL adds are ignored; a
    document that is not one raises RasError."""
    try:
        data = json.loads(text)
        comms = tuple(_json_communicator(comm) for comm in data.get("communicators") or ())
        ras = data.get("ras") or {}
        return Report(str(data.get("nccl_version", "")), "json", comms,
                      float(ras.get("collection_time_sec", 0.0)), int(ras.get("timeouts_count", 0)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RasError(f"malformed JSON report: {exc}") from None


def _json_communicator(comm: dict) -> Communicator:
    ranks = tuple(Rank(int(r["rank"]), str(r.get("host", "")), int(r.get("pid", -1)), int(r.get("nvml_dev", -1)),
                       sum(int(v) for v in (r.get("collective_counts") or {}).values()),
                       int((r.get("status") or {}).get("async_error", 0)))
                  for r in comm.get("ranks") or ())
    missing = tuple(Rank(int(r["rank"]), str(r.get("host", "")), int(r.get("pid", -1)), int(r.get("nvml_dev", -1)),
                         -1, missing=_missing_state(r.get("status") or {}))
                    for r in comm.get("missing_ranks") or ())
    return Communicator(_hash(str(comm["hash"])), int(comm.get("size", len(ranks))),
                        max((r.launched for r in ranks), default=0), ranks, missing)


def _missing_state(status: dict) -> str:
    if status.get("considered_dead"):
        return "dead"
    return "unresponsive" if status.get("unresponsive") else "missing"


_VERSION = re.compile(r"^NCCL version (\S+)")
_COMM = re.compile(r"^#\d+-\d+ \((?P<hash>[0-9a-fA-F]+)\) (?P<what>[A-Z,]+)")
_DIFFERENT = re.compile(r"^\s*Communicator ranks have different (?P<what>.+)$")
_GROUP_COUNT = re.compile(r"^\s*(?P<count>\d+) ranks have (?:launched up to operation (?P<ops>\d+)|"
                          r"not launched any operations)")
_GPU = r"GPU (?P<cuda>\d+)(?: \(NVML (?P<nvml>\d+)\))? managed by process (?P<pid>\d+) on node (?P<host>\S+)"
_RANK_IN_GROUP = re.compile(rf"^\s*Rank (?P<rank>\d+) -- {_GPU}")
_RANK_ALONE = re.compile(rf"^\s*Rank (?P<rank>\d+) has (?:launched up to operation (?P<ops>\d+)|"
                         rf"not launched any operations) -- {_GPU}")
_PROCESS = re.compile(r"^\s*Process (?P<pid>\d+) on node (?P<host>\S+) managing GPUs? (?P<gpus>[\d,]+)"
                      r"(?: \(NVML (?P<nvml>[\d,]+)\))?")
_JOB_SECTIONS = {"INCOMPLETE": "unresponsive", "DEAD": "dead"}  # top-level sections naming processes


class _TextComm:
    """What the text report says of one communicator, gathered across its sections."""

    def __init__(self) -> None:
        self.progress = 0
        self.ranks: dict[int, Rank] = {}
        self.missing: dict[int, Rank] = {}


def parse_text(text: str) -> Report:
    """A text STATUS report (every NCCL since 2.24; the only one before 2.28.7). It details only
    what is wrong: a communicator's MISMATCH section gives, per collective kind whose counts differ,
    the groups of ranks at each count and the outliers by name; its INCOMPLETE section the ranks
    that did not answer; the job's INCOMPLETE and DEAD sections the processes (these name no
    communicator: reported under the hash "" with rank -1). A communicator whose ranks agree is not
    printed at all, so its progress is unknown here (0)."""
    match = _VERSION.match(text)
    if not match:
        raise RasError("not a RAS report: no 'NCCL version' line")
    comms: dict[str, _TextComm] = {}
    job_missing: list[Rank] = []
    comm: _TextComm | None = None
    section = ""  # within a communicator: MISMATCH "ops" / "status", or INCOMPLETE; at top level a job section
    group_ops: int | None = None
    for line in text.splitlines():
        if found := _COMM.match(line):
            comm = comms.setdefault(_hash(found["hash"]), _TextComm())
            section, group_ops = ("incomplete" if found["what"] == "INCOMPLETE" else ""), None
        elif line.strip() in _JOB_SECTIONS and not line.startswith(" "):
            comm, section = None, _JOB_SECTIONS[line.strip()]
        elif comm is None:
            if section and (found := _PROCESS.match(line)):
                devices = (found["nvml"] or found["gpus"]).split(",")
                job_missing += [Rank(-1, found["host"], int(found["pid"]), int(d), -1, missing=section)
                                for d in devices]
        elif found := _DIFFERENT.match(line):
            section = "ops" if found["what"].endswith("operation counts") else "status"
            group_ops = None
        elif section == "ops" and (found := _GROUP_COUNT.match(line)):
            group_ops = int(found["ops"] or 0)
            comm.progress = max(comm.progress, group_ops)
        elif section == "ops" and (found := _RANK_ALONE.match(line)):
            ops = int(found["ops"] or 0)
            comm.progress = max(comm.progress, ops)
            _keep_lowest(comm.ranks, _text_rank(found, ops))
        elif section == "ops" and group_ops is not None and (found := _RANK_IN_GROUP.match(line)):
            _keep_lowest(comm.ranks, _text_rank(found, group_ops))
        elif section == "incomplete" and (found := _RANK_IN_GROUP.match(line)):
            rank = replace(_text_rank(found, -1), missing="unresponsive")
            comm.missing[rank.rank] = rank
    dead = {(rank.host, rank.pid) for rank in job_missing if rank.missing == "dead"}
    out = [Communicator(h, 0, c.progress, tuple(sorted(c.ranks.values(), key=lambda r: r.rank)),
                        tuple(sorted((replace(r, missing="dead") if (r.host, r.pid) in dead else r
                                      for r in c.missing.values()), key=lambda r: r.rank)))
           for h, c in comms.items()]
    if job_missing:
        out.append(Communicator("", 0, 0, (), tuple(job_missing)))
    return Report(match[1], "text", tuple(out))


def _hash(text: str) -> str:
    """A communicator hash as both formats can be joined on: 16 lower-case hex digits, no 0x."""
    return f"{int(text, 16):016x}"


def _keep_lowest(ranks: dict[int, Rank], rank: Rank) -> None:
    """A rank named under several collective kinds keeps the count furthest behind... of the kinds
    where it is named: the text report gives no totals, only per-kind counts."""
    if rank.rank not in ranks or rank.launched < ranks[rank.rank].launched:
        ranks[rank.rank] = rank


def _text_rank(found: re.Match[str], ops: int) -> Rank:
    nvml = found["nvml"] if found["nvml"] is not None else found["cuda"]
    return Rank(int(found["rank"]), found["host"], int(found["pid"]), int(nvml), ops)


def query(address: str, deadline_seconds: float, leg_timeout: float = 5.0) -> Report:
    """One STATUS query of the RAS server at `address` (host:port), all of it within the deadline:
    JSON where the server takes it, else the text report."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + deadline_seconds
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=deadline_seconds) as sock:
            reader = _Reader(sock, deadline)
            reader.send(f"CLIENT PROTOCOL {PROTOCOL}")
            greeting = reader.line()
            if not greeting.startswith("SERVER PROTOCOL "):
                raise RasError(f"not a RAS server: answered {greeting[:80]!r}")
            reader.send(f"TIMEOUT {leg_timeout:g}")
            if reader.line() != "OK":
                raise RasError("TIMEOUT refused")
            reader.send("SET FORMAT json")
            as_json = reader.line() == "OK"  # "ERROR: Invalid format json" before NCCL 2.28.7
            reader.send("STATUS")
            text = reader.rest()
    except ConnectionRefusedError:
        raise RasError(f"nothing listening at {address}", refused=True) from None
    except (OSError, ValueError) as exc:
        raise RasError(str(exc) or type(exc).__name__) from None
    return parse_json(text) if as_json else parse_text(text)


class _Reader:
    """Lines and the rest of a connection, every read bounded by one deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = b""

    def send(self, command: str) -> None:
        self._sock.settimeout(self._left())
        self._sock.sendall(command.encode() + b"\n")

    def line(self) -> str:
        while b"\n" not in self._buffer:
            self._fill(closed_ok=False)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    def rest(self) -> str:
        """Everything until the server closes the connection (it does after a report)."""
        while self._fill(closed_ok=True):
            pass
        return self._buffer.decode("utf-8", "replace")

    def _fill(self, closed_ok: bool) -> bool:
        self._sock.settimeout(self._left())
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise RasError("no complete answer within the deadline") from None
        if not data:
            if closed_ok:
                return False
            raise RasError("connection closed mid-answer")
        self._buffer += data
        if len(self._buffer) > MAX_REPORT_BYTES:
            raise RasError(f"report larger than {MAX_REPORT_BYTES} bytes")
        return True

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise RasError("no complete answer within the deadline")
        return left


@dataclass(frozen=True)
class Cadence:
    """How often a node asks. A report is job-wide and gathered from every process of the job, so
    one node asks often for the job (the leader), one stands by to take over (the backup, the next
    host in rank order), and the others ask once when a job appears on them and then hourly, to
    learn whether they lead. At 2,048 nodes in one job, with the defaults: 6 + 1 + 34 job-wide
    gathers a minute, against 8,192 if every node asked at every 15 s scrape (docs/nccl.md)."""

    leader: float = 10.0
    backup: float = 60.0
    member: float = 3600.0
    idle: float = 60.0  # nothing listening, or an error
    deadline: float = 30.0  # one query, all of it: a sick job's report waits out RAS's leg timeouts
    leg_timeout: float = 5.0  # RAS's own per-leg collection timeout (TIMEOUT <s>)


@dataclass(frozen=True)
class RasView:
    """What the collector serves: the last report, how the queries went, and this node's role."""

    report: Report | None = None
    at: float = 0.0  # wall time of the report
    duration: float = 0.0
    queries: int = 0
    refused: int = 0
    errors: int = 0
    role: str = "none"  # leader, backup, member, none
    stalled: dict[str, float] = field(default_factory=dict)  # comm hash -> seconds its progress stood still


def role(report: Report, hosts: frozenset[str]) -> str:
    """This node's part in a job's queries: the hosts of the largest communicator's present ranks in
    rank order; the first leads, the second backs up. A text report lists no healthy ranks: member."""
    if report.format != "json":
        return "member"
    comms = [comm for comm in report.communicators if comm.ranks]
    if not comms:
        return "none"
    largest = max(comms, key=lambda comm: (comm.size, comm.hash))
    order = list(dict.fromkeys(rank.host for rank in sorted(largest.ranks, key=lambda r: r.rank)))
    if order[0] in hosts:
        return "leader"
    if len(order) > 1 and order[1] in hosts:
        return "backup"
    here = any(rank.host in hosts for comm in comms for rank in comm.ranks)
    return "member" if here else "none"


class RasPoller:
    """Queries the node's RAS server in a background thread at the node's cadence, never in the
    scrape path; `view()` is what the last query left. `poke()` asks at once (a job appeared)."""

    def __init__(self, address: str, hosts: frozenset[str], cadence: Cadence | None = None,
                 ask: Callable[[str, float, float], Report] = query, clock: Callable[[], float] = time.time) -> None:
        self._address = address
        self._hosts = hosts
        self._cadence = cadence or Cadence()
        self._ask = ask
        self._clock = clock
        self._view = RasView()
        self._since: dict[str, tuple[int, float]] = {}  # comm hash -> (progress, when first seen at it)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._logged_refused = False
        self._thread = threading.Thread(target=self._run, name="nccl-ras", daemon=True)

    @property
    def hosts(self) -> frozenset[str]:
        return self._hosts

    @property
    def cadence(self) -> Cadence:
        return self._cadence

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._cadence.deadline + 1)

    def poke(self) -> None:
        self._wake.set()

    def view(self) -> RasView:
        with self._lock:
            return self._view

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.query_once()
            self._wake.wait(wait)
            self._wake.clear()

    def query_once(self) -> float:
        """One query; returns how long to wait before the next, by the role it found."""
        started = time.monotonic()
        try:
            report = self._ask(self._address, self._cadence.deadline, self._cadence.leg_timeout)
        except RasError as exc:
            self._failed(exc, time.monotonic() - started)
            return self._cadence.idle
        now = self._clock()
        found = role(report, self._hosts)
        stalled = self._stalled(report, now)
        with self._lock:
            self._view = replace(self._view, report=report, at=now, duration=time.monotonic() - started,
                                 queries=self._view.queries + 1, role=found, stalled=stalled)
        self._logged_refused = False
        return {"leader": self._cadence.leader, "backup": self._cadence.backup}.get(found, self._cadence.member)

    def _failed(self, exc: RasError, duration: float) -> None:
        if exc.refused and not self._logged_refused:
            log.info("no NCCL RAS server answers (no NCCL job on this node?); asking again every %gs",
                     self._cadence.idle, extra={"address": self._address})
            self._logged_refused = True
        elif not exc.refused:
            log.warning("NCCL RAS query failed", extra={"address": self._address, "error": str(exc)})
        with self._lock:
            view = self._view
            self._view = replace(view, report=None, duration=duration, queries=view.queries + 1, role="none",
                                 refused=view.refused + exc.refused, errors=view.errors + (not exc.refused),
                                 stalled={})
        self._since.clear()

    def _stalled(self, report: Report, now: float) -> dict[str, float]:
        """Seconds each communicator's progress has stood still, across this node's reports. A JSON
        report's communicator at 0 launched nothing yet (a job starting: INIT, loading data): it cannot
        hang, its clock does not run (a text report's 0 means its counts are not printed)."""
        since = {}
        for comm in report.communicators:
            if not comm.hash:
                continue
            previous = self._since.get(comm.hash)
            started = comm.progress > 0 or report.format != "json"
            still = started and previous is not None and previous[0] == comm.progress
            since[comm.hash] = previous if still else (comm.progress, now)
        self._since = since
        return {comm: now - first for comm, (_, first) in since.items()}


_SIOCGIFADDR = 0x8915


def interface_addresses() -> frozenset[str]:
    """The node's IPv4 addresses but loopback's, as RAS names a host (the address its RAS network
    uses). IPv6-only fabrics name theirs with --collector.nccl.ras-hosts."""
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            found.add(socket.inet_ntoa(packed[20:24]))
    return frozenset(a for a in found if not ipaddress.ip_address(a).is_loopback)
