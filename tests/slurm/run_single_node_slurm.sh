#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, and the tiny workflow through profiles/slurm on it,
# compared with the same workflow run locally (tests/slurm/test_single_node_slurm.py).
#
#   sudo tests/slurm/run_single_node_slurm.sh            (root, Debian/Ubuntu with apt-get)
#   sudo tests/slurm/run_single_node_slurm.sh CMD ...    runs CMD on the cluster instead (debugging)
#
# Installs Debian's slurm-wlm and munge if missing (service starts blocked: no systemd here), then
# starts munged, slurmctld and slurmd by hand with everything (key, socket, state, spool, logs,
# slurm.conf) in a fresh temporary folder and on their own ports; only /etc/slurm/slurm.conf is
# linked to that slurm.conf for the run. No accounting: job status comes from squeue (MinJobAge
# keeps finished jobs listed). Jobs are cancelled and the daemons stopped on exit, whatever happens.
#
# Exit status: 0 passed, 77 skipped (printed as "SKIP: ..."), anything else failed.
# Environment: PYTHON (interpreter with lungssl[test,slurm]; default: python3 on PATH),
# LUNGSSL_SLURM_KEEP=1 keeps the temporary folder, LUNGSSL_SLURM_PORT (default 16817; +1 for slurmd).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
PORT="${LUNGSSL_SLURM_PORT:-16817}"
START=$(date +%s)

skip() { echo "SKIP: single-node SLURM test: $*"; exit 77; }
log() { echo "[slurm-test $(($(date +%s) - START))s] $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (installs packages, runs slurmd)"
[ -f /etc/debian_version ] || skip "needs Debian or Ubuntu (apt packages slurm-wlm, munge)"
command -v apt-get >/dev/null || skip "apt-get not found"
# The job step's srun runs with SLURM_* variables (SLURM_CONF too) removed by the executor plugin,
# so the test cluster's slurm.conf has to be where every SLURM command looks: /etc/slurm/slurm.conf.
# It is linked there for the test and removed afterwards; a machine with its own SLURM is left alone.
ETC_CONF=/etc/slurm/slurm.conf
OLD_CONF=$(readlink "$ETC_CONF" 2>/dev/null || true)
case "$OLD_CONF" in   # left by a test run that was killed outright: its folder or its controller is gone
  /tmp/lungssl-slurm.*/slurm/slurm.conf)
    OLD_PID=$(cat "$(dirname "$OLD_CONF")/slurmctld.pid" 2>/dev/null || true)
    { [ -n "$OLD_PID" ] && kill -0 "$OLD_PID" 2>/dev/null; } || rm -f "$ETC_CONF" ;;
esac
{ [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; } && skip "$ETC_CONF exists: this machine has its own SLURM, not touching it"
"$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || { echo "FAIL: $PYTHON lacks snakemake-executor-plugin-slurm: pip install -e '.[slurm]'"; exit 1; }

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt-get)"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep the packages from starting their services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } > /tmp/lungssl-slurm-apt.log 2>&1 \
    || { tail -20 /tmp/lungssl-slurm-apt.log; [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; echo "FAIL: apt-get install"; exit 1; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
log "$(slurmctld -V), munge $(munged -V 2>&1 | awk '{print $1}' | head -1)"

# ---------------------------------------------------------------- daemons
WORK="$(mktemp -d /tmp/lungssl-slurm.XXXXXX)"
chmod 755 "$WORK"                     # munged wants its socket folder reachable by all
M="$WORK/munge" S="$WORK/slurm"
mkdir -p "$M" "$S/state" "$S/spool" "$S/log"
chmod 755 "$M"
PIDS=()

stop_daemons() {
  local rc=$?
  set +e
  if [ -f "$S/slurm.conf" ] && [ -n "${SLURM_CONF:-}" ] && [ ${#PIDS[@]} = 3 ]; then
    scancel --quiet --user="$(id -un)" 2>/dev/null   # nothing of ours may keep running
    for _ in $(seq 30); do
      [ -z "$(squeue --noheader --states=PENDING,RUNNING,COMPLETING 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  [ "$(readlink "$ETC_CONF" 2>/dev/null)" = "$S/slurm.conf" ] && rm -f "$ETC_CONF"
  for f in "$S/slurmd.pid" "$S/slurmctld.pid" "$M/munged.pid"; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  done
  if [ $rc != 0 ]; then
    for f in "$S"/log/*.log; do echo "---- $f (tail)"; tail -n 15 "$f"; done
  fi
  if [ "${LUNGSSL_SLURM_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  log "daemons stopped"
  exit $rc
}
trap stop_daemons EXIT
trap 'exit 130' INT TERM

dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
chmod 600 "$M/munge.key"
munged --socket="$M/munge.socket" --key-file="$M/munge.key" --pid-file="$M/munged.pid" \
  --log-file="$M/munged.log" --seed-file="$M/munged.seed"
PIDS+=("$(cat "$M/munged.pid")")

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
export SLURM_CONF="$S/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=lungssl-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$M/munge.socket
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
# no cgroups, no systemd
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no accounting: finished jobs stay visible to squeue for MinJobAge seconds (longer than the test)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
InactiveLimit=0
KillWait=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

mkdir -p /etc/slurm
ln -s "$SLURM_CONF" "$ETC_CONF"
slurmctld -f "$SLURM_CONF"
for _ in $(seq 50); do [ -s "$S/slurmctld.pid" ] && break; sleep 0.2; done
PIDS+=("$(cat "$S/slurmctld.pid")")
slurmd -f "$SLURM_CONF" -N "$HOST"
for _ in $(seq 50); do [ -s "$S/slurmd.pid" ] && break; sleep 0.2; done
PIDS+=("$(cat "$S/slurmd.pid")")

for _ in $(seq 60); do
  state="$(sinfo --noheader --nodes="$HOST" --format=%t 2>/dev/null || true)"
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { echo "FAIL: node $HOST is '$state', not idle"; exit 1; }
log "SLURM up: node $HOST ($CPUS CPUs, $MEM_MB MB), partition local, ports $PORT/$((PORT + 1)); daemons ${PIDS[*]}"
sinfo

# Smoke test of the cluster itself before the workflow.
JOB=$(sbatch --parsable -p local -t 2 --mem 100 -c 1 -o "$WORK/smoke.out" --wrap 'srun -n1 hostname')
for _ in $(seq 60); do
  st="$(squeue --states=all --noheader --jobs="$JOB" --format=%T 2>/dev/null || true)"
  case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
  sleep 1
done
[ "$st" = COMPLETED ] || { echo "FAIL: smoke job $JOB is '$st'"; cat "$WORK/smoke.out" 2>/dev/null; exit 1; }
log "smoke job $JOB COMPLETED on $(cat "$WORK/smoke.out")"

# ---------------------------------------------------------------- the workflow, local and through SLURM
cd "$REPO"
if [ $# -gt 0 ]; then   # anything else to run on the cluster (debugging): SLURM_CONF is set
  log "running: $*"
  "$@"
  exit
fi
log "tiny workflow: local run, then the SLURM run (--profile profiles/slurm, partition local)"
LUNGSSL_SLURM_TEST=1 "$PYTHON" -m pytest -q -s -p no:cacheprovider --basetemp="$WORK/pytest" \
  tests/slurm/test_single_node_slurm.py
log "passed"
