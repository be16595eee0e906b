"""Alert thresholds and durations: named settings, each default with the evidence behind it.

Users override any of them in one YAML file (`gpuscope alerts build --config FILE`), keys being the
field names below. Sources are REFERENCE.md §4 and the documents it cites.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from exporter.config import ConfigError, load_yaml


class SettingsError(ValueError):
    """A bad override, phrased as one line naming the file and the key."""


@dataclass(frozen=True)
class Settings:
    # Which Prometheus job scrapes the exporters (GpuscopeExporterDown).
    exporter_job: str = "gpuscope"
    # A GPU counts as busy above this utilization: stragglers and stalls are judged on busy GPUs only,
    # so an idle node or an idle job never looks slow (the trap in issue 5).
    busy_utilization: float = 0.5
    # Straggler: below this fraction of its peers' median (clock or SM activity). Healthy fleets show
    # a few percent of spread (Meta: 1-2 % diurnal swings); nvidia-resiliency-ext flags ranks below
    # 0.7-0.75 of the best, so 0.85 of the median catches real stragglers without flapping.
    straggler_ratio: float = 0.85
    # "Persistently": several minutes (nvidia-resiliency-ext scores over a window; MegaScale likewise).
    straggler_for: str = "5m"
    # HW thermal / HW slowdown / power brake are paged on (NVSentinel, NVIDIA guidance); one minute
    # rides over a single sampling blip.
    hw_slowdown_for: str = "1m"
    # SW thermal slowdown is a warning when sustained.
    sw_thermal_for: str = "10m"
    # Degrees of margin to the GPU's own slowdown limit below which we warn.
    temperature_margin_celsius: float = 5.0
    # HBM within this many degrees of its own memory_max limit.
    hbm_margin_celsius: float = 5.0
    # NCCL hang signature (nccl #968, #2213): utilization pinned, power near idle (~70 W of 700 W on H100).
    stall_utilization: float = 0.95
    stall_power_fraction: float = 0.25
    stall_network_bytes_per_second: float = 1e6
    stall_for: str = "5m"
    # EFA stall: a node's traffic below this fraction of the median node while that median is busy.
    efa_stall_fraction: float = 0.05
    efa_busy_bytes_per_second: float = 1e9
    efa_stall_for: str = "2m"
    # AWS's own EFA health check warns on any rx_drops or retrans_timeout_events; no numeric thresholds
    # are published, so any increase sustained over this long.
    efa_error_for: str = "5m"
    # NVLink CRC errors at this rate per second (DCGM health check); replay/recovery on any increase.
    nvlink_crc_per_second: float = 100.0
    # PCIe replays per minute above which a Gen5 x16 link is suspect (NVIDIA field guidance, ~31/min).
    pcie_replays_per_minute: float = 31.0
    pcie_degraded_for: str = "10m"
    # XIDs from NVIDIA's catalog: page on these, warn on these, inform the job owner of these.
    xid_critical: tuple[int, ...] = (46, 48, 62, 64, 74, 79, 95, 109, 119, 120, 136, 140, 143, 154, 158)
    xid_warning: tuple[int, ...] = (32, 92, 94)
    xid_application: tuple[int, ...] = (13, 31, 43, 45, 63)
    xid_window: str = "10m"
    gpu_lost_for: str = "1m"
    remap_pending_for: str = "5m"
    lustre_disconnected_for: str = "2m"
    lustre_stall_for: str = "5m"
    lustre_health_for: str = "5m"
    exporter_down_for: str = "5m"
    collector_failing_for: str = "10m"
    runbook_base_url: str = "https://github.com/gpuscope/gpuscope/blob/main/alerts/runbooks"


def load_settings(path: str = "") -> Settings:
    """Defaults, overridden by the YAML file at `path` if given."""
    if not path:
        return Settings()
    try:
        data = load_yaml(path, "alert settings")
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    if not isinstance(data, dict):
        raise SettingsError(f"alert settings {path}: must be a mapping of setting names to values")
    known = {f.name: f for f in fields(Settings)}
    overrides: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise SettingsError(f"alert settings {path}: unknown setting {key!r}")
        default = getattr(Settings(), key)
        try:
            overrides[key] = tuple(int(v) for v in value) if isinstance(default, tuple) else type(default)(value)
        except (TypeError, ValueError):
            raise SettingsError(f"alert settings {path}: {key}: expected {type(default).__name__}, "
                                f"got {value!r}") from None
    return replace(Settings(), **overrides)
