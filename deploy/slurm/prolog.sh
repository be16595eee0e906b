#!/bin/bash
# gpuscope Slurm prolog: records which GPUs this job got, so the exporter can say which job owns each
# GPU (gpuscope_gpu_job_info). Install as (or call from) the node's Prolog; run it as root.
#
# The mapping directory is dcgm-exporter's HPC job mapping format: one file per GPU index, one job
# id per line. Several jobs may start at once: every change happens under one lock. A prolog that
# fails drains the node, so this one reports problems on stderr and always exits 0.
dir="${GPUSCOPE_JOB_MAPPING_DIR:-/run/gpuscope/job-mapping}"
job="${SLURM_JOB_ID:-}"
gpus="${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}"
if [[ ! "$job" =~ ^[0-9]+$ ]]; then
    echo "gpuscope prolog: SLURM_JOB_ID is not set or not a number; nothing recorded" >&2
    exit 0
fi
[ -n "$gpus" ] || exit 0
mkdir -p "$dir" && exec 9>>"$dir/.lock" && flock -w 10 9 || {
    echo "gpuscope prolog: cannot lock $dir; job $job not recorded" >&2
    exit 0
}
IFS=, read -ra indices <<< "$gpus"
for gpu in "${indices[@]}"; do
    [[ "$gpu" =~ ^[0-9]+$ ]] || continue
    file="$dir/$gpu"
    grep -qx "$job" "$file" 2>/dev/null || echo "$job" >> "$file"
done
exit 0
