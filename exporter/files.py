"""Thin file access shared by the collectors: cheap reads and a guard for reads that hang.

Collectors read thousands of tiny sysfs/procfs files per scrape, so reads go through `os.open`
and `os.read` rather than `open()`, which builds buffered text objects the data never needs.
The hottest files, counters, stay open between scrapes (`CounterFiles`).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

# sysfs hands a whole attribute (at most one page) to a single read() call.
_PAGE = 4096
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def read_bytes(path: str) -> bytes:
    """The whole file; raises OSError like open() would."""
    fd = os.open(path, _FILE_FLAGS)
    try:
        chunks = [os.read(fd, _PAGE)]
        while len(chunks[-1]) == _PAGE:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_numbers(directory: str, names: Sequence[str]) -> list[int | None]:
    """The counter in each named file of one directory, in order; None where a read or parse failed,
    or the file holds a negative number (garbage for a counter, never exported as one).

    Files are opened relative to the directory, so the kernel resolves one name per file instead
    of the whole sysfs path again: this is the hot loop of a scrape. A directory that is gone
    gives None for every name.
    """
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return [None] * len(names)
    values: list[int | None] = []
    append = values.append
    try:
        for name in names:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
                try:
                    number = int(os.read(fd, 64))
                finally:
                    os.close(fd)
                append(number if number >= 0 else None)
            except (OSError, ValueError):
                append(None)
    finally:
        os.close(dir_fd)
    return values


class DescriptorBudget:
    """How many descriptors the collectors may keep open, so kept files never starve the sockets.

    Taken in whole directories; a directory refused is read the old way (open, read, close).
    """

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.kept = 0

    def take(self, count: int) -> bool:
        with self._lock:
            if self.kept + count > self.limit:
                return False
            self.kept += count
            return True

    def give_back(self, count: int) -> None:
        with self._lock:
            self.kept -= count


# Left for sockets (at most 256 connections), NVML, logs and the reads that are not kept.
DESCRIPTOR_RESERVE = 512


def _soft_nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


descriptors = DescriptorBudget(max(0, _soft_nofile() - DESCRIPTOR_RESERVE))


def raise_descriptor_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit, as Go programs such as node_exporter do at
    start (systemd's soft default of 1,024 is less than one p5's 2,000 counter files), and sizes the
    budget of kept files to it. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with suppress(ValueError, OSError):  # a hard limit the kernel will not grant (above fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = _soft_nofile()
    descriptors.limit = max(0, soft - DESCRIPTOR_RESERVE)
    return soft


class CounterFiles:
    """The counters in a fixed set of files of one directory, the files kept open between reads.

    sysfs and procfs make an attribute's text afresh on every read from offset 0, so `pread(fd, 64,
    0)` on a kept descriptor returns the current value for about a sixth of the cost of open, read
    and close (docs/performance.md). A kept descriptor never reads a stale value on those
    filesystems: when its device goes away the read fails (ENODEV), and a re-probed device is a new
    directory. A file that failed to open or read gives None, as `read_numbers` does; the owner
    closes this object and makes a new one, which opens every file again. When the budget is spent
    the files are opened per read instead.
    """

    def __init__(self, directory: str, names: Sequence[str], budget: DescriptorBudget = descriptors) -> None:
        self.directory = directory
        self.names = tuple(names)
        self._budget = budget
        self._fds: list[int] | None = None
        if names and budget.take(len(names)):
            self._fds = self._open_all()

    def _open_all(self) -> list[int]:
        """A descriptor per name; -1 where the open failed (its read then fails)."""
        fds = [-1] * len(self.names)
        try:
            dir_fd = os.open(self.directory, _DIR_FLAGS)
        except OSError:
            return fds
        try:
            for i, name in enumerate(self.names):
                with suppress(OSError):
                    fds[i] = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return fds

    def read(self) -> list[int | None]:
        """Each file's counter, in the order of `names`; None as `read_numbers` gives it."""
        if self._fds is None:
            return read_numbers(self.directory, self.names)
        values: list[int | None] = []
        append = values.append
        pread = os.pread
        for fd in self._fds:
            try:
                number = int(pread(fd, 64, 0))
                append(number if number >= 0 else None)
            except (OSError, ValueError):
                append(None)
        return values

    def close(self) -> None:
        fds, self._fds = self._fds, None
        if fds is None:
            return
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        self._budget.give_back(len(fds))

    __del__ = close  # a collector dropped without close() (a test, a rebuilt plan) leaks no descriptors


def boot_time(procfs: str) -> float:
    """Wall time of boot from `<procfs>/stat` (btime): kernel log and process start times count from it.
    Estimated from the clocks when the file cannot be read."""
    try:
        with open(os.path.join(procfs, "stat"), encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return time.time() - time.monotonic()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def read_optional(path: str) -> str:
    """A short attribute, stripped; empty when the file is absent or unreadable."""
    try:
        return read_text(path).strip()
    except OSError:
        return ""


def list_dir(path: str) -> list[str]:
    """Sorted entry names; empty when the directory is absent (the hardware or module is not there)."""
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


class InFlight:
    """Remembers which sources (a device, a Lustre target) have a read still running.

    A read that blocks in the kernel cannot be cancelled from Python. The scrape that hit it is
    abandoned by the registry's timeout; later scrapes ask `busy()` and skip that one source
    instead of sending yet another thread into the same hang, so the rest stays visible.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[str] = set()

    def busy(self, key: str) -> bool:
        with self._lock:
            return key in self._keys

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            self._keys.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._keys.discard(key)
