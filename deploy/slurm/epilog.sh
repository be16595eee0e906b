#!/bin/bash
# gpuscope Slurm epilog: removes this job, and only this job, from the GPU mapping directory that
# prolog.sh maintains. Safe to run concurrently with other jobs' prologs and epilogs (one lock);
# always exits 0, since a failing epilog drains the node.
dir="${GPUSCOPE_JOB_MAPPING_DIR:-/run/gpuscope/job-mapping}"
job="${SLURM_JOB_ID:-}"
if [[ ! "$job" =~ ^[0-9]+$ ]]; then
    echo "gpuscope epilog: SLURM_JOB_ID is not set or not a number; nothing removed" >&2
    exit 0
fi
[ -d "$dir" ] || exit 0
exec 9>>"$dir/.lock" && flock -w 10 9 || {
    echo "gpuscope epilog: cannot lock $dir; job $job left in place" >&2
    exit 0
}
for file in "$dir"/*; do
    [ -f "$file" ] && [[ "$(basename "$file")" =~ ^[0-9]+(\.[0-9]+)?$ ]] || continue
    grep -qx "$job" "$file" || continue
    grep -vx "$job" "$file" > "$file.tmp"
    if [ -s "$file.tmp" ]; then mv "$file.tmp" "$file"; else rm -f "$file" "$file.tmp"; fi
done
exit 0
