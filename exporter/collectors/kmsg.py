"""The kernel log since boot: NVIDIA XIDs per GPU and NVSwitch SXIDs per switch.

NVML's XID events miss some XIDs (79, 119, 120: NVIDIA/DCGM#162) and only count from the moment
the exporter starts; the kernel's ring buffer holds them all since boot. A background thread reads
`/dev/kmsg` from its first record (one record per read(): `PRIO,SEQ,USEC,FLAGS;MESSAGE`, then
continuation lines starting with a space) and keeps counts and the time of the last event; a
scrape only copies them.

- XIDs (`NVRM: Xid (PCI:0000:9b:00): 119, …`) are mapped to the NVML GPU by PCI address. The
  multi-line "fallen off the bus" message (`NVRM: The NVIDIA GPU 0000:b3:00.0` … `fallen off the
  bus and is not responding to commands.`), printed without an XID line, counts as XID 79.
- SXIDs (`nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, …`) per switch, fatal or not.
- Only kernel records count (facility 0): a line a user writes into /dev/kmsg that looks like an
  XID is not one, nor is text that merely contains "Xid".
- An overrun (the reader fell behind the ring buffer: EPIPE) is counted and reading goes on.
- Reading needs CAP_SYSLOG where `kernel.dmesg_restrict=1`: without it the collector fails with a
  message that says so, and the rest of the scrape is unaffected.

How kernel-log and NVML XIDs combine: they stay two metrics (`gpuscope_gpu_kernel_xid_errors_total`
and NVML's `gpuscope_gpu_xid_errors_total`), never summed; the alerts read the kernel log's where
this collector runs on the node and NVML's elsewhere, so one event is never counted twice. Alerts
page on the time of the last event (`…_last_xid_timestamp_seconds`, the kernel's own timestamp),
so an exporter restart re-reads the buffer without paging again for an XID logged long before,
while one logged during the restart still pages.

A regular file at the path (the simulator's kernel log, a test's) is read the same way, one
record a line, following what is appended.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter import catalog, files
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.options import Option

log = logging.getLogger("gpuscope")

XID = re.compile(r"^NVRM: Xid \(PCI:([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.\d)?\): (\d+),")
FALLEN_GPU = re.compile(r"^NVRM: The NVIDIA GPU ([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})")
FALLEN = "fallen off the bus"
SXID = re.compile(r"^nvidia-nvswitch(\d+): SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+), (Fatal|Non-fatal)")
XID_FALLEN_OFF_THE_BUS = 79
FALLEN_WINDOW = 4  # records between "The NVIDIA GPU <pci>" and "fallen off the bus"
READ_SIZE = 8192
POLL_SECONDS = 0.25
RETRY_SECONDS = 30.0
STARTUP_SECONDS = 2.0


@dataclass(frozen=True)
class Record:
    facility: int
    usec: int
    message: str


def parse_record(raw: str) -> Record | None:
    """A /dev/kmsg record, or None for what is not one."""
    header, sep, body = raw.partition(";")
    fields = header.split(",")
    if not sep or len(fields) < 3 or not all(f.isdigit() for f in fields[:3]):
        return None
    return Record(int(fields[0]) >> 3, int(fields[2]), body.split("\n", 1)[0].rstrip())


@dataclass
class KernelEvents:
    """What the log said so far: counts and the wall time of the last one, per key."""

    xids: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # (pci, xid) -> [count, last]
    sxids: dict[tuple[str, str, int, str], list[float]] = field(default_factory=dict)  # (switch, pci, sxid, severity)
    records: int = 0
    overruns: int = 0
    fallen_candidate: tuple[str, int] | None = None  # (pci, records seen when it was named)

    def add(self, record: Record, boot_time: float) -> None:
        self.records += 1
        if record.facility != 0:  # user space wrote it
            return
        when = boot_time + record.usec / 1e6
        message = record.message
        if (match := XID.match(message)) is not None:
            _bump(self.xids, (match[1].lower(), int(match[2])), when)
        elif (match := FALLEN_GPU.match(message)) is not None:
            self.fallen_candidate = (match[1].lower(), self.records)
        elif FALLEN in message and message.startswith("NVRM:") and self.fallen_candidate \
                and self.records - self.fallen_candidate[1] <= FALLEN_WINDOW:
            _bump(self.xids, (self.fallen_candidate[0], XID_FALLEN_OFF_THE_BUS), when)
            self.fallen_candidate = None
        elif (match := SXID.match(message)) is not None:
            severity = "fatal" if match[4] == "Fatal" else "non_fatal"
            _bump(self.sxids, (match[1], match[2].lower(), int(match[3]), severity), when)


def _bump(table: dict, key: tuple, when: float) -> None:
    entry = table.setdefault(key, [0, 0.0])
    entry[0] += 1
    entry[1] = max(entry[1], when)


@dataclass(frozen=True)
class KmsgOptions:
    path: str = "/dev/kmsg"
    boot_procfs: str = ""  # the procfs whose stat gives the boot time; empty: the host's (--path.procfs)


# PCI address ("0000:9b:00") -> the GPU's (gpu, uuid) labels, from the GPU collector
GpusByPci = Callable[[], dict[str, tuple[str, str]]]


class KmsgCollector:
    """Serves what the reader thread found in the kernel log."""

    name = "kmsg"

    def __init__(self, path: str, procfs: str, poll: float = POLL_SECONDS) -> None:
        self._path = path
        self._procfs = procfs
        self._poll = poll
        self._lock = threading.Lock()
        self._events = KernelEvents()
        self._error = ""
        self._stop = threading.Event()
        self._caught_up = threading.Event()  # the first open failed, or the log was read to its end once
        self._thread: threading.Thread | None = None
        self._gpus: GpusByPci = dict

    def identify_with(self, gpus: GpusByPci) -> None:
        self._gpus = gpus

    def collect(self) -> Iterable[Family]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="collector-kmsg-reader", daemon=True)
            self._thread.start()
            self._caught_up.wait(STARTUP_SECONDS)  # the first scrape tells a permission problem at once
        with self._lock:
            if self._error:
                raise RuntimeError(self._error)
            xids = {k: tuple(v) for k, v in self._events.xids.items()}
            sxids = {k: tuple(v) for k, v in self._events.sxids.items()}
            records, overruns = self._events.records, self._events.overruns
        gpus = self._gpus()
        scrape = Scrape()
        for (pci, xid), (count, last) in sorted(xids.items()):
            gpu, uuid = gpus.get(pci, ("", ""))
            scrape.add(catalog.KERNEL_XID_ERRORS, count, gpu, uuid, pci, str(xid))
            scrape.add(catalog.KERNEL_LAST_XID, last, gpu, uuid, pci, str(xid))
        for (switch, pci, sxid, severity), (count, last) in sorted(sxids.items()):
            scrape.add(catalog.NVSWITCH_SXID_ERRORS, count, switch, pci, str(sxid), severity)
            scrape.add(catalog.NVSWITCH_LAST_SXID, last, switch, pci, str(sxid), severity)
        scrape.add(catalog.KMSG_RECORDS, records)
        scrape.add(catalog.KMSG_OVERRUNS, overruns)
        return scrape.families.values()

    def close(self) -> None:
        self._stop.set()

    # --- the reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                self._fail(exc)
                self._stop.wait(RETRY_SECONDS)
                continue
            try:
                self._read(fd, stat.S_ISCHR(os.fstat(fd).st_mode))
            except OSError as exc:
                self._fail(exc)
            finally:
                os.close(fd)
            self._stop.wait(RETRY_SECONDS)

    def _fail(self, exc: OSError) -> None:
        hint = (" (needs CAP_SYSLOG: kernel.dmesg_restrict=1; the systemd unit and the Helm chart grant it)"
                if exc.errno in (errno.EPERM, errno.EACCES) else "")
        message = f"cannot read {self._path}: {exc.strerror or exc}{hint}"
        with self._lock:
            changed, self._error = self._error != message, message
        self._caught_up.set()
        if changed:
            log.warning("kernel log unreadable", extra={"path": self._path, "error": message})

    def _wait(self, fd: int, device: bool) -> None:
        """Until the next record might be there: /dev/kmsg wakes select() the moment the kernel logs one
        (an XID's page waits for no timer); a file (the simulator's) is read again after the poll
        interval. Either way the stop flag is looked at every poll interval."""
        if device:
            select.select([fd], [], [], self._poll)
        else:
            self._stop.wait(self._poll)

    def _read(self, fd: int, device: bool) -> None:
        """Reads records until stopped: one per read() from /dev/kmsg, one per line from a file."""
        boot_time = files.boot_time(self._procfs)
        with self._lock:
            self._error = ""
        pending = b""
        while not self._stop.is_set():
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                chunk = b""
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                with self._lock:  # records were overwritten before we read them: go on from the oldest left
                    self._events.overruns += 1
                continue
            if not chunk:
                self._caught_up.set()
                self._wait(fd, device)
                continue
            if device:
                raws = [chunk.decode("utf-8", "replace")]
            else:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                raws = [line.decode("utf-8", "replace") for line in lines if line and not line.startswith(b" ")]
            with self._lock:
                for raw in raws:
                    record = parse_record(raw)
                    if record:
                        self._events.add(record, boot_time)


register(Registration(
    "kmsg", "the kernel log since boot: NVIDIA XIDs per GPU (with 'fallen off the bus' as XID 79) and NVSwitch "
            "SXIDs (needs CAP_SYSLOG)",
    lambda roots, options: KmsgCollector(options.path, options.boot_procfs or roots.procfs),
    (Option("collector.kmsg.path", "/dev/kmsg", str,
            "the kernel log device (the kmsg collector reads it from boot; needs CAP_SYSLOG)"),),
    lambda values: KmsgOptions(path=values["collector.kmsg.path"])))
