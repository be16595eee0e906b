"""Lustre clients: per-filesystem I/O from `llite/*/stats`, per-target health from `osc`/`mdc`.

Parameters are looked up the way `lctl get_param` does: `/sys/fs/lustre`, then debugfs
(`/sys/kernel/debug/lustre`, where 2.12+ keeps `llite/*/stats`), then `/proc/fs/lustre` (2.10).
Only client-local files are read; `kbytes*` and `files*` ask the servers and are never touched.
Series are labelled by filesystem name and target, not by the `ffff…` instance id that changes
on every remount.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from exporter import catalog
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.files import InFlight, list_dir, read_text

IMPORT_STATES = ("CLOSED", "NEW", "DISCONN", "CONNECTING", "REPLAY", "REPLAY_LOCKS", "REPLAY_WAIT",
                 "RECOVER", "FULL", "EVICTED", "IDLE")
HEALTHY_STATES = frozenset({"FULL", "IDLE"})
_STATE_CODE = {state: code for code, state in enumerate(IMPORT_STATES)}
_TARGET_DIR = re.compile(r"^(?P<fs>.+)-(?P<target>(?:OST|MDT)[0-9a-fA-F]{4})-(?:osc|mdc)-[0-9a-fA-Fx]+$")
_LLITE_DIR = re.compile(r"^(?P<fs>.+)-[0-9a-fA-Fx]+$")
_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)\s+samples\s+\[(\w+)\](?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.M)
_KEY_VALUE = re.compile(r"^[ \t]*([\w-]+):[ \t]*(\S+)", re.M)
_PENDING_PAGES = re.compile(r"^pending (read|write) pages:\s*(\d+)", re.M)
_LAST_REPLY = re.compile(r"^last reply\s*:\s*(\d+)", re.M)
_MICRO_UNITS = frozenset({"usec", "usecs"})


@dataclass(frozen=True)
class StatRow:
    """One `stats` row: sample count, unit, and the sum column when the row has one."""

    count: int
    unit: str
    total: int | None


@dataclass(frozen=True)
class ImportStatus:
    state: str
    rpcs_in_flight: int | None
    rpc_timeouts: int | None
    avg_wait_us: int | None
    connection_attempts: int | None
    generation: int | None


def parse_stats(text: str) -> dict[str, StatRow]:
    """Rows of a Lustre `stats` file (2.10 `[regs]` and 2.14+ `[usecs] min max sum sumsq` alike)."""
    return {m[1]: StatRow(int(m[2]), m[3], int(m[6]) if m[6] is not None else None)
            for m in _STATS_ROW.finditer(text)}


def parse_import(text: str) -> ImportStatus:
    """The fields of an `import` file that tell whether a target is reachable and keeping up."""
    fields: dict[str, str] = {}
    for key, value in _KEY_VALUE.findall(text):
        fields.setdefault(key, value)
    if "state" not in fields:
        raise ValueError("no 'state:' line")

    def number(key: str) -> int | None:
        return int(fields[key]) if key in fields else None

    return ImportStatus(fields["state"], number("inflight"), number("timeouts"), number("avg_waittime"),
                        number("connection_attempts"), number("generation"))


def parse_pending_pages(text: str) -> dict[str, int]:
    """{"read"|"write": pages queued in the client cache} from the header of an osc `rpc_stats`.

    Its RPCs-in-flight lines are not used: the import's `inflight` gives the same per target.
    """
    return {direction: int(pages) for direction, pages in _PENDING_PAGES.findall(text)}


def parse_last_reply(text: str) -> int | None:
    """Unix time of the last reply from `timeouts` (`last reply : 1510950459, 0s ago`)."""
    match = _LAST_REPLY.search(text)
    return int(match[1]) if match else None


def parse_health_check(text: str) -> bool:
    """`healthy`, or `NOT HEALTHY` / `LBUG` (possibly after per-device lines)."""
    return text.strip() == "healthy"


class LustreCollector:
    """Reads every mounted Lustre client's statistics and import state once per scrape."""

    name = "lustre"

    def __init__(self, sysfs: str, procfs: str) -> None:
        self._bases = (os.path.join(sysfs, "fs", "lustre"), os.path.join(sysfs, "kernel", "debug", "lustre"),
                       os.path.join(procfs, "fs", "lustre"))
        self._in_flight = InFlight()

    def collect(self) -> Iterator[Family]:
        scrape = Scrape()
        self._collect_health(scrape)
        self._collect_llite(scrape)
        self._collect_targets(scrape)
        yield from scrape.families.values()

    def _find(self, subsystem: str, instance: str, name: str) -> str:
        """Text of a parameter from the first base that has it, in lctl's search order."""
        for base in self._bases:
            try:
                return read_text(os.path.join(base, subsystem, instance, name))
            except (FileNotFoundError, NotADirectoryError):
                continue
        raise FileNotFoundError(f"{subsystem}/{instance}/{name}")

    def _instances(self, subsystem: str) -> list[str]:
        return sorted({name for base in self._bases for name in list_dir(os.path.join(base, subsystem))})

    def _collect_health(self, scrape: Scrape) -> None:
        try:
            text = self._find("", "", "health_check")
        except FileNotFoundError:
            return
        scrape.add(catalog.LUSTRE_HEALTH_CHECK, 1.0 if parse_health_check(text) else 0.0)

    def _collect_llite(self, scrape: Scrape) -> None:
        seen: set[str] = set()
        for instance in self._instances("llite"):
            match = _LLITE_DIR.match(instance)
            if not match or match["fs"] in seen:
                continue  # the same filesystem mounted twice: the first mount speaks for it
            fs = match["fs"]
            seen.add(fs)
            rows = None
            if not self._in_flight.busy(instance):  # a read still blocked (a hung mount) costs this fs only
                with self._in_flight.hold(instance):
                    rows = self._read_llite(instance)
            scrape.add(catalog.LUSTRE_FS_READ_SUCCESS, 0.0 if rows is None else 1.0, fs)
            if rows is not None:
                _add_llite_rows(scrape, fs, rows)

    def _read_llite(self, instance: str) -> dict[str, StatRow] | None:
        try:
            return parse_stats(self._find("llite", instance, "stats"))
        except (OSError, ValueError):
            return None

    def _collect_targets(self, scrape: Scrape) -> None:
        seen: set[tuple[str, str]] = set()
        for subsystem in ("osc", "mdc"):
            for instance in self._instances(subsystem):
                match = _TARGET_DIR.match(instance)
                if not match or (match["fs"], match["target"]) in seen:
                    continue
                labels = (match["fs"], match["target"])
                seen.add(labels)
                ok = False
                if not self._in_flight.busy(instance):
                    with self._in_flight.hold(instance):
                        ok = self._read_target(scrape, subsystem, instance, labels)
                scrape.add(catalog.LUSTRE_TARGET_READ_SUCCESS, 1.0 if ok else 0.0, *labels)

    def _read_target(self, scrape: Scrape, subsystem: str, instance: str, labels: tuple[str, str]) -> bool:
        """Adds one target's samples; False if its import could not be read or parsed."""
        try:
            status = parse_import(self._find(subsystem, instance, "import"))
        except (OSError, ValueError):
            return False
        scrape.add(catalog.LUSTRE_IMPORT_STATE, float(_STATE_CODE.get(status.state, -1)), *labels)
        scrape.add(catalog.LUSTRE_IMPORT_HEALTHY, 1.0 if status.state in HEALTHY_STATES else 0.0, *labels)
        for metric, value, scale in (
            (catalog.LUSTRE_RPCS_IN_FLIGHT, status.rpcs_in_flight, 1),
            (catalog.LUSTRE_RPC_TIMEOUTS, status.rpc_timeouts, 1),
            (catalog.LUSTRE_AVG_WAIT, status.avg_wait_us, 1e-6),
            (catalog.LUSTRE_CONNECT_ATTEMPTS, status.connection_attempts, 1),
            (catalog.LUSTRE_CONNECTIONS, status.generation, 1),
        ):
            if value is not None:
                scrape.add(metric, value * scale, *labels)
        ok = True
        try:
            pages = parse_pending_pages(self._find(subsystem, instance, "rpc_stats"))
            for direction, value in pages.items():
                scrape.add(catalog.LUSTRE_PENDING_PAGES, float(value), *labels, direction)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
        try:
            last_reply = parse_last_reply(self._find(subsystem, instance, "timeouts"))
            if last_reply is not None:
                scrape.add(catalog.LUSTRE_LAST_REPLY, float(last_reply), *labels)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
        return ok


def _add_llite_rows(scrape: Scrape, fs: str, rows: dict[str, StatRow]) -> None:
    for name, row in rows.items():
        if name == "read_bytes":
            scrape.add(catalog.LUSTRE_READ_CALLS, float(row.count), fs)
            scrape.add(catalog.LUSTRE_READ_BYTES, float(row.total or 0), fs)
        elif name == "write_bytes":
            scrape.add(catalog.LUSTRE_WRITE_CALLS, float(row.count), fs)
            scrape.add(catalog.LUSTRE_WRITE_BYTES, float(row.total or 0), fs)
        else:
            scrape.add(catalog.LUSTRE_OPERATIONS, float(row.count), fs, name)
            if row.unit in _MICRO_UNITS and row.total is not None:
                scrape.add(catalog.LUSTRE_OPERATION_SECONDS, row.total * 1e-6, fs, name)


register(Registration("lustre", "Lustre client I/O and per-target import health (procfs, sysfs, debugfs)",
                      lambda roots, _: LustreCollector(roots.sysfs, roots.procfs)))
