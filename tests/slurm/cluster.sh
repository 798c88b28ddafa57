#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for testing the batch scripts in
# jobs/ (tests/test_slurm.py starts it by itself).
#
#   bash tests/slurm/cluster.sh start    # start, or reuse the one already running
#   eval "$(bash tests/slurm/cluster.sh env)"   # then: sbatch, squeue, scontrol ...
#   bash tests/slurm/cluster.sh status   # exit 0 when it answers
#   bash tests/slurm/cluster.sh stop     # cancel its jobs, stop the daemons
#
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge) and
# root: munged, slurmctld and slurmd run as root, without systemd or cgroups
# (proctrack/linuxproc, task/none). Everything lives in one directory,
# $GPO_SLURM_DIR (default /tmp/gpo-slurm): slurm.conf, the munge key and
# socket, state, spool and logs. Nothing under /etc is touched; clients find
# the cluster through SLURM_CONF (what `env` prints). The node is "gpo-node"
# with 4 CPUs, whatever the machine has (SlurmdParameters=config_overrides),
# one partition "debug". Ports: $GPO_SLURM_PORT (default 16817) for
# slurmctld and the next one for slurmd, so a site's own SLURM on the usual
# ports is left alone.
set -euo pipefail

export PATH=$PATH:/usr/sbin:/sbin  # the daemons live there, not always on a root's PATH
DIR=${GPO_SLURM_DIR:-/tmp/gpo-slurm}
PORT=${GPO_SLURM_PORT:-16817}
CPUS=${GPO_SLURM_CPUS:-4}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
SOCKET=$DIR/munge/munge.socket.2

say() { echo "cluster.sh: $*" >&2; }

running() {  # is the process in pid file $1 alive? (/proc: also for a user who may not signal it)
  [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ]
}

healthy() {  # all three daemons up, the controller answers and the node takes jobs
  running "$DIR/munged.pid" && running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid" || return 1
  scontrol ping 2>/dev/null | grep -q "is UP" || return 1
  local state
  state=$(sinfo -h -n gpo-node -o %T 2>/dev/null) || return 1
  case "$state" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

stop_pid() {  # stop_pid FILE: TERM, wait up to 10 s, then KILL
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  if [ -f "$CONF" ] && running "$DIR/slurmctld.pid"; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true  # this cluster's jobs only (SLURM_CONF)
    for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munged.pid"
}

write_config() {  # write_config FILE: this cluster's slurm.conf
  local file=$1 host user
  host=$(hostname -s)
  user=$(id -un)
  mkdir -p "$DIR"/{state,spool,log,tmp,munge}
  # munged refuses a socket directory that others cannot traverse, and a
  # key that others can read.
  chmod 0755 "$DIR" "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 0400 "$DIR/munge/munge.key"
  : > "$DIR/plugstack.conf"  # none of /etc/slurm/plugstack.conf.d
  cat > "$file" <<EOF
# Written by tests/slurm/cluster.sh: a single-node test cluster.
ClusterName=gpo-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (120 by default).
AuthInfo=socket=$SOCKET,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
TmpFS=$DIR/tmp
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
# No systemd, no cgroups: processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
# srun tasks form one MPI world through PMI2 (MPICH, the mpich wheel).
MpiDefault=pmi2
SchedulerType=sched/backfill
# Schedule every second or two, not every 30 s: a requeued job starts as soon
# as it may (the test waits for that).
SchedulerParameters=bf_interval=1,sched_interval=2
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
# scancel and the time limit: SIGTERM, then SIGKILL 30 s later (SLURM's default), time for a checkpoint
KillWait=30
MinJobAge=600
InactiveLimit=0
Waittime=0
MessageTimeout=10
# Trust CPUs= below rather than the hardware: 4 tasks on a 2-core machine.
SlurmdParameters=config_overrides
NodeName=gpo-node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=gpo-node Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  for tool in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$tool" >/dev/null || { say "$tool not found: apt-get install -y slurm-wlm munge"; exit 1; }
  done
  mkdir -p "$DIR"
  write_config "$DIR/slurm.conf.new"
  if [ -f "$CONF" ] && cmp -s "$CONF" "$DIR/slurm.conf.new" && healthy; then
    rm -f "$DIR/slurm.conf.new"
    say "reusing the cluster in $DIR"
    return 0
  fi
  stop  # whatever is left of an earlier one, or one with another configuration
  mv "$DIR/slurm.conf.new" "$CONF"
  munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.1; done
  # -c: start from an empty job list, not the state of an earlier cluster
  slurmctld -c
  slurmd -N gpo-node
  for _ in $(seq 150); do
    if healthy; then
      say "started in $DIR ($(sinfo -h -o '%D node, %c CPUs, partition %P'))"
      return 0
    fi
    # a node left DOWN or DRAINED by a restart: bring it back
    case "$(sinfo -h -n gpo-node -o %T 2>/dev/null || true)" in
      down*|drain*) scontrol update nodename=gpo-node state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  say "the cluster did not come up in 30 s; logs in $DIR/log:"
  tail -n 20 "$DIR"/log/*.log >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop; say "stopped" ;;
  status) [ -f "$CONF" ] && healthy ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
