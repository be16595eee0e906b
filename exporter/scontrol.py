"""Slurm's node state through its own commands: `sinfo` to read, `scontrol update` to drain and resume.

Shared by `gpuscope check --drain` (the node drains itself) and the remediation receiver (a central
service drains nodes an alert names). Nothing else in gpuscope changes the scheduler.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

TIMEOUT_SECONDS = 10.0


class SlurmError(RuntimeError):
    """A Slurm command failed or could not run; the message names the command and Slurm's words."""


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # sinfo's long state: idle, allocated, drained, draining, down*, ...
    reason: str  # "" when the node has none
    partitions: tuple[str, ...]

    @property
    def drained(self) -> bool:
        """Drained or draining (jobs still running), whatever else its state says."""
        return "drain" in self.state


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(argv[:2])}: {' '.join((done.stderr or done.stdout).split()) or 'failed'}")
    return done.stdout


def nodes(sinfo: str = "sinfo") -> dict[str, SlurmNode]:
    """Every node Slurm knows, with its state, reason and partitions (sinfo prints one line per
    node and partition; the reason is the last field, so a '|' in it survives)."""
    found: dict[str, SlurmNode] = {}
    for line in _run([sinfo, "--noheader", "--Node", "--format=%N|%T|%P|%E"]).splitlines():
        name, state, partition, reason = ([*line.split("|", 3), "", "", ""])[:4]
        if not name:
            continue
        known = found.get(name)
        partitions = (known.partitions if known else ()) + (partition.rstrip("*"),)
        found[name] = SlurmNode(name, state, "" if reason == "none" else reason, partitions)
    return found


def drain(node: str, reason: str, scontrol: str = "scontrol") -> None:
    _run([scontrol, "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])


def resume(node: str, scontrol: str = "scontrol") -> None:
    _run([scontrol, "update", f"NodeName={node}", "State=RESUME"])
