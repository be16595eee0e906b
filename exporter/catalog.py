"""The one list of gpuscope's metric names, types, help texts and labels.

Collectors build their families from these entries, and the dashboards, alert rules, docs
metric table and tests read the same entries, so a metric name is spelled in exactly one place.
Names follow the Prometheus conventions: the `gpuscope_` prefix, base units, `_total` on
counters, `_info` gauges (value 1) for metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
GAUGE = "gauge"


@dataclass(frozen=True)
class Metric:
    """A metric as exposed: full name (with `_total` for counters), type, help, label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    collector: str = ""
    source: str = ""

    def family(self) -> Family:
        """A fresh, empty family for one scrape."""
        return Family(self)


class Family:
    """Samples of one catalog metric gathered during a single scrape."""

    __slots__ = ("metric", "samples")

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.samples: list[tuple[tuple[str, ...], float]] = []

    def add(self, value: float, *label_values: str) -> None:
        """Append one sample; label values are given in the catalog's label order."""
        self.samples.append((label_values, value))


class Scrape:
    """The families of one collector run, each created on first use so absent hardware emits nothing."""

    __slots__ = ("families",)

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(self, metric: Metric) -> Family:
        family = self.families.get(metric.name)
        if family is None:
            family = self.families[metric.name] = metric.family()
        return family

    def add(self, metric: Metric, value: float, *label_values: str) -> None:
        self.family(metric).samples.append((label_values, value))


CATALOG: dict[str, Metric] = {}


def _define(kind: str, collector: str, name: str, help_: str, labels: tuple[str, ...], source: str) -> Metric:
    if name in CATALOG:
        raise ValueError(f"metric {name} defined twice")
    if (kind == COUNTER) != name.endswith("_total"):
        raise ValueError(f"metric {name}: counters and only counters end in _total")
    metric = Metric(name, kind, help_, labels, collector, source)
    CATALOG[name] = metric
    return metric


def counter(collector: str, name: str, help_: str, labels: tuple[str, ...] = (), source: str = "") -> Metric:
    return _define(COUNTER, collector, name, help_, labels, source)


def gauge(collector: str, name: str, help_: str, labels: tuple[str, ...] = (), source: str = "") -> Metric:
    return _define(GAUGE, collector, name, help_, labels, source)


# --- exporter self-metrics -------------------------------------------------------------------
BUILD_INFO = gauge("exporter", "gpuscope_build_info", "gpuscope version and the Python running it (value 1).",
                   ("version", "python_version"))
COLLECTOR_SUCCESS = gauge("exporter", "gpuscope_collector_success",
                          "1 if the collector finished within --collector.timeout without error, else 0.",
                          ("collector",))
COLLECTOR_DURATION = gauge("exporter", "gpuscope_collector_duration_seconds",
                           "Wall time the collector took in this scrape (the timeout when it overran).",
                           ("collector",))

# --- node identity ----------------------------------------------------------------------------------
NODE_INFO = gauge("identity", "gpuscope_node_info",
                  "The node's instance type (DMI or --node.instance-type), DMI vendor and instance id (value 1).",
                  ("instance_type", "vendor", "instance_id"), "class/dmi/id/{product_name,sys_vendor,board_asset_tag}")
NODE_EXPECTED = gauge("identity", "gpuscope_node_expected_components",
                      "What the instance type should have: gpus, efa_devices, nvlinks_per_gpu, nvswitches (absent "
                      "for a type the shipped inventory does not know).", ("component",), "exporter/inventory.py")

# --- RDMA / EFA ----------------------------------------------------------------------------------
_DEV = ("device",)
_PORT = ("device", "port")

RDMA_DEVICE_INFO = gauge(
    "rdma", "gpuscope_rdma_device_info",
    "RDMA device identity (value 1): driver, PCI address, NUMA node, firmware, driver version, EFA or not, "
    "link layer of its first port, and the PCI address of the GPU under the same PCIe switch (join with "
    "gpuscope_gpu_info's pci_bus_id).",
    ("device", "driver", "pci_address", "numa_node", "firmware", "driver_version", "efa", "link_layer",
     "gpu_pci_address"),
    "class/infiniband/<dev>/{device,fw_ver,ports/1/link_layer}, module/<driver>/version, the PCI hierarchy")
RDMA_PORT_RATE = gauge("rdma", "gpuscope_rdma_port_rate_bytes_per_second",
                       "Advertised port rate in bytes per second.", _PORT, "ports/<n>/rate")
# EFA ports report ACTIVE and LinkUp whatever happens (the driver hard-codes them), so these are
# exported for the other RDMA devices only (Mellanox NICs, InfiniBand).
RDMA_PORT_STATE = gauge("rdma", "gpuscope_rdma_port_state",
                        "Logical port state of a non-EFA port: 1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE, 5 ACTIVE_DEFER.",
                        _PORT, "ports/<n>/state")
RDMA_PORT_PHYSICAL_STATE = gauge(
    "rdma", "gpuscope_rdma_port_physical_state",
    "Physical state of a non-EFA port: 1 Sleep, 2 Polling, 3 Disabled, 4 PortConfigurationTraining, 5 LinkUp, "
    "6 LinkErrorRecovery, 7 PhyTest.", _PORT, "ports/<n>/phys_state")
RDMA_DEVICE_READ_SUCCESS = gauge(
    "rdma", "gpuscope_rdma_device_read_success",
    "1 if every counter file of the device was read and parsed in this scrape; 0 if one failed or "
    "an earlier read of this device is still blocked (its series are then absent).", _DEV)
RDMA_PORT_COUNTER = counter("rdma", "gpuscope_rdma_port_stat_total",
                            "Raw InfiniBand PMA port counter (ports/<n>/counters, counters_ext).",
                            ("device", "port", "counter"), "ports/<n>/counters/*")
RDMA_PORT_HW_COUNTER = counter("rdma", "gpuscope_rdma_port_hw_stat_total",
                               "Raw driver port counter without a gpuscope name of its own.",
                               ("device", "port", "counter"), "ports/<n>/hw_counters/*")
RDMA_DEVICE_HW_COUNTER = counter("rdma", "gpuscope_rdma_device_hw_stat_total",
                                 "Raw driver device counter without a gpuscope name of its own.",
                                 ("device", "counter"), "hw_counters/*")


def _efa_port(sysfs_name: str, name: str, help_: str) -> tuple[str, Metric]:
    return sysfs_name, counter("rdma", f"gpuscope_efa_{name}_total", help_, _PORT,
                               f"ports/<n>/hw_counters/{sysfs_name}")


# EFA port counters by sysfs file name (ports/<n>/hw_counters/ on kernels >= 5.15 and in the
# older combined layout). Meanings from the EFA driver (amzn-drivers) and the EC2 user guide's EFA pages.
EFA_PORT_COUNTERS: dict[str, Metric] = dict([
    _efa_port("tx_bytes", "transmit_bytes", "Bytes transmitted."),
    _efa_port("tx_pkts", "transmit_packets", "Packets transmitted."),
    _efa_port("rx_bytes", "receive_bytes", "Bytes received."),
    _efa_port("rx_pkts", "receive_packets", "Packets received."),
    _efa_port("rx_drops", "receive_drops", "Received packets dropped (AWS health checks warn on any)."),
    _efa_port("send_bytes", "send_bytes", "Bytes sent by send work requests."),
    _efa_port("send_wrs", "send_work_requests", "Send work requests posted."),
    _efa_port("recv_bytes", "recv_bytes", "Bytes received by receive work requests."),
    _efa_port("recv_wrs", "recv_work_requests", "Receive work requests completed."),
    _efa_port("rdma_read_wrs", "rdma_read_work_requests", "RDMA read work requests."),
    _efa_port("rdma_read_bytes", "rdma_read_bytes", "Bytes read by RDMA read."),
    _efa_port("rdma_read_wr_err", "rdma_read_work_request_errors", "RDMA read work requests that failed."),
    _efa_port("rdma_read_resp_bytes", "rdma_read_response_bytes", "Bytes served to remote RDMA reads."),
    _efa_port("rdma_write_wrs", "rdma_write_work_requests", "RDMA write work requests (driver 2.5+)."),
    _efa_port("rdma_write_bytes", "rdma_write_bytes", "Bytes written by RDMA write (driver 2.5+)."),
    _efa_port("rdma_write_wr_err", "rdma_write_work_request_errors", "RDMA write work requests that failed."),
    _efa_port("rdma_write_recv_bytes", "rdma_write_receive_bytes", "Bytes received by remote RDMA writes."),
    _efa_port("retrans_bytes", "retransmitted_bytes", "Bytes retransmitted (driver 2.17+, Nitro v4+)."),
    _efa_port("retrans_pkts", "retransmitted_packets", "Packets retransmitted (driver 2.17+, Nitro v4+)."),
    _efa_port("retrans_timeout_events", "retransmit_timeout_events",
              "Traffic timed out and the network path changed (driver 2.17+)."),
    _efa_port("unresponsive_remote_events", "unresponsive_remote_events",
              "A remote connection was unresponsive (driver 2.17+)."),
    _efa_port("impaired_remote_conn_events", "impaired_remote_connection_events",
              "A connection was impaired and rate-limited (driver 2.17+)."),
])

# Node totals of the EFA port counters that alerts and fleet panels read: the sum over every EFA
# device of the node, exported only in scrapes where every device was read (a missing device would
# look like a counter reset). At 2,048 nodes a rule over the per-device series reads 65,536 of them
# per counter; over these, 2,048 (bench/scale.py).
EFA_NODE_COUNTERS: dict[str, Metric] = {
    sysfs_name: counter("rdma", metric.name.replace("gpuscope_efa_", "gpuscope_efa_node_"),
                        f"{metric.help.rstrip('.')}, summed over every EFA device of the node.", (),
                        f"sum of ports/<n>/hw_counters/{sysfs_name} over the EFA devices")
    for sysfs_name, metric in EFA_PORT_COUNTERS.items()
    if sysfs_name in ("tx_bytes", "rx_bytes", "rx_drops", "retrans_pkts", "retrans_timeout_events",
                      "unresponsive_remote_events", "impaired_remote_conn_events", "rdma_read_wr_err",
                      "rdma_write_wr_err")
}

_VERBS_OPERATIONS = ("alloc_pd", "create_qp", "create_cq", "reg_mr", "alloc_ucontext", "create_ah", "mmap",
                     "alloc_mr", "get_dma_mr")
EFA_ADMIN_ERRORS = counter("rdma", "gpuscope_efa_admin_command_errors_total",
                           "Device admin commands that failed or never completed.", _DEV,
                           "hw_counters/cmds_err + no_completion_cmds")
EFA_VERBS_ERRORS = counter("rdma", "gpuscope_efa_verbs_errors_total",
                           "Failed verbs resource operations of all kinds (alloc_pd, create_qp, reg_mr, mmap, ...).",
                           _DEV, "sum of hw_counters/*_err")
EFA_ADMIN_COMMANDS = counter("rdma", "gpuscope_efa_admin_commands_total",
                             "Device admin commands by outcome: submitted, completed, error, no_completion "
                             "(--collector.rdma.efa-device-detail).", ("device", "outcome"),
                             "hw_counters/{submitted,completed,no_completion}_cmds, cmds_err")
EFA_KEEP_ALIVE = counter("rdma", "gpuscope_efa_keep_alive_received_total",
                         "Keep-alive events received from the device (--collector.rdma.efa-device-detail).", _DEV,
                         "hw_counters/keep_alive_rcvd")
EFA_VERBS_OPERATION_ERRORS = counter(
    "rdma", "gpuscope_efa_verbs_operation_errors_total",
    "Failed verbs resource operations by operation (--collector.rdma.efa-device-detail).", ("device", "operation"),
    "hw_counters/*_err")

# Device-level EFA counters by sysfs name -> the (metric, extra label values) they feed. By default
# only the error counters are exported, the verbs errors summed per device; the rest, and the
# per-operation breakdown, come with --collector.rdma.efa-device-detail (they cost 11 series a device).
EFA_DEVICE_COUNTERS: dict[str, tuple[tuple[Metric, tuple[str, ...]], ...]] = {
    "cmds_err": ((EFA_ADMIN_ERRORS, ()),),
    "no_completion_cmds": ((EFA_ADMIN_ERRORS, ()),),
    **{f"{op}_err": ((EFA_VERBS_ERRORS, ()),) for op in _VERBS_OPERATIONS},
}
EFA_DEVICE_DETAIL_COUNTERS: dict[str, tuple[tuple[Metric, tuple[str, ...]], ...]] = {
    **EFA_DEVICE_COUNTERS,
    "submitted_cmds": ((EFA_ADMIN_COMMANDS, ("submitted",)),),
    "completed_cmds": ((EFA_ADMIN_COMMANDS, ("completed",)),),
    "cmds_err": ((EFA_ADMIN_ERRORS, ()), (EFA_ADMIN_COMMANDS, ("error",))),
    "no_completion_cmds": ((EFA_ADMIN_ERRORS, ()), (EFA_ADMIN_COMMANDS, ("no_completion",))),
    "keep_alive_rcvd": ((EFA_KEEP_ALIVE, ()),),
    **{f"{op}_err": ((EFA_VERBS_ERRORS, ()), (EFA_VERBS_OPERATION_ERRORS, (op,))) for op in _VERBS_OPERATIONS},
}

# --- Lustre client -------------------------------------------------------------------------------
_FS = ("fs",)
_TARGET = ("fs", "target")

LUSTRE_READ_BYTES = counter("lustre", "gpuscope_lustre_read_bytes_total",
                            "Bytes read through the Lustre client.", _FS, "llite/*/stats read_bytes sum")
LUSTRE_WRITE_BYTES = counter("lustre", "gpuscope_lustre_write_bytes_total",
                             "Bytes written through the Lustre client.", _FS, "llite/*/stats write_bytes sum")
LUSTRE_READ_CALLS = counter("lustre", "gpuscope_lustre_read_calls_total",
                            "Read calls served by the Lustre client.", _FS, "llite/*/stats read_bytes samples")
LUSTRE_WRITE_CALLS = counter("lustre", "gpuscope_lustre_write_calls_total",
                             "Write calls served by the Lustre client.", _FS, "llite/*/stats write_bytes samples")
LUSTRE_OPERATIONS = counter("lustre", "gpuscope_lustre_operations_total",
                            "Client operations by type (open, close, getattr, ...).", ("fs", "operation"),
                            "llite/*/stats samples")
LUSTRE_OPERATION_SECONDS = counter(
    "lustre", "gpuscope_lustre_operation_duration_seconds_total",
    "Summed latency of client operations (Lustre 2.14+ reports it); divide by operations_total.",
    ("fs", "operation"), "llite/*/stats [usecs] sum")
LUSTRE_IMPORT_STATE = gauge(
    "lustre", "gpuscope_lustre_import_state",
    "Import state code: 0 CLOSED, 1 NEW, 2 DISCONN, 3 CONNECTING, 4 REPLAY, 5 REPLAY_LOCKS, "
    "6 REPLAY_WAIT, 7 RECOVER, 8 FULL, 9 EVICTED, 10 IDLE, -1 unknown.", _TARGET, "{osc,mdc}/*/import state")
LUSTRE_IMPORT_HEALTHY = gauge("lustre", "gpuscope_lustre_import_healthy",
                              "1 if the import is FULL or IDLE (usable), else 0.", _TARGET, "{osc,mdc}/*/import")
LUSTRE_RPCS_IN_FLIGHT = gauge("lustre", "gpuscope_lustre_import_rpcs_in_flight",
                              "RPCs in flight to the target.", _TARGET, "import rpcs.inflight")
LUSTRE_RPC_TIMEOUTS = counter("lustre", "gpuscope_lustre_import_rpc_timeouts_total",
                              "RPCs to the target that timed out.", _TARGET, "import rpcs.timeouts")
LUSTRE_AVG_WAIT = gauge("lustre", "gpuscope_lustre_import_average_wait_seconds",
                        "Average RPC wait time the client measured for the target.", _TARGET,
                        "import rpcs.avg_waittime")
LUSTRE_CONNECT_ATTEMPTS = counter("lustre", "gpuscope_lustre_import_connection_attempts_total",
                                  "Connection attempts to the target; rises on every reconnect.", _TARGET,
                                  "import connection.connection_attempts")
LUSTRE_CONNECTIONS = counter("lustre", "gpuscope_lustre_import_connections_total",
                             "Successful connections (import generation); rises on every reconnect.", _TARGET,
                             "import connection.generation")
LUSTRE_PENDING_PAGES = gauge("lustre", "gpuscope_lustre_pending_pages",
                             "Read or write pages queued in the client cache for the target.",
                             ("fs", "target", "direction"), "osc/*/rpc_stats")
LUSTRE_LAST_REPLY = gauge("lustre", "gpuscope_lustre_import_last_reply_timestamp_seconds",
                          "Unix time of the last reply from the target; time() minus it is the silence.",
                          _TARGET, "{osc,mdc}/*/timeouts last reply")
LUSTRE_TARGET_READ_SUCCESS = gauge(
    "lustre", "gpuscope_lustre_target_read_success",
    "1 if the target's files were read and parsed; 0 if one failed or an earlier read is still "
    "blocked (a dead server).", _TARGET)
LUSTRE_FS_READ_SUCCESS = gauge(
    "lustre", "gpuscope_lustre_stats_read_success",
    "1 if the filesystem's llite stats were read and parsed; 0 if the read failed or an earlier one is "
    "still blocked (its I/O series are missing then).", _FS, "llite/*/stats")
LUSTRE_HEALTH_CHECK = gauge("lustre", "gpuscope_lustre_health_check_healthy",
                            "1 if the client's health_check reads 'healthy', 0 for NOT HEALTHY or LBUG.",
                            (), "fs/lustre/health_check")

# --- host ------------------------------------------------------------------------------------------
HOST_CPU_BUSY = counter("host", "gpuscope_host_cpu_busy_seconds_total",
                        "CPU time not idle or waiting for I/O, summed over the NUMA node's CPUs.",
                        ("numa_node",), "/proc/stat")
HOST_CPUS = gauge("host", "gpuscope_host_cpus", "Online CPUs of the NUMA node.", ("numa_node",),
                  "devices/system/node/node*/cpulist")
HOST_MEMORY_AVAILABLE = gauge("host", "gpuscope_host_memory_available_bytes",
                              "Memory available for new work without swapping (MemAvailable).", (),
                              "/proc/meminfo")
HOST_MEMORY_TOTAL = gauge("host", "gpuscope_host_memory_total_bytes", "Usable physical memory (MemTotal).",
                          (), "/proc/meminfo")
HOST_PRESSURE = counter("host", "gpuscope_host_pressure_stalled_seconds_total",
                        "Pressure stall time: some (at least one task) or full (all tasks) stalled.",
                        ("resource", "kind"), "/proc/pressure/{cpu,memory,io}")

# --- GPU (NVML) ------------------------------------------------------------------------------------
# Every per-GPU series carries the GPU's index and UUID; model and PCI bus id live in gpuscope_gpu_info.
_GPU = ("gpu", "uuid")


def _gpu_gauge(name: str, help_: str, labels: tuple[str, ...] = (), source: str = "") -> Metric:
    return gauge("gpu", f"gpuscope_gpu_{name}", help_, _GPU + labels, source)


def _gpu_counter(name: str, help_: str, labels: tuple[str, ...] = (), source: str = "") -> Metric:
    return counter("gpu", f"gpuscope_gpu_{name}_total", help_, _GPU + labels, source)


GPU_INFO = _gpu_gauge("info", "GPU identity (value 1): model, PCI bus id, and where its profiling ratios come "
                      "from (gpm: NVML GPM, dcgm: DCGM's host engine, none).", ("model", "pci_bus_id", "profiling"),
                      "nvmlDeviceGetName, nvmlDeviceGetPciInfo; --collector.gpu.profiling")
GPU_DRIVER_INFO = gauge("gpu", "gpuscope_gpu_driver_info",
                        "NVIDIA driver, CUDA driver API and NVML versions (value 1).",
                        ("driver_version", "cuda_version", "nvml_version"), "nvmlSystemGetDriverVersion")
GPU_JOB_INFO = _gpu_gauge("job_info", "Slurm job using the GPU (value 1); absent while no job runs on it.",
                          ("job_id",), "job mapping directory, or the GPU's processes' cgroup / SLURM_JOB_ID")
GPU_POD_INFO = _gpu_gauge("pod_info", "Kubernetes pod and container holding the GPU (value 1).",
                          ("namespace", "pod", "container"), "kubelet pod-resources API, v1.PodResourcesLister/List")
GPU_POD_RESOURCES_UP = gauge("gpu", "gpuscope_gpu_pod_resources_up",
                             "1 if the last query of the kubelet's pod-resources socket succeeded, else 0.", (),
                             "--collector.gpu.pod-resources-socket")
GPU_UP = _gpu_gauge("up", "1 if NVML answered for this GPU in this scrape; 0 if it is lost, hung or failing.")
GPU_UTILIZATION = _gpu_gauge("utilization_ratio", "Fraction of the last sample period a kernel ran (0-1).", (),
                             "nvmlDeviceGetUtilizationRates .gpu")
GPU_MEMORY_UTILIZATION = _gpu_gauge("memory_utilization_ratio",
                                    "Fraction of the last sample period device memory was read or written (0-1).",
                                    (), "nvmlDeviceGetUtilizationRates .memory")
GPU_MEMORY_USED = _gpu_gauge("memory_used_bytes", "Framebuffer memory in use.", (), "nvmlDeviceGetMemoryInfo")
GPU_MEMORY_FREE = _gpu_gauge("memory_free_bytes", "Framebuffer memory free.", (), "nvmlDeviceGetMemoryInfo")
GPU_MEMORY_TOTAL = _gpu_gauge("memory_total_bytes", "Framebuffer memory installed.", (), "nvmlDeviceGetMemoryInfo")
GPU_TEMPERATURE = _gpu_gauge("temperature_celsius", "GPU die temperature.", (), "nvmlDeviceGetTemperature")
GPU_MEMORY_TEMPERATURE = _gpu_gauge("memory_temperature_celsius", "HBM temperature.", (), "field 82 MEMORY_TEMP")
GPU_TEMPERATURE_LIMIT = _gpu_gauge(
    "temperature_limit_celsius",
    "The GPU's own temperature limits in absolute degrees (slowdown, shutdown, gpu_max, memory_max), read at start; "
    "drivers that report them relative to T.Limit are converted.", ("limit",),
    "nvmlDeviceGetTemperatureThreshold or fields 193-196 + T.Limit")
GPU_TEMPERATURE_MARGIN = _gpu_gauge("temperature_slowdown_margin_celsius",
                                    "Degrees left before the GPU slows itself down.", (),
                                    "nvmlDeviceGetMarginTemperature, else slowdown limit minus temperature")
GPU_POWER = _gpu_gauge("power_watts", "Power draw.", (), "nvmlDeviceGetPowerUsage")
GPU_POWER_LIMIT = _gpu_gauge("power_limit_watts", "Enforced power limit.", (), "nvmlDeviceGetEnforcedPowerLimit")
GPU_ENERGY = _gpu_counter("energy_joules", "Energy used since the driver loaded.", (), "field 83 TOTAL_ENERGY")
GPU_SM_CLOCK = _gpu_gauge("sm_clock_hertz", "SM clock.", (), "nvmlDeviceGetClockInfo(SM)")
GPU_MEMORY_CLOCK = _gpu_gauge("memory_clock_hertz", "Memory clock.", (), "nvmlDeviceGetClockInfo(MEM)")
GPU_SM_CLOCK_MAX = _gpu_gauge("sm_clock_max_hertz", "Highest SM clock the GPU supports.", (),
                              "nvmlDeviceGetMaxClockInfo(SM)")
GPU_MEMORY_CLOCK_MAX = _gpu_gauge("memory_clock_max_hertz", "Highest memory clock the GPU supports.", (),
                                  "nvmlDeviceGetMaxClockInfo(MEM)")
GPU_CLOCK_EVENT = _gpu_gauge(
    "clock_event_active",
    "1 while this clock event (throttle) reason holds clocks down: gpu_idle, sw_power_cap, hw_slowdown, "
    "sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake, board_limit, reliability.", ("reason",),
    "nvmlDeviceGetCurrentClocksEventReasons")
GPU_VIOLATION = _gpu_counter("violation_seconds", "Time clocks were held below target by this policy.", ("policy",),
                             "fields 74-79 PERF_POLICY_*")
GPU_ECC_ERRORS = _gpu_counter("ecc_errors", "ECC errors: type corrected|uncorrected, scope volatile|aggregate.",
                              ("type", "scope"), "fields 3-6 ECC_[SD]BE_{VOL,AGG}_TOTAL")
GPU_REMAPPED_ROWS = _gpu_counter("remapped_rows", "Memory rows remapped, by the error that caused it.", ("cause",),
                                 "fields 142-143 REMAPPED_{COR,UNC}")
GPU_REMAP_PENDING = _gpu_gauge("remapped_rows_pending", "1 if a row remap waits for the next GPU reset.", (),
                               "field 144 REMAPPED_PENDING")
GPU_REMAP_FAILURE = _gpu_gauge("remapped_rows_failure", "1 if a row remap failed: the GPU needs service.", (),
                               "field 145 REMAPPED_FAILURE")
GPU_RETIRED_PAGES = _gpu_counter("retired_pages", "Pages retired (pre-Ampere), by cause single_bit|double_bit.",
                                 ("cause",), "fields 29-30 RETIRED_[SD]BE")
GPU_RETIRED_PENDING = _gpu_gauge("retired_pages_pending", "1 if a page waits to be retired (pre-Ampere).", (),
                                 "field 31 RETIRED_PENDING")
GPU_RECOVERY_ACTION = _gpu_gauge(
    "recovery_action", "What the driver says the GPU needs: 0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, "
    "4 drain and reset.", (), "field 230 GET_GPU_RECOVERY_ACTION")
GPU_XID_ERRORS = _gpu_counter(
    "xid_errors", "XID errors seen since the exporter started, by XID; a series appears with its first event.",
    ("xid",), "NVML event set, XidCriticalError")
GPU_LAST_XID = _gpu_gauge("last_xid_timestamp_seconds", "Unix time of the most recent XID error.", (),
                          "NVML event set")
GPU_PCIE_TX = _gpu_counter("pcie_transmit_bytes", "Bytes sent over PCIe.", (), "field 197 PCIE_COUNT_TX_BYTES")
GPU_PCIE_RX = _gpu_counter("pcie_receive_bytes", "Bytes received over PCIe.", (), "field 198 PCIE_COUNT_RX_BYTES")
GPU_PCIE_REPLAYS = _gpu_counter("pcie_replays", "PCIe replays (link-level retransmissions).", (),
                                "field 94 PCIE_REPLAY_COUNTER")
GPU_PCIE_GENERATION = _gpu_gauge("pcie_link_generation", "Current PCIe link generation.", (),
                                 "nvmlDeviceGetCurrPcieLinkGeneration")
GPU_PCIE_GENERATION_MAX = _gpu_gauge("pcie_link_generation_max", "Highest PCIe generation of GPU and system.", (),
                                     "nvmlDeviceGetMaxPcieLinkGeneration")
GPU_PCIE_WIDTH = _gpu_gauge("pcie_link_width", "Current PCIe link width (lanes).", (),
                            "nvmlDeviceGetCurrPcieLinkWidth")
GPU_PCIE_WIDTH_MAX = _gpu_gauge("pcie_link_width_max", "Highest PCIe link width (lanes).", (),
                                "nvmlDeviceGetMaxPcieLinkWidth")
GPU_NVLINK_LINKS = _gpu_gauge("nvlink_links", "NVLink links of the GPU.", (), "field 91 NVLINK_LINK_COUNT")
GPU_NVLINK_ACTIVE = _gpu_gauge("nvlink_active_links", "NVLinks of the GPU that are up, counted every 30 s in the "
                               "background.", (), "field 165 NVLINK_GET_STATE per link, one call per GPU "
                               "(nvmlDeviceGetNvLinkState per link where the driver lacks it)")
GPU_NVLINK_TX = _gpu_counter("nvlink_transmit_bytes", "Bytes sent over all NVLinks.", (),
                             "field 138 NVLINK_THROUGHPUT_DATA_TX, summed over links")
GPU_NVLINK_RX = _gpu_counter("nvlink_receive_bytes", "Bytes received over all NVLinks.", (),
                             "field 139 NVLINK_THROUGHPUT_DATA_RX, summed over links")
GPU_NVLINK_LINK_TX = _gpu_counter("nvlink_link_transmit_bytes",
                                  "Bytes sent over one NVLink (--collector.gpu.nvlink-per-link).", ("link",),
                                  "field 138 per link")
GPU_NVLINK_LINK_RX = _gpu_counter("nvlink_link_receive_bytes",
                                  "Bytes received over one NVLink (--collector.gpu.nvlink-per-link).", ("link",),
                                  "field 139 per link")
GPU_NVLINK_ERRORS = _gpu_counter("nvlink_errors", "NVLink errors over all links: crc_flit, crc_data, replay, recovery.",
                                 ("type",), "fields 38/45/52/59 NVLINK_*_ERROR_COUNT_TOTAL")
# Profiling (DCGM_FI_PROF_* equivalents) from NVML GPM (Hopper and later) or DCGM's host engine
# (before Hopper), sampled in the background; gpuscope_gpu_info's `profiling` label says which.
GPU_GRAPHICS_ACTIVE = _gpu_gauge("graphics_engine_active_ratio", "Fraction of time the graphics/compute engine "
                                 "was active (DCGM_FI_PROF_GR_ENGINE_ACTIVE).", (), "GPM GRAPHICS_UTIL")
GPU_SM_ACTIVE = _gpu_gauge("sm_active_ratio", "Fraction of time at least one warp was active on an SM, averaged "
                           "over SMs (DCGM_FI_PROF_SM_ACTIVE).", (), "GPM SM_UTIL")
GPU_SM_OCCUPANCY = _gpu_gauge("sm_occupancy_ratio", "Resident warps relative to the maximum "
                              "(DCGM_FI_PROF_SM_OCCUPANCY).", (), "GPM SM_OCCUPANCY")
GPU_TENSOR_ACTIVE = _gpu_gauge("tensor_active_ratio", "Fraction of time any tensor pipe was active "
                               "(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE).", (), "GPM ANY_TENSOR_UTIL")
GPU_DRAM_ACTIVE = _gpu_gauge("dram_active_ratio", "Fraction of time device memory was busy "
                             "(DCGM_FI_PROF_DRAM_ACTIVE).", (), "GPM DRAM_BW_UTIL")
GPU_FP64_ACTIVE = _gpu_gauge("fp64_active_ratio", "Fraction of time the FP64 pipe was active.", (), "GPM FP64_UTIL")
GPU_FP32_ACTIVE = _gpu_gauge("fp32_active_ratio", "Fraction of time the FP32 pipe was active.", (), "GPM FP32_UTIL")
GPU_FP16_ACTIVE = _gpu_gauge("fp16_active_ratio", "Fraction of time the FP16 pipe was active.", (), "GPM FP16_UTIL")
# DCGM's host engine (before Hopper: the profiling source; with it, DCGM's health checks).
DCGM_UP = gauge("gpu", "gpuscope_dcgm_up", "1 while gpuscope reads from DCGM's host engine, else 0 (present when "
                "DCGM is a source: --collector.gpu.profiling=dcgm, or auto with GPUs lacking GPM).", (),
                "dcgmConnect_v2 --collector.gpu.dcgm-address")
DCGM_PROFILING_BLOCKED = gauge("gpu", "gpuscope_dcgm_profiling_blocked",
                               "1 while DCGM refuses some or all of gpuscope's profiling watches: locked (-37, "
                               "another owner of the counters: a second engine, Nsight), multi_pass (-38, other "
                               "clients' passes), requires_root (-29, nv-hostengine not root), module_not_loaded "
                               "(-33), not_supported (-6, -36), error (any other code); health goes on; retried "
                               "every minute.", ("reason",),
                               "dcgmProfGetSupportedMetricGroups, dcgmWatchFields")
DCGM_NVSWITCH_BLOCKED = gauge("gpu", "gpuscope_dcgm_nvswitch_blocked",
                              "1 while DCGM lists no NVSwitches, so none has a health check: module_not_loaded "
                              "(-33, nv-hostengine without its NVSwitch module), error (any other code); GPU "
                              "health goes on; retried every minute.", ("reason",),
                              "dcgmGetEntityGroupEntities(DCGM_FE_SWITCH)")
GPU_DCGM_HEALTH = _gpu_gauge("dcgm_health", "DCGM's health check of this GPU's system: 0 pass, 1 warn, 2 fail.",
                             ("system",), "dcgmHealthCheck")
GPU_DCGM_INCIDENT = _gpu_gauge("dcgm_health_incident", "A current DCGM health incident (1 warn, 2 fail); code is "
                               "DCGM's dcgmError_t (DCGM_FR_*), its message is in the exporter's log.",
                               ("system", "code"), "dcgmHealthCheck incidents")
NVSWITCH_DCGM_HEALTH = gauge("gpu", "gpuscope_nvswitch_dcgm_health",
                             "DCGM's health check of an NVSwitch (switch: DCGM's id): 0 pass, 1 warn, 2 fail.",
                             ("switch", "system"), "dcgmHealthCheck")

# --- NCCL Inspector (NCCL's own per-rank collective telemetry) ---------------------------------------
# `gpu` and `uuid` are the NVML GPU of the file (its name carries the CUDA UUID; Inspector's own `gpu`
# label is a CUDA ordinal, not the NVML index); `job_id` is the file's slurm_job_id, else the GPU's job;
# `message_size` is "all" for the aggregate of the buckets, a bucket ("4-5GB") with --collector.nccl.message-sizes.
_NCCL = ("gpu", "uuid", "job_id", "comm", "nranks")
_NCCL_SOURCE = "<inspector-dir>/nccl_inspector_metrics_<uuid>.prom"
NCCL_BUS_BANDWIDTH = gauge(
    "nccl", "gpuscope_nccl_bus_bandwidth_bytes_per_second",
    "Bus bandwidth of a collective on this rank over Inspector's last interval: the geometric mean over its "
    "message-size buckets (per bucket with --collector.nccl.message-sizes).",
    (*_NCCL, "collective", "message_size"), f"nccl_bus_bandwidth_gbs in {_NCCL_SOURCE}")
NCCL_EXEC_TIME = gauge(
    "nccl", "gpuscope_nccl_collective_exec_time_seconds",
    "Mean GPU kernel time of a collective on this rank over Inspector's last interval, averaged over its "
    "message-size buckets; the rank the others wait for has the shortest.",
    (*_NCCL, "collective", "message_size"), f"nccl_collective_exec_time_microseconds in {_NCCL_SOURCE}")
NCCL_P2P_BUS_BANDWIDTH = gauge(
    "nccl", "gpuscope_nccl_p2p_bus_bandwidth_bytes_per_second",
    "Bus bandwidth of point-to-point operations (Send, Recv) on this rank over Inspector's last interval.",
    (*_NCCL, "operation", "message_size"), f"nccl_p2p_bus_bandwidth_gbs in {_NCCL_SOURCE}")
NCCL_P2P_EXEC_TIME = gauge(
    "nccl", "gpuscope_nccl_p2p_exec_time_seconds",
    "Mean GPU kernel time of point-to-point operations on this rank over Inspector's last interval.",
    (*_NCCL, "operation", "message_size"), f"nccl_p2p_exec_time_microseconds in {_NCCL_SOURCE}")
NCCL_OPERATIONS = counter(
    "nccl", "gpuscope_nccl_operations_total",
    "Collective or p2p operations NCCL enqueued on this GPU (Inspector's opt-in device stats).",
    ("gpu", "uuid", "job_id", "kind"), f"nccl_collectives_total, nccl_p2p_total in {_NCCL_SOURCE}")
NCCL_OPERATIONS_DROPPED = counter(
    "nccl", "gpuscope_nccl_operations_dropped_total",
    "Operations Inspector dropped before dumping them (ring buffer overwritten).",
    ("gpu", "uuid", "job_id", "kind"), f"nccl_collectives_dropped_total, nccl_p2p_dropped_total in {_NCCL_SOURCE}")
NCCL_SNAPSHOT_AGE = gauge(
    "nccl", "gpuscope_nccl_snapshot_age_seconds",
    "Seconds since NCCL Inspector last rewrote this GPU's file, job_id the job that wrote it. Inspector rewrites "
    "it only when collectives completed: a hung job's files age. Kept while the file exists; the file's other "
    "series go after 3 intervals.",
    ("gpu", "uuid", "job_id"), _NCCL_SOURCE)
NCCL_MALFORMED_LINES = counter(
    "nccl", "gpuscope_nccl_malformed_lines_total", "Lines of Inspector files that were not understood and skipped.",
    (), _NCCL_SOURCE)
NCCL_DROPPED = counter(
    "nccl", "gpuscope_nccl_dropped_total",
    "Inspector files (what=files) or series (what=series) left out by --collector.nccl.max-files or "
    "--collector.nccl.max-series, or RAS communicators and ranks (what=ras) beyond the leader's caps, counted "
    "at each collection.", ("what",), _NCCL_SOURCE)

# --- NCCL RAS (asking the running job which rank it waits for) -------------------------------------
# Every node says whether its queries work; the node that leads a job (it holds the lowest present rank of
# the job's largest communicator, and queries every --collector.nccl.ras-interval) also serves the job-wide
# view: each communicator's progress and, only while they exist, the ranks behind, missing or in error.
# Ranks are named by `host` (the address RAS reports; gpuscope_nccl_ras_host_info joins it to a node) and
# `nvml_dev` (the NVML index there); `comm` is the communicator hash as 16 hex digits.
_RAS_SOURCE = "NCCL RAS STATUS report (<ras-address>, src/ras/client_support.cc)"
_RAS_COMM = ("job_id", "comm", "ranks")
_RAS_RANK = ("job_id", "comm", "rank", "host", "nvml_dev")
NCCL_RAS_UP = gauge(
    "nccl", "gpuscope_nccl_ras_up",
    "1 if the last query of the node's NCCL RAS server returned a report within the deadline, else 0 (0 also "
    "where no NCCL job runs: nothing listens).", (), _RAS_SOURCE)
NCCL_RAS_QUERY_DURATION = gauge(
    "nccl", "gpuscope_nccl_ras_query_duration_seconds",
    "How long the last RAS query took (RAS gathers from every process of the job).", (), _RAS_SOURCE)
NCCL_RAS_QUERIES = counter("nccl", "gpuscope_nccl_ras_queries_total", "RAS queries made by this node.", (),
                           _RAS_SOURCE)
NCCL_RAS_QUERY_FAILURES = counter(
    "nccl", "gpuscope_nccl_ras_query_failures_total",
    "RAS queries that gave no report: reason=refused (nothing listening: no NCCL job) or error (a timeout, a "
    "connection closed mid-report, an answer that is not a report).", ("reason",), _RAS_SOURCE)
NCCL_RAS_LEADER = gauge(
    "nccl", "gpuscope_nccl_ras_leader",
    "1 if this node leads a job's RAS queries (its rank is the lowest present one of the job's largest "
    "communicator), so the job-wide series come from it.", (), _RAS_SOURCE)
NCCL_RAS_HOST = gauge(
    "nccl", "gpuscope_nccl_ras_host_info",
    "This node's addresses as RAS names hosts (value 1): joins a rank's host to the node.", ("host",),
    "the node's interfaces, or --collector.nccl.ras-hosts")
NCCL_RAS_PROGRESS = gauge(
    "nccl", "gpuscope_nccl_ras_communicator_progress_operations",
    "Highest count of collective operations launched by any rank of the communicator (the leader's last "
    "report).", _RAS_COMM, _RAS_SOURCE)
NCCL_RAS_STALLED = gauge(
    "nccl", "gpuscope_nccl_ras_communicator_stalled_seconds",
    "How long the communicator's progress has stood still across the leader's reports (0 while it moves).",
    _RAS_COMM, _RAS_SOURCE)
NCCL_RAS_LATE = gauge(
    "nccl", "gpuscope_nccl_ras_communicator_late_ranks",
    "Ranks of the communicator behind its progress or missing from the report (0 while every rank agrees): "
    "always exported with the progress, so a rule can tell 'every rank launched' without waiting for the "
    "per-rank series to appear.", _RAS_COMM, _RAS_SOURCE)
NCCL_RAS_BEHIND = gauge(
    "nccl", "gpuscope_nccl_ras_rank_behind_operations",
    "Operations a rank launched fewer than its communicator's progress, once that progress stood still across "
    "two reports (a rank a launch behind a moving communicator is a query racing a launch); only those ranks.",
    _RAS_RANK, _RAS_SOURCE)
NCCL_RAS_MISSING = gauge(
    "nccl", "gpuscope_nccl_ras_rank_missing",
    "1 for a rank the report misses: state=missing (answered, not in the communicator), unresponsive or dead "
    "(RAS gave up on its process); only missing ranks are exported.", (*_RAS_RANK, "state"), _RAS_SOURCE)
NCCL_RAS_ASYNC_ERROR = gauge(
    "nccl", "gpuscope_nccl_ras_rank_async_error",
    "The ncclResult_t of a rank's asynchronous error (e.g. 6 remote error); only ranks in error are exported.",
    _RAS_RANK, _RAS_SOURCE)

# --- the kernel log (XIDs since boot, NVSwitch SXIDs) ----------------------------------------------
_KXID = ("gpu", "uuid", "pci_address", "xid")
_SXID = ("switch", "pci_address", "sxid", "severity")
KERNEL_XID_ERRORS = counter(
    "kmsg", "gpuscope_gpu_kernel_xid_errors_total",
    "XIDs in the kernel log since boot, by GPU (NVML index and UUID from its PCI address; empty when NVML does not "
    "know it) and XID; the multi-line 'fallen off the bus' message counts as XID 79.", _KXID,
    "/dev/kmsg: NVRM: Xid (PCI:<address>): <xid>, ...")
KERNEL_LAST_XID = gauge("kmsg", "gpuscope_gpu_kernel_last_xid_timestamp_seconds",
                        "Unix time of the last such XID, from the kernel's own timestamp.", _KXID, "/dev/kmsg")
NVSWITCH_SXID_ERRORS = counter(
    "kmsg", "gpuscope_nvswitch_sxid_errors_total",
    "NVSwitch SXIDs in the kernel log since boot, by switch, SXID and severity (fatal, non_fatal).", _SXID,
    "/dev/kmsg: nvidia-nvswitch<n>: SXid (PCI:<address>): <sxid>, Fatal|Non-fatal, ...")
NVSWITCH_LAST_SXID = gauge("kmsg", "gpuscope_nvswitch_last_sxid_timestamp_seconds",
                           "Unix time of the last such SXID, from the kernel's own timestamp.", _SXID, "/dev/kmsg")
KMSG_RECORDS = counter("kmsg", "gpuscope_kmsg_records_total", "Kernel log records read since the exporter started.",
                       (), "/dev/kmsg")
KMSG_OVERRUNS = counter("kmsg", "gpuscope_kmsg_overruns_total",
                        "Times the kernel overwrote records before they were read (EPIPE).", (), "/dev/kmsg")

# --- `gpuscope remediate`, the remediation receiver (its own /metrics, not the node exporter's) ------
REMEDIATION_DECISIONS = counter(
    "remediate", "gpuscope_remediation_decisions_total",
    "Decisions on alerts, by action (drain, resume), outcome (done, dry_run, skipped, refused) and reason; every "
    "combination starts at 0.", ("action", "outcome", "reason"))
REMEDIATION_NOTIFICATIONS = counter(
    "remediate", "gpuscope_remediation_notifications_total",
    "Webhook notifications received, by result (ok; invalid, answered 400; unrecorded: an audit or state record "
    "could not be written, answered 503).", ("result",))
REMEDIATION_CONFLICTS = counter(
    "remediate", "gpuscope_remediation_write_conflicts_total",
    "Node writes the Kubernetes API server refused as stale (409 Conflict: another writer changed the node between "
    "the receiver's read and its write), each followed by a new read and write.")
REMEDIATION_HELD = gauge("remediate", "gpuscope_remediation_nodes_held",
                         "Nodes gpuscope holds out of the scheduler now (in dry-run: would hold).")
REMEDIATION_ENFORCING = gauge("remediate", "gpuscope_remediation_enforcing",
                              "1 if the policy lets the receiver act, 0 in dry-run.")

# The training job's own steps, per rank, from the spool files its ranks write (gpuscope_train/;
# docs/training.md). Labels: the job, the global rank, and the GPU the rank drives (NVML index and
# UUID, to join with gpuscope_gpu_info). Eight series a rank by default; samples and model FLOPs
# only for ranks that report them.
_RANK = ("job_id", "rank", "gpu", "uuid")
TRAIN_STEPS = counter("train", "gpuscope_train_steps_total", "Training steps the rank completed.", _RANK,
                      "spool: one record a step")
TRAIN_STEP_SECONDS = counter("train", "gpuscope_train_step_seconds_total",
                             "Wall seconds of the rank's steps; rate over rate(gpuscope_train_steps_total) is the "
                             "mean step time, and sums across ranks.", _RANK, "spool: seconds")
TRAIN_TOKENS = counter("train", "gpuscope_train_tokens_total", "Tokens the rank trained on.", _RANK,
                       "spool: tokens")
TRAIN_PHASE_SECONDS = counter("train", "gpuscope_train_phase_seconds_total",
                              "Seconds of the rank's steps spent waiting for data (phase=data_wait) or saving "
                              "and loading checkpoints (phase=checkpoint).", (*_RANK, "phase"),
                              "spool: phases.data_wait, phases.checkpoint_save + checkpoint_load")
TRAIN_LOSS = gauge("train", "gpuscope_train_loss", "The loss of the rank's last step with a finite one.", _RANK,
                   "spool: loss")
TRAIN_GRAD_NORM = gauge("train", "gpuscope_train_grad_norm", "The gradient norm of the rank's last step with "
                        "a finite one.", _RANK, "spool: grad_norm")
TRAIN_NONFINITE = counter("train", "gpuscope_train_nonfinite_steps_total",
                          "Steps whose loss or gradient norm was not finite, or which the optimizer skipped.",
                          _RANK, "spool: loss/grad_norm null, skipped")
TRAIN_SAMPLES = counter("train", "gpuscope_train_samples_total", "Samples the rank trained on (ranks that "
                        "report them).", _RANK, "spool: samples")
TRAIN_FLOPS = counter("train", "gpuscope_train_model_flops_total", "Model FLOPs of the rank's steps, for MFU "
                      "(ranks that report them).", _RANK, "spool: flops")
TRAIN_DROPPED = counter("train", "gpuscope_train_records_dropped_total",
                        "Spool lines or files not counted, by reason: malformed, too_long (a line over 64 KiB), "
                        "version (a format this exporter does not read), not_regular (a FIFO, device or "
                        "symbolic link), duplicate_rank (a second file for a job's rank), lost (a file rotated "
                        "twice between two reads).", ("reason",), "--collector.train.dir")

# What the `xid` label's values mean: how gpuscope classes NVIDIA's XIDs (docs.nvidia.com/deploy/
# xid-errors), which the alert rules' defaults and `gpuscope check` read. CRITICAL needs the node
# drained and the GPU reset or serviced (79 fallen off the bus, 48/63-64 ECC, 119/120 GSP, ...);
# WARNING degrades a job but the GPU may recover; APPLICATION is the job's own fault.
XID_CRITICAL: tuple[int, ...] = (46, 48, 62, 64, 74, 79, 95, 109, 119, 120, 136, 140, 143, 154, 158)
XID_WARNING: tuple[int, ...] = (32, 92, 94)
XID_APPLICATION: tuple[int, ...] = (13, 31, 43, 45, 63)
