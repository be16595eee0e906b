"""A whole simulated node on disk: the sysfs tree `gpuscope simulate` writes and `--simulate` keeps live.

Counters advance at the rates of a busy training node (EFA traffic of tens of GB/s across the
node, steady Lustre reads, checkpoint writes), so rate() in Prometheus shows a working node.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import yaml

from simulator.dcgm_engine import HostEngine
from simulator.faults import JOB_KINDS, NodeEffects, ScenarioError, check_fault, node_effects
from simulator.files import relative_symlink
from simulator.inspector import rank_buckets, write_rank_files
from simulator.kernel_log import KernelLog
from simulator.lustre_tree import LustreClient, LustreTarget, write_lustre_tree
from simulator.nvml import Fault, SimulatedNvml, gpu_bus, gpu_uuid
from simulator.ras import Job, RasServer
from simulator.rdma_tree import (
    P5_EFA_BUSES,
    P5_GPU_BUSES,
    PORT_ACTIVE,
    PORT_DOWN,
    RdmaDevice,
    mlx5_devices,
    p5_efa_devices,
    write_counters,
    write_gpu_functions,
    write_port_state,
    write_rdma_tree,
)
from simulator.training import TrainingRanks
from toolkit.configfile import ConfigError

log = logging.getLogger("gpuscope")

# Counter levels of a p5.48xlarge some hours into a training job (bytes and packets since boot).
P5_EFA_LEVELS = {
    "tx_bytes": 48_213_556_011_008, "rx_bytes": 48_190_113_290_240, "tx_pkts": 5_891_002_113,
    "rx_pkts": 5_888_140_556, "send_bytes": 1_211_884_032, "send_wrs": 3_150_220, "recv_bytes": 1_209_774_080,
    "recv_wrs": 3_148_901, "rdma_read_bytes": 40_117_239_808_000, "rdma_read_wrs": 611_880_223,
    "rdma_read_resp_bytes": 40_102_557_696_000, "rdma_write_bytes": 7_884_220_334_080,
    "rdma_write_wrs": 120_303_442, "rdma_write_recv_bytes": 7_880_441_290_752, "submitted_cmds": 2_214,
    "completed_cmds": 2_214, "keep_alive_rcvd": 86_113,
}
for _name in ("rx_drops", "rdma_read_wr_err", "rdma_write_wr_err", "retrans_bytes", "retrans_pkts",
              "retrans_timeout_events", "unresponsive_remote_events", "impaired_remote_conn_events", "cmds_err",
              "no_completion_cmds", "alloc_pd_err", "create_qp_err", "create_cq_err", "reg_mr_err",
              "alloc_ucontext_err", "create_ah_err", "mmap_err"):
    P5_EFA_LEVELS[_name] = 0
# Per-device rates while training: ~1.5 GB/s each way per device, 48 GB/s per p5 node.
EFA_RATES = {"tx_bytes": 1.5e9, "rx_bytes": 1.5e9, "tx_pkts": 1.5e9 / 8192, "rx_pkts": 1.5e9 / 8192,
             "rdma_read_bytes": 1.2e9, "rdma_read_wrs": 1.2e9 / 65536, "rdma_read_resp_bytes": 1.2e9,
             "rdma_write_bytes": 0.3e9, "rdma_write_wrs": 0.3e9 / 65536, "rdma_write_recv_bytes": 0.3e9,
             "send_bytes": 2e5, "send_wrs": 50, "recv_bytes": 2e5, "recv_wrs": 50, "keep_alive_rcvd": 1}
LUSTRE_READ_RATE = 400e6  # steady data loading, bytes/s
CHECKPOINT_EVERY, CHECKPOINT_SECONDS, CHECKPOINT_RATE = 600.0, 30.0, 2e9  # write bursts
# NCCL Inspector dumps every this many updates (it enforces 30 s or more on a real node).
INSPECTOR_EVERY = 3
MARKER = ".gpuscope-simulated"  # in a sysfs tree the simulator wrote and may replace


def efa_devices(count: int) -> list[RdmaDevice]:
    """The node's EFA devices: p5's 32, or the first `count` bus numbers of that layout."""
    return p5_efa_devices(P5_EFA_LEVELS)[:count]


class SimulatedNode:
    """A node's tree, written once and then moved on by `advance()` (or the thread from `start()`).

    Faults arrive through `<root>/faults.yaml`, a list of fault mappings (see faults.py) that the
    cluster controller rewrites; GPU faults go to the simulated NVML, the rest change EFA and
    Lustre behaviour here. A node in a job finds it in `<root>/job.yaml` (its id, this node's index,
    the job's node count) and writes NCCL Inspector's files for its GPUs into `<root>/nccl`.
    """

    def __init__(self, root: str, profile: dict[str, Any], nvml: SimulatedNvml | None = None,
                 layout: str = "split", clock: Callable[[], float] = time.monotonic,
                 dcgm: HostEngine | None = None, train_dir: str = "") -> None:
        """`layout` is the EFA counter layout: split (kernel >= 5.15) or combined (older kernels);
        `dcgm` the node's simulated DCGM host engine, if it runs one; `train_dir` the training spool
        its job's ranks write (simulator/training.py), if any."""
        self._dcgm = dcgm
        self._train_dir = train_dir
        self._training: TrainingRanks | None = None
        self.sysfs = os.path.join(root, "sys")
        self.faults_file = os.path.join(root, "faults.yaml")
        self.job_file = os.path.join(root, "job.yaml")
        self.inspector_dir = os.path.join(root, "nccl")
        self._job: dict[str, Any] = {}
        self._job_seen: tuple[float, int] | None = None
        self._updates = 0
        self._staging = os.path.join(root, ".staging")
        self._profile = profile
        self._nvml = nvml
        self._layout = layout
        self._clock = clock
        self._last = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._faults_seen: tuple[float, int] | None = None
        self._faults: list[dict[str, Any]] = []
        self._effects = NodeEffects()
        self._raised: set[tuple[int, int]] = set()
        self._logged: set[tuple] = set()
        self.kernel_log = KernelLog(root)
        self.kmsg_file, self.procfs = self.kernel_log.path, self.kernel_log.procfs
        _replace_own_tree(self.sysfs)
        os.makedirs(self._staging, exist_ok=True)
        self.devices = efa_devices(int(profile.get("efa_devices", 32)))
        self._efa = [{**d.port_counters, **d.device_counters} for d in self.devices]
        if self.devices:
            write_rdma_tree(self.sysfs, self.devices, layout=layout)
        self.hcas = mlx5_devices(int(profile.get("ib_devices", 0)))  # InfiniBand HCAs (a DGX's compute fabric)
        for hca in self.hcas:
            hca.counters["link_downed"] = 0  # links that never went down since boot
        self._ports_down: set[int] = set()
        if self.hcas:
            write_rdma_tree(self.sysfs, self.hcas, driver="mlx5_core", vendor="0x15b3", firmware="28.39.1002",
                            rate="400 Gb/sec (4X NDR)")
        # each device's PCI function, so a device hidden by a fault can come back
        self._pci_of = {d.name: os.path.realpath(os.path.join(self.sysfs, "class", "infiniband", d.name, "device"))
                        for d in self.devices}
        write_dmi(self.sysfs, profile, root)
        gpus = profile["gpu"]["count"]
        write_gpu_functions(self.sysfs, [(P5_GPU_BUSES[i], i // (gpus // 2 or 1), P5_EFA_BUSES[4 * i] - 1)
                                         for i in range(min(gpus, len(P5_GPU_BUSES)))])
        self.lustre = LustreClient(read_bytes=912_337_190_912, reads=1_844_117, write_bytes=120_334_110_720,
                                   writes=29_377)
        self._lustre_io = [float(self.lustre.read_bytes), float(self.lustre.write_bytes)]
        self._target_counts = {t.name: [0.0, 1.0] for t in self.lustre.targets}  # timeouts, connection attempts
        self._elapsed = 0.0
        write_lustre_tree(self.sysfs, self.lustre)
        self._load_job()
        self._load_faults()  # faults present at start are there at boot (a GPU that did not come up)
        self._write_inspector_files()
        self._ras_off = False
        self._ras = self._start_ras()
        for fs in profile.get("idle_lustre", ()):  # a second mount nobody uses: its imports go IDLE
            write_lustre_tree(self.sysfs, LustreClient(
                fs=fs, read_bytes=52_428_800, reads=400, write_bytes=1_048_576, writes=12,
                targets=[LustreTarget(name, state="IDLE", rpcs_in_flight=0) for name in ("MDT0000", "OST0000")]))

    @staticmethod
    def write_job(root: str, job_id: str, node: int, nodes: int, ras: dict[str, Any] | None = None) -> None:
        """Puts the node in a job: `node` is its index in the cluster, `nodes` the job's node count;
        `ras` (address, hosts in rank order, started, version, timeout_factor) has it answer NCCL RAS."""
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "job.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump({"id": job_id, "node": node, "nodes": nodes, **({"ras": ras} if ras else {})}, handle)

    def advance(self) -> None:
        """Applies any new job and faults, then moves every counter on by the time since the last call."""
        self._load_job()
        self._load_faults()
        self._switch_ras()
        now = self._clock()
        dt, self._last = max(0.0, now - self._last), now
        self._elapsed += dt
        efa = self._effects.efa
        shown = len(self.devices) - efa.missing_devices  # the last ones go missing
        for number, (device, counters) in enumerate(zip(self.devices, self._efa, strict=True)):
            if not self._show_device(device, number < shown):
                continue
            before = {**device.port_counters, **device.device_counters}
            for name in counters:
                counters[name] += (EFA_RATES.get(name, 0.0) * efa.traffic_scale + efa.error_rates.get(name, 0.0)) * dt
            device.port_counters = {k: int(counters[k]) for k in device.port_counters}
            device.device_counters = {k: int(counters[k]) for k in device.device_counters}
            write_counters(self.sysfs, device, self._layout, self._staging, unchanged=before)
        self._set_ports(self._effects.ports_down)
        self._advance_lustre(dt)
        write_lustre_tree(self.sysfs, self.lustre, time.time(), self._staging)
        self._dump_inspector()
        self._advance_training(dt)

    def _advance_training(self, dt: float) -> None:
        """The job's ranks step on (a new job's ranks start from step 0), when the node has a spool."""
        if not self._train_dir or not self._job:
            return
        job, node = self._job["id"], self._job["node"]
        if self._training is None or self._training.job != (job, node):
            if self._training is not None:
                self._training.close()
            self._training = TrainingRanks(self._train_dir, job, node, self._profile["gpu"]["count"],
                                           self._profile["gpu"]["sm_clock_max_mhz"])
        self._training.advance(dt, self._effects, time.time())

    def _load_job(self) -> None:
        """Reads job.yaml when it changed; the faults are worked out again for this node's index."""
        seen = _version(self.job_file)
        if seen == self._job_seen:
            return
        self._job_seen, self._faults_seen = seen, None
        try:
            with open(self.job_file, encoding="utf-8") as handle:
                job = yaml.safe_load(handle) or {}
            self._job = {"id": str(job["id"]), "node": int(job["node"]), "nodes": int(job["nodes"]),
                         "ras": job.get("ras")}
        except FileNotFoundError:
            self._job = {}
        except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError) as exc:
            log.warning("ignoring simulated job file", extra={"file": self.job_file, "error": str(exc)})
            self._job = {}

    def _dump_inspector(self) -> None:
        """Every INSPECTOR_EVERY updates, NCCL Inspector's dump for the node's GPUs, unless the job
        runs no collectives (a checkpoint) or there is no job."""
        self._updates += 1
        if self._updates % INSPECTOR_EVERY == 0:
            self._write_inspector_files()

    def _write_inspector_files(self) -> None:
        nccl = self._effects.nccl
        if not self._job or nccl.paused:
            return
        node, nodes, gpus = self._job["node"], self._job["nodes"], self._profile["gpu"]["count"]
        ranks = [(gpu_uuid(gpu), gpu, rank_buckets(node, nodes, gpus, gpu, nccl.exec_scale.get(gpu, 1.0),
                                                   nccl.network_bandwidth_scale)) for gpu in range(gpus)]
        write_rank_files(self.inspector_dir, ranks, self._job["id"], f"node-{node}")

    def _start_ras(self) -> RasServer | None:
        """The node's NCCL RAS server, when its job.yaml gives it an address (a node in a job)."""
        settings = (self._job or {}).get("ras")
        if not settings:
            return None
        host, _, port = str(settings["address"]).rpartition(":")
        job = Job(self._job["id"], tuple(settings["hosts"]), self._profile["gpu"]["count"], float(settings["started"]),
                  str(settings.get("version", "2.29.2")), float(settings.get("timeout_factor", 1.0)))
        try:
            server = RasServer(host, int(port), lambda: (job, self._job_faults()))
        except OSError as exc:
            log.warning("simulated RAS server not started", extra={"address": settings["address"], "error": str(exc)})
            return None
        server.start()
        return server

    def _switch_ras(self) -> None:
        """A job running without RAS (`ras_off`: NCCL before 2.24, or NCCL_RAS_ENABLE=0): nothing listens
        on its port until the fault clears."""
        off = any(fault["kind"] == "ras_off" for fault in self._job_faults())
        if off == self._ras_off:
            return
        self._ras_off = off
        if off and self._ras is not None:
            self._ras.stop()
            self._ras = None
        elif not off:
            self._ras = self._start_ras()

    def _job_faults(self) -> list[dict[str, Any]]:
        """The job's faults as the node's update last read them (each carries the time it was injected, so
        every node's view agrees)."""
        return [fault for fault in self._faults if fault["kind"] in JOB_KINDS]

    def _show_device(self, device: RdmaDevice, shown: bool) -> bool:
        """Adds or removes the device's class/infiniband entry, as a card that came up or did not."""
        entry = os.path.join(self.sysfs, "class", "infiniband", device.name)
        if shown and not os.path.lexists(entry):
            relative_symlink(os.path.join(self._pci_of[device.name], "infiniband", device.name), entry)
        elif not shown and os.path.lexists(entry):
            os.unlink(entry)
        return shown

    def _set_ports(self, down: set[int]) -> None:
        """Takes the HCAs' ports down or up as the faults say; each going down counts in `link_downed`."""
        for index, hca in enumerate(self.hcas):
            if (index in down) == (index in self._ports_down):
                continue
            write_port_state(self.sysfs, hca.name, PORT_DOWN if index in down else PORT_ACTIVE, self._staging)
            if index in down:
                hca.counters["link_downed"] += 1
                write_counters(self.sysfs, hca, staging=self._staging)
        self._ports_down = {index for index in down if index < len(self.hcas)}

    def _advance_lustre(self, dt: float) -> None:
        stalled = self._effects.lustre.stalled_targets
        if not stalled:  # one stuck OST stalls the striped I/O of the whole filesystem
            self._lustre_io[0] += LUSTRE_READ_RATE * dt
            self._lustre_io[1] += _checkpoint_bytes(self._elapsed) - _checkpoint_bytes(self._elapsed - dt)
        self.lustre.read_bytes, self.lustre.write_bytes = int(self._lustre_io[0]), int(self._lustre_io[1])
        self.lustre.reads = int(1_844_117 + (self._lustre_io[0] - 912_337_190_912) / 1_048_576)
        self.lustre.writes = int(29_377 + (self._lustre_io[1] - 120_334_110_720) / 4_194_304)
        wall = int(time.time())
        for target in self.lustre.targets:
            counts = self._target_counts[target.name]
            if target.name in stalled:
                counts[0] += 1.0 * dt  # RPCs time out one after another
                counts[1] += 0.2 * dt  # and the client keeps trying to reconnect
                target.state, target.rpcs_in_flight = self._effects.lustre.state, 8
            else:  # with the filesystem's I/O stuck on another target, nothing is sent to this one
                target.state, target.rpcs_in_flight, target.last_reply = "FULL", 0 if stalled else 1, wall
            target.timeouts, target.connection_attempts = int(counts[0]), int(counts[1])

    def _load_faults(self) -> None:
        """Reads faults.yaml when it changed; a file that cannot be used is logged and ignored."""
        seen = _version(self.faults_file)
        if seen == self._faults_seen:
            return
        self._faults_seen = seen
        faults: list[dict[str, Any]] = []
        if seen:
            try:
                with open(self.faults_file, encoding="utf-8") as handle:
                    loaded = yaml.safe_load(handle) or []
                gpus = self._profile["gpu"]["count"]
                faults = [check_fault(f, f"{self.faults_file}[{i}]", gpus) for i, f in enumerate(loaded)]
            except (OSError, yaml.YAMLError, TypeError, ScenarioError) as exc:
                log.warning("ignoring simulated faults file", extra={"file": self.faults_file, "error": str(exc)})
                return
        self._faults = faults
        self._apply(node_effects(faults, self._profile, self._job.get("node")))

    def _apply(self, effects: NodeEffects) -> None:
        self._effects = effects
        self._log_kernel_events(effects)
        if self._nvml is None:
            return
        self._nvml.boot_without(effects.missing_at_boot)
        for index in range(self._profile["gpu"]["count"]):
            self._nvml.inject(index, effects.gpus.get(index, Fault()))
        for gpu, xid in effects.xids:
            if (gpu, xid) not in self._raised:
                self._nvml.raise_xid(gpu, xid)
        self._raised = set(effects.xids)
        if self._dcgm is not None:
            self._dcgm.apply(effects.dcgm.down, effects.dcgm.locked, effects.dcgm.incidents)

    def _log_kernel_events(self, effects: NodeEffects) -> None:
        """Kernel-log records for the faults that started since the last change."""
        # The driver logs every XID, also those NVML reports (a lost GPU's 79 too); kernel_xid faults only here.
        lost = [(gpu, 79) for gpu, fault in effects.gpus.items() if fault.lost]
        events = {("xid", gpu, xid) for gpu, xid in [*effects.kernel_xids, *effects.xids, *lost]}
        events |= {("sxid", *s) for s in effects.sxids}
        for event in sorted(events - self._logged):
            if event[0] == "xid":
                self.kernel_log.xid(f"0000:{gpu_bus(event[1]):02x}:00", event[2])
            else:
                self.kernel_log.sxid(*event[1:])
        self._logged = events

    def start(self, interval: float = 2.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.advance()
                except OSError as exc:  # the tree was removed under us (shutdown)
                    log.warning("simulated node update failed", extra={"error": str(exc)})

        self._thread = threading.Thread(target=run, name="simulated-node", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the updates and waits for one in progress, so the tree can be removed after."""
        self._stop.set()
        if self._ras is not None:
            self._ras.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._training is not None:
            self._training.close()


def _version(path: str) -> tuple[float, int] | None:
    """(mtime, size) of a control file the cluster rewrites, None while it does not exist."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_mtime, stat.st_size


def _replace_own_tree(sysfs: str) -> None:
    """Removes a sysfs tree this simulator wrote before (it carries MARKER); anything else at that
    path is the user's, and is refused, never deleted."""
    if os.path.lexists(sysfs) and not os.path.isfile(os.path.join(sysfs, MARKER)):
        raise ConfigError(f"{sysfs} exists and was not written by gpuscope's simulator: refusing to replace it "
                          "(give --simulate.dir an empty or new directory)")
    if os.path.exists(sysfs):
        shutil.rmtree(sysfs)
    os.makedirs(sysfs)
    with open(os.path.join(sysfs, MARKER), "w", encoding="ascii") as handle:
        handle.write("written by gpuscope's simulator; replaced at its next start\n")


def write_dmi(sysfs: str, profile: dict[str, Any], root: str) -> None:
    """DMI as an EC2 Nitro instance shows it (vendor, instance type, instance id stable per node
    directory), or the vendor and product of the profile's `dmi` (a machine outside EC2)."""
    dmi = os.path.join(sysfs, "class", "dmi", "id")
    os.makedirs(dmi, exist_ok=True)
    shown = {"vendor": "Amazon EC2", "product": profile.get("instance", ""), **profile.get("dmi", {})}
    for name, text in (("sys_vendor", shown["vendor"]), ("product_name", shown["product"]),
                       ("board_asset_tag", f"i-{zlib.crc32(os.path.abspath(root).encode()):017x}")):
        with open(os.path.join(dmi, name), "w", encoding="ascii") as handle:
            handle.write(text + "\n")


def _checkpoint_bytes(elapsed: float) -> float:
    """Bytes written by periodic checkpoints up to `elapsed` seconds: 30 s bursts every 10 minutes."""
    full, rest = divmod(max(0.0, elapsed), CHECKPOINT_EVERY)
    return (full * CHECKPOINT_SECONDS + min(rest, CHECKPOINT_SECONDS)) * CHECKPOINT_RATE
