"""A real gRPC server speaking the kubelet's pod-resources API, for tests that need pods on GPUs.

Messages and service are generated at test time from tests/podresources/api.proto (the kubelet's
field numbers) by grpc_tools; the server listens on a unix socket as the kubelet does.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_tools import protoc

from simulator.nvml import SimulatedNvml
from tests.helpers import REPO

GPU_RESOURCE = "nvidia.com/gpu"


@contextmanager
def compiled_api(out: Path) -> Iterator[tuple]:
    """The generated (api_pb2, api_pb2_grpc) modules, importable while the context lasts."""
    proto_dir = REPO / "tests" / "podresources"
    out.mkdir(parents=True, exist_ok=True)
    assert protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                        str(proto_dir / "api.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def simulated_uuids(profile: str = "p5.48xlarge") -> list[str]:
    """The simulated GPUs' UUIDs, which every simulated node of a profile shares."""
    sim = SimulatedNvml(profile)
    sim.nvmlInit()
    return [sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(i)) for i in range(sim.nvmlDeviceGetCount())]


def two_pods(pb):
    """trainer-0 (namespace ml) holds GPUs 0-3 by UUID; notebook (research) holds GPU 5 by index."""
    uuid = simulated_uuids()
    return pb.ListPodResourcesResponse(pod_resources=[
        pb.PodResources(name="trainer-0", namespace="ml", containers=[
            pb.ContainerResources(name="pytorch", cpu_ids=[1, 2, 3], devices=[
                pb.ContainerDevices(resource_name=GPU_RESOURCE, device_ids=uuid[0:4],
                                    topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=0)])),
                pb.ContainerDevices(resource_name="vpc.amazonaws.com/efa", device_ids=["rdmap79s0"]),
            ]),
            pb.ContainerResources(name="sidecar"),
        ]),
        pb.PodResources(name="notebook", namespace="research", containers=[
            pb.ContainerResources(name="jupyter", devices=[
                pb.ContainerDevices(resource_name=GPU_RESOURCE, device_ids=["5"])]),
        ]),
    ])


@contextmanager
def serving(pb_grpc, answer, socket_path: str) -> Iterator[grpc.Server]:
    """A pod-resources server answering List with `answer` until the context ends (or it is stopped)."""

    class Lister(pb_grpc.PodResourcesListerServicer):
        def List(self, request, context):
            return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PodResourcesListerServicer_to_server(Lister(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield server
    finally:
        server.stop(0)
