"""Inventory and agent rules: every expected part present, the exporters answering."""

from __future__ import annotations

from alerts.rules.base import Alert, Group
from alerts.settings import Settings
from exporter import catalog as c


def inventory_alerts(s: Settings) -> list[Group]:
    """What the node should have against what it shows, from the first scrape: no history needed, so
    a node that booted short of a GPU pages too. A type without expectations (not in the shipped
    inventory, or DMI unreadable) never pages here; a collector that fails is GpuscopeCollectorFailing."""
    def fewer(seen: str, component: str, collector: str) -> str:
        running = f'{c.COLLECTOR_SUCCESS.name}{{collector="{collector}"}} == 1'
        return (f"(count by (instance) ({seen}) or on (instance) 0 * ({running}))"
                f' < on (instance) {c.NODE_EXPECTED.name}{{component="{component}"}}'
                f" and on (instance) {running}")

    state = c.RDMA_PORT_STATE.name
    return [Group("gpuscope-inventory", (
        Alert("GpuMissing", fewer(c.GPU_UP.name, "gpus", "gpu"), s.gpu_lost_for, "critical",
              "A node has fewer GPUs than its instance type",
              "{{ $labels.instance }} shows {{ $value }} GPUs to NVML, fewer than its instance type has: a GPU "
              "fell off the bus or did not come up at boot."),
    )), Group("gpuscope-inventory-efa", (  # counts the 32 EFA devices of every node
        Alert("EfaDeviceMissing", fewer(f'{c.RDMA_DEVICE_INFO.name}{{efa="true"}}', "efa_devices", "rdma"),
              s.gpu_lost_for, "critical", "A node has fewer EFA devices than its instance type",
              "{{ $labels.instance }} shows {{ $value }} EFA devices, fewer than its instance type has: "
              "collectives over the missing ones fail or slow the job."),
    )), Group("gpuscope-inventory-links", (
        Alert("NvlinkInactive",
              f"{c.GPU_NVLINK_ACTIVE.name} < on (instance) group_left"
              f' {c.NODE_EXPECTED.name}{{component="nvlinks_per_gpu"}}',
              s.gpu_lost_for, "critical", "A GPU has fewer active NVLinks than its instance type",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has {{ $value }} NVLinks up, fewer than its instance "
              "type's GPUs have: collectives over NVLink slow down or fail."),
        # Unused ports of a multi-port card are down from boot; a port that was ACTIVE is the one to page on.
        Alert("RdmaPortDown", f"{state} != 4 and on (instance, device, port) max_over_time({state}[6h]) == 4",
              s.rdma_port_down_for, "warning", "An RDMA port that was active is down",
              "Port {{ $labels.port }} of {{ $labels.device }} on {{ $labels.instance }} is in state "
              "{{ $value }} (4 is ACTIVE); its physical state is in gpuscope_rdma_port_physical_state."),
    ))]


def agent_alerts(s: Settings) -> Group:
    return Group("gpuscope-agent", (
        Alert("GpuscopeExporterDown", f"up{{{s.selector}}} == 0", s.exporter_down_for, "critical",
              "The gpuscope exporter does not answer",
              "Prometheus cannot scrape gpuscope on {{ $labels.instance }}: nothing on this node is watched."),
        Alert("GpuscopeCollectorFailing", f"{c.COLLECTOR_SUCCESS.name} == 0", s.collector_failing_for, "warning",
              "A gpuscope collector keeps failing",
              "The {{ $labels.collector }} collector on {{ $labels.instance }} has failed for "
              f"{s.collector_failing_for}; its metrics are missing."),
    ))
