#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for trying `--cluster slurm` and for the Slurm tests.
#
#   bash slurm/local-cluster.sh up       install (apt-get, if missing), configure and start; wait until usable
#   bash slurm/local-cluster.sh down     cancel queued jobs, stop the daemons that `up` started (only those)
#   bash slurm/local-cluster.sh status   daemons, node state, queue
#
# Runs as root on Debian 12 without systemd (munge, slurmctld, slurmd; mariadb + slurmdbd for accounting, which
# submitit needs to see a job that died; fake GPUs through gres). Idempotent: `up` installs only what is missing,
# rewrites a config only when its content changed (and then restarts slurmctld/slurmd), starts only daemons that
# are not running, and records each daemon it started in $SLURM_RUN_DIR/started; `down` stops exactly those, by pid
# file, after checking the process name -- never by name alone.
#
# Knobs (environment):
#   SLURM_ACCOUNTING=1    0: no mariadb/slurmdbd (sacct fails; submitit cannot see jobs that died)
#   SLURM_FAKE_GPUS=2     GPUs advertised through gres (character devices made with mknod); 0 = none
#   SLURM_CPUS=$(nproc)   CPUs advertised; more than nproc oversubscribes (SlurmdParameters=config_overrides)
#   SLURM_MEM_MB=         RealMemory; default 90 % of what `slurmd -C` reports
#   SLURM_CRED_EXPIRE=10  a requeued job waits this long (+1 s) before it may start again (Slurm's default: 120)
#   SLURM_CLEAN=0         1: start slurmctld with -c (forget saved jobs and node state)
#   SLURM_UP_TIMEOUT=90   seconds to wait for the node
#   SLURM_DOWN_KEEP_JOBS=0  1: `down` leaves queued jobs in slurmctld's saved state
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

ACCOUNTING=${SLURM_ACCOUNTING:-1}
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
CPUS=${SLURM_CPUS:-$(nproc)}
MEM_MB=${SLURM_MEM_MB:-}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
CLEAN=${SLURM_CLEAN:-0}
UP_TIMEOUT=${SLURM_UP_TIMEOUT:-90}
CLUSTER=${SLURM_CLUSTER:-localcluster}
PARTITION=${SLURM_PARTITION:-debug}
RUN_DIR=${SLURM_RUN_DIR:-/run/slurm-local}
DB_PASS=${SLURM_DB_PASS:-slurmdbpass}

ETC=/etc/slurm
STATE=/var/lib/slurm
LOGS=/var/log/slurm
APT_LOG=/var/log/maskbench-slurm-apt.log
MUNGE_PID=/run/munge/munged.pid
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_PID=/run/mysqld/mysqld.pid
STARTED=$RUN_DIR/started
T0=$(date +%s.%N)

log() { printf '[local-cluster %5.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# running PIDFILE COMM: the pid in PIDFILE is a live process called COMM (zombies count as dead: PID 1 here
# reaps late, and `kill -0` succeeds on a zombie)
running() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null < "$1") || return 1   # the pid file may vanish as the daemon exits
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
record() { grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >> "$STARTED"; }
# poll SECONDS CMD...: retry CMD every 0.2 s until it succeeds or time runs out
poll() {
    local end=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.2; done
}
# stop_daemon NAME PIDFILE COMM: TERM, up to 20 s, then KILL; only if `up` recorded NAME as started by it
stop_daemon() {
    local name=$1 file=$2 comm=$3 pid
    grep -qx "$name" "$STARTED" 2>/dev/null || return 0
    if running "$file" "$comm"; then
        pid=$(tr -dc '0-9' < "$file")
        kill -TERM "$pid"
        for _ in $(seq 200); do running "$file" "$comm" || break; sleep 0.1; done
        if running "$file" "$comm"; then log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; sleep 0.5; fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$file"
    sed -i "/^$name\$/d" "$STARTED"
}

install_packages() {
    local need=()
    [ -x /usr/sbin/munged ] || need+=(munge)
    { [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/bin/sbatch ]; } || need+=(slurm-wlm)
    if [ "$ACCOUNTING" = 1 ]; then
        [ -x /usr/sbin/slurmdbd ] || need+=(slurmdbd)
        [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
    fi
    [ ${#need[@]} -gt 0 ] || return 0
    log "installing ${need[*]} (log: $APT_LOG)"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if ! "${apt[@]}" install "${need[@]}" >"$APT_LOG" 2>&1; then
        apt-get -q -o DPkg::Lock::Timeout=300 update >>"$APT_LOG" 2>&1
        "${apt[@]}" install "${need[@]}" >>"$APT_LOG" 2>&1 || { tail -20 "$APT_LOG"; die "apt-get install failed"; }
    fi
}

CHANGED=0
# put_file PATH MODE USER:GROUP < content: replace PATH only when the content differs
put_file() {
    local tmp; tmp=$(mktemp)
    cat > "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
    install -m "$2" -o "${3%:*}" -g "${3#*:}" "$tmp" "$1"; rm -f "$tmp"
    CHANGED=1; log "wrote $1"
}

write_configs() {
    local node=$1 mem=$2 defmem gres_line="" gres_types="" override="" acct gpu_files i f
    defmem=$(( mem / CPUS )); [ "$defmem" -le 1024 ] || defmem=1024
    if [ "$FAKE_GPUS" -gt 0 ]; then
        # gres/gpu needs File= entries that are character devices (slurmd drops file-less GPUs and rejects
        # regular files); c 1 3 are /dev/null's numbers.
        mkdir -p "$STATE/fakegpu"
        gpu_files="$STATE/fakegpu/nvidia[0-$((FAKE_GPUS - 1))]"
        for ((i = 0; i < FAKE_GPUS; i++)); do
            f=$STATE/fakegpu/nvidia$i
            [ -c "$f" ] || { rm -f "$f"; mknod "$f" c 1 3 2>/dev/null || { gpu_files=""; break; }; }
        done
        if [ -z "$gpu_files" ]; then
            log "mknod not permitted: one fake GPU backed by /dev/null"
            FAKE_GPUS=1; gpu_files=/dev/null
        fi
        gres_types="GresTypes=gpu"; gres_line=" Gres=gpu:$FAKE_GPUS"
        printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s\n' "$node" "$gpu_files" | put_file "$ETC/gres.conf" 644 root:root
    else
        printf '# no GRES\n' | put_file "$ETC/gres.conf" 644 root:root
    fi
    [ "$CPUS" -le "$(nproc)" ] || override="SlurmdParameters=config_overrides"
    if [ "$ACCOUNTING" = 1 ]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
        [ "$FAKE_GPUS" -eq 0 ] || acct="$acct
AccountingStorageTRES=gres/gpu"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    put_file "$ETC/slurm.conf" 644 root:root <<EOF
# written by maskbench slurm/local-cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MailProg=/bin/true
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$acct
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
MpiDefault=none
$gres_types
$override
NodeName=$node NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem$gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$ACCOUNTING" = 1 ]; then
        # slurmdbd refuses a config that is not mode 600 and owned by SlurmUser
        put_file "$ETC/slurmdbd.conf" 600 slurm:slurm <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
    fi
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    # munged refuses keys and folders that others can read or write, and folders owned by another user
    chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
    if running "$MUNGE_PID" munged; then
        log "munged already running"
    else
        runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
        record munged; log "started munged"
    fi
    poll 10 sh -c 'munge -n | unmunge' || die "munge does not work (see /var/log/munge/munged.log)"
}

start_accounting() {
    if mariadb-admin --socket=$MYSQL_SOCK ping >/dev/null 2>&1; then
        log "mariadb already running"
    else
        # mariadbd runs as mysql: its pid file must live in a folder mysql owns
        mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGS/mariadb-init.log" 2>&1
        rm -f "$MYSQL_PID"
        setsid nohup /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" --socket=$MYSQL_SOCK \
            --bind-address=127.0.0.1 --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            >"$LOGS/mariadb.out" 2>&1 </dev/null &
        local mpid=$!
        for _ in $(seq 300); do
            mariadb-admin --socket=$MYSQL_SOCK ping >/dev/null 2>&1 && break
            kill -0 $mpid 2>/dev/null || { tail -5 "$LOGS/mariadb.out"; die "mariadb exited (see $LOGS/mariadb.out)"; }
            sleep 0.2
        done
        mariadb-admin --socket=$MYSQL_SOCK ping >/dev/null 2>&1 || die "mariadb did not start (see $LOGS/mariadb.out)"
        poll 10 test -s "$MYSQL_PID" || true
        record mariadb; log "started mariadb"
    fi
    mariadb --socket=$MYSQL_SOCK -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    if running "$RUN_DIR/slurmdbd.pid" slurmdbd; then
        [ "$CHANGED" = 0 ] || kill -HUP "$(tr -dc '0-9' < "$RUN_DIR/slurmdbd.pid")"
        log "slurmdbd already running"
    else
        /usr/sbin/slurmdbd || die "slurmdbd failed (see $LOGS/slurmdbd.log)"
        record slurmdbd; poll 10 test -s "$RUN_DIR/slurmdbd.pid" || true
        log "started slurmdbd"
    fi
    poll 30 sacctmgr -n -P list cluster || die "slurmdbd does not answer (see $LOGS/slurmdbd.log)"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null; log "added cluster $CLUSTER to the accounting database"
    fi
}

# stop_own PIDFILE COMM: stop a daemon this script started (for a restart after a config change)
stop_own() {
    local pid
    running "$1" "$2" || return 0
    pid=$(tr -dc '0-9' < "$1"); kill "$pid"
    for _ in $(seq 100); do running "$1" "$2" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

start_slurm() {
    local node=$1 args=() st end resumed=0
    if [ "$CHANGED" = 1 ]; then    # a changed slurm.conf or gres.conf needs both daemons restarted
        stop_own "$RUN_DIR/slurmd.pid" slurmd
        stop_own "$RUN_DIR/slurmctld.pid" slurmctld
    fi
    if running "$RUN_DIR/slurmctld.pid" slurmctld; then
        log "slurmctld already running"
    else
        [ "$CLEAN" != 1 ] || args=(-c)
        /usr/sbin/slurmctld "${args[@]}" || die "slurmctld failed (see $LOGS/slurmctld.log)"
        record slurmctld; poll 10 test -s "$RUN_DIR/slurmctld.pid" || true
        log "started slurmctld"
    fi
    poll 30 sh -c 'scontrol ping | grep -q "is UP"' || die "slurmctld does not answer (see $LOGS/slurmctld.log)"
    if running "$RUN_DIR/slurmd.pid" slurmd; then
        log "slurmd already running"
    else
        /usr/sbin/slurmd -N "$node" || die "slurmd failed (see $LOGS/slurmd.log)"
        record slurmd; poll 10 test -s "$RUN_DIR/slurmd.pid" || true
        log "started slurmd"
    fi
    # IDLE/MIXED/ALLOCATED: usable. NOT_RESPONDING just after a start: slurmd registering. DRAIN/DOWN kept in
    # the saved state from an earlier bad config: resume it. INVAL: this config does not match the machine.
    end=$(( $(date +%s) + UP_TIMEOUT ))
    while :; do
        st=$(scontrol -o show node "$node" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p')
        case "$st" in
            *INVAL*) die "node $node is INVALID: $(scontrol show node "$node" | grep -o 'Reason=.*')" ;;
            *NOT_RESPONDING*|"") ;;
            *DRAIN*|DOWN*|*FAIL*)
                if [ $resumed -lt 3 ]; then
                    log "node $node is $st ($(scontrol show node "$node" | grep -o 'Reason=.*')): resuming it"
                    scontrol update nodename="$node" state=resume || true; resumed=$((resumed + 1)); sleep 0.5
                fi ;;
            IDLE*|MIXED*|ALLOCATED*|COMPLETING*) break ;;
        esac
        [ "$(date +%s)" -lt "$end" ] || die "node $node not usable after ${UP_TIMEOUT}s (state $st)"
        sleep 0.2
    done
    log "node $node is $st: cluster up"
}

cmd_up() {
    install_packages
    local node mem
    node=$(hostname -s); [ -n "$node" ] || die "empty hostname"
    getent hosts "$node" >/dev/null || { log "adding '127.0.0.1 $node' to /etc/hosts"; echo "127.0.0.1 $node" >> /etc/hosts; }
    mem=$MEM_MB
    if [ -z "$mem" ]; then
        mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
        [ -n "$mem" ] || mem=$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo)
        mem=$(( mem * 90 / 100 ))
    fi
    mkdir -p "$RUN_DIR" "$ETC" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
    chown slurm:slurm "$STATE" "$STATE/slurmctld" "$LOGS"; chmod 755 "$STATE" "$STATE/slurmctld" "$LOGS"
    touch "$STARTED"
    write_configs "$node" "$mem"
    start_munge
    [ "$ACCOUNTING" != 1 ] || start_accounting
    start_slurm "$node"
    sinfo -o "%P %a %D %t %N %c %m %G"
}

cmd_down() {
    [ -f "$STARTED" ] || { log "nothing recorded in $STARTED: nothing to stop"; return 0; }
    local jobs
    if [ "${SLURM_DOWN_KEEP_JOBS:-0}" != 1 ] && running "$RUN_DIR/slurmctld.pid" slurmctld; then
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
        if [ -n "$jobs" ]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
        fi
    fi
    stop_daemon slurmd "$RUN_DIR/slurmd.pid" slurmd
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid" slurmctld
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" slurmdbd
    stop_daemon mariadb "$MYSQL_PID" mariadbd
    stop_daemon munged "$MUNGE_PID" munged
    [ -s "$STARTED" ] || rm -f "$STARTED"
    log "down"
}

cmd_status() {
    local name file comm
    for entry in "munged:$MUNGE_PID:munged" "mariadb:$MYSQL_PID:mariadbd" "slurmdbd:$RUN_DIR/slurmdbd.pid:slurmdbd" \
                 "slurmctld:$RUN_DIR/slurmctld.pid:slurmctld" "slurmd:$RUN_DIR/slurmd.pid:slurmd"; do
        IFS=: read -r name file comm <<<"$entry"
        if running "$file" "$comm"; then echo "$name: running (pid $(tr -dc '0-9' < "$file"))"; else echo "$name: stopped"; fi
    done
    if command -v sinfo >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
        sinfo -o "%P %a %D %t %N %c %m %G"; squeue
    fi
}

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: bash slurm/local-cluster.sh up|down|status" >&2; exit 2 ;;
esac
