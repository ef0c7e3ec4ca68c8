#!/usr/bin/env bash
# Single-node Slurm cluster on this machine (Debian 12 / Slurm 22.05), without systemd.
#
#   slurm/cluster/local-cluster.sh up      install missing packages, write /etc/slurm/*.conf, start
#                                  munged, mariadbd, slurmdbd, slurmctld, slurmd (idempotent)
#   slurm/cluster/local-cluster.sh down    cancel jobs, stop the five daemons by PID
#   slurm/cluster/local-cluster.sh status  print sinfo; exit 0 when the node is idle/mixed/allocated
#
# Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd,mariadb}.log, /var/log/munge/munged.log.
# The configs are the templates slurm.conf.in and slurmdbd.conf.in beside this script. See docs/slurm-cluster.md.
set -euo pipefail

CLUSTER=localcluster
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
MUNGE_LOG=/var/log/munge/munged.log
MUNGE_PID=/run/munge/munged.pid
DB_PID=/run/mysqld/mysqld.pid
DB_LOG=$LOG_DIR/mariadb.log
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}      # bound on every wait
PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
MARKER="# written by dynconv slurm/cluster/local-cluster.sh"
HOST=$(hostname -s)

say() { echo "[slurm] $*"; }
die() { echo "[slurm] error: $*" >&2; exit 1; }

# fail WHAT LOG MESSAGE: one error line naming the daemon and its log, then the log's tail.
fail() {
    echo "[slurm] error: $1 $3; see $2" >&2
    if [[ -r $2 ]]; then tail -n 15 "$2" | sed 's/^/[slurm]   | /' >&2; fi
    exit 1
}

# pid_alive PIDFILE NAME: the PID in PIDFILE is a running (not zombie) process called NAME.
# PID 1 may not reap, so a dead daemon can linger as <defunct>; kill -0 alone would say "alive".
pid_of() { [[ -s $1 ]] && tr -dc 0-9 <"$1"; }
proc_alive() {
    local p=$1 name=$2 st
    [[ -n $p && -r /proc/$p/stat ]] || return 1
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$name" ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}
pid_alive() { proc_alive "$(pid_of "$1" || true)" "$2"; }

# wait_for WHAT LOG PIDFILE|PID NAME CMD...: poll CMD for up to WAIT_S s; fail early if the
# daemon died (checked from 3 s on, once it has had time to write its pid file).
wait_for() {
    local what=$1 log=$2 pid=$3 name=$4 start=$SECONDS
    shift 4
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - start >= WAIT_S )); then fail "$what" "$log" "not ready after ${WAIT_S} s"; fi
        if (( SECONDS - start >= 3 )); then
            if [[ $pid =~ ^[0-9]+$ ]]; then proc_alive "$pid" "$name"; else pid_alive "$pid" "$name"; fi \
                || fail "$what" "$log" "exited during start-up"
        fi
        sleep 0.25
    done
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
    local f=$1 name=$2 p i
    pid_alive "$f" "$name" || { rm -f "$f"; return 0; }
    p=$(pid_of "$f")
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do proc_alive "$p" "$name" || break; sleep 0.25; done
    if proc_alive "$p" "$name"; then
        say "$name (pid $p) ignored SIGTERM for 30 s; sending SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do proc_alive "$p" "$name" || break; sleep 0.25; done
    fi
    rm -f "$f"
}

q() { timeout 10 "$@" 2>/dev/null; }    # bounded client query

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_ok() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
# (no `cmd | grep -q`: under pipefail, grep's early exit can fail the pipeline with SIGPIPE)
clusters() { q sacctmgr -n -P list cluster format=cluster; }   # -P: names are not cut to 10 chars
dbd_ok() { clusters >/dev/null; }
ctld_ok() { local out; out=$(q scontrol ping) && [[ $out == *"is UP"* ]]; }
node_state() { local out; out=$(q sinfo -h -N -n "$HOST" -o %t) || return 1; echo "${out%%$'\n'*}"; }
node_good() { [[ $(node_state) =~ ^(idle|mix|alloc|comp|plnd)$ ]]; }

mem_mb() { awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo; }
CPUS=$(nproc)
MEM_TOTAL=$(mem_mb)
HEADROOM=$(( MEM_TOTAL / 10 > 512 ? MEM_TOTAL / 10 : 512 ))   # leave 10 % (>= 512 MB) to the OS
REAL_MEM=$(( MEM_TOTAL - HEADROOM ))
DEF_MEM=$(( REAL_MEM / CPUS ))                                # a job without --mem: its CPU share

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)

# render TEMPLATE: the config template beside this script with @VAR@ replaced by this machine's values
render() { sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@CPUS@|$CPUS|g" -e "s|@DEF_MEM@|$DEF_MEM|g" -e "s|@HOST@|$HOST|g" -e "s|@LOG_DIR@|$LOG_DIR|g" -e "s|@MARKER@|$MARKER|g" -e "s|@REAL_MEM@|$REAL_MEM|g" -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@SPOOL_CTLD@|$SPOOL_CTLD|g" -e "s|@SPOOL_D@|$SPOOL_D|g" "$HERE/$1"; }
slurm_conf() { render slurm.conf.in; }
slurmdbd_conf() { render slurmdbd.conf.in; }

# conf_differs FILE FUNC: FILE's content is not what FUNC prints.
conf_differs() { ! cmp -s "$1" <("$2"); }

# write_conf FILE FUNC MODE: write atomically; keep a copy of a file this script did not write.
write_conf() {
    local f=$1 gen=$2 mode=$3
    if [[ -s $f ]] && ! grep -qF "$MARKER" "$f" && [[ ! -e $f.orig ]]; then
        cp -p "$f" "$f.orig"
        say "kept the existing $f as $f.orig"
    fi
    "$gen" >"$f.tmp"
    chmod "$mode" "$f.tmp"
    mv -f "$f.tmp" "$f"
}

packages_missing() {
    local p
    for p in "${PKGS[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || echo "$p"
    done
}

all_up() {
    [[ -z $(packages_missing) ]] || return 1
    ! conf_differs "$CONF_DIR/slurm.conf" slurm_conf || return 1
    ! conf_differs "$CONF_DIR/slurmdbd.conf" slurmdbd_conf || return 1
    pid_alive "$MUNGE_PID" munged && db_ok && pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd \
        && pid_alive "$RUN_DIR/slurmctld.pid" slurmctld && pid_alive "$RUN_DIR/slurmd.pid" slurmd \
        && node_good
}

up_line() { say "$1: node $HOST $(node_state) (CPUs=$CPUS, RealMemory=$REAL_MEM MB, partition debug)"; }

install_packages() {
    local missing policy_tmp=""
    mapfile -t missing < <(packages_missing)
    (( ${#missing[@]} )) || return 0
    say "installing packages: ${missing[*]} ..."
    mkdir -p "$LOG_DIR"
    # Keep apt from starting the services itself (we start them below, our way).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy_tmp=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy_tmp"
        chmod 755 "$policy_tmp"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local t0=$SECONDS
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"
    } >>"$LOG_DIR/apt.log" 2>&1 9>&- || fail "apt-get install" "$LOG_DIR/apt.log" "failed"
    if [[ -n $policy_tmp ]]; then rm -f "$policy_tmp"; trap - EXIT; fi
    say "installed in $(( SECONDS - t0 )) s"
}

start_munge() {
    if pid_alive "$MUNGE_PID" munged && munge_ok; then return 0; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey -c -f
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    stop_pid "$MUNGE_PID" munged
    install -d -o munge -g munge -m 755 /run/munge
    say "starting munged"
    # munged refuses a log file it does not own, so its start-up messages go elsewhere
    runuser -u munge -- /usr/sbin/munged --force </dev/null >"$LOG_DIR/munged-start.log" 2>&1 9>&- \
        || fail munged "$LOG_DIR/munged-start.log" "failed to start"
    wait_for munged "$MUNGE_LOG" "$MUNGE_PID" munged munge_ok
}

start_mariadb() {
    if ! db_ok; then
        install -d -o mysql -g mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$DB_LOG" 2>&1 \
                || fail mariadb-install-db "$DB_LOG" "failed"
        fi
        say "starting mariadbd"
        # unix socket only (slurmdbd's StorageHost=localhost uses it): no clash on port 3306
        setsid mariadbd --user=mysql --skip-networking --pid-file="$DB_PID" --log-error="$DB_LOG" \
            </dev/null >>"$DB_LOG" 2>&1 9>&- &
        wait_for mariadbd "$DB_LOG" "$!" mariadbd db_ok
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
        >>"$DB_LOG" 2>&1 || fail mariadb "$DB_LOG" "could not create the slurm database user"
}

# start_slurm_daemon NAME: start NAME (it daemonizes and writes its pid file itself).
start_slurm_daemon() {
    local name=$1
    say "starting $name"
    "$name" </dev/null >>"$LOG_DIR/$name.log" 2>&1 9>&- || fail "$name" "$LOG_DIR/$name.log" "failed to start"
}

cmd_up() {
    local t0=$SECONDS
    if all_up; then up_line "already up"; return 0; fi
    install_packages
    mkdir -p "$LOG_DIR" "$RUN_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$CONF_DIR"

    # A changed config needs a daemon restart (AuthInfo is read at start only).
    if conf_differs "$CONF_DIR/slurmdbd.conf" slurmdbd_conf; then
        stop_pid "$RUN_DIR/slurmdbd.pid" slurmdbd
        write_conf "$CONF_DIR/slurmdbd.conf" slurmdbd_conf 600
    fi
    if conf_differs "$CONF_DIR/slurm.conf" slurm_conf; then
        stop_pid "$RUN_DIR/slurmd.pid" slurmd
        stop_pid "$RUN_DIR/slurmctld.pid" slurmctld
        write_conf "$CONF_DIR/slurm.conf" slurm_conf 644
        say "wrote $CONF_DIR/slurm.conf (CPUs=$CPUS, RealMemory=$REAL_MEM MB)"
    fi

    start_munge
    start_mariadb

    if ! pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd; then start_slurm_daemon slurmdbd; fi
    wait_for slurmdbd "$LOG_DIR/slurmdbd.log" "$RUN_DIR/slurmdbd.pid" slurmdbd dbd_ok
    if ! [[ $'\n'$(clusters)$'\n' == *$'\n'"$CLUSTER"$'\n'* ]]; then
        q sacctmgr -i add cluster "$CLUSTER" >/dev/null \
            || fail slurmdbd "$LOG_DIR/slurmdbd.log" "could not register cluster $CLUSTER"
    fi

    if ! pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then start_slurm_daemon slurmctld; fi
    wait_for slurmctld "$LOG_DIR/slurmctld.log" "$RUN_DIR/slurmctld.pid" slurmctld ctld_ok

    if ! pid_alive "$RUN_DIR/slurmd.pid" slurmd; then start_slurm_daemon slurmd; fi
    local start=$SECONDS resumed=0
    until node_good; do
        if (( SECONDS - start >= WAIT_S )); then
            fail slurmd "$LOG_DIR/slurmd.log" "node $HOST is '$(node_state)', not idle, after ${WAIT_S} s"
        fi
        if (( SECONDS - start >= 3 )) && ! pid_alive "$RUN_DIR/slurmd.pid" slurmd; then
            fail slurmd "$LOG_DIR/slurmd.log" "exited during start-up"
        fi
        # A node left down/drained by an earlier run: slurmd is registered, so resume it once.
        if (( !resumed && SECONDS - start >= 3 )) && [[ $(node_state) =~ ^(down|drain|drng) ]]; then
            q scontrol update nodename="$HOST" state=resume || true
            resumed=1
        fi
        sleep 0.25
    done
    up_line "up in $(( SECONDS - t0 )) s"
}

cmd_down() {
    local t0=$SECONDS ids
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then
        ids=$(q squeue -h -o %A | tr '\n' ' ' || true)
        if [[ -n ${ids// /} ]]; then
            say "cancelling jobs: $ids"
            q scancel $ids || true
            # let slurmd deliver SIGTERM/SIGKILL (KillWait=5 s) before it stops
            local i
            for ((i = 0; i < 40; i++)); do
                [[ -z $(q squeue -h -t running,completing -o %A) ]] && break
                sleep 0.25
            done
        fi
    fi
    stop_pid "$RUN_DIR/slurmd.pid" slurmd
    stop_pid "$RUN_DIR/slurmctld.pid" slurmctld
    stop_pid "$RUN_DIR/slurmdbd.pid" slurmdbd
    stop_pid "$DB_PID" mariadbd
    stop_pid "$MUNGE_PID" munged
    say "down in $(( SECONDS - t0 )) s"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then say "status: not installed"; return 1; fi
    if ! q sinfo; then say "status: slurmctld not reachable"; return 1; fi
    local st
    st=$(node_state || true)
    if [[ $st =~ ^(idle|mix|alloc|comp|plnd)$ ]]; then
        say "status: node $HOST $st"
    else
        say "status: node $HOST '${st:-unknown}' (not usable); see $LOG_DIR/slurmd.log"
        return 1
    fi
}

case ${1:-} in
    up|down)
        if (( EUID != 0 )); then
            command -v sudo >/dev/null || die "'$1' needs root (and sudo is not installed)"
            exec sudo "$BASH" "$(readlink -f "$0")" "$@"
        fi
        # one up/down at a time (parallel test workers may all call 'up'); daemons get 9>&-
        exec 9>/run/lock/dynconv-slurm-local-cluster.lock
        flock -w 180 9 || die "another '$0' up/down still running after 180 s"
        "cmd_$1" ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
