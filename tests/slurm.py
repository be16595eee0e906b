"""A real one-machine Slurm for the tests: munged, slurmctld and (for one node) slurmd, as root.

Debian bookworm's packages (slurmctld, slurmd, slurm-client 22.05, munge). Nodes other than the
one slurmd serves exist only in slurm.conf (NodeAddr 127.0.0.1): Slurm still drains and resumes
them, which is what the remediation tests need. Everything lives in a temporary directory; the
processes are stopped at the end, munged too if this harness started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from simulator.cluster import free_port
from tests.helpers import wait_until
from tests.procs import stop

MUNGE_SOCKET_DIR = "/run/munge"


@dataclass
class Slurm:
    conf: str
    env: dict[str, str]

    def run(self, *argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=20, check=True)
        return done.stdout

    def reasons(self) -> dict[str, str]:
        """`sinfo -R`: drained (or down) nodes and their reasons."""
        out = self.run("sinfo", "--list-reasons", "--noheader", "--format=%N|%E")
        found = {}
        for line in out.splitlines():
            names, _, reason = line.partition("|")
            for name in self.run("scontrol", "show", "hostnames", names).split():
                found[name] = reason
        return found

    def state(self, node: str) -> str:
        return self.run("sinfo", "--noheader", "--Node", f"--nodes={node}", "--format=%T").split()[0]

    def wait_for(self, check, timeout: float, what: str):
        return wait_until(check, timeout, lambda: f"{what} (sinfo -R: {self.reasons()})")


def available() -> str:
    """Why a real Slurm cannot run here ("" if it can)."""
    if os.geteuid() != 0:
        return "needs root (munged, slurmctld and slurmd run as root here)"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sinfo", "scontrol") if not shutil.which(b)]
    return f"missing {', '.join(missing)}: apt-get install slurmctld slurmd slurm-client munge" if missing else ""


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=True).stdout
        subprocess.run(["unmunge"], input=cred, capture_output=True, timeout=5, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


@contextmanager
def _munged(work: str) -> Iterator[None]:
    if _munge_works():
        yield
        return
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", MUNGE_SOCKET_DIR], check=True)
    log = os.path.join(work, "munged.log")
    with open(log, "w", encoding="utf-8"):
        pass
    shutil.chown(log, "munge", "munge")
    process = subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground", "--force",
                                f"--log-file={log}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _munge_works():
            if process.poll() is not None or time.monotonic() > deadline:
                with open(log, encoding="utf-8") as handle:
                    raise RuntimeError(f"munged did not start: {handle.read()[-500:]}")
            time.sleep(0.1)
        yield
    finally:
        stop(process)


def _conf(work: str, nodes: str, partitions: dict[str, str], health_check: str) -> str:
    lines = [
        "ClusterName=gpuscopetest", "SlurmctldHost=localhost", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"StateSaveLocation={work}/state", f"SlurmdSpoolDir={work}/spool/%n",
        f"SlurmctldPidFile={work}/slurmctld.pid", f"SlurmdPidFile={work}/slurmd-%n.pid",
        f"SlurmctldLogFile={work}/slurmctld.log", f"SlurmdLogFile={work}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/linear", "MpiDefault=none",
        "ReturnToService=2", "SlurmdTimeout=3600",
        f"NodeName={nodes} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN",
    ]
    if health_check:
        lines += [f"HealthCheckProgram={health_check}", "HealthCheckInterval=2", "HealthCheckNodeState=ANY"]
    lines += [f"PartitionName={name} Nodes={members} MaxTime=INFINITE State=UP" for name, members in partitions.items()]
    path = os.path.join(work, "slurm.conf")
    with open(path, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


@contextmanager
def slurm_cluster(work: str, nodes: str, partitions: dict[str, str], serve: str = "",
                  health_check: str = "") -> Iterator[Slurm]:
    """slurmctld for `nodes` (a Slurm hostlist) in `partitions` (name -> hostlist), and slurmd for the
    node `serve` (running `health_check` as its HealthCheckProgram) if given."""
    for directory in ("state", "spool"):
        os.makedirs(os.path.join(work, directory), exist_ok=True)
    conf = _conf(work, nodes, partitions, health_check)
    slurm = Slurm(conf, {**os.environ, "SLURM_CONF": conf})
    with ExitStack() as stack:
        stack.enter_context(_munged(work))
        ctld = subprocess.Popen(["slurmctld", "-D", "-c", "-f", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, env=slurm.env)
        stack.callback(stop, ctld)
        slurm.wait_for(lambda: _answers(slurm), 30, f"slurmctld did not answer ({work}/slurmctld.log)")
        if serve:
            slurmd = subprocess.Popen(["slurmd", "-D", "-f", conf, "-N", serve], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, env=slurm.env)
            stack.callback(stop, slurmd)
        yield slurm


def _answers(slurm: Slurm) -> bool:
    try:
        slurm.run("sinfo", "--noheader")
        return True
    except subprocess.SubprocessError:
        return False
