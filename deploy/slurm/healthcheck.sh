#!/bin/bash
# gpuscope node check for Slurm. slurm.conf:
#   HealthCheckProgram=/opt/gpuscope/healthcheck.sh
#   HealthCheckInterval=300
#   HealthCheckNodeState=ANY
# It asks the local exporter (or runs the collectors once) whether this node is fit, and when it is
# not, drains the node with one line naming the fault ("gpuscope check: 7 of 8 GPUs answer NVML
# (p5.48xlarge has 8)"). Exit 3, the check could not run (the exporter down), never drains: an
# exporter crashing everywhere must not empty the cluster. Resume by hand once fixed:
#   scontrol update NodeName=<node> State=RESUME
# Settings (shell variables) in /etc/default/gpuscope-check, all optional:
#   GPUSCOPE=/opt/gpuscope/venv/bin/gpuscope
#   GPUSCOPE_CHECK_ARGS="--exporter=http://127.0.0.1:19400/metrics --ignore-rdma-devices=mlx5_(8|9)"
#   GPUSCOPE_CHECK_STATE=/var/lib/gpuscope/check.json   (critical XIDs count once: since the last check)
defaults="${GPUSCOPE_CHECK_DEFAULTS:-/etc/default/gpuscope-check}"
# shellcheck disable=SC1090
[ -r "$defaults" ] && . "$defaults"
state="${GPUSCOPE_CHECK_STATE:-/var/lib/gpuscope/check.json}"
mkdir -p "$(dirname "$state")"
# shellcheck disable=SC2086
exec "${GPUSCOPE:-/opt/gpuscope/venv/bin/gpuscope}" check --drain --state-file="$state" ${GPUSCOPE_CHECK_ARGS:-}
