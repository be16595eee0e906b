# gpuscope image (the exporter; `gpuscope remediate` for the receiver): `docker build -t gpuscope:0.1.0 .` from the repository root.
# Multi-stage: wheels are built in the first stage; the final image has no compiler, no pip cache,
# and runs as nobody. The NVIDIA container runtime mounts libnvidia-ml into it (runtime class
# `nvidia`, NVIDIA_DRIVER_CAPABILITIES=utility), so no CUDA base image is needed.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE NOTICE ./
# The packages the wheel holds: the command, the node agent, the simulator (`--simulate`), the shared
# library, the rules and dashboards (`alerts build`, `dashboards build` in the image too) and the receiver.
COPY gpuscope ./gpuscope
COPY gpuscope_train ./gpuscope_train
COPY exporter ./exporter
COPY simulator ./simulator
COPY toolkit ./toolkit
COPY alerts ./alerts
COPY receiver ./receiver
COPY dashboards ./dashboards
# The remediate extra (requests) too: the same image runs the remediation receiver's Deployment.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[remediate]"

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65534:65534
EXPOSE 19400
ENTRYPOINT ["gpuscope"]
CMD ["exporter"]
