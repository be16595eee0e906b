"""Prometheus text format (0.0.4) for catalog families, fast enough for thousands of series per scrape.

A node's series are nearly the same from one scrape to the next, so the `name{labels} ` part of
each line is built once and cached; a scrape then costs one dictionary lookup and one number
formatting per sample. prometheus_client's generic encoder spent more time than reading the
files did (see bench/rdma_scrape.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from exporter.catalog import Family, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Series churn (devices coming and going) must not grow the cache without bound.
MAX_CACHED_SERIES = 200_000


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """Go-compatible number text: integers without a fraction, +Inf/-Inf/NaN spelled as Prometheus does."""
    if type(value) is int:
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def header(metric: Metric) -> str:
    return f"# HELP {metric.name} {_escape_help(metric.help)}\n# TYPE {metric.name} {metric.type}\n"


class TextRenderer:
    """Renders families to exposition text, caching each series' line prefix across scrapes."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, tuple[str, ...]], str] = {}
        self._headers: dict[str, str] = {}

    def render(self, families: Iterable[Family]) -> str:
        out: list[str] = []
        prefixes = self._prefixes
        if len(prefixes) > MAX_CACHED_SERIES:
            prefixes.clear()
        for family in families:
            metric = family.metric
            if not family.samples:
                continue
            head = self._headers.get(metric.name)
            if head is None:
                head = self._headers[metric.name] = header(metric)
            out.append(head)
            name = metric.name
            for labels, value in family.samples:
                prefix = prefixes.get((name, labels))
                if prefix is None:
                    prefix = prefixes[name, labels] = self._prefix(metric, labels)
                out.append(prefix)
                out.append(format_value(value))
                out.append("\n")
        return "".join(out)

    @staticmethod
    def _prefix(metric: Metric, labels: tuple[str, ...]) -> str:
        if len(labels) != len(metric.labels):
            raise ValueError(f"{metric.name}: {len(labels)} label values for labels {metric.labels}")
        pairs = ",".join(f'{key}="{_escape_label(value)}"' for key, value in zip(metric.labels, labels, strict=True)
                         if value != "")
        return f"{metric.name}{{{pairs}}} " if pairs else f"{metric.name} "
