#!/usr/bin/env bash
# Stops the munged, slurmctld and slurmd that tests/slurm/start.sh started from DIR (by their process ids).
# Usage: tests/slurm/stop.sh [DIR]   (default build/slurm; HPARR_SLURM_DIR too)
set -uo pipefail
dir=${1:-${HPARR_SLURM_DIR:-build/slurm}}
[ -f "$dir/pids" ] || exit 0
pids=$(tac "$dir/pids")
for pid in $pids; do kill "$pid" 2>/dev/null; done
for _ in $(seq 50); do
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.2
done
for pid in $alive; do kill -9 "$pid" 2>/dev/null; done
rm -f "$dir/pids"
