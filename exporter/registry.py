"""Runs the collectors for a scrape: in parallel, each bounded by the collector timeout.

A collector stuck in a read the kernel will not finish (a Lustre file on a dead server) cannot
be interrupted from Python. Its run is abandoned when the timeout passes and the collector is
reported failed; the scrape answers on time with everything else. Scrapes that arrive while a
run is still within its time share that run instead of starting another, and at most
`MAX_PARKED_RUNS` abandoned runs may be parked per collector, so a hang never piles up threads.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter import __version__, catalog
from exporter.exposition import TextRenderer

if TYPE_CHECKING:  # the HTTP edge imports this module; the remediation receiver must not load collectors
    from exporter.collectors import Collector

MAX_PARKED_RUNS = 4

log = logging.getLogger("gpuscope")


@dataclass
class _Run:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    families: list[catalog.Family] = field(default_factory=list)
    error: str = ""
    duration: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What one collector delivered to one scrape."""

    families: Sequence[catalog.Family]
    success: bool
    duration: float
    error: str


class CollectorRunner:
    """Owns one collector's worker threads and remembers how its last run went."""

    def __init__(self, collector: Collector, timeout: float) -> None:
        self.collector = collector
        self.name = collector.name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._current: _Run | None = None
        self._parked: list[_Run] = []
        self.last: Outcome | None = None

    def start(self) -> _Run | None:
        """The run this scrape should wait for: the one in progress, a new one, or None if too many hang."""
        now = time.monotonic()
        with self._lock:
            current = self._current
            if current and not current.done.is_set():
                if now - current.started < self.timeout:
                    return current
                self._parked.append(current)
            self._parked = [run for run in self._parked if not run.done.is_set()]
            if len(self._parked) >= MAX_PARKED_RUNS:
                self._current = None
                return None
            run = self._current = _Run(started=now)
        threading.Thread(target=self._execute, args=(run,), name=f"collector-{self.name}", daemon=True).start()
        return run

    def _execute(self, run: _Run) -> None:
        try:
            run.families = list(self.collector.collect())
        except Exception as exc:  # a collector bug or an unexpected file must not end the daemon
            run.error = f"{type(exc).__name__}: {exc}"
        run.duration = time.monotonic() - run.started
        run.done.set()

    def finish(self, run: _Run | None, deadline: float) -> Outcome:
        if run is None:
            outcome = Outcome((), False, 0.0, f"{MAX_PARKED_RUNS} earlier runs are still blocked")
        elif run.done.wait(max(0.0, deadline - time.monotonic())):
            outcome = Outcome(run.families, not run.error, run.duration, run.error)
        else:
            outcome = Outcome((), False, time.monotonic() - run.started,
                              f"timed out after {self.timeout:g}s")
        if not outcome.success and (self.last is None or self.last.error != outcome.error):
            log.warning("collector failed", extra={"collector": self.name, "error": outcome.error})
        self.last = outcome
        return outcome


class ScrapeRegistry:
    """Gathers every enabled gpuscope collector per scrape and renders the result."""

    def __init__(self, collectors: Sequence[Collector], timeout: float) -> None:
        self.runners = [CollectorRunner(collector, timeout) for collector in collectors]
        self.timeout = timeout
        self.ever_succeeded = threading.Event()
        self._renderer = TextRenderer()
        self._build_info = catalog.BUILD_INFO.family()
        self._build_info.add(1, __version__, platform.python_version())

    def collect(self) -> Iterator[catalog.Family]:
        runs = [(runner, runner.start()) for runner in self.runners]
        deadline = time.monotonic() + self.timeout
        success = catalog.COLLECTOR_SUCCESS.family()
        duration = catalog.COLLECTOR_DURATION.family()
        for runner, run in runs:
            outcome = runner.finish(run, deadline)
            yield from outcome.families
            success.add(1 if outcome.success else 0, runner.name)
            duration.add(outcome.duration, runner.name)
            if outcome.success:
                self.ever_succeeded.set()
        yield success
        yield duration
        yield self._build_info

    def render(self) -> str:
        """One scrape in the Prometheus text format."""
        return self._renderer.render(self.collect())
