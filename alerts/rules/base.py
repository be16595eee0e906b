"""What a rule is (Record, Alert, Group) and the parts a large family is read in."""

from __future__ import annotations

from dataclasses import dataclass

from alerts.settings import Settings


@dataclass(frozen=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()  # tells apart two rules of one alert with the same severity
    cost: str = ""  # the `cost` annotation (Prometheus formats only: Grafana's templates cannot query)

    def runbook(self, settings: Settings) -> str:
        return f"{settings.runbook_base_url}/README.md#{self.alert.lower()}"


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Record | Alert, ...]
    selector: str = ""  # another job's series (the remediation receiver's); "" the exporters' selector
    # Evaluated this often instead of every scrape interval: the cheap per-node groups whose pages have
    # tight targets (docs/alerts.md, time to page), where waiting up to a whole interval for the next
    # evaluation would cost a third of the budget.
    interval: str = ""


# Faster than the shipped scrape interval, so a sample is evaluated within 5 s of its arrival.
FAST_EVALUATION = "5s"


@dataclass(frozen=True)
class Part:
    """One part of a family too large for one group's read: its group name's suffix and its matcher."""

    suffix: str
    matcher: str

    def of(self, series: str, *matchers: str) -> str:
        """`series` (a metric or record name) selected by `matchers` and to this part."""
        return f"{series}{{{', '.join((*matchers, self.matcher))}}}"


# NCCL's per-rank series and DCGM's health series are eight a GPU: at 2,048 nodes one read of such a
# family is about 1 s on 2 cores, a rule group's whole budget (docs/scale). Their groups read them in
# parts, a group each, split by a label the result keeps, so the parts write disjoint series of one
# record or alert: a result per GPU splits by the GPU index's last digit (even on any node size), a
# result per communicator by collective (every rank of a communicator stays in one read).
GPU_HALVES = (Part("even-gpus", 'gpu=~".*[02468]"'), Part("odd-gpus", 'gpu!~".*[02468]"'))
# The early ranks join every rank's time to its communicator's median: a half of the ranks took up to
# 1.06 s on Prometheus and 1.3 s on VictoriaMetrics at 2,048 nodes, so they are read in quarters.
GPU_QUARTERS = tuple(Part(f"gpus-{digits}", f'gpu=~".*[{digits}]"') for digits in ("048", "159", "26", "37"))
_REDUCTIONS = "AllReduce|ReduceScatter|Reduce"
COLLECTIVE_HALVES = (Part("reductions", f'collective=~"{_REDUCTIONS}"'),
                     Part("other-collectives", f'collective!~"{_REDUCTIONS}"'))
