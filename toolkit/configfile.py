"""What every gpuscope command reads configuration with, and nothing else (no collector, so the
remediation receiver and the rules load it without the node agent): the one-line error every bad
input raises, YAML files, and the values flags and files share.
"""

from __future__ import annotations

from typing import Any

import yaml

DEFAULT_PORT = 19400


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator as one line."""

def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {value!r} (use true or false)")


def parse_count(value: Any) -> int:
    """A positive whole number."""
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"invalid count {value!r} (a whole number of 1 or more)")
    return int(text)


def parse_listen_address(value: Any) -> tuple[str, int]:
    """`host:port`, `:port` (every interface) or `[v6addr]:port`."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r} (expected host:port, e.g. :{DEFAULT_PORT})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or "::", int(port))


def load_yaml(path: str, what: str) -> Any:
    """A YAML file's content (an empty file is {}); ConfigError naming `what` and the path otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: invalid YAML: {' '.join(str(exc).split())}") from None
