"""Thin file access shared by the collectors: cheap reads and a guard for reads that hang.

Collectors read thousands of tiny sysfs/procfs files per scrape, so reads go through `os.open`
and `os.read` rather than `open()`, which builds buffered text objects the data never needs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
