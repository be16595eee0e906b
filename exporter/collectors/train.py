"""The training job's own steps, per rank, from the spool files its ranks write (gpuscope_train/).

`<dir>/<job>/rank-<rank>.jsonl`, one JSON object a completed step (docs/training.md has the format).
A background thread reads every file from where it stopped (never again from the start), at most
READ_BUDGET bytes a file a round, and keeps each rank's totals; a scrape reads the totals only. When
a file's inode changes, the writer rotated it: the rest of the old file is read from `.1` first.
What cannot be counted is counted by reason (TRAIN_DROPPED) and costs no other rank anything: a
malformed or over-long line, a FIFO, device or symbolic link, a second file for one rank, a file
rotated twice between two reads. A rank silent for `stale` seconds, or whose file is gone, loses its
series.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from exporter import catalog
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.collectors.train_otlp import OtlpIntake
from exporter.collectors.train_ranks import Rank
from exporter.options import Option, parse_directory
from toolkit.durations import positive_seconds

log = logging.getLogger("gpuscope")

VERSION = 1  # the spool format this reader understands
MAX_LINE = 64 << 10
READ_BUDGET = 4 << 20  # bytes of one file a round: a rank writing faster is read over several rounds
MAX_FILES = 1024
# The GPU collector's {uuid: ((gpu, uuid) labels, jobs)}, as for NCCL Inspector's files.
Identities = Callable[[], dict[str, tuple[tuple[str, str], tuple[str, ...]]]]


@dataclass(frozen=True)
class TrainOptions:
    directory: str = ""  # the spool directory; empty: none read
    interval: float = 1.0  # how often the files are read
    stale: float = 900.0  # a rank silent this long loses its series
    otlp_address: str = ""  # loopback host:port of the OTLP intake (train_otlp.py); empty: none


def parse_record(line: bytes) -> dict[str, Any] | str:
    """One spool line as a record, or the reason it is not counted."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return "malformed"
    if not isinstance(record, dict):
        return "malformed"
    if record.get("v") != VERSION:
        return "version"
    try:
        int(record["rank"]), int(record["step"]), float(record["seconds"])
        str(record["job"])
    except (KeyError, TypeError, ValueError):
        return "malformed"
    return record


def add_record(rank: Rank, record: dict[str, Any], now: float) -> None:
    """A record's step added to its rank's totals."""
    phases = record.get("phases") if isinstance(record.get("phases"), dict) else {}
    rank.gpu = str(record.get("gpu", rank.gpu))
    rank.steps += 1
    rank.seconds += _positive(float(record["seconds"]))  # JSON's Infinity and NaN count as nothing
    if "tokens" in record:
        rank.tokens += _count(record["tokens"])
        rank.reports_tokens = True
    if phases:
        rank.data_wait += _positive(phases.get("data_wait"))
        rank.checkpoint += _positive(phases.get("checkpoint_save")) + _positive(phases.get("checkpoint_load"))
        rank.reports_phases = True
    if "samples" in record:
        rank.samples += _count(record["samples"])
        rank.reports_samples = True
    if "flops" in record:
        rank.flops += _positive(record["flops"])
        rank.reports_flops = True
    finite = True
    for name in ("loss", "grad_norm"):
        if name in record:
            value = _finite(record[name])
            finite = finite and value is not None
            if value is not None:
                setattr(rank, name, value)
    rank.nonfinite += 0 if finite and not record.get("skipped") else 1
    rank.seen = now


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _positive(value: Any) -> float:
    """A finite number above 0, else 0 (seconds, FLOPs: what adds to a counter)."""
    number = _finite(value)
    return number if number is not None and number > 0 else 0.0


# Bytes of a file's start that tell it from a later file of the same inode number: the whole first
# record (its step and time; the first 64 bytes of a rank's records are all alike).
HEAD = 512


@dataclass
class _File:
    """Where reading one spool file stands: its inode and first bytes (a freed inode number comes
    back for a new file), the offset read up to, a line begun."""

    inode: int
    head: bytes = b""
    offset: int = 0
    partial: bytes = b""
    skipping: bool = False  # inside an over-long line: drop bytes up to its end

    def is_file(self, fd: int, inode: int) -> bool:
        """Whether the open file `fd` (of inode number `inode`) is the one read so far."""
        return inode == self.inode and os.pread(fd, len(self.head), 0) == self.head


class SpoolReader:
    """The background reader: every interval, every spool file from where it stopped."""

    def __init__(self, options: TrainOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self._options = options
        self._clock = clock
        self._files: dict[str, _File] = {}
        self._refused: set[str] = set()  # paths counted not_regular once, tried again every round
        self._ranks: dict[tuple[str, int], Rank] = {}
        self._owner: dict[tuple[str, int], str] = {}  # the file a job's rank is read from
        self._dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._view: tuple[dict[tuple[str, int], Rank], dict[str, int]] = ({}, {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="train-spool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def view(self) -> tuple[dict[tuple[str, int], Rank], dict[str, int]]:
        """(job, rank) -> totals, and the dropped counts by reason, as of the last round."""
        with self._lock:
            return self._view

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.read_round()
            except OSError as exc:  # the directory itself unreadable: the next round tries again
                log.warning("cannot read the training spool", extra={"error": str(exc)})
            self._stop.wait(self._options.interval)

    def read_round(self) -> None:
        """Reads what every file gained since the last round, then publishes the totals."""
        now = self._clock()
        present = self._spool_files()
        for path in present:
            self._read(path, now)
        for path in set(self._files) - set(present):
            del self._files[path]
        self._refused &= set(present)
        for key in [k for k, rank in self._ranks.items()
                    if now - rank.seen > self._options.stale or self._owner.get(k) not in self._files]:
            del self._ranks[key]
            self._owner.pop(key, None)
        with self._lock:
            self._view = ({key: replace(rank) for key, rank in self._ranks.items()}, dict(self._dropped))

    def _spool_files(self) -> list[str]:
        root = self._options.directory
        found: list[str] = []
        if not os.path.isdir(root):  # no job has written yet (the directory comes with the first)
            return found
        for job in sorted(os.listdir(root)):
            folder = os.path.join(root, job)
            if os.path.isdir(folder) and not os.path.islink(folder):
                found += [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                          if name.startswith("rank-") and name.endswith(".jsonl")]
        return found[:MAX_FILES]

    def _read(self, path: str, now: float) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return  # removed since the listing: gone from the next round's
        except OSError:
            self._refuse(path)  # a symbolic link (ELOOP), or not ours to read
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._refuse(path)
                return
            self._refused.discard(path)
            tracked = self._files.get(path)
            if tracked is not None and not tracked.is_file(fd, info.st_ino):  # rotated: finish the old file
                self._finish_rotated(path, tracked, now)
                tracked = None
            if tracked is None or info.st_size < tracked.offset:  # new, or truncated: from its start
                tracked = self._files[path] = _File(info.st_ino, os.pread(fd, HEAD, 0))
            self._consume(fd, path, tracked, now)
        finally:
            os.close(fd)

    def _refuse(self, path: str) -> None:
        if path not in self._refused:
            self._dropped["not_regular"] += 1
            self._refused.add(path)

    def _finish_rotated(self, path: str, tracked: _File, now: float) -> None:
        try:
            fd = os.open(path + ".1", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            self._dropped["lost"] += 1
            return
        try:
            if not tracked.is_file(fd, os.fstat(fd).st_ino):  # rotated twice: the file read before is gone
                self._dropped["lost"] += 1
                return
            self._consume(fd, path, tracked, now)
        finally:
            os.close(fd)

    def _consume(self, fd: int, path: str, tracked: _File, now: float) -> None:
        data = os.pread(fd, READ_BUDGET, tracked.offset)
        tracked.offset += len(data)
        if len(tracked.head) < HEAD:  # a file seen shorter than HEAD: its head grows with it
            tracked.head = os.pread(fd, HEAD, 0)
        if tracked.skipping:
            end = data.find(b"\n")
            if end < 0:
                return  # still inside the over-long line
            data, tracked.skipping = data[end + 1:], False
        lines = (tracked.partial + data).split(b"\n")
        tracked.partial = lines.pop()
        for line in lines:
            self._count_line(line, path, now)
        if len(tracked.partial) > MAX_LINE:
            self._dropped["too_long"] += 1
            tracked.partial, tracked.skipping = b"", True

    def _count_line(self, line: bytes, path: str, now: float) -> None:
        if not line.strip():
            return
        if len(line) > MAX_LINE:
            self._dropped["too_long"] += 1
            return
        record = parse_record(line)
        if isinstance(record, str):
            self._dropped[record] += 1
            return
        key = (str(record["job"]), int(record["rank"]))
        owner = self._owner.setdefault(key, path)
        if owner != path:
            self._dropped["duplicate_rank"] += 1
            return
        add_record(self._ranks.setdefault(key, Rank()), record, now)


class TrainCollector:
    """The training ranks' series, joined to the GPUs they drive."""

    name = "train"

    def __init__(self, options: TrainOptions, reader: SpoolReader | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._options, self._clock = options, clock
        self._reader = reader or SpoolReader(options)
        if reader is None and options.directory:
            self._reader.start()
        self._intake = _intake(options.otlp_address, clock) if options.otlp_address else None
        self._identities: Identities = dict
        self._by_pci: Callable[[], dict[str, tuple[str, str]]] = dict

    def identify_with(self, identities: Identities, by_pci: Callable[[], dict[str, tuple[str, str]]]) -> None:
        """Where a rank's GPU is found: by UUID, by PCI address, or by NVML index (the GPU collector's)."""
        self._identities, self._by_pci = identities, by_pci

    def close(self) -> None:
        self._reader.stop()
        if self._intake:
            self._intake.stop()

    def collect(self) -> Iterable[Family]:
        ranks, dropped = self._reader.view()
        if self._intake:
            self._intake.forget_before(self._clock() - self._options.stale)
            ranks = {**self._intake.ranks(), **ranks}  # a rank in both: its spool
        resolve = self._resolver()
        scrape = Scrape()
        for (job, rank_id), rank in sorted(ranks.items()):
            labels = (job, str(rank_id), *resolve(rank.gpu))
            scrape.add(catalog.TRAIN_STEPS, rank.steps, *labels)
            scrape.add(catalog.TRAIN_STEP_SECONDS, rank.seconds, *labels)
            if rank.reports_tokens:
                scrape.add(catalog.TRAIN_TOKENS, rank.tokens, *labels)
            if rank.reports_phases:
                scrape.add(catalog.TRAIN_PHASE_SECONDS, rank.data_wait, *labels, "data_wait")
                scrape.add(catalog.TRAIN_PHASE_SECONDS, rank.checkpoint, *labels, "checkpoint")
            scrape.add(catalog.TRAIN_NONFINITE, rank.nonfinite, *labels)
            for metric, value in ((catalog.TRAIN_LOSS, rank.loss), (catalog.TRAIN_GRAD_NORM, rank.grad_norm)):
                if value is not None:
                    scrape.add(metric, value, *labels)
            if rank.reports_samples:
                scrape.add(catalog.TRAIN_SAMPLES, rank.samples, *labels)
            if rank.reports_flops:
                scrape.add(catalog.TRAIN_FLOPS, rank.flops, *labels)
        for reason, count in sorted(dropped.items()):
            scrape.add(catalog.TRAIN_DROPPED, count, reason)
        return scrape.families.values()

    def _resolver(self) -> Callable[[str], tuple[str, str]]:
        """A rank's `gpu` (a UUID, a PCI bus id, or an NVML index) as (gpu, uuid) labels; ("", "")
        where the node has no such GPU (or the GPU collector is off)."""
        identities = self._identities()
        by_index = {labels[0]: labels for labels, _ in identities.values()}
        by_pci = self._by_pci()

        def resolve(gpu: str) -> tuple[str, str]:
            if gpu.lower() in identities:
                return identities[gpu.lower()][0]
            if gpu in by_index:
                return by_index[gpu]
            address = _pci_prefix(gpu)
            return by_pci.get(address, ("", "")) if address else ("", "")
        return resolve


def _intake(address: str, clock: Callable[[], float]) -> Any:
    """The OTLP intake at `address`, or None (logged) where the otlp extra is missing or the port taken."""
    try:
        return OtlpIntake(address, clock)
    except ImportError as exc:
        log.warning("OTLP intake off: needs the otlp extra (pip install 'gpuscope[otlp]')",
                    extra={"missing": exc.name})
    except OSError as exc:
        log.warning("OTLP intake off: cannot listen", extra={"address": address, "error": exc.strerror or str(exc)})
    return None


def _pci_prefix(bus_id: str) -> str:
    """"00000000:53:00.0" or "0000:53:00.0" as the GPU collector keys PCI addresses ("0000:53:00")."""
    parts = bus_id.lower().split(":")
    if len(parts) != 3 or "." not in parts[2]:
        return ""
    try:
        return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2].split('.')[0]}"
    except ValueError:
        return ""


def parse_loopback_address(value: Any) -> str:
    """`host:port` on loopback (127.0.0.0/8, ::1, localhost), or empty for none: the intake takes no
    authentication, so it listens where only the node's own processes reach it."""
    text = str(value or "").strip()
    if not text:
        return ""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid OTLP address {value!r} (a loopback host:port, e.g. 127.0.0.1:4318)")
    return text


OPTIONS = (
    Option("collector.train.dir", "", parse_directory,
           "the training spool directory (GPUSCOPE_TRAIN_DIR of the jobs; e.g. /run/gpuscope/train, on tmpfs); "
           "the train collector runs only when this names one"),
    Option("collector.train.interval", "1s", positive_seconds, "how often the spool files are read"),
    Option("collector.train.stale", "15m", positive_seconds,
           "a rank silent this long (or whose file is gone) loses its series"),
    Option("collector.train.otlp-address", "", parse_loopback_address,
           "loopback host:port for OTLP metrics over HTTP (POST /v1/metrics, protobuf or JSON) from training "
           "frameworks (Megatron-core's megatron.training.*), e.g. 127.0.0.1:4318; needs the otlp extra; "
           "empty: off"),
)


register(Registration(
    "train", "the training job's own steps per rank (steps, step seconds, tokens, data wait, checkpoints, loss, "
             "grad norm, non-finite steps) from the spool its ranks write (--collector.train.dir)",
    lambda roots, options: TrainCollector(options), OPTIONS,
    lambda values: TrainOptions(values["collector.train.dir"], values["collector.train.interval"],
                                values["collector.train.stale"], values["collector.train.otlp-address"]),
    wanted=lambda values: bool(values["collector.train.dir"] or values["collector.train.otlp-address"])))
