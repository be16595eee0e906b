"""Which Kubernetes pod holds each GPU, from the kubelet's pod-resources API.

`v1.PodResourcesLister/List` on the kubelet's unix socket lists, per pod and container, the device
ids the device plugin allocated: GPU UUIDs or indices under `nvidia.com/gpu` (or the resource
names configured). It is asked in a background thread every `interval` seconds, never during a
scrape (dcgm-exporter burnt cores doing that per scrape); a socket that is missing or failing
leaves the GPUs without attribution and shows in `gpuscope_gpu_pod_resources_up`.

The response is decoded by the few lines of protobuf wire format below, so the exporter needs
grpcio for the transport but no generated code; tests check the decoder against messages encoded
by protobuf from the kubelet's own proto.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger("gpuscope")

LIST_METHOD = "/v1.PodResourcesLister/List"


@dataclass(frozen=True)
class Allocation:
    namespace: str
    pod: str
    container: str


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of one protobuf message: bytes for length-delimited fields, else ints."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def parse_list_response(buf: bytes, resource_names: Sequence[str]) -> dict[str, Allocation]:
    """{device id: allocation} for the devices of `resource_names` in a ListPodResourcesResponse.

    Field numbers from the kubelet's api.proto: ListPodResourcesResponse.pod_resources = 1;
    PodResources name = 1, namespace = 2, containers = 3; ContainerResources name = 1,
    devices = 2; ContainerDevices resource_name = 1, device_ids = 2.
    """
    out: dict[str, Allocation] = {}
    for number, pod_bytes in _fields(buf):
        if number != 1 or not isinstance(pod_bytes, bytes):
            continue
        pod = dict.fromkeys(("name", "namespace"), "")
        containers: list[bytes] = []
        for field, value in _fields(pod_bytes):
            if field in (1, 2) and isinstance(value, bytes):
                pod["name" if field == 1 else "namespace"] = value.decode()
            elif field == 3 and isinstance(value, bytes):
                containers.append(value)
        for container in containers:
            _add_container(out, pod["namespace"], pod["name"], container, resource_names)
    return out


def _add_container(out: dict[str, Allocation], namespace: str, pod: str, container: bytes,
                   resource_names: Sequence[str]) -> None:
    name, devices = "", []
    for field, value in _fields(container):
        if field == 1 and isinstance(value, bytes):
            name = value.decode()
        elif field == 2 and isinstance(value, bytes):
            devices.append(value)
    for device in devices:
        resource, ids = "", []
        for field, value in _fields(device):
            if field == 1 and isinstance(value, bytes):
                resource = value.decode()
            elif field == 2 and isinstance(value, bytes):
                ids.append(value.decode())
        if resource in resource_names:
            for device_id in ids:
                out[device_id] = Allocation(namespace, pod, name)


class PodResourcesWatcher:
    """Polls the kubelet's pod-resources socket in the background and keeps the latest answer."""

    def __init__(self, socket_path: str, resource_names: Sequence[str], interval: float = 30.0,
                 timeout: float = 5.0) -> None:
        self._socket = socket_path
        self._resource_names = tuple(resource_names)
        self._interval = interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._allocations: dict[str, Allocation] = {}
        self._up = False
        self._error = ""
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="pod-resources", daemon=True).start()

    def _run(self) -> None:
        import grpc  # only nodes that use Kubernetes attribution load the gRPC stack

        while True:
            try:
                with grpc.insecure_channel(f"unix://{self._socket}") as channel:
                    call = channel.unary_unary(LIST_METHOD, request_serializer=lambda _request: b"",
                                               response_deserializer=bytes)
                    allocations = parse_list_response(call(None, timeout=self._timeout), self._resource_names)
                self._store(allocations, True, "")
            except (grpc.RpcError, ValueError, IndexError) as exc:
                self._store({}, False, f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self._interval):
                return

    def _store(self, allocations: dict[str, Allocation], up: bool, error: str) -> None:
        if error and error != self._error:
            log.warning("pod-resources socket unusable; GPUs without pod attribution",
                        extra={"socket": self._socket, "error": error.splitlines()[0]})
        with self._lock:
            self._allocations, self._up, self._error = allocations, up, error

    def snapshot(self) -> tuple[bool, dict[str, Allocation]]:
        with self._lock:
            return self._up, dict(self._allocations)

    def stop(self) -> None:
        self._stop.set()
