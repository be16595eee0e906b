"""The training job's side of gpuscope: one append-only JSON-lines spool file per rank, which the node's
exporter reads (its `train` collector). Standard library only: it is imported inside the job.

    from gpuscope_train import StepWriter

    steps = StepWriter(job="4242", rank=rank, local_rank=local_rank)   # GPUSCOPE_TRAIN_DIR, or off
    ...
    steps.step(step, seconds, tokens=tokens, data_wait=data_seconds, loss=loss.item())

The format (docs/training.md): `<dir>/<job>/rank-<rank>.jsonl`, one object per completed step,
fields in base units (seconds, tokens, FLOPs). When the file passes `max_bytes` the writer renames it
to `rank-<rank>.jsonl.1` (replacing an older one) and starts a new file, so a rank never holds more
than twice `max_bytes` on the node, whether or not an exporter reads it. A write that fails (the
directory gone, the disk full) is dropped and counted in `dropped`, never raised into the job.
"""

from __future__ import annotations

import json
import math
import os
import time

VERSION = 1
DEFAULT_MAX_BYTES = 4 << 20
PHASES = ("data_wait", "compute", "optimizer", "checkpoint_save", "checkpoint_load", "other")
_PHASES = frozenset(PHASES)


def gpu_of(local_device: int, environ: dict[str, str] | None = None) -> str:
    """The GPU this process's device `local_device` is, as the node names it: the UUID where
    CUDA_VISIBLE_DEVICES lists UUIDs, else the NVML index it lists at that place (CUDA numbers the
    visible devices from 0), else `local_device` itself. NVML numbers GPUs in PCI bus order; so does CUDA
    with CUDA_DEVICE_ORDER=PCI_BUS_ID, and on nodes of one GPU model in either order."""
    env = os.environ if environ is None else environ
    visible = [entry.strip() for entry in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if local_device < len(visible):
        return visible[local_device]
    return str(local_device)


class StepWriter:
    """Appends one record per step to this rank's spool file. Off (every call a no-op) when no
    directory is given and GPUSCOPE_TRAIN_DIR is unset."""

    def __init__(self, job: str = "", rank: int | None = None, local_rank: int | None = None, gpu: str = "",
                 directory: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        env = os.environ
        directory = env.get("GPUSCOPE_TRAIN_DIR", "") if directory is None else directory
        self.job = str(job or env.get("SLURM_JOB_ID", "") or env.get("GPUSCOPE_JOB_ID", ""))
        self.rank = int(rank if rank is not None else env.get("RANK", env.get("SLURM_PROCID", "0")))
        self.local_rank = int(local_rank if local_rank is not None else env.get("LOCAL_RANK",
                                                                                env.get("SLURM_LOCALID", "0")))
        self.gpu = gpu or gpu_of(self.local_rank)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.path = os.path.join(directory, self.job, f"rank-{self.rank}.jsonl") if directory and self.job else ""
        self._prefix = (f'{{"v":{VERSION},"job":{json.dumps(self.job)},"rank":{self.rank},'
                        f'"local_rank":{self.local_rank},"gpu":{json.dumps(self.gpu)},')
        self._file = None
        self._size = 0

    def step(self, step: int, seconds: float, *, tokens: int = 0, samples: int = 0, loss: float | None = None,
             grad_norm: float | None = None, skipped: bool = False, flops: float = 0.0,
             when: float | None = None, **phases: float) -> None:
        """Records a completed step: its wall `seconds`, the `tokens` and `samples` it trained, its
        loss and gradient norm, whether the optimizer skipped it (non-finite gradients), the model
        FLOPs it did, and the seconds of its phases (data_wait, compute, optimizer, checkpoint_save,
        checkpoint_load, other) as keyword arguments."""
        if not self.path:
            return
        if not _PHASES.issuperset(phases):
            raise TypeError(f"unknown phase {sorted(set(phases) - _PHASES)[0]!r} (phases: {', '.join(PHASES)})")
        text = f'"step":{int(step)},"time":{time.time() if when is None else when:.3f},"seconds":{float(seconds):.6g}'
        if phases:
            text += ',"phases":{' + ",".join([f'"{k}":{float(v):.6g}' for k, v in phases.items()]) + "}"
        if tokens:
            text += f',"tokens":{int(tokens)}'
        if samples:
            text += f',"samples":{int(samples)}'
        if loss is not None:
            text += f',"loss":{_number(loss)}'
        if grad_norm is not None:
            text += f',"grad_norm":{_number(grad_norm)}'
        if skipped:
            text += ',"skipped":true'
        if flops:
            text += f',"flops":{float(flops):.6g}'
        self._write((self._prefix + text + "}\n").encode())

    def _write(self, line: bytes) -> None:
        try:
            if self._file is None:
                self._open()
            if self._size and self._size + len(line) > self.max_bytes:  # full: aside as .1, a new file
                self._file.close()
                self._file = None
                os.replace(self.path, self.path + ".1")
                self._open()
            self._file.write(line)  # one write a record: a reader never sees half of it for long
            self._size += len(line)
        except OSError:
            self.dropped += 1
            self.close()

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open between steps)
        self._size = self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _number(value: float) -> str:
    """JSON has no NaN or infinity: a non-finite loss is written as null, which the reader counts."""
    return repr(float(value)) if math.isfinite(value) else "null"
