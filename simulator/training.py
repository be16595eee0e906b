"""A simulated training job's ranks on one node, writing the training spool as a real job would
(through gpuscope's own writer, gpuscope_train/), their pace set by the node's faults.

Each rank steps every STEP_SECONDS while the node is healthy. What the node suffers changes that: a
GPU held below its clock (a straggler, a thermal or power-brake slowdown) slows the synchronous job on
this node by as much as its clock fell; a stalled network (an EFA stall, a hung collective) stops
every step; a Lustre eviction makes each step wait for data; a checkpoint adds its save to a step.
The ranks of one node are in lockstep, as a synchronous job's are.
"""

from __future__ import annotations

from gpuscope_train import StepWriter
from simulator.faults import NodeEffects
from simulator.nvml import gpu_uuid

STEP_SECONDS = 1.0
TOKENS_PER_STEP = 32_768  # one rank's share of the global batch
DATA_WAIT_SECONDS = 0.02
LUSTRE_DATA_WAIT_SECONDS = 1.5  # a step waiting on an evicted filesystem target
CHECKPOINT_SAVE_SECONDS = 4.0


class TrainingRanks:
    """The node's ranks (one per GPU, global rank node x GPUs + GPU) and where their steps stand."""

    def __init__(self, directory: str, job: str, node: int, gpus: int, max_clock_mhz: float) -> None:
        self._writers = [StepWriter(job=job, rank=node * gpus + gpu, local_rank=gpu, gpu=gpu_uuid(gpu),
                                    directory=directory) for gpu in range(gpus)]
        self._max_clock = max_clock_mhz
        self.job = (job, node)
        self._progress = 0.0  # of the step under way, 0 to 1
        self.step = 0

    def advance(self, dt: float, effects: NodeEffects, now: float) -> None:
        """Moves the ranks on by `dt` seconds of the node's time under its current faults."""
        if effects.efa.traffic_scale == 0.0:
            return  # a stalled network: the collectives never complete, no step ends
        phases = self._phases(effects)
        slowest = min((f.sm_clock_mhz / self._max_clock for f in effects.gpus.values() if f.sm_clock_mhz), default=1.0)
        seconds = STEP_SECONDS / max(slowest, 0.05) + sum(phases.values())
        self._progress += dt / seconds
        while self._progress >= 1.0 - 1e-9:  # a step whose time has come, to the float's rounding
            self._progress -= 1.0
            self.step += 1
            loss = 2.0 + 8.0 / (1.0 + self.step / 100.0)
            for steps in self._writers:
                steps.step(self.step, seconds, tokens=TOKENS_PER_STEP, loss=loss, grad_norm=0.9, when=now, **phases)

    @staticmethod
    def _phases(effects: NodeEffects) -> dict[str, float]:
        """The seconds a step spends beyond computing: waiting for data (long on an evicted Lustre
        target), and saving a checkpoint (the job paused with its network up)."""
        phases = {"data_wait": LUSTRE_DATA_WAIT_SECONDS if effects.lustre.stalled_targets else DATA_WAIT_SECONDS}
        if effects.nccl.paused:
            phases["checkpoint_save"] = CHECKPOINT_SAVE_SECONDS
        return phases

    def close(self) -> None:
        for steps in self._writers:
            steps.close()
