"""Which Slurm job owns each GPU: the dcgm-exporter mapping directory, else the GPU's processes.

The mapping directory (dcgm-exporter's HPC job mapping, kept by `deploy/slurm/` prolog and epilog)
has one file per GPU index (or `<gpu>.<gpu-instance>` under MIG), each line a job id. It is re-read
only when its modification time changes. Without it, the job is found from the GPU's compute
processes: their `/proc/<pid>/cgroup` (Slurm's cgroup v1 and v2 layouts name `job_<id>`), or, as a
last resort, `SLURM_JOB_ID` in their environment.
"""

from __future__ import annotations

import os
import re

from exporter.files import read_bytes

_JOB_IN_CGROUP = re.compile(r"/job_(\d+)(?:/|$)")
_GPU_FILE = re.compile(r"^(\d+)(?:\.\d+)?$")


class MappingDirectory:
    """{GPU index: job ids} from a dcgm-exporter style mapping directory, cached by mtime."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, ...] | None = None
        self._jobs: dict[int, tuple[str, ...]] = {}

    def jobs(self) -> dict[int, tuple[str, ...]]:
        """A missing directory means no jobs, not an error: the prolog creates it with the first job."""
        try:
            names = os.listdir(self._path)
            stamp = (os.stat(self._path).st_mtime_ns, *sorted(
                os.stat(os.path.join(self._path, name)).st_mtime_ns for name in names))
        except FileNotFoundError:
            self._stamp, self._jobs = None, {}
            return self._jobs
        if stamp != self._stamp:
            self._jobs = _read_mapping(self._path, names)
            self._stamp = stamp
        return self._jobs


def _read_mapping(path: str, names: list[str]) -> dict[int, tuple[str, ...]]:
    jobs: dict[int, set[str]] = {}
    for name in names:
        match = _GPU_FILE.match(name)
        if not match:
            continue
        try:
            text = read_bytes(os.path.join(path, name)).decode("utf-8", "replace")
        except OSError:
            continue  # removed by an epilog between listing and reading
        ids = {line.strip() for line in text.splitlines() if line.strip().isdigit()}
        jobs.setdefault(int(match[1]), set()).update(ids)
    return {gpu: tuple(sorted(ids, key=int)) for gpu, ids in jobs.items() if ids}


def job_of_process(procfs: str, pid: int) -> str:
    """The Slurm job id a process belongs to, or "" when it is not in a Slurm job (or has exited)."""
    try:
        cgroup = read_bytes(f"{procfs}/{pid}/cgroup").decode("utf-8", "replace")
    except OSError:
        return ""
    for line in cgroup.splitlines():
        match = _JOB_IN_CGROUP.search(line.rpartition(":")[2])
        if match:
            return match[1]
    try:
        environ = read_bytes(f"{procfs}/{pid}/environ")
    except OSError:
        return ""  # other users' environments are readable only by root
    for entry in environ.split(b"\0"):
        if entry.startswith(b"SLURM_JOB_ID="):
            value = entry[len(b"SLURM_JOB_ID="):].decode("ascii", "replace")
            return value if value.isdigit() else ""
    return ""
