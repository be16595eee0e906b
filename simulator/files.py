"""File writing shared by the tree writers."""

from __future__ import annotations

import os
import threading

_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def write_file(path: str, text: str, staging: str | None = None) -> None:
    """Writes `text` plus a newline, as sysfs and procfs attributes read, creating parent directories.

    With `staging` (a directory on the same filesystem, outside anything a collector lists), the
    file is written there first and renamed into place, so a concurrent reader never sees it half
    written: how a live simulated node updates its counters.
    """
    data = text if text.endswith("\n") else text + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if staging is None:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(data)
        return
    with _counter_lock:
        tmp = os.path.join(staging, f"{os.getpid()}.{next(_counter)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def rewrite_in_place(path: str, text: str, staging: str | None = None) -> None:
    """Changes a counter file's text without replacing the file, as a sysfs attribute changes, so a
    reader that keeps it open (exporter/files.py) reads the new value; a file not there yet is
    written as `write_file` would.

    One pwrite at offset 0 and never a truncation: text shorter than the file is padded with leading
    spaces (a number's parser skips them), so a reader never finds the file empty or half cut.
    """
    data = (text + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        write_file(path, text, staging)
        return
    try:
        os.pwrite(fd, data.rjust(os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)


def relative_symlink(target: str, link: str) -> None:
    """A relative symlink, as sysfs uses, so the tree can be moved."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
