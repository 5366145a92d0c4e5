#!/usr/bin/env bash
# A one-node SLURM on this machine for the cluster tests: installs slurm-wlm and munge when they are missing
# (root and apt-get), writes slurm.conf for this machine's cores and memory (no accounting, no cgroups), starts
# munged, slurmctld and slurmd with their state in one folder, and waits until sinfo shows the node idle.
# Usage: tests/slurm/start.sh [DIR]   (DIR: the cluster's folder, default build/slurm; HPARR_SLURM_DIR too)
# Then: export SLURM_CONF=DIR/slurm.conf; tests/slurm/stop.sh [DIR] stops what this started.
set -euo pipefail
me="tests/slurm/start.sh"
dir=${1:-${HPARR_SLURM_DIR:-build/slurm}}
fail() {  # one line; what was started already is stopped
    echo "$me: $*" >&2
    [ -f "$dir/pids" ] && "$(dirname "$0")/stop.sh" "$dir"
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root to install and run SLURM (slurmd runs as root): run make test-slurm as root, as CI does"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get to install them"
    echo "$me: installing slurm-wlm and munge with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed"
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/pids" ]; then
    while read -r pid; do
        kill -0 "$pid" 2>/dev/null && { echo "$me: a cluster started from $dir is running (pid $pid): tests/slurm/stop.sh $dir first" >&2; exit 1; }
    done < "$dir/pids"
fi
rm -rf "$dir/spool" "$dir/munge" "$dir/log" "$dir/pids"
mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/munge" "$dir/log"
chmod 700 "$dir/munge"

# munge: a key and a socket of our own, so that a munged of the machine is left alone
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"

host=$(hostname -s)
cores=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
mem_mb=$((mem_mb * 9 / 10))   # leave some to the system
ctld_port=${HPARR_SLURMCTLD_PORT:-6817}
d_port=${HPARR_SLURMD_PORT:-6818}
plugins=$(dirname "$(find /usr/lib -name 'select_cons_tres.so' -print -quit 2>/dev/null)")
cat > "$dir/slurm.conf" <<CONF
# one node on localhost, written by tests/slurm/start.sh
ClusterName=hparr-test
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# credentials live 30 s (default 120): SLURM holds a requeued job that long before it may start again
AuthInfo=socket=$socket,cred_expire=30
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
${plugins:+PluginDir=$plugins}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cores / 2))
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
# a cancelled job is killed 2 s after its SIGTERM (which submitit's cells ignore), as a node failure would
KillWait=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host CPUs=$cores RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"

munged --socket="$socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" --force \
    || fail "munged did not start (see $dir/log/munged.log)"
cat "$dir/munge/munged.pid" >> "$dir/pids"
slurmctld -f "$dir/slurm.conf" || fail "slurmctld did not start (see $dir/log/slurmctld.log)"
slurmd -f "$dir/slurm.conf" || fail "slurmd did not start (see $dir/log/slurmd.log)"
for name in slurmctld slurmd; do
    for _ in $(seq 50); do [ -s "$dir/$name.pid" ] && break; sleep 0.2; done
    [ -s "$dir/$name.pid" ] || fail "$name wrote no pid file (see $dir/log/$name.log)"
    cat "$dir/$name.pid" >> "$dir/pids"
done

for _ in $(seq 120); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in
        idle) echo "$me: node $host idle ($cores cores, $mem_mb MB); export SLURM_CONF=$dir/slurm.conf" >&2; exit 0 ;;
        down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
fail "the node never became idle (sinfo: ${state:-no answer}; see $dir/log)"
