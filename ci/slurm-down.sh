#!/usr/bin/env bash
# Stops the one-node SLURM cluster that ci/slurm-up.sh started: slurmctld and slurmd (scontrol
# shutdown), slurmdbd, MariaDB and munged. Whatever is already down is skipped; never fails.
# The configuration, job state and accounting database stay, so slurm-up.sh starts again quickly.
set -uo pipefail

SLURM_DIR=${TRACINFLOW_SLURM_DIR:-/var/tmp/tracinflow-slurm}
TIMEOUT=${TRACINFLOW_SLURM_TIMEOUT:-30}

say() { echo "slurm-down: $*"; }

# stop NAME PIDFILE: TERM the process in PIDFILE and wait for it to exit (KILL after TIMEOUT).
stop() {
    local name=$1 pidfile=$2 pid
    pid=$(cat "$pidfile" 2>/dev/null) || pid=
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        say "$name is not running"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null
    local deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name did not stop in ${TIMEOUT}s; killing it"
            kill -9 "$pid" 2>/dev/null
            break
        fi
        sleep 0.5
    done
}

if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    say "scontrol shutdown (slurmctld and slurmd)"
    scontrol shutdown >/dev/null 2>&1
fi
# Whatever scontrol shutdown did not reach (e.g. slurmd when slurmctld was already gone).
stop slurmctld "$SLURM_DIR/run/slurmctld.pid"
stop slurmd "$SLURM_DIR/run/slurmd.pid"
stop slurmdbd "$SLURM_DIR/run/slurmdbd.pid"

if command -v mysqladmin >/dev/null && mysqladmin ping >/dev/null 2>&1; then
    say "stopping MariaDB"
    /etc/init.d/mariadb stop >/dev/null 2>&1 || say "MariaDB did not stop cleanly"
else
    say "MariaDB is not running"
fi

stop munged /run/munge/munged.pid
exit 0
