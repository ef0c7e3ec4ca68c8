#!/usr/bin/env bash
# A Slurm cluster on this machine (Debian 12 / Slurm 22.05), without systemd.
#
#   slurm/cluster/local-cluster.sh up [--nodes N]
#         install missing packages, write /etc/slurm/*.conf, start munged, mariadbd, slurmdbd,
#         slurmctld and this host's slurmd (partition debug, the default); with N >= 2 also N compute
#         "hosts" dcnode1..N (partition multi), each a slurmd in its own network + UTS namespace with its
#         own address on the bridge dcbr0 (10.77.0.0/24), spool dir and log (idempotent)
#   slurm/cluster/local-cluster.sh down    cancel jobs, stop the daemons by PID, remove every namespace,
#                                          link, address and /etc/hosts line 'up' made
#   slurm/cluster/local-cluster.sh status  print sinfo; exit 0 when every node is idle/mixed/allocated
#   slurm/cluster/local-cluster.sh kill-node NAME     SIGKILL every process in NAME's namespace (its
#                                                     slurmd and job processes): a node that dies
#   slurm/cluster/local-cluster.sh start-node NAME    start NAME's slurmd again and resume the node
#
# Logs: /var/log/slurm/{slurmctld,slurmd-HOST,slurmd-dcnodeI,slurmdbd,mariadb}.log, /var/log/munge/munged.log.
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
# the namespace nodes: names, bridge, addresses; what 'up' made is recorded in STATE for 'down'
NODE_PREFIX=dcnode
BRIDGE=dcbr0
VETH_PREFIX=dcveth
NET=10.77.0
CTLD_ADDR_MULTI=$NET.1
STATE=/run/dynconv-local-cluster.nodes
HOSTS_MARK="# dynconv local-cluster node"

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
# node_state [NODE]: the node's state as sinfo prints it (this host's node by default)
node_state() { local out; out=$(q sinfo -h -N -n "${1:-$HOST}" -o %t) || return 1; echo "${out%%$'\n'*}"; }
node_good() { [[ $(node_state "${1:-}") =~ ^(idle|mix|alloc|comp|plnd)$ ]]; }

mem_mb() { awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo; }
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys those (a shell that set
# OMP_NUM_THREADS=1 made a 1-CPU node whose per-CPU default memory no compute node could hold)
MEM_TOTAL=$(mem_mb)
HEADROOM=$(( MEM_TOTAL / 10 > 512 ? MEM_TOTAL / 10 : 512 ))   # leave 10 % (>= 512 MB) to the OS
REAL_MEM=$(( MEM_TOTAL - HEADROOM ))
DEF_MEM=$(( REAL_MEM / CPUS ))                                # a job without --mem: its CPU share

NODES=1                                                       # up --nodes N
node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "$NODE_PREFIX$i"; done; }
node_addr() { echo "$NET.$(( 10 + ${1#"$NODE_PREFIX"} ))"; }
ctld_addr() { if (( NODES > 1 )); then echo "$CTLD_ADDR_MULTI"; else echo 127.0.0.1; fi; }
# the node and partition lines: this host's node (partition debug, default) and, with N >= 2, the
# namespace nodes (partition multi), which split this machine's CPUs and memory between them
node_lines() {
    echo "NodeName=$HOST NodeAddr=$(ctld_addr) CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN"
    echo "PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
    (( NODES > 1 )) || return 0
    local n names=()
    for n in $(node_names); do
        echo "NodeName=$n NodeHostname=$n NodeAddr=$(node_addr "$n") CPUs=$(( CPUS / NODES > 0 ? CPUS / NODES : 1 )) RealMemory=$(( REAL_MEM / NODES )) State=UNKNOWN"
        names+=("$n")
    done
    local IFS=,
    echo "PartitionName=multi Nodes=${names[*]} Default=NO MaxTime=INFINITE State=UP"
}

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)

# render TEMPLATE: the config template beside this script with @VAR@ replaced by this machine's values
render() { sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@CTLD_ADDR@|$(ctld_addr)|g" -e "s|@CPUS@|$CPUS|g" -e "s|@DEF_MEM@|$DEF_MEM|g" -e "s|@HOST@|$HOST|g" -e "s|@LOG_DIR@|$LOG_DIR|g" -e "s|@MARKER@|$MARKER|g" -e "s|@REAL_MEM@|$REAL_MEM|g" -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@SPOOL_CTLD@|$SPOOL_CTLD|g" -e "s|@SPOOL_D@|$SPOOL_D|g" "$HERE/$1"; }
slurm_conf() { render slurm.conf.in; node_lines; }
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

HOST_PID=$RUN_DIR/slurmd-$HOST.pid
node_pid() { echo "$RUN_DIR/slurmd-$1.pid"; }
recorded_nodes() { [[ -s $STATE ]] && cat "$STATE" || true; }

all_up() {
    [[ -z $(packages_missing) ]] || return 1
    ! conf_differs "$CONF_DIR/slurm.conf" slurm_conf || return 1
    ! conf_differs "$CONF_DIR/slurmdbd.conf" slurmdbd_conf || return 1
    [[ $(recorded_nodes) == "$( (( NODES > 1 )) && node_names)" ]] || return 1
    pid_alive "$MUNGE_PID" munged && db_ok && pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd \
        && pid_alive "$RUN_DIR/slurmctld.pid" slurmctld && pid_alive "$HOST_PID" slurmd && node_good || return 1
    local n
    for n in $(recorded_nodes); do pid_alive "$(node_pid "$n")" slurmd && node_good "$n" || return 1; done
}

up_line() {
    say "$1: node $HOST $(node_state) (CPUs=$CPUS, RealMemory=$REAL_MEM MB, partition debug)"
    local n
    for n in $(recorded_nodes); do
        say "  node $n $(node_state "$n") at $(node_addr "$n") (namespace $n, partition multi)"
    done
}

# --- the namespace nodes: network + UTS namespace, a veth on the bridge, an /etc/hosts line -----------
ns_exists() { [[ -e /run/netns/$1 ]]; }
link_exists() { ip link show "$1" >/dev/null 2>&1; }
ns_pids() { ip netns pids "$1" 2>/dev/null || true; }

# kill_ns NAME: SIGKILL every process in the namespace; wait (bounded) until none is left
kill_ns() {
    local n=$1 i pids
    for ((i = 0; i < 40; i++)); do
        pids=$(ns_pids "$n")
        [[ -z $pids ]] && return 0
        kill -KILL $pids 2>/dev/null || true
        sleep 0.25
    done
    # PID 1 here may not reap: a killed process can stay <defunct>, which holds nothing
    for p in $(ns_pids "$n"); do proc_alive "$p" "$(cat "/proc/$p/comm" 2>/dev/null)" && die "process $p in $n survived SIGKILL"; done
    return 0
}

# hosts_lines: /etc/hosts without this script's lines, plus one line per node (written in place:
# /etc/hosts is often a bind mount that cannot be replaced by a rename)
hosts_write() {
    local tmp n
    tmp=$(mktemp)
    grep -vF "$HOSTS_MARK" /etc/hosts >"$tmp" || true
    for n in "$@"; do echo "$(node_addr "$n") $n $HOSTS_MARK" >>"$tmp"; done
    cmp -s "$tmp" /etc/hosts || cat "$tmp" >/etc/hosts
    rm -f "$tmp"
}

net_up() {
    command -v ip >/dev/null || fail "ip (iproute2)" /dev/null "not installed: apt-get install iproute2"
    link_exists "$BRIDGE" || ip link add "$BRIDGE" type bridge || fail "bridge $BRIDGE" /dev/null "could not be created (network namespaces need root and CAP_NET_ADMIN)"
    ip addr replace "$CTLD_ADDR_MULTI/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local n veth
    for n in $(node_names); do
        veth=$VETH_PREFIX${n#"$NODE_PREFIX"}
        ns_exists "$n" || ip netns add "$n" || fail "namespace $n" /dev/null "could not be created"
        link_exists "$veth" || ip link add "$veth" type veth peer name eth0 netns "$n" \
            || fail "link $veth" /dev/null "could not be created"
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip -n "$n" addr replace "$(node_addr "$n")/24" dev eth0
        ip -n "$n" link set eth0 up
        ip -n "$n" link set lo up
    done
    hosts_write $(node_names)
    node_names >"$STATE.tmp" && mv -f "$STATE.tmp" "$STATE"
}

# net_down [NAMES...]: remove the given nodes' namespaces and links (default: every one this script made,
# from its record and by name), then the bridge and the /etc/hosts lines when no node is left
net_down() {
    local names n veth all=0
    if (( $# )); then names=("$@"); else
        all=1
        mapfile -t names < <({ recorded_nodes; ls /run/netns 2>/dev/null | grep -E "^$NODE_PREFIX[0-9]+$" || true; } | sort -u)
    fi
    for n in "${names[@]}"; do
        [[ -n $n ]] || continue
        ns_exists "$n" && kill_ns "$n"
        veth=$VETH_PREFIX${n#"$NODE_PREFIX"}
        link_exists "$veth" && ip link del "$veth"
        ns_exists "$n" && ip netns del "$n"
        rm -f "$(node_pid "$n")"
    done
    if (( all )); then
        for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^$VETH_PREFIX[0-9]+$" || true); do
            ip link del "$veth" 2>/dev/null || true
        done
        link_exists "$BRIDGE" && ip link del "$BRIDGE"
        hosts_write
        rm -f "$STATE"
    fi
    return 0
}

# start_node NAME: its slurmd, inside its namespaces (hostname NAME), then wait until the node is usable
start_node() {
    local n=$1 log=$LOG_DIR/slurmd-$1.log
    mkdir -p "$SPOOL_D/$n"
    if ! pid_alive "$(node_pid "$n")" slurmd; then
        say "starting slurmd on $n ($(node_addr "$n"))"
        # nsenter, not 'ip netns exec': that one remounts /sys, and slurmd needs the host's /sys/fs/cgroup
        nsenter --net="/run/netns/$n" unshare --uts -- sh -c 'hostname "$1" && exec slurmd' sh "$n" \
            </dev/null >>"$log" 2>&1 9>&- || fail "slurmd on $n" "$log" "failed to start"
    fi
    wait_node "$n" "$(node_pid "$n")" "$log"
}

# wait_node NAME PIDFILE LOG: until sinfo shows NAME idle/mixed/allocated (a node left down or drained by an
# earlier run is resumed once, after its slurmd registered)
wait_node() {
    local n=$1 pidf=$2 log=$3 start=$SECONDS resumed=0
    until node_good "$n"; do
        if (( SECONDS - start >= WAIT_S )); then
            fail "slurmd on $n" "$log" "node $n is '$(node_state "$n")', not idle, after ${WAIT_S} s"
        fi
        if (( SECONDS - start >= 3 )) && ! pid_alive "$pidf" slurmd; then
            fail "slurmd on $n" "$log" "exited during start-up"
        fi
        if (( !resumed && SECONDS - start >= 3 )) && [[ $(node_state "$n") =~ ^(down|drain|drng) ]]; then
            q scontrol update nodename="$n" state=resume || true
            resumed=1
        fi
        sleep 0.25
    done
}

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

# start_slurm_daemon NAME [LOG]: start NAME (it daemonizes and writes its pid file itself)
start_slurm_daemon() {
    local name=$1 log=$LOG_DIR/${2:-$1}.log
    say "starting $name"
    "$name" </dev/null >>"$log" 2>&1 9>&- || fail "$name" "$log" "failed to start"
}

cmd_up() {
    local t0=$SECONDS n
    if all_up; then up_line "already up"; return 0; fi
    install_packages
    mkdir -p "$LOG_DIR" "$RUN_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$CONF_DIR"

    # A changed config needs a daemon restart (AuthInfo is read at start only).
    if conf_differs "$CONF_DIR/slurmdbd.conf" slurmdbd_conf; then
        stop_pid "$RUN_DIR/slurmdbd.pid" slurmdbd
        write_conf "$CONF_DIR/slurmdbd.conf" slurmdbd_conf 600
    fi
    if conf_differs "$CONF_DIR/slurm.conf" slurm_conf; then
        for n in $(recorded_nodes); do stop_pid "$(node_pid "$n")" slurmd; done
        stop_pid "$HOST_PID" slurmd
        stop_pid "$RUN_DIR/slurmd.pid" slurmd   # an older version of this script's pid file
        stop_pid "$RUN_DIR/slurmctld.pid" slurmctld
        write_conf "$CONF_DIR/slurm.conf" slurm_conf 644
        say "wrote $CONF_DIR/slurm.conf (CPUs=$CPUS, RealMemory=$REAL_MEM MB, $NODES node(s))"
    fi
    # nodes of an earlier 'up --nodes' that this one does not have
    local keep=" $( (( NODES > 1 )) && node_names | tr '\n' ' ')"
    for n in $(recorded_nodes); do [[ $keep == *" $n "* ]] || net_down "$n"; done
    if (( NODES > 1 )); then net_up; else net_down; fi

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

    if ! pid_alive "$HOST_PID" slurmd; then start_slurm_daemon slurmd "slurmd-$HOST"; fi
    wait_node "$HOST" "$HOST_PID" "$LOG_DIR/slurmd-$HOST.log"
    for n in $(recorded_nodes); do start_node "$n"; done
    up_line "up in $(( SECONDS - t0 )) s"
}

cmd_down() {
    local t0=$SECONDS ids n
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
    for n in $(recorded_nodes); do stop_pid "$(node_pid "$n")" slurmd; done
    stop_pid "$HOST_PID" slurmd
    stop_pid "$RUN_DIR/slurmd.pid" slurmd
    stop_pid "$RUN_DIR/slurmctld.pid" slurmctld
    stop_pid "$RUN_DIR/slurmdbd.pid" slurmdbd
    stop_pid "$DB_PID" mariadbd
    stop_pid "$MUNGE_PID" munged
    net_down
    say "down in $(( SECONDS - t0 )) s"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then say "status: not installed"; return 1; fi
    if ! q sinfo; then say "status: slurmctld not reachable"; return 1; fi
    local st n bad=0
    for n in "$HOST" $(recorded_nodes); do
        st=$(node_state "$n" || true)
        if [[ $st =~ ^(idle|mix|alloc|comp|plnd)$ ]]; then
            say "status: node $n $st"
        else
            say "status: node $n '${st:-unknown}' (not usable); see $LOG_DIR/slurmd-$n.log"
            bad=1
        fi
    done
    return $bad
}

known_node() { [[ $'\n'$(recorded_nodes)$'\n' == *$'\n'"$1"$'\n'* ]] || die "no namespace node '$1' (this cluster has: $(recorded_nodes | tr '\n' ' '))"; }

# kill-node NAME: a node that dies, in the order the cluster would see it, bounded: the node falls silent (its
# link goes down: peers' packets are lost, no connection is reset), the controller is told it is down (it
# would decide so itself after SlurmdTimeout) and requeues its jobs, then every process on it gets SIGKILL
cmd_kill_node() {
    local n=$1
    known_node "$n"
    ip link set "$VETH_PREFIX${n#"$NODE_PREFIX"}" down
    q scontrol update nodename="$n" state=down reason="killed by local-cluster.sh kill-node" \
        || fail slurmctld "$LOG_DIR/slurmctld.log" "did not take node $n down"
    kill_ns "$n"
    say "node $n killed (state $(node_state "$n"))"
}

cmd_start_node() {
    known_node "$1"
    ip link set "$VETH_PREFIX${1#"$NODE_PREFIX"}" up
    start_node "$1"
    say "node $1 $(node_state "$1")"
}

usage() { echo "usage: $0 up [--nodes N] | down | status | kill-node NAME | start-node NAME" >&2; exit 2; }

ARGS=("$@")
cmd=${1:-}
(( $# )) && shift
case $cmd in
    up)
        while (( $# )); do
            case $1 in
                --nodes) [[ ${2:-} =~ ^[0-9]+$ ]] && (( $2 >= 1 && $2 <= 16 )) || die "--nodes takes a number from 1 to 16"
                         NODES=$2; shift 2 ;;
                --nodes=*) set -- --nodes "${1#--nodes=}" "${@:2}" ;;
                *) usage ;;
            esac
        done ;;
    down|status) (( $# == 0 )) || usage ;;
    kill-node|start-node) (( $# == 1 )) || usage ;;
    *) usage ;;
esac
case $cmd in
    up|down|kill-node|start-node)
        if (( EUID != 0 )); then
            command -v sudo >/dev/null || die "'$cmd' needs root (and sudo is not installed)"
            exec sudo "$BASH" "$(readlink -f "$0")" "${ARGS[@]}"
        fi ;;
esac
case $cmd in
    up|down)
        # one up/down at a time (parallel test workers may all call 'up'); daemons get 9>&-
        exec 9>/run/lock/dynconv-slurm-local-cluster.lock
        flock -w 180 9 || die "another '$0' up/down still running after 180 s"
        "cmd_$cmd" ;;
    status) cmd_status ;;
    kill-node) cmd_kill_node "$1" ;;
    start-node) cmd_start_node "$1" ;;
esac
