"""`gpuscope dashboards render`: a PNG preview of each dashboard, drawn from live Prometheus data.

For reviewers without Grafana: every panel is placed by its grid position and drawn from the
results of its own queries (a range for time series and state timelines, the last value for stats
and tables), with the template variables set on the command line.
"""

from __future__ import annotations

import os
import re
import time

import requests

from dashboards.build import dashboard_json

GRID_ROW_INCHES = 0.45
WIDTH_INCHES = 22.0


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expr


def _regex_escape(value: str) -> str:
    """Escapes a value as Grafana does for a Prometheus regex inside a PromQL string literal."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\\\1", value)


def resolve_derived(data: dict, prometheus: str, values: dict[str, str], at: float | None = None) -> dict[str, str]:
    """`values` plus the hidden query_result variables, each the alternation of every value it captures,
    as Grafana expands an all-selected multi-value variable; evaluated now, or at `at`."""
    resolved = dict(values)
    for variable in data["templating"]["list"]:
        query = variable.get("query") or ""
        if variable["name"] in resolved or not query.startswith("query_result("):
            continue
        capture, found = re.compile(variable["regex"].strip("/")), set()
        for result in _query(prometheus, substitute(query[len("query_result("):-1], resolved), 0, True, at):
            text = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(result["metric"].items())) + "}"
            if match := capture.search(text):
                found.add(match[1])
        resolved[variable["name"]] = "(" + "|".join(_regex_escape(v) for v in sorted(found)) + ")"
    return resolved


def _legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")


def _query(base: str, expr: str, minutes: int, instant: bool, at: float | None = None) -> list[dict]:
    end = time.time() if at is None else at
    if instant:
        params, path = {"query": expr, "time": end}, "query"
    else:
        params = {"query": expr, "start": end - minutes * 60, "end": end, "step": max(15, minutes * 60 // 240)}
        path = "query_range"
    response = requests.get(f"{base}/api/v1/{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()["data"]["result"]


def render_dashboard(data: dict, prometheus: str, values: dict[str, str], path: str, minutes: int = 15) -> int:
    """Draws one dashboard into `path`; returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = resolve_derived(data, prometheus, values)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in data["panels"])
    figure = plt.figure(figsize=(WIDTH_INCHES, rows * GRID_ROW_INCHES + 0.6))
    figure.suptitle(data["title"], x=0.01, ha="left", fontsize=14)
    with_data = 0
    for panel in data["panels"]:
        pos = panel["gridPos"]
        box = (pos["x"] / 24 + 0.01, 1 - (pos["y"] + pos["h"]) / rows * 0.95 - 0.03, pos["w"] / 24 - 0.02,
               pos["h"] / rows * 0.95 - 0.04)
        axes = figure.add_axes(box)
        axes.set_title(panel["title"], fontsize=9, loc="left")
        instant = panel["type"] in ("stat", "table")
        limits = {t["options"]["configRefId"] for t in panel.get("transformations", []) if t["id"] == "configFromData"}
        series, thresholds = [], []
        for target in panel["targets"]:
            is_limit = target["refId"] in limits
            for result in _query(prometheus, substitute(target["expr"], values), minutes, instant or is_limit):
                if is_limit:
                    thresholds.append(float(result["value"][1]))
                else:
                    series.append((_legend(target.get("legendFormat", ""), result["metric"]), result))
        with_data += bool(series)
        _draw(axes, panel["type"], series)
        for threshold in thresholds:  # as Grafana's dashed threshold line
            axes.axhline(threshold, color="red", linestyle="--", linewidth=1)
    figure.savefig(path, dpi=60)
    plt.close(figure)
    return with_data


def _draw(axes, kind: str, series: list[tuple[str, dict]]) -> None:
    axes.tick_params(labelsize=6)
    if not series:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", color="grey", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    if kind in ("stat", "table"):
        axes.set_axis_off()
        if kind == "stat":
            axes.text(0.5, 0.4, f"{float(series[0][1]['value'][1]):.4g}", ha="center", va="center", fontsize=22,
                      transform=axes.transAxes)
        else:
            lines = [f"{name or 'value'}: {float(result['value'][1]):.4g}" for name, result in series[:8]]
            axes.text(0.01, 0.95, "\n".join(lines), ha="left", va="top", fontsize=7, family="monospace",
                      transform=axes.transAxes)
        return
    start = min(float(result["values"][0][0]) for _, result in series)
    for name, result in series[:16]:
        xs = [(float(t) - start) / 60 for t, _ in result["values"]]
        ys = [float(v) for _, v in result["values"]]
        axes.plot(xs, ys, label=name, linewidth=1)
    axes.set_xlabel("minutes", fontsize=6)
    if len(series) <= 16:
        axes.legend(fontsize=5, loc="upper left", ncol=2)


def render_all(prometheus: str, out_dir: str, values: dict[str, str], minutes: int = 15) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for uid, data in dashboard_json().items():
        path = os.path.join(out_dir, f"{uid}.png")
        render_dashboard(data, prometheus.rstrip("/"), values, path, minutes)
        paths.append(path)
    return paths
