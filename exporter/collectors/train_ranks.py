"""What gpuscope knows of one training rank, whichever door its steps came through (the spool,
train.py; OTLP, train_otlp.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Rank:
    """One rank's totals since gpuscope first read it."""

    gpu: str = ""
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    samples: int = 0
    flops: float = 0.0
    data_wait: float = 0.0
    checkpoint: float = 0.0
    nonfinite: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    reports_tokens: bool = False  # the series of what a rank never reports are left out
    reports_phases: bool = False
    reports_samples: bool = False
    reports_flops: bool = False
    seen: float = 0.0  # monotonic time of its last record
