#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests under tests/slurm/ (CI runs it from
# tools/test.sh). Installs Debian's slurmctld, slurmd, slurm-client and munge, writes a munge key
# and a minimal slurm.conf for localhost (partition "debug" with this machine's CPUs), starts
# munged, slurmctld and slurmd directly (no systemd) and waits until `sinfo` shows the node idle.
#
# Idempotent: does nothing when a cluster already answers. Needs root (or passwordless sudo) and
# apt; without them it says why and exits 1, and the SLURM tests skip naming the reason.
set -euo pipefail

log() { echo "slurm-local: $*" >&2; }

if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -Eq 'idle|mix|alloc'; then
  log "a SLURM cluster already answers; nothing to do"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    log "needs root or passwordless sudo to install and start SLURM; skipping"
    exit 1
  fi
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found: cannot install slurmctld, slurmd, slurm-client, munge; skipping"
    exit 1
  fi
  log "installing slurmctld slurmd slurm-client munge"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: a key, then the daemon
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO mkdir -p /run/munge /var/lib/munge /var/log/munge
$SUDO chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
$SUDO chmod 0700 /etc/munge /var/lib/munge /var/log/munge
$SUDO chmod 0755 /run/munge
$SUDO chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  $SUDO runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || $SUDO /usr/sbin/munged --force
  for _ in $(seq 1 20); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
  done
fi

# slurm.conf for this host: every CPU in one node, one partition; requeue allowed
CONF_DIR=/etc/slurm
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
HOST=localhost
$SUDO mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
$SUDO tee "$CONF_DIR/slurm.conf" >/dev/null <<EOF
# written by ltscale tools/slurm-local.sh: a one-node test cluster on localhost
ClusterName=ltscale
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

if ! pgrep -x slurmctld >/dev/null; then
  log "starting slurmctld"
  $SUDO /usr/sbin/slurmctld -c
fi
if ! pgrep -x slurmd >/dev/null; then
  log "starting slurmd"
  $SUDO /usr/sbin/slurmd
fi

for _ in $(seq 1 60); do
  state=$(timeout 5 sinfo -h -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) log "cluster up: partition debug, node $HOST, $CPUS CPUs ($state)"; exit 0 ;;
    down*|drain*) $SUDO scontrol update NodeName=$HOST State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
log "the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log"
exit 1
