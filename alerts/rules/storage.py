"""Storage rules: the Lustre client's fleet series and alerts."""

from __future__ import annotations

from alerts.records import (
    FS_OPERATION_RATES,
    FS_RATES,
    TARGET_CLIENTS_UNHEALTHY,
    TARGET_RECONNECTS,
    TARGET_RPCS_IN_FLIGHT,
    counter_rise,
    fleet_rate,
)
from alerts.rules.base import Alert, Group, Record
from alerts.settings import Settings
from exporter import catalog as c


def storage_records(s: Settings) -> list[Group]:
    """Lustre fleet series for the dashboards: per filesystem, operation and target, never per node."""
    return [
        Group("gpuscope-storage-fs-dashboards", (
            *(Record(record, fleet_rate(metric, "cluster, fs")) for metric, record in FS_RATES.items()),
            *(Record(record, fleet_rate(metric, "cluster, fs, operation"))
              for metric, record in FS_OPERATION_RATES.items()),
        )),
        Group("gpuscope-storage-target-dashboards", (
            Record(TARGET_CLIENTS_UNHEALTHY,
                   f"sum by (cluster, fs, target) ({c.LUSTRE_IMPORT_HEALTHY.name} == bool 0)"),
            Record(TARGET_RPCS_IN_FLIGHT, f"sum by (cluster, fs, target) ({c.LUSTRE_RPCS_IN_FLIGHT.name})"),
            Record(TARGET_RECONNECTS,
                   f"sum by (cluster, fs, target) {counter_rise(c.LUSTRE_CONNECT_ATTEMPTS.name, '5m')}"),
        )),
    ]


def storage_alerts(s: Settings) -> list[Group]:
    read, write = c.LUSTRE_READ_BYTES.name, c.LUSTRE_WRITE_BYTES.name
    return [Group("gpuscope-storage", (
        Alert("LustreTargetDisconnected", f"{c.LUSTRE_IMPORT_HEALTHY.name} == 0", s.lustre_disconnected_for,
              "critical", "A Lustre target is not connected",
              "{{ $labels.instance }} has lost its connection to {{ $labels.fs }} {{ $labels.target }}: I/O to "
              "it blocks."),
        Alert("LustreClientEvicted",
              f"{c.LUSTRE_IMPORT_STATE.name} == 9"
              f" or {counter_rise(c.LUSTRE_CONNECT_ATTEMPTS.name, '10m')} > 0",
              "0m", "warning", "A Lustre client was evicted or had to reconnect",
              "{{ $labels.instance }} was evicted by or reconnected to {{ $labels.fs }} {{ $labels.target }}."),
        Alert("LustreHealthCheckFailed", f"{c.LUSTRE_HEALTH_CHECK.name} == 0", s.lustre_health_for, "warning",
              "The Lustre client reports itself unhealthy",
              "health_check on {{ $labels.instance }} is not 'healthy'."),
    )), Group("gpuscope-storage-io", (
        Alert("LustreIoStalled",
              f"({c.LUSTRE_RPCS_IN_FLIGHT.name} > 0 or {counter_rise(c.LUSTRE_RPC_TIMEOUTS.name, '5m')} > 0)"
              f" and on (instance, fs) (rate({read}[5m]) + rate({write}[5m])) == 0",
              s.lustre_stall_for, "critical", "Lustre I/O is stalled",
              "{{ $labels.instance }} has RPCs outstanding or timing out on {{ $labels.fs }} {{ $labels.target }} "
              "while no bytes move."),
    ))]
