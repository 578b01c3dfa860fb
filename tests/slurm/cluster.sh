#!/usr/bin/env bash
# A real SLURM on this host for the test suite: munge, slurmctld and two slurmd daemons
# (`slurmd -N n1`, `slurmd -N n2`, each on its own port, both NodeHostname=localhost) that
# emulate a two-node cluster sharing one filesystem.
#
#   cluster.sh start    install what is missing (root + apt-get), write the config, start
#                       the daemons, wait (bounded) until sinfo shows both nodes usable
#   cluster.sh status   print the nodes' states; exit 0 when the cluster is usable
#   cluster.sh stop     stop the daemons this script started
#
# `start` is idempotent and safe to call concurrently (one flock); when the cluster cannot
# run here (not root, no apt-get, a daemon that does not come up) it prints one line saying
# why and exits 0, so that `make test` goes on and the SLURM tests skip with that reason.
set -u

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOCK=/run/lock/orchestrator-fsm-slurm-start.lock
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/orchestrator-fsm-slurm
NODES="n1 n2"
WAIT_S=${SLURM_CLUSTER_WAIT_S:-90}

say() { echo "slurm cluster: $*"; }

# The configuration (Slurm 22.05). Partitions: `low` (default) is preempted by `high`
# (partition_prio: the higher PriorityTier requeues the lower's jobs after GraceTime);
# short timeouts keep the time-limit and preemption tests quick.
config() {
    cat <<EOF
# Written by tests/slurm/cluster.sh (orchestrator-fsm's test cluster); rewritten by it.
ClusterName=ofsm
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d-%n
SlurmctldPidFile=/run/slurmctld-ofsm.pid
SlurmdPidFile=/run/slurmd-ofsm-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
OverTimeLimit=0
KillWait=3
MinJobAge=120
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=60
SchedulerParameters=sched_interval=2
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=2 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=2 State=UNKNOWN
PartitionName=low Nodes=n1,n2 Default=YES MaxTime=INFINITE PriorityTier=1 PreemptMode=REQUEUE GraceTime=5 State=UP
PartitionName=high Nodes=n1,n2 MaxTime=INFINITE PriorityTier=10 PreemptMode=OFF State=UP
EOF
}

# Every node answers and none is down or drained.
usable() {
    local states
    states=$(timeout 10 sinfo -h -N -o "%N %t" 2>/dev/null | sort -u) || return 1
    [ -n "$states" ] || return 1
    for node in $NODES; do
        echo "$states" | grep -Eq "^$node (idle|alloc|mix|comp)\$" || return 1
    done
}

# Whether a process whose command line matches the extended regex $1 runs (read from
# /proc: minimal images have no pgrep). Anchor $1 so that the grep itself never matches.
running() {
    local cmdline
    for cmdline in /proc/[0-9]*/cmdline; do
        { tr '\0' ' ' <"$cmdline"; } 2>/dev/null | grep -Eq "$1" && return 0
    done
    return 1
}

install_missing() {
    local missing=""
    for cmd in slurmctld slurmd sinfo munged; do
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing=yes
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "not started: slurmctld, slurmd or munge missing and cannot install them (needs root and apt-get)"
        return 1
    fi
    if ! (export DEBIAN_FRONTEND=noninteractive
          timeout 600 apt-get update -qq && \
          timeout 600 apt-get install -y -qq slurmctld slurmd slurm-client munge) >/dev/null 2>&1; then
        say "not started: apt-get install slurmctld slurmd slurm-client munge failed"
        return 1
    fi
}

start_munge() {
    if [ -S /run/munge/munge.socket.2 ] && timeout 5 munge -n </dev/null >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --force >/dev/null 2>&1 9>&- || true
    for _ in $(seq 1 50); do
        timeout 5 munge -n </dev/null >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "not started: munged does not answer"
    return 1
}

stop_daemons() {
    for pidfile in /run/slurmd-ofsm-n1.pid /run/slurmd-ofsm-n2.pid /run/slurmctld-ofsm.pid; do
        [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
    done
    for _ in $(seq 1 50); do
        running "^slurmctld( |\$)" || running "^slurmd -N " || return 0
        sleep 0.2
    done
}

start() {
    if [ "$(id -u)" != 0 ]; then
        say "not started: needs root (to install and run munge, slurmctld and slurmd)"
        return 0
    fi
    install_missing || return 0
    start_munge || return 0
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld"
    # The emulated nodes' names resolve to this host, as a real node's name resolves to
    # its address (a job's MASTER_ADDR is the first name of its node list).
    for node in $NODES; do
        getent hosts "$node" >/dev/null 2>&1 || echo "127.0.0.1 $node" >>/etc/hosts 2>/dev/null
        if ! getent hosts "$node" >/dev/null 2>&1; then
            say "not started: cannot make the node name $node resolve (/etc/hosts not writable)"
            return 0
        fi
    done
    local wanted
    wanted=$(config)
    if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$wanted" ]; then
        # Another config (or none): the daemons must read this one.
        stop_daemons
        printf '%s\n' "$wanted" >"$CONF"
    fi
    if ! running "^(/usr/sbin/)?slurmctld( |\$)"; then
        slurmctld >>"$LOG_DIR/start.log" 2>&1 9>&- || { say "not started: slurmctld failed (see $LOG_DIR/slurmctld.log)"; return 0; }
    fi
    for node in $NODES; do
        mkdir -p "$SPOOL/d-$node"
        if ! running "^(/usr/sbin/)?slurmd -N $node( |\$)"; then
            slurmd -N "$node" >>"$LOG_DIR/start.log" 2>&1 9>&- || { say "not started: slurmd -N $node failed (see $LOG_DIR/slurmd-$node.log)"; return 0; }
        fi
    done
    local deadline=$((SECONDS + WAIT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if usable; then
            say "up: $(timeout 10 sinfo -h -N -o '%N=%t' | sort -u | tr '\n' ' ')"
            return 0
        fi
        # A node left down or drained by an earlier run of the suite comes back.
        timeout 10 scontrol update NodeName=n1,n2 State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    say "not started: nodes not idle after ${WAIT_S}s: $(timeout 10 sinfo -h -N -o '%N=%t' 2>&1 | tr '\n' ' ')"
    return 0
}

status() {
    if usable; then
        say "up: $(timeout 10 sinfo -h -N -o '%N=%t' | sort -u | tr '\n' ' ')"
        return 0
    fi
    say "down: $(timeout 10 sinfo -h -N -o '%N=%t' 2>&1 | tr '\n' ' ')"
    return 1
}

case "${1:-}" in
    start)
        [ "$(id -u)" = 0 ] || { start; exit 0; }  # says why it cannot, takes no lock
        mkdir -p "$(dirname "$LOCK")" 2>/dev/null
        # The daemons are started with fd 9 closed: they must not hold the lock on.
        exec 9>>"$LOCK" 2>/dev/null || { start; exit 0; }
        if ! flock -w 600 9; then
            say "not started: another start held $LOCK for 600 s"
            exit 0
        fi
        start
        exit 0
        ;;
    status) status ;;
    stop) stop_daemons ;;
    *)
        echo "usage: $0 start|status|stop" >&2
        exit 2
        ;;
esac
