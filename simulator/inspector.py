"""NCCL Inspector's Prometheus dump, written as the plugin writes it, for the simulated job's GPUs.

The format and the writing follow NVIDIA/nccl `plugins/profiler/inspector/inspector_prom.cc`: one
file per GPU, `nccl_inspector_metrics_<uuid>.prom` (the CUDA UUID, NVML's without `GPU-`), opened
with "w" (truncated) at every dump, then two lines per bucket appended with fwrite and fflush; labels
in a fixed order, the comm name unescaped, values printed with `%.6g`, no HELP or TYPE lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

VERSION = "v5.1"
# The simulated job's four communicators: (name, spans nodes, collectives with (bus GB/s, exec us) of
# their two message-size buckets). "TP Group <node>" and "PP Group <gpu>" are one communicator per
# node and per GPU position; the others hold every rank of the job.
COMMUNICATORS = (
    ("World", True, {"AllReduce": ((45.0, 12000.0), (38.0, 1400.0)), "Broadcast": ((40.0, 900.0), (30.0, 150.0))}),
    ("DP Group 0", True, {"ReduceScatter": ((42.0, 9000.0), (35.0, 1100.0)),
                          "AllGather": ((42.0, 9000.0), (35.0, 1100.0))}),
    ("TP Group {node}", False, {"AllGather": ((360.0, 1200.0), (300.0, 160.0)),
                                "ReduceScatter": ((350.0, 1250.0), (290.0, 170.0))}),
    ("PP Group {gpu}", True, {"AllReduce": ((20.0, 500.0), (15.0, 80.0)), "AllGather": ((20.0, 480.0), (15.0, 75.0))}),
)
SIZES = (("1-2GB", "Ring_simple"), ("64-65MB", "Tree_ll128"))


@dataclass(frozen=True)
class Bucket:
    """One collective bucket of one rank: what Inspector aggregates over an interval."""

    comm: str
    n_nodes: int
    nranks: int
    collective: str
    message_size: str
    algo_proto: str
    bus_bandwidth_gbs: float
    exec_time_us: float


def rank_buckets(node: int, nodes: int, gpus: int, gpu: int, exec_scale: float,
                 network_bandwidth_scale: float) -> list[Bucket]:
    """One GPU's buckets in the simulated job: its exec time scaled (waiting ranks longer, the rank
    waited for shorter), its bus bandwidth following (NCCL computes it from the time) and, on
    communicators that cross nodes, the network's scale."""
    buckets = []
    for name, spans_nodes, collectives in COMMUNICATORS:
        n_nodes = nodes if spans_nodes else 1
        nranks = nodes * gpus if name in ("World", "DP Group 0") else (gpus if not spans_nodes else nodes)
        network = network_bandwidth_scale if spans_nodes and nodes > 1 else 1.0
        for collective, values in collectives.items():
            for (size, algo), (bandwidth, exec_us) in zip(SIZES, values, strict=True):
                buckets.append(Bucket(name.format(node=node, gpu=gpu), n_nodes, nranks, collective, size, algo,
                                      bandwidth * network / exec_scale, exec_us * exec_scale / network))
    return buckets


def file_name(uuid: str) -> str:
    """The dump file of a GPU, from NVML's UUID (`GPU-…`)."""
    return f"nccl_inspector_metrics_{uuid.removeprefix('GPU-').lower()}.prom"


def bucket_lines(bucket: Bucket, job_id: str, node: str, cuda_ordinal: int) -> str:
    """The two lines Inspector writes for a bucket, in its label order and number format."""
    labels = (f'version="{VERSION}",slurm_job_id="{job_id}",node="{node}",gpu="GPU{cuda_ordinal}",'
              f'comm_name="{bucket.comm}",n_nodes="{bucket.n_nodes}",nranks="{bucket.nranks}",'
              f'collective="{bucket.collective}",message_size="{bucket.message_size}",'
              f'algo_proto="{bucket.algo_proto}"')
    return (f"nccl_bus_bandwidth_gbs{{{labels}}} {bucket.bus_bandwidth_gbs:.6g}\n"
            f"nccl_collective_exec_time_microseconds{{{labels}}} {bucket.exec_time_us:.6g}\n")


def dump(path: str, chunks: list[str]) -> None:
    """Rewrites the file in place as Inspector does: truncate, then one write and flush per bucket."""
    with open(path, "w", encoding="utf-8") as handle:  # fopen(path, "w")
        for chunk in chunks:
            handle.write(chunk)  # fwrite
            handle.flush()  # fflush


def write_rank_files(directory: str, ranks: list[tuple[str, int, list[Bucket]]], job_id: str, node: str) -> None:
    """One dump of every GPU of the node: (NVML UUID, CUDA ordinal, buckets) per rank."""
    os.makedirs(directory, exist_ok=True)
    for uuid, ordinal, buckets in ranks:
        dump(os.path.join(directory, file_name(uuid)), [bucket_lines(b, job_id, node, ordinal) for b in buckets])
