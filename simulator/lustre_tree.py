"""Writes a Lustre client tree as a 2.14+ client (FSx for Lustre 2.15) lays it out.

`llite/<fs>-<id>/stats` goes to debugfs (`<sysfs>/kernel/debug/lustre`), target state to
`<sysfs>/fs/lustre/{osc,mdc}/<fs>-<target>-{osc,mdc}-<id>/`, `health_check` to `<sysfs>/fs/lustre`.
The formats are those of the real captures in shared/fixtures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from simulator.files import write_file

INSTANCE_ID = "ffff9c8e4b2d3000"


@dataclass
class LustreTarget:
    name: str  # OST0000, MDT0000
    state: str = "FULL"
    rpcs_in_flight: int = 1
    timeouts: int = 0
    avg_wait_us: int = 900
    connection_attempts: int = 1
    generation: int = 1
    last_reply: int = 1_700_000_000
    pending_write_pages: int = 0


@dataclass
class LustreClient:
    fs: str = "fsx"
    read_bytes: int = 0
    reads: int = 0
    write_bytes: int = 0
    writes: int = 0
    operations: dict[str, tuple[int, int]] = field(default_factory=lambda: {"open": (10, 1500), "close": (10, 900),
                                                                             "getattr": (40, 2000)})
    targets: list[LustreTarget] = field(default_factory=lambda: [LustreTarget("MDT0000")] + [
        LustreTarget(f"OST{i:04x}") for i in range(4)])
    healthy: bool = True


def write_lustre_tree(sysfs: str, client: LustreClient, now: float = 1_700_000_000.0,
                      staging: str | None = None) -> None:
    instance = f"{client.fs}-{INSTANCE_ID}"
    write_file(os.path.join(sysfs, "kernel/debug/lustre/llite", instance, "stats"), llite_stats(client, now),
               staging)
    write_file(os.path.join(sysfs, "fs/lustre/health_check"), "healthy" if client.healthy else "NOT HEALTHY",
               staging)
    for target in client.targets:
        kind = "mdc" if target.name.startswith("MDT") else "osc"
        directory = os.path.join(sysfs, "fs/lustre", kind, f"{client.fs}-{target.name}-{kind}-{INSTANCE_ID}")
        write_file(os.path.join(directory, "import"), import_text(client.fs, target, kind), staging)
        write_file(os.path.join(directory, "rpc_stats"), rpc_stats_text(target, kind, now), staging)
        write_file(os.path.join(directory, "timeouts"), f"last reply : {target.last_reply}, "
                                                        f"{max(0, int(now) - target.last_reply)}s ago", staging)


def llite_stats(client: LustreClient, now: float) -> str:
    lines = [f"snapshot_time             {now:.9f} secs.nsecs",
             "start_time                1699990000.000000000 secs.nsecs",
             f"elapsed_time              {now - 1699990000:.9f} secs.nsecs"]
    if client.reads:
        lines.append(f"read_bytes                {client.reads} samples [bytes] 4096 4194304 {client.read_bytes}")
    if client.writes:
        lines.append(f"write_bytes               {client.writes} samples [bytes] 4096 4194304 {client.write_bytes}")
    for name, (count, total_us) in client.operations.items():
        lines.append(f"{name:<25} {count} samples [usecs] 1 {max(1, total_us)} {total_us}")
    return "\n".join(lines)


def import_text(fs: str, target: LustreTarget, kind: str) -> str:
    return f"""import:
    name: {fs}-{target.name}-{kind}-{INSTANCE_ID}
    target: {fs}-{target.name}_UUID
    state: {target.state}
    connection:
       current_connection: 10.0.0.10@tcp
       connection_attempts: {target.connection_attempts}
       generation: {target.generation}
       in-progress_invalidations: 0
    rpcs:
       inflight: {target.rpcs_in_flight}
       unregistering: 0
       timeouts: {target.timeouts}
       avg_waittime: {target.avg_wait_us} usec
"""


def rpc_stats_text(target: LustreTarget, kind: str, now: float) -> str:
    if kind == "mdc":
        return f"snapshot_time:         {now:.9f} (secs.nsecs)\nmodify_RPCs_in_flight:  0\n"
    return (f"snapshot_time:         {now:.9f} (secs.nsecs)\nread RPCs in flight:  {target.rpcs_in_flight}\n"
            f"write RPCs in flight: 0\npending write pages:  {target.pending_write_pages}\npending read pages:   0\n")
