"""gpuscope's per-node exporter: NVML, EFA/RDMA, Lustre and host metrics for Prometheus."""

__version__ = "0.1.0"
