"""What a collector is and how it registers itself, below every collector module.

A collector is a leaf: it takes its roots and its settings at construction and yields catalog
families from `collect()`. Its module declares its options and calls `register()` once; the option
table, the docs' flag table and `gpuscope exporter --help` read the registrations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.catalog import Family
from exporter.options import Option


class Collector(Protocol):
    name: str

    def collect(self) -> Iterable[Family]: ...


@dataclass(frozen=True)
class Roots:
    """Where the host's data comes from, and each collector's settings by collector name (a collector
    without an entry gets its options' defaults); tests and the simulator point the roots at trees and
    a simulated NVML. `nvml` is the pynvml module to use; None means the real one, imported when the
    GPU collector starts."""

    sysfs: str = "/sys"
    procfs: str = "/proc"
    nvml: Any = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def of(self, name: str) -> Any:
        """Collector `name`'s settings: as given, or from its options' defaults."""
        if name in self.settings:
            return self.settings[name]
        registration = REGISTERED[name]
        return registration.settings({o.name: o.parse(o.default) for o in registration.options})


def _always(values: Mapping[str, Any]) -> bool:
    return True


def _nothing(values: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Registration:
    """A collector as the exporter knows it: `build(roots, settings)` makes it from its roots and the
    settings object `settings(values)` makes of its options' values; `wanted(values)` may keep an
    enabled collector off (nccl without anything to read)."""

    name: str
    description: str
    build: Callable[[Roots, Any], Collector]
    options: tuple[Option, ...] = ()
    settings: Callable[[Mapping[str, Any]], Any] = _nothing
    wanted: Callable[[Mapping[str, Any]], bool] = _always


REGISTERED: dict[str, Registration] = {}


def register(registration: Registration) -> Registration:
    """Called once by each collector module, at import."""
    REGISTERED[registration.name] = registration
    return registration
