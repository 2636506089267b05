#!/usr/bin/env bash
# Starts a real one-node SLURM cluster on this host, for the slurm tests (tests/test_workflow_slurm.py)
# and for trying `snakemake --profile ...` by hand. Debian (apt) and root only; no systemd needed.
#
#   sudo ci/slurm-up.sh      # install, configure, start; waits until the node is idle and sacct answers
#   sudo ci/slurm-down.sh    # stop every daemon again
#
# Installs slurmctld slurmd slurm-client munge slurmdbd mariadb-server, writes slurm.conf and
# slurmdbd.conf for this host into $TRACINFLOW_SLURM_DIR (default /var/tmp/tracinflow-slurm, which
# also holds the state, spool, logs and pid files), links them from /etc/slurm (where sbatch, sacct
# and the daemons look), then starts munged, MariaDB, slurmdbd, slurmctld and slurmd. Accounting
# goes through slurmdbd + MariaDB because the Snakemake SLURM plugin checks job states with sacct.
# Running it again on a running cluster changes nothing.
set -euo pipefail

SLURM_DIR=${TRACINFLOW_SLURM_DIR:-/var/tmp/tracinflow-slurm}
CLUSTER=${TRACINFLOW_SLURM_CLUSTER:-tracinflow}
TIMEOUT=${TRACINFLOW_SLURM_TIMEOUT:-120}  # seconds to wait for each daemon
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

say() { echo "slurm-up: $*"; }
die() {
    echo "slurm-up: ERROR: $*" >&2
    exit 1
}

# show_state: what the cluster looks like, for whoever reads a failed CI log: the node's state and
# reason and the queue (when slurmctld answers), and the ends of the daemons' logs.
show_state() {
    sinfo -h -o 'node state: %t, reason: %E' >&2 2>/dev/null || true
    squeue >&2 2>/dev/null || true
    tail -n 20 "$SLURM_DIR"/log/{slurmdbd,slurmctld,slurmd}.log >&2 2>/dev/null || true
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND every second until it succeeds or TIMEOUT passes.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            show_state
            die "no $what after ${TIMEOUT}s (above: the cluster's state and the ends of the logs in $SLURM_DIR/log)"
        fi
        sleep 1
    done
}

# alive PIDFILE: whether the process named in PIDFILE runs.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu)"

mkdir -p "$SLURM_DIR"/{etc,log,run,state,spool}

# --- packages ----------------------------------------------------------------------------------
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep the packages' own start scripts from starting daemons with their default settings
    # (the apt output goes to a log, shown when the install fails).
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        own_policy=true
        trap 'rm -f "$policy"' EXIT
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
    apt_log=$SLURM_DIR/log/apt.log
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Use-Pty=0 "${missing[@]}" >>"$apt_log" 2>&1
    }
    if ! apt_install && ! { apt-get update -q >>"$apt_log" 2>&1 && apt_install; }; then
        tail -n 20 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (full output in $apt_log)"
    fi
    if $own_policy; then
        rm -f "$policy"
        trap - EXIT
    fi
else
    say "packages already installed"
fi

# --- configuration ---------------------------------------------------------------------------
host=$(hostname -s)
# The node as slurmd sees it (CPUs, sockets, cores, threads), with 90% of its memory for jobs.
node=$(slurmd -C | head -n 1)
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
[ -n "$memory" ] || die "could not read RealMemory from 'slurmd -C': $node"
node="$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 9 / 10))/" <<<"$node") NodeAddr=127.0.0.1"

cat >"$SLURM_DIR/etc/slurm.conf.new" <<EOF
# Written by ci/slurm-up.sh: a one-node cluster on $host.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# sacct shows the --comment the Snakemake plugin gives each job (rule_<rule>_wildcards_<...>)
AccountingStoreFlags=job_comment
# Memory is enforced as on a real cluster: a job whose processes outgrow its --mem is killed (the
# tests check that Snakemake then resubmits it with twice the memory)
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$SLURM_DIR/etc/slurmdbd.conf.new" <<EOF
# Written by ci/slurm-up.sh: accounting in the local MariaDB, as root over its unix socket.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$SLURM_DIR/run/slurmdbd.pid
LogFile=$SLURM_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

for name in slurm.conf slurmdbd.conf; do
    file=$SLURM_DIR/etc/$name
    if [ -e "$file" ] && cmp -s "$file.new" "$file"; then
        rm "$file.new"
    else
        if alive "$SLURM_DIR/run/slurmctld.pid"; then
            say "WARNING: $name changed while the cluster runs; run ci/slurm-down.sh and this again"
        fi
        mv "$file.new" "$file"
        say "wrote $file"
    fi
    mkdir -p /etc/slurm
    link=/etc/slurm/$name
    if [ -e "$link" ] && [ "$(readlink -f "$link")" != "$(readlink -f "$file")" ]; then
        die "$link exists and is not ours (a link to $file); move it away first"
    fi
    ln -sfn "$file" "$link"
done
chmod 600 "$SLURM_DIR/etc/slurmdbd.conf"

# --- munge -----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already runs"
else
    say "starting munged"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for "munge credentials (munged)" sh -c 'munge -n | unmunge'
fi

# --- MariaDB ---------------------------------------------------------------------------------
if mysqladmin ping >/dev/null 2>&1; then
    say "MariaDB already runs"
else
    say "starting MariaDB"
    /etc/init.d/mariadb start >/dev/null
    wait_for "answer from MariaDB (mysqladmin ping)" mysqladmin ping
fi

# --- slurmdbd --------------------------------------------------------------------------------
if alive "$SLURM_DIR/run/slurmdbd.pid"; then
    say "slurmdbd already runs"
else
    say "starting slurmdbd"
    slurmdbd
fi
wait_for "answer from slurmdbd (sacctmgr list cluster)" sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    say "registering cluster $CLUSTER (with account root)"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# --- slurmctld and slurmd --------------------------------------------------------------------
if alive "$SLURM_DIR/run/slurmctld.pid"; then
    say "slurmctld already runs"
elif alive "$SLURM_DIR/run/slurmd.pid"; then
    say "starting slurmctld (slurmd runs: the jobs it saved are kept)"
    slurmctld
else
    # Neither daemon runs, so no job of an earlier start (a killed test run, a machine image taken
    # mid-run) can still be running. slurmctld would recover those jobs from its saved state as
    # running and hold the node allocated long past the wait below; -c starts it without them.
    say "starting slurmctld (no daemon runs: the jobs of an earlier start are cleared)"
    slurmctld -c
fi
wait_for "answer from slurmctld (scontrol ping)" sh -c 'scontrol ping | grep -q UP'
if alive "$SLURM_DIR/run/slurmd.pid"; then
    say "slurmd already runs"
else
    say "starting slurmd"
    slurmd
fi
wait_for "idle node (sinfo -h -o %t)" sh -c '[ "$(sinfo -h -o %t)" = idle ]'
wait_for "answer from sacct" sacct -n -X -S now-1minutes
say "ready: $(sinfo -h -o '%P %D node(s) %t, %c CPUs, %m MB') on cluster $CLUSTER"
