"""The thin layer between gpuscope's dashboards and grafanalib.

Dashboards are written against these few functions (a panel is a title, queries, a unit and a
size), so moving to Grafana's official SDK would change this module only. Panels are laid out
left to right in rows of 24 columns; every query goes through the `datasource` variable; uids are
stable so re-importing a dashboard updates it. Queries are written in gpuscope's canonical labels;
`render` fits every expression, legend and variable to the settings (selector, cluster and node
label names), as the alert rules are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grafanalib import core as g

from alerts import records
from alerts.settings import Settings

DATASOURCE = "${datasource}"
WIDTH = 24
# Firing alerts marked on every time axis, so a dip lines up with the page it caused.
ALERT_ANNOTATIONS = {
    "name": "gpuscope alerts", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
    "expr": 'ALERTS{alertstate="firing", alertname!~"Gpuscope.*"}', "step": "60s",
    "titleFormat": "{{alertname}}", "textFormat": "{{instance}} {{gpu}}{{device}}{{target}}",
    "tagKeys": "severity",
}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    # A threshold query is not drawn as a series: Grafana's "config from query results" turns its
    # latest value into a threshold line, so each panel marks the GPU's own limit, not a constant.
    threshold: bool = False


@dataclass
class Panel:
    kind: str  # timeseries, stat, table, bargauge, heatmap, state_timeline
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""
    empty_when_healthy: bool = False  # error panels: no data on a healthy cluster is the good case
    max_value: float | None = None
    extra: dict = field(default_factory=dict)


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def limit(expr: str, legend: str) -> Query:
    """A query whose latest value becomes a threshold line named `legend` on its panel."""
    return Query(expr, legend, threshold=True)


@dataclass(frozen=True)
class Derived:
    """A hidden variable: every value of `label` in `expr`'s result, all selected (a regex alternation)."""

    name: str
    expr: str
    label: str


def derived(name: str, expr: str, label: str) -> Derived:
    return Derived(name, expr, label)


def _derived(variable: Derived, s: Settings) -> g.Template:
    label = s.label_names.get(variable.label, variable.label)
    return g.Template(name=variable.name, dataSource=DATASOURCE, query=f"query_result({s.expr(variable.expr)})",
                      regex=f'/{label}="([^"]+)"/', includeAll=True, multi=True, default="$__all", hide=2, refresh=2)


# Chained template variables, each a (label, query, options); every view filters by cluster.
_ALL = {"includeAll": True, "multi": True, "allValue": ".*"}
VARIABLES = {
    "cluster": ("cluster", "label_values(gpuscope_build_info, cluster)", {"includeAll": True, "allValue": ".*"}),
    "instance": ("node", 'label_values(gpuscope_build_info{cluster=~"$cluster"}, instance)', _ALL),
    # The node and GPU views show one node: a single choice, so they never open on the whole fleet.
    "node": ("node", 'label_values(gpuscope_build_info{cluster=~"$cluster"}, instance)', {}),
    "gpu": ("GPU", 'label_values(gpuscope_gpu_up{cluster=~"$cluster", instance=~"$instance"}, gpu)', _ALL),
    "job_id": ("Slurm job", 'label_values(gpuscope_gpu_job_info{cluster=~"$cluster"}, job_id)', {}),
    # One collective at a time: a half-fleet job's per-rank series of every collective are one read of
    # 65,536 series, 1.2 s at 2,048 nodes; one collective's, under 0.5 s (docs/scale).
    "collective": ("NCCL collective", f'label_values({records.NCCL_EXEC_MEDIAN}'
                                      f'{{cluster=~"$cluster", job_id="$job_id"}}, collective)', {}),
    "namespace": ("namespace", 'label_values(gpuscope_gpu_pod_info{cluster=~"$cluster"}, namespace)', {}),
    "pod": ("pods", 'label_values(gpuscope_gpu_pod_info{cluster=~"$cluster", namespace="$namespace"}, pod)',
            {**_ALL, "default": "$__all"}),
}


def variables(s: Settings, *chosen: str | Derived) -> g.Templating:
    """Template variables: datasource, then those named in VARIABLES (`node` is a single-choice
    `instance`) or derived, their queries fitted to the settings."""
    def template(name: str) -> g.Template:
        label, query, options = VARIABLES[name]
        return g.Template(name="instance" if name == "node" else name, label=label, dataSource=DATASOURCE,
                          query=s.expr(query), refresh=2, **options)

    datasource = g.Template(name="datasource", label="Prometheus", query="prometheus", type="datasource")
    return g.Templating(list=[datasource, *(template(v) if isinstance(v, str) else _derived(v, s) for v in chosen)])


def _targets(panel: Panel, s: Settings) -> list[g.Target]:
    """Queries through the datasource variable; tables and stats show one value, so they ask for an
    instant one (tables in table format) instead of a range they would reduce to its last point."""
    table = panel.kind == "table"
    return [g.Target(expr=s.expr(query.expr), legendFormat=s.template(query.legend), refId=_ref(n),
                     datasource=DATASOURCE,
                     intervalFactor=1, instant=panel.kind in ("table", "stat"),
                     format="table" if table else "time_series")
            for n, query in enumerate(panel.queries)]


def _ref(n: int) -> str:
    return chr(ord("A") + n)


def _threshold_config(panel: Panel, s: Settings) -> dict:
    """Turns the panel's threshold queries into threshold lines (Grafana's configFromData transformation).

    Its only threshold handler appends a red step per mapping, so every limit maps to `threshold1`;
    the base steps hold green alone, so no made-up default line shows before the limits arrive.
    """
    limits = [(n, query) for n, query in enumerate(panel.queries) if query.threshold]
    if not limits:
        return {}
    transformations = [{"id": "configFromData", "options": {"configRefId": _ref(n), "mappings": [
        {"fieldName": s.template(query.legend), "handlerKey": "threshold1", "reducerId": "lastNotNull"}]}}
        for n, query in limits]
    steps = [{"color": "green", "value": None}]
    return {"transformations": transformations, "thresholdsStyleMode": "dashed",
            "extraJson": {"fieldConfig": {"defaults": {"thresholds": {"mode": "absolute", "steps": steps}}}}}


def _build(panel: Panel, number: int, pos: g.GridPos, s: Settings):
    common = {"title": panel.title, "dataSource": DATASOURCE, "targets": _targets(panel, s), "gridPos": pos,
              "id": number, "description": panel.description}
    if panel.kind == "timeseries":
        return g.TimeSeries(unit=panel.unit, legendDisplayMode="table", legendPlacement="right",
                            legendCalcs=["lastNotNull", "max"], **common, **_threshold_config(panel, s), **panel.extra)
    if panel.kind == "stat":
        return g.Stat(format=panel.unit, reduceCalc="lastNotNull", thresholds=[
            {"color": "green", "value": None}], **common, **panel.extra)
    if panel.kind == "table":
        return g.Table(unit=panel.unit, **common, **panel.extra)
    if panel.kind == "bargauge":
        return g.BarGauge(format=panel.unit, max=panel.max_value if panel.max_value is not None else 100,
                          thresholds=[{"color": "green", "value": None}], **common, **panel.extra)
    if panel.kind == "heatmap":
        return g.Heatmap(**common, **panel.extra)
    if panel.kind == "state_timeline":
        return g.StateTimeline(**common, **panel.extra)
    raise ValueError(f"unknown panel kind {panel.kind}")


@dataclass
class Board:
    """A dashboard as gpuscope describes it; `render()` makes the grafanalib object."""

    uid: str
    title: str
    description: str
    variable_names: tuple[str | Derived, ...]
    panels: list[Panel]
    links: tuple[tuple[str, str], ...] = ()


def dashboard(uid: str, title: str, description: str, variable_names: tuple[str | Derived, ...],
              panels: list[Panel], links: tuple[tuple[str, str], ...] = ()) -> Board:
    return Board(uid, title, description, variable_names, panels, links)


def _annotations(s: Settings) -> dict:
    return {**ALERT_ANNOTATIONS, "textFormat": s.template(ALERT_ANNOTATIONS["textFormat"])}


def render(board: Board, s: Settings) -> g.Dashboard:
    """The grafanalib dashboard for the settings, panels laid out left to right, wrapping at 24 columns."""
    uid, title, description, links = board.uid, board.title, board.description, board.links
    built, x, y, row_height = [], 0, 0, 0
    for number, panel in enumerate(board.panels, start=1):
        if x + panel.width > WIDTH:
            x, y, row_height = 0, y + row_height, 0
        built.append(_build(panel, number, g.GridPos(h=panel.height, w=panel.width, x=x, y=y), s))
        x, row_height = x + panel.width, max(row_height, panel.height)
    return g.Dashboard(
        uid=uid, title=title, description=description, tags=["gpuscope"], timezone="utc",
        annotations=g.Annotations(list=[_annotations(s)]),
        refresh="30s", time=g.Time("now-1h", "now"), templating=variables(s, *board.variable_names), panels=built,
        links=[g.DashboardLink(uri=f"/d/{uid}", title=title, keepTime=True, includeVars=True)
               for uid, title in links],
    )
