"""The one settings object of the rules and the dashboards, as a monitoring mixin's `_config`.

Which series are gpuscope's (`selector`), what the cluster and node labels are called, each alert's
thresholds and durations (every default with the public evidence behind it), and which
alerts are on at what severity. Users override any of them in one YAML file read by both
`gpuscope alerts build --config FILE` and `gpuscope dashboards build --config FILE`; keys are the
field names below, plus `alerts:` (alert name to `enabled` and/or `severity`). docs/configuration.md
shows an example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from alerts import promql
from exporter import catalog
from toolkit import durations
from toolkit.configfile import ConfigError, load_yaml

SEVERITIES = ("critical", "warning", "info")
# The scrape (and rule evaluation) interval gpuscope ships (Helm's ServiceMonitor, the kustomize base,
# docs/deployment.md). Every range a rule reads holds at least MIN_SCRAPES_PER_WINDOW of them: rate()
# needs two samples, and four ride over one missed scrape. tests/test_alert_rules.py holds both.
SCRAPE_INTERVAL = "15s"
MIN_SCRAPES_PER_WINDOW = 4
_LABEL_NAME = re.compile(r"^[a-zA-Z_]\w*$")


class SettingsError(ValueError):
    """A bad override, phrased as one line naming the file and the key."""


# Each threshold's unit, which a settings file's value is checked against: fraction (0 to 1), factor
# (above 0), duration (a PromQL duration: 30s, 10m), seconds (a number: the exporter's own clock,
# compared in PromQL as a number), count (a whole number above 0), and the units of the metric a
# threshold is compared with (celsius, bytes_per_second, per_second, per_minute: 0 or more).
UNITS = ("fraction", "factor", "duration", "seconds", "count", "celsius", "bytes_per_second", "per_second",
         "per_minute")


def setting(unit: str, default: Any) -> Any:
    """A settings field with its unit."""
    assert unit in UNITS, unit
    return field(default=default, metadata={"unit": unit})


@dataclass(frozen=True)
class Settings:
    # Label matchers on every gpuscope_* series a rule or panel reads, and on `up` for
    # GpuscopeExporterDown: only the exporters' own scrape job counts, so a federated copy or a
    # second job scraping the same targets never doubles a median or breaks a join.
    selector: str = 'job="gpuscope"'
    # The same for the remediation receiver's own metrics (`gpuscope remediate`, scraped as its own job).
    remediation_selector: str = 'job="gpuscope-remediate"'
    # The label naming the cluster (fleet records and dashboards group and filter by it) and the one
    # naming the node (peer medians, joins, annotations).
    cluster_label: str = "cluster"
    node_label: str = "instance"
    # Alerts switched off, and severities overridden: `alerts: {Name: {enabled: false, severity: info}}`.
    disabled_alerts: frozenset[str] = frozenset()
    severities: tuple[tuple[str, str], ...] = ()
    # A GPU counts as busy above this utilization: stragglers and stalls are judged on busy GPUs only,
    # so an idle node or an idle job never looks slow (the trap in issue 5).
    busy_utilization: float = setting("fraction", 0.5)
    # Straggler: below this fraction of its peers' median (clock or SM activity). Healthy fleets show
    # a few percent of spread (Meta: 1-2 % diurnal swings); nvidia-resiliency-ext flags ranks below
    # 0.7-0.75 of the best, so 0.85 of the median catches real stragglers without flapping.
    straggler_ratio: float = setting("fraction", 0.85)
    # "Persistently": five scrapes in a row below the peers (nvidia-resiliency-ext scores over a window;
    # MegaScale likewise). One minute keeps a straggler's ticket within 150 s and the rank a job waits
    # for within 180 s (docs/alerts.md, time to page); the traps (checkpoints, evaluation phases, a
    # 45 s input pause, pipeline imbalance) are excluded by the busy and whole-job conditions, not by time.
    straggler_for: str = setting("duration", "1m")
    # The rank a synchronous job waits for (issue 15). Waiting GPUs keep 100 % utilization but fewer SMs
    # are busy (88 % -> 61 % measured); the rank they wait for keeps its pace, so it stands this far
    # above the job's median SM activity...
    busiest_ratio: float = setting("factor", 1.25)
    # ...while the job's median fell below this fraction of its own recent level (healthy pipeline
    # imbalance, first and last stages always busier, leaves the median where it was).
    job_slowdown_ratio: float = setting("fraction", 0.85)
    # How far back "its own recent level" looks; after this long a persistent straggler is the new normal.
    job_baseline_window: str = setting("duration", "6h")
    # Jobs this small have no peers to compare with (a 2-GPU job's median is its own straggler).
    straggler_min_gpus: int = setting("count", 3)
    # NCCL Inspector: the rank everyone waits for has the shortest collective time; flag a rank below
    # this fraction of its communicator's median while that median rose above its recent low by...
    nccl_fast_rank_ratio: float = setting("fraction", 0.5)
    nccl_rise_ratio: float = setting("factor", 1.5)
    # A communicator's bus bandwidth below this fraction of its recent high (NcclBandwidthDegraded); the
    # nodes holding ranks within 10 % of the slowest are named.
    nccl_bandwidth_drop_ratio: float = setting("fraction", 0.5)
    # NCCL RAS (issue 26): a communicator whose progress stood still this long across the leader's reports
    # while most of its job's GPUs spin (pinned utilization at near-idle power: NCCL kernels waiting) is
    # hung. Longer than a 45 s input-pipeline pause of one rank (the leader sees at most 45 s of it), short
    # enough to page within 90 s (PyTorch's watchdog aborts at 10 min, NVRx's in-job restart acts at 60-90 s).
    nccl_hang_seconds: float = setting("seconds", 50.0)
    nccl_spinning_fraction: float = setting("fraction", 0.5)
    # NCCL Inspector rewrites a GPU's file only when collectives completed since its last dump (every
    # 30 s at least in Prometheus mode): a job none of whose files was rewritten for 1.5 dump intervals,
    # while most of its GPUs spin, hangs. Set it to 1.5 x NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS.
    nccl_inspector_stale_seconds: float = setting("seconds", 45.0)
    # HW thermal / HW slowdown / power brake are paged on (NVSentinel, NVIDIA guidance); one scrape
    # interval means two samples in a row agree, which rides over a single sampling blip and pages
    # within 60 s.
    hw_slowdown_for: str = setting("duration", "15s")
    # SW thermal slowdown is a warning when sustained.
    sw_thermal_for: str = setting("duration", "10m")
    # Degrees of margin to the GPU's own slowdown limit below which we warn.
    temperature_margin_celsius: float = setting("celsius", 5.0)
    # HBM within this many degrees of its own memory_max limit.
    hbm_margin_celsius: float = setting("celsius", 5.0)
    # NCCL hang signature (nccl #968, #2213): utilization pinned, power near idle (~70 W of 700 W on H100).
    stall_utilization: float = setting("fraction", 0.95)
    stall_power_fraction: float = setting("fraction", 0.25)
    stall_network_bytes_per_second: float = setting("bytes_per_second", 1e6)
    # Where neither RAS nor Inspector names the rank: the signature in two samples in a row. Its EFA rate
    # reads a 1 m window (four samples), flat after 45 s without traffic, so two flat samples need a
    # minute and a 45 s input-pipeline pause never pages (tests/rules/time_to_page.yml); the page
    # comes within 120 s.
    stall_for: str = setting("duration", "15s")
    # EFA stall: a node's traffic below this fraction of the median node while that median is busy.
    efa_stall_fraction: float = setting("fraction", 0.05)
    efa_busy_bytes_per_second: float = setting("bytes_per_second", 1e9)
    # Two samples in a row (30 s without traffic; evaluated every 5 s): pages within 60 s.
    efa_stall_for: str = setting("duration", "15s")
    # AWS's own EFA health check warns on any rx_drops or retrans_timeout_events; no numeric thresholds
    # are published, so any increase within a minute, seen by two evaluations (an exporter's glitch
    # is not one): a ticket within 90 s.
    efa_error_for: str = setting("duration", "15s")
    # NVLink CRC errors at this rate per second (DCGM health check); replay/recovery on any increase.
    nvlink_crc_per_second: float = setting("per_second", 100.0)
    # PCIe replays per minute above which a Gen5 x16 link is suspect (NVIDIA field guidance, ~31/min).
    pcie_replays_per_minute: float = setting("per_minute", 31.0)
    pcie_degraded_for: str = setting("duration", "10m")
    # XIDs from NVIDIA's catalog (exporter/catalog.py's XID_*, which `gpuscope check` reads too): page on these,
    # warn on these, inform the job owner of these.
    xid_critical: tuple[int, ...] = catalog.XID_CRITICAL
    xid_warning: tuple[int, ...] = catalog.XID_WARNING
    xid_application: tuple[int, ...] = catalog.XID_APPLICATION
    xid_window: str = setting("duration", "10m")
    gpu_lost_for: str = setting("duration", "1m")
    rdma_port_down_for: str = setting("duration", "2m")
    remap_pending_for: str = setting("duration", "5m")
    # DCGM's health check (issue 29): a FAIL pages after two checks (one check's glitch never pages),
    # a WARN warns only when it lasts (a warning that clears within this is noise).
    dcgm_fail_for: str = setting("duration", "15s")
    dcgm_warn_for: str = setting("duration", "15m")
    lustre_disconnected_for: str = setting("duration", "2m")
    lustre_stall_for: str = setting("duration", "5m")
    lustre_health_for: str = setting("duration", "5m")
    exporter_down_for: str = setting("duration", "5m")
    collector_failing_for: str = setting("duration", "10m")
    # Goodput (docs/goodput.md). A job's GPU counts as idle below this utilization averaged over 5
    # minutes: a 30 s checkpoint every 10 minutes stays above it, a job that stopped computing does not.
    idle_utilization: float = setting("fraction", 0.05)
    # Dollars per GPU-hour by instance type, for the cost records. Defaults: AWS's EC2 Capacity Blocks
    # for ML pricing page (aws.amazon.com/ec2/capacityblocks/pricing/), "Effective Accelerator Hourly
    # Rate", US East, as listed for reservations until 2025-01-01. Put your own rate (on-demand, Savings
    # Plan, reservation) per type: `gpu_hour_prices: {p5.48xlarge: 6.88}`; a type without one has no cost.
    gpu_hour_prices: tuple[tuple[str, float], ...] = (("p5.48xlarge", 4.916), ("p4d.24xlarge", 1.844))
    runbook_base_url: str = "https://github.com/gpuscope/gpuscope/blob/main/alerts/runbooks"

    @property
    def label_names(self) -> dict[str, str]:
        """gpuscope's canonical label names to the user's."""
        return {"instance": self.node_label, "cluster": self.cluster_label}

    def expr(self, expr: str) -> str:
        """A PromQL expression written in canonical labels, for these settings (alerts/promql.py)."""
        return promql.localize(expr, self.selector, self.label_names)

    def template(self, text: str) -> str:
        """An annotation or a legend written in canonical labels, for these settings."""
        return promql.localize_template(text, self.label_names)

    def severity(self, alert: str, default: str) -> str:
        return dict(self.severities).get(alert, default)


# Keys of the settings file that are not plain fields.
_SPECIAL = {"disabled_alerts", "severities", "gpu_hour_prices"}


def load_settings(path: str = "", alert_names: frozenset[str] = frozenset()) -> Settings:
    """Defaults, overridden by the YAML file at `path` if given. `alert_names` are the alerts that
    exist, so a misspelt name under `alerts:` is an error, not a silently ignored override."""
    if not path:
        return Settings()
    try:
        data = load_yaml(path, "settings")
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings {path}: must be a mapping of setting names to values")
    known = {f.name for f in fields(Settings)} - _SPECIAL
    overrides: dict[str, Any] = {}
    for key, value in data.items():
        if key == "alerts":
            overrides.update(_alert_overrides(path, value, alert_names))
        elif key == "gpu_hour_prices":
            overrides[key] = _prices(path, value)
        elif key in known:
            overrides[key] = _field_value(path, key, value)
        else:
            raise SettingsError(f"settings {path}: unknown setting {key!r}")
    return replace(Settings(), **overrides)


def in_unit(unit: str) -> tuple[str, ...]:
    """The settings measured in `unit`."""
    return tuple(f.name for f in fields(Settings) if f.metadata.get("unit") == unit)


def _field_value(path: str, key: str, value: Any) -> Any:
    default = getattr(Settings(), key)
    try:
        converted = tuple(int(v) for v in value) if isinstance(default, tuple) else type(default)(value)
    except (TypeError, ValueError):
        raise SettingsError(f"settings {path}: {key}: expected {type(default).__name__}, got {value!r}") from None
    unit = next(f.metadata.get("unit", "") for f in fields(Settings) if f.name == key)
    problem = _out_of_unit(unit, converted)
    if problem:
        raise SettingsError(f"settings {path}: {key}: {converted!r} is not {problem}")
    if key in ("cluster_label", "node_label") and not _LABEL_NAME.match(converted):
        raise SettingsError(f"settings {path}: {key}: {converted!r} is not a Prometheus label name")
    if key in ("selector", "remediation_selector") and not promql.MATCHERS.match(converted):
        raise SettingsError(f"settings {path}: {key}: {converted!r} is not a list of label matchers "
                            'such as job="gpuscope" (rules need it to tell gpuscope\'s `up` series apart)')
    return converted


def _out_of_unit(unit: str, value: Any) -> str:
    """What a value must be and is not, in its unit's words; empty when it fits (or has no unit)."""
    if not unit:
        return ""
    if unit == "duration":
        try:
            durations.seconds(value)
        except ValueError:
            return "a duration such as 30s, 10m or 6h"
        return "" if str(value)[-1].isalpha() else "a duration with its unit, such as 30s, 10m or 6h"
    checks = {"fraction": (lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
              "factor": (lambda v: v > 0, "a factor above 0"),
              "seconds": (lambda v: v > 0, "a number of seconds above 0"),
              "count": (lambda v: v >= 1, "a count of 1 or more")}
    fits, words = checks.get(unit, (lambda v: v >= 0, f"0 or more ({unit})"))
    return "" if fits(value) else words


def _prices(path: str, value: Any) -> tuple[tuple[str, float], ...]:
    """`gpu_hour_prices: {instance type: dollars per GPU-hour}`, replacing the defaults."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                              and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
        raise SettingsError(f"settings {path}: gpu_hour_prices: must map instance types to dollars per GPU-hour "
                            "(numbers, 0 or more), e.g. {p5.48xlarge: 6.88}")
    return tuple((kind, float(price)) for kind, price in value.items())


def _alert_overrides(path: str, value: Any, alert_names: frozenset[str]) -> dict[str, Any]:
    """`alerts: {Name: {enabled: bool, severity: critical|warning|info}}` as disabled_alerts and severities."""
    if not isinstance(value, dict):
        raise SettingsError(f"settings {path}: alerts: must map alert names to {{enabled, severity}}")
    disabled, severities = set(), []
    for name, override in value.items():
        where = f"settings {path}: alerts.{name}"
        if alert_names and name not in alert_names:
            raise SettingsError(f"{where}: no such alert (known: {', '.join(sorted(alert_names))})")
        if not isinstance(override, dict) or not override or set(override) - {"enabled", "severity"}:
            raise SettingsError(f"{where}: must be a mapping with enabled and/or severity")
        if not isinstance(override.get("enabled", True), bool):
            raise SettingsError(f"{where}.enabled: expected true or false, got {override['enabled']!r}")
        if override.get("enabled") is False:
            disabled.add(name)
        if "severity" in override:
            if override["severity"] not in SEVERITIES:
                raise SettingsError(f"{where}.severity: {override['severity']!r} is not one of {', '.join(SEVERITIES)}")
            severities.append((name, override["severity"]))
    return {"disabled_alerts": frozenset(disabled), "severities": tuple(severities)}
