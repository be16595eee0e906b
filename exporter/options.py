"""An option of the exporter: its flag name, default, parser and help. The exporter's own options
(exporter/config.py) and each collector's (declared in its module with its registration) are
resolved alike: flag, then environment variable `GPUSCOPE_A_B_C`, then the config file, then the
default; a bad value is reported naming its source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    is_flag: bool = False

    @property
    def env(self) -> str:
        return "GPUSCOPE_" + re.sub(r"[.-]", "_", self.name).upper()


def parse_path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise ValueError(f"invalid path {value!r} (must start with /)")
    return text


def parse_directory(value: Any) -> str:
    """A directory that exists or can be made, or empty; a file is refused."""
    text = str(value or "")
    if text and os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(f"{text} is not a directory")
    return text


def parse_names(value: Any) -> tuple[str, ...]:
    names = tuple(name.strip() for name in str(value).split(",") if name.strip())
    if not names:
        raise ValueError("expected at least one name")
    return names


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if str(value) not in allowed:
            raise ValueError(f"invalid value {value!r} (one of {', '.join(allowed)})")
        return str(value)
    return parse
