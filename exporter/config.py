"""The exporter's settings: flags, environment, config file and defaults, in that order of precedence.

Every flag `--a.b-c` can also be given as the environment variable `GPUSCOPE_A_B_C` (what a
DaemonSet sets) or as the key `a.b-c` in the YAML file named by `--config.file`. Each value is
checked by the same parser whatever its source, and a bad one is reported naming that source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.collectors import FACTORIES, Roots
from exporter.collectors.gpu import GpuOptions
from exporter.collectors.gpu_dcgm import DEFAULT_BINDINGS, DcgmOptions
from exporter.collectors.kmsg import KmsgOptions
from exporter.collectors.nccl import NcclOptions
from exporter.collectors.nccl_ras import Cadence
from toolkit.configfile import (
    DEFAULT_PORT,
    ConfigError,
    load_yaml,
    parse_bool,
    parse_count,
    parse_listen_address,
)
from toolkit.durations import positive_seconds
from toolkit.logs import LEVELS


def parse_ras_address(value: Any) -> str:
    """The NCCL RAS server to ask, `host:port` (NCCL_RAS_ADDR's form), or empty for none."""
    text = str(value or "").strip()
    host, _, port = text.rpartition(":")
    if text and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"invalid RAS address {value!r} (expected host:port, e.g. 127.0.0.1:28028)")
    return text


def parse_path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise ValueError(f"invalid path {value!r} (must start with /)")
    return text


def parse_directory(value: Any) -> str:
    """A directory that exists or can be made, or empty; a file is refused."""
    text = str(value or "")
    if text and os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(f"{text} is not a directory")
    return text


def parse_names(value: Any) -> tuple[str, ...]:
    names = tuple(name.strip() for name in str(value).split(",") if name.strip())
    if not names:
        raise ValueError("expected at least one name")
    return names


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if str(value) not in allowed:
            raise ValueError(f"invalid value {value!r} (one of {', '.join(allowed)})")
        return str(value)
    return parse


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    is_flag: bool = False

    @property
    def env(self) -> str:
        return "GPUSCOPE_" + re.sub(r"[.-]", "_", self.name).upper()


OPTIONS: tuple[Option, ...] = (
    Option("web.listen-address", f":{DEFAULT_PORT}", parse_listen_address,
           "address to serve metrics on; ':PORT' means every interface"),
    Option("web.telemetry-path", "/metrics", parse_path, "path under which metrics are served"),
    Option("web.config.file", "", str, "exporter-toolkit web config file (TLS, basic auth); empty: plain HTTP"),
    Option("path.sysfs", "/sys", parse_path, "sysfs mount point (debugfs is looked up under it)"),
    Option("path.procfs", "/proc", parse_path, "procfs mount point"),
    Option("collector.timeout", "5s", positive_seconds,
           "longest a scrape waits for a collector before reporting it failed"),
    Option("log.level", "info", choice(*LEVELS), "log level: " + ", ".join(LEVELS)),
    Option("log.format", "logfmt", choice("logfmt", "json"), "log line format: logfmt or json"),
    *(Option(f"collector.{name}", True, parse_bool, f"enable the {name} collector", is_flag=True)
      for name in FACTORIES),
    Option("collector.rdma.efa-device-detail", False, parse_bool,
           "also export EFA admin command, keep-alive and per-operation verbs error counters (11 series a device)",
           is_flag=True),
    Option("collector.gpu.nvlink-per-link", False, parse_bool,
           "also export NVLink bytes per link (18 links x 8 GPUs more series)", is_flag=True),
    Option("collector.gpu.gpm-interval", "10s", positive_seconds,
           "how often profiling (GPM, or DCGM's watch) is sampled in the background (set it to the scrape interval)"),
    Option("collector.gpu.profiling", "auto", choice("auto", "gpm", "dcgm", "off"),
           "profiling ratios (SM active, tensor, DRAM): auto (NVML GPM where the GPU has it, else DCGM's host "
           "engine: A100), gpm, dcgm, off"),
    Option("collector.gpu.dcgm-address", "127.0.0.1:5555", str,
           "DCGM host engine (nv-hostengine) to read profiling and health from: host:port, or a unix socket "
           "path; 'embedded' starts an engine inside gpuscope (only where no other engine runs)"),
    Option("collector.gpu.dcgm-bindings", ",".join(DEFAULT_BINDINGS), parse_names,
           "comma-separated folders to load DCGM's Python bindings from (the DCGM package's own; first found)"),
    Option("collector.gpu.link-interval", "30s", positive_seconds,
           "how often the active NVLinks are counted in the background (one field-values call per GPU)"),
    Option("collector.gpu.job-mapping-dir", "", str,
           "dcgm-exporter style HPC job mapping directory (one file per GPU index, a job id per line); "
           "empty: find each GPU's Slurm job from its processes"),
    Option("collector.gpu.pod-resources-socket", "", str,
           "the kubelet's pod-resources socket (usually /var/lib/kubelet/pod-resources/kubelet.sock) for "
           "Kubernetes pod attribution; empty: off"),
    Option("collector.gpu.pod-resource-names", "nvidia.com/gpu", parse_names,
           "comma-separated device plugin resource names that are GPUs"),
    Option("collector.kmsg.path", "/dev/kmsg", str,
           "the kernel log device (the kmsg collector reads it from boot; needs CAP_SYSLOG)"),
    Option("node.instance-type", "", str,
           "the node's instance type (e.g. p5.48xlarge) when DMI does not tell it; empty: from DMI"),
    Option("collector.nccl.inspector-dir", "", str,
           "NCCL Inspector's Prometheus dump directory (NCCL_INSPECTOR_DUMP_DIR); the nccl collector runs only "
           "when this names one"),
    Option("collector.nccl.interval", "30s", positive_seconds,
           "Inspector's dump interval (NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS); a file not rewritten "
           "for 3 intervals belongs to an ended job and its series go"),
    Option("collector.nccl.max-files", "32", parse_count, "most Inspector files read per scrape; the rest are "
           "counted in gpuscope_nccl_dropped_total{what=\"files\"}"),
    Option("collector.nccl.max-series", "400", parse_count, "most NCCL series per scrape; the rest are counted in "
           "gpuscope_nccl_dropped_total{what=\"series\"}"),
    Option("collector.nccl.ras-address", "127.0.0.1:28028", parse_ras_address,
           "the node's NCCL RAS server (NCCL >= 2.24, NCCL_RAS_ADDR), asked in the background which rank a job waits "
           "for; empty: not asked"),
    Option("collector.nccl.ras-hosts", "", lambda v: parse_names(v) if str(v).strip() else (),
           "this node's addresses as RAS names hosts (comma-separated); empty: its interfaces' IPv4 addresses"),
    Option("collector.nccl.ras-interval", "10s", positive_seconds,
           "how often the node leading a job asks RAS (the others ask at start, on a new job and hourly)"),
    Option("collector.nccl.message-sizes", False, parse_bool,
           "also export each message-size bucket (message_size label), not only their aggregate", is_flag=True),
)


@dataclass(frozen=True)
class ExporterSettings:
    listen_address: tuple[str, int]
    telemetry_path: str
    web_config_file: str
    roots: Roots
    collectors: tuple[str, ...]
    timeout: float
    log_level: str
    log_format: str
    values: Mapping[str, Any] = field(default_factory=dict)  # every option's value, by name, extra ones too


def resolve(cli: Mapping[str, Any], env: Mapping[str, str], config_file: str,
            extra: tuple[Option, ...] = ()) -> ExporterSettings:
    """Merge the sources option by option; raises ConfigError naming the source of a bad value.
    `extra`: options of what runs the agent (the simulator's), resolved the same way into `values`."""
    options = OPTIONS + extra
    file_values = _load_config_file(config_file, options) if config_file else {}
    values: dict[str, Any] = {}
    for option in options:
        if option.name in cli:
            raw, source = cli[option.name], f"flag --{option.name}"
        elif option.env in env:
            raw, source = env[option.env], f"environment variable {option.env}"
        elif option.name in file_values:
            raw, source = file_values[option.name], f"config file {config_file}: {option.name}"
        else:
            raw, source = option.default, "default"
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return ExporterSettings(
        listen_address=values["web.listen-address"],
        telemetry_path=values["web.telemetry-path"],
        web_config_file=values["web.config.file"],
        roots=Roots(sysfs=values["path.sysfs"], procfs=values["path.procfs"],
                    gpu=GpuOptions(nvlink_per_link=values["collector.gpu.nvlink-per-link"],
                                   gpm_interval=values["collector.gpu.gpm-interval"],
                                   profiling=values["collector.gpu.profiling"],
                                   dcgm=DcgmOptions(address=values["collector.gpu.dcgm-address"],
                                                    bindings=values["collector.gpu.dcgm-bindings"]),
                                   job_mapping_dir=values["collector.gpu.job-mapping-dir"],
                                   link_interval=values["collector.gpu.link-interval"],
                                   procfs=values["path.procfs"],
                                   pod_resources_socket=values["collector.gpu.pod-resources-socket"],
                                   pod_resource_names=values["collector.gpu.pod-resource-names"]),
                    efa_device_detail=values["collector.rdma.efa-device-detail"],
                    instance_type=values["node.instance-type"],
                    kmsg=KmsgOptions(path=values["collector.kmsg.path"]),
                    nccl=NcclOptions(directory=values["collector.nccl.inspector-dir"],
                                     interval=values["collector.nccl.interval"],
                                     max_files=values["collector.nccl.max-files"],
                                     max_series=values["collector.nccl.max-series"],
                                     message_sizes=values["collector.nccl.message-sizes"],
                                     ras_address=values["collector.nccl.ras-address"],
                                     ras_hosts=values["collector.nccl.ras-hosts"],
                                     ras_cadence=Cadence(leader=values["collector.nccl.ras-interval"]))),
        collectors=tuple(name for name in FACTORIES if values[f"collector.{name}"]
                         and (name != "nccl" or values["collector.nccl.inspector-dir"]
                              or values["collector.nccl.ras-address"])),
        timeout=values["collector.timeout"],
        log_level=values["log.level"],
        log_format=values["log.format"],
        values=values,
    )


def _load_config_file(path: str, options: tuple[Option, ...]) -> dict[str, Any]:
    data = load_yaml(path, "config file")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of flag names to values")
    known = {option.name for option in options}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return data


def config_file_from(cli: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> str:
    return str(cli.get("config.file") or env.get("GPUSCOPE_CONFIG_FILE", ""))
