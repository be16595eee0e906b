"""File writing shared by the tree writers."""

from __future__ import annotations

import os


def write_file(path: str, text: str) -> None:
    """Writes `text` plus a newline, as sysfs and procfs attributes read, creating parent directories."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


def relative_symlink(target: str, link: str) -> None:
    """A relative symlink, as sysfs uses, so the tree can be moved."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
