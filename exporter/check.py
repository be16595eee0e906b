"""`gpuscope check`: is this node fit to run a job? One line naming what is wrong, for Slurm.

Slurm runs it as HealthCheckProgram (every HealthCheckInterval) or from a prolog; exit 0 means fit.
It reads one scrape, of the local exporter (`--exporter URL`, the default) or of the collectors run
once in this process (`--collect`, in gpuscope/cli.py: this module never loads a collector, so the
remediation receiver shares its judgement without the node agent), and judges it as the hardware
alerts do, without their history:

- fewer GPUs answer NVML than the instance type has, or a GPU answers but is lost;
- a critical XID (catalog.XID_CRITICAL): since the last check with `--state-file`, else any the scrape
  counts (the kernel log's since boot where the kmsg collector runs, NVML's since the exporter started);
- uncorrectable ECC errors since the driver loaded, a failed row remap, a fatal NVSwitch SXID;
- fewer EFA devices or active NVLinks than the type has, an RDMA port not ACTIVE;
- Lustre's health_check unhealthy or a target not connected;
- a collector the verdict needs failing.

Exit codes: 0 fit, 1 unfit (the line on stdout; `--drain` drains the node with it), 3 the check
could not run (exporter unreachable, bad state file): never a drain, since an exporter that crashed
on every node must not take the whole fleet out of the scheduler.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog as c
from exporter import scontrol

FIT, UNFIT, UNKNOWN = 0, 1, 3
REASON_PREFIX = "gpuscope check:"
_JUDGED = ("identity", "gpu", "rdma", "lustre", "kmsg")  # collectors whose failure makes the node unfit


class CheckError(RuntimeError):
    """The check could not run; the message names the exporter URL or file."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    xids: dict[str, float] = field(default_factory=dict)  # "gpu/xid" -> count, for the next check

    def line(self) -> str:
        return "; ".join(self.problems)


def parse(text: str) -> list[Sample]:
    """The samples of an exposition; CheckError if it is not one."""
    try:
        return [Sample(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
                for s in family.samples]
    except ValueError as exc:
        raise CheckError(f"not a Prometheus exposition: {exc}") from None


def _values(samples: Iterable[Sample], metric: c.Metric, **match: str) -> list[Sample]:
    return [s for s in samples if s.name == metric.name and all(s.labels.get(k) == v for k, v in match.items())]


def _gpu(sample: Sample) -> str:
    return f"GPU {sample.labels.get('gpu', '?')}"


def judge(samples: list[Sample], previous_xids: dict[str, float] | None = None,
          ignore_ports: re.Pattern[str] | None = None) -> Verdict:
    """What is wrong with the node in this scrape; `previous_xids` (from the last check) turns "any
    critical XID" into "a critical XID since then"."""
    verdict = Verdict()
    verdict.problems += _failing_collectors(samples)
    verdict.problems += _inventory(samples)
    verdict.problems += [f"{_gpu(s)} lost: NVML does not answer" for s in _values(samples, c.GPU_UP) if s.value == 0]
    verdict.xids, xid_problems = _critical_xids(samples, previous_xids or {})
    verdict.problems += xid_problems
    verdict.problems += [f"{_gpu(s)}: {s.value:g} uncorrectable ECC errors since the driver loaded"
                         for s in _values(samples, c.GPU_ECC_ERRORS, type="uncorrected", scope="volatile")
                         if s.value > 0]
    verdict.problems += [f"{_gpu(s)}: a row remap failed" for s in _values(samples, c.GPU_REMAP_FAILURE)
                         if s.value == 1]
    verdict.problems += [f"{_gpu(s)}: DCGM health check fails {s.labels['system']}"
                         for s in _values(samples, c.GPU_DCGM_HEALTH) if s.value == 2]
    verdict.problems += [f"NVSwitch {s.labels['switch']}: DCGM health check fails {s.labels['system']}"
                         for s in _values(samples, c.NVSWITCH_DCGM_HEALTH) if s.value == 2]
    verdict.problems += [f"NVSwitch {s.labels['switch']}: fatal SXID {s.labels['sxid']}"
                         for s in _values(samples, c.NVSWITCH_SXID_ERRORS, severity="fatal") if s.value > 0]
    verdict.problems += [f"RDMA {s.labels['device']} port {s.labels['port']} not ACTIVE (state {s.value:g})"
                         for s in _values(samples, c.RDMA_PORT_STATE)
                         if s.value != 4 and not (ignore_ports and ignore_ports.fullmatch(s.labels["device"]))]
    verdict.problems += ["Lustre health_check unhealthy" for s in _values(samples, c.LUSTRE_HEALTH_CHECK)
                         if s.value == 0]
    verdict.problems += [f"Lustre {s.labels['fs']} {s.labels['target']} not connected"
                         for s in _values(samples, c.LUSTRE_IMPORT_HEALTHY) if s.value == 0]
    return verdict


def _failing_collectors(samples: list[Sample]) -> list[str]:
    return [f"collector {s.labels['collector']} failing" for s in _values(samples, c.COLLECTOR_SUCCESS)
            if s.labels.get("collector") in _JUDGED and s.value == 0]


def _inventory(samples: list[Sample]) -> list[str]:
    """Fewer GPUs, EFA devices or active NVLinks than the instance type has (none expected: none judged)."""
    expected = {s.labels["component"]: s.value for s in _values(samples, c.NODE_EXPECTED)}
    kind = next((s.labels.get("instance_type", "") for s in _values(samples, c.NODE_INFO)), "")
    problems = []
    gpus = len(_values(samples, c.GPU_UP))
    if "gpus" in expected and gpus < expected["gpus"]:
        problems.append(f"{gpus} of {expected['gpus']:g} GPUs answer NVML ({kind} has {expected['gpus']:g})")
    efa = len(_values(samples, c.RDMA_DEVICE_INFO, efa="true"))
    if expected.get("efa_devices") and efa < expected["efa_devices"]:
        problems.append(f"{efa} of {expected['efa_devices']:g} EFA devices present")
    for s in _values(samples, c.GPU_NVLINK_ACTIVE):
        if "nvlinks_per_gpu" in expected and s.value < expected["nvlinks_per_gpu"]:
            problems.append(f"{_gpu(s)}: {s.value:g} of {expected['nvlinks_per_gpu']:g} NVLinks active")
    return problems


def _critical_xids(samples: list[Sample], previous: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Critical XID counts by GPU and XID, from the kernel log where its collector runs, else from
    NVML (as the alert rules choose, so no event counts twice); and those that rose since `previous`."""
    kmsg = any(s.value == 1 for s in _values(samples, c.COLLECTOR_SUCCESS, collector="kmsg"))
    metric = c.KERNEL_XID_ERRORS if kmsg else c.GPU_XID_ERRORS
    counts: dict[str, float] = {}
    for s in _values(samples, metric):
        if s.labels.get("xid", "").isdigit() and int(s.labels["xid"]) in c.XID_CRITICAL:
            key = f"{s.labels.get('gpu') or s.labels.get('pci_address', '?')}/{s.labels['xid']}"  # a lost GPU: PCI
            counts[key] = counts.get(key, 0) + s.value
    risen = [key for key, count in sorted(counts.items()) if count > previous.get(key, 0)]
    since = "since the last check" if previous else "since boot" if kmsg else "since the exporter started"
    return counts, [f"GPU {key.split('/')[0]}: critical XID {key.split('/')[1]} {since}" for key in risen]


def read_exporter(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        raise CheckError(f"cannot read the exporter at {url}: {getattr(exc, 'reason', exc)}") from None


def load_state(path: str) -> dict[str, float]:
    """The critical XID counts the last check saw; empty when there was none."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return {str(k): float(v) for k, v in data["xids"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckError(f"state file {path}: unreadable ({exc}); remove it to start over") from None


def save_state(path: str, xids: dict[str, float]) -> None:
    if not path:
        return
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"xids": xids}, handle)
    os.replace(temporary, path)


def node_name(given: str) -> str:
    """The Slurm node to drain: the flag, else slurmd's SLURMD_NODENAME (prolog), else the short host name."""
    return given or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def run(text_source, state_file: str = "", ignore_ports: str = "", drain: bool = False, node: str = "",
        scontrol_path: str = "scontrol") -> int:
    """The whole check: `text_source()` gives the scrape; prints the verdict line when unfit."""
    try:
        previous = load_state(state_file)
        verdict = judge(parse(text_source()), previous, re.compile(ignore_ports) if ignore_ports else None)
        save_state(state_file, {**previous, **verdict.xids})
    except (CheckError, OSError, re.error) as exc:
        print(f"gpuscope check: cannot check: {exc}", file=sys.stderr)
        return UNKNOWN
    if not verdict.problems:
        return FIT
    line = verdict.line()
    print(f"{REASON_PREFIX} {line}")
    if drain:
        name = node_name(node)
        try:
            scontrol.drain(name, f"{REASON_PREFIX} {line}"[:250], scontrol_path)
        except scontrol.SlurmError as exc:
            print(f"gpuscope check: cannot drain {name}: {exc}", file=sys.stderr)
    return UNFIT
