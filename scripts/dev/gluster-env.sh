#!/bin/bash
# A throw-away GlusterFS volume to try layerfs on by hand (or to benchmark),
# set up as tests/common/gluster.rs does it: glusterd and its brick in a
# network namespace with 192.0.2.1 on its lo (glusterd refuses loopback
# bricks), its state, logs and sockets in DIR (bind-mounted in a private
# mount namespace); each "host" is its own mount namespace with its own
# glusterfs client mounted at DIR/gl. Needs root and glusterfs-server,
# glusterfs-client.
#
#   scripts/dev/gluster-env.sh up DIR          server + volume "lfs" (brick DIR/brick)
#   scripts/dev/gluster-env.sh host DIR NAME   a host; prints the pid to enter:
#       nsenter -t PID -m -n -u -- COMMAND  (e.g. sh, layerfs, ls DIR/gl)
#   scripts/dev/gluster-env.sh down DIR        ends every process by pid, deletes all
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,14p' "$0"; exit 2; }

pids_in_netns() {
    local ino p
    ino=$(stat -L -c %i "/run/netns/$1") || return 0
    for p in /proc/[0-9]*; do
        [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$ino" ] && echo "${p#/proc/}"
    done
    return 0
}

# Starts `sleep infinity` in new mount and UTS namespaces inside the
# network namespace and prints its pid.
anchor() {
    ip netns exec "$1" unshare -m -u --propagation private sleep infinity </dev/null >/dev/null 2>&1 &
    local pid=$! i
    for i in $(seq 100); do
        [ "$(readlink /proc/$pid/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] &&
            [ "$(cat /proc/$pid/comm 2>/dev/null)" = sleep ] && break
        sleep 0.05
    done
    nsenter -t "$pid" -u hostname "$2"
    echo "$pid"
}

case $cmd in
up)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    ns=lfs-gl-sh-$$
    mkdir -p "$dir/server/lib" "$dir/server/log" "$dir/brick" "$dir/gl"
    [ -d /var/lib/glusterd/groups ] && cp -a /var/lib/glusterd/groups "$dir/server/lib/"
    ip netns add "$ns"
    echo "$ns" >"$dir/netns"
    ip -n "$ns" addr add 192.0.2.1/32 dev lo
    ip -n "$ns" link set lo up
    srv=$(anchor "$ns" gluster-server)
    echo "$srv" >"$dir/server/anchor"
    nsenter -t "$srv" -m sh -ec "mount --bind '$dir/server/lib' /var/lib/glusterd;
        mount --bind '$dir/server/log' /var/log/glusterfs;
        mount -t tmpfs -o mode=0755 lfs-gluster-run /run; mkdir -p /run/gluster"
    nsenter -t "$srv" -m -n -u glusterd -N </dev/null >"$dir/server/glusterd.out" 2>&1 &
    for i in $(seq 600); do
        nsenter -t "$srv" -m -n -u gluster --mode=script volume list >/dev/null 2>&1 && break
        sleep 0.1
    done
    nsenter -t "$srv" -m -n -u gluster --mode=script volume create lfs "192.0.2.1:$dir/brick" force
    # Client caches that can serve a name a rename just made stale: off on
    # a volume holding overlay uppers (see README, shared storage).
    for o in stat-prefetch quick-read io-cache read-ahead readdir-ahead open-behind nl-cache write-behind client-io-threads; do
        nsenter -t "$srv" -m -n -u gluster --mode=script volume set lfs "performance.$o" off >/dev/null
    done
    nsenter -t "$srv" -m -n -u gluster --mode=script volume start lfs
    ;;
host)
    name=${3:?host name}
    dir=$(cd "$dir" && pwd)
    ns=$(cat "$dir/netns")
    mkdir -p "$dir/host-$name/log"
    h=$(anchor "$ns" "host-$name")
    echo "$h" >"$dir/host-$name/anchor"
    nsenter -t "$h" -m mount --bind "$dir/host-$name/log" /var/log/glusterfs
    nsenter -t "$h" -m -n -u glusterfs --volfile-server=192.0.2.1 --volfile-id=lfs \
        --log-file="$dir/host-$name/client.log" "$dir/gl"
    nsenter -t "$h" -m -n -u stat -f "$dir/gl" >/dev/null
    echo "$h"
    ;;
down)
    dir=$(cd "$dir" && pwd)
    ns=$(cat "$dir/netns")
    srv=$(cat "$dir/server/anchor")
    for a in "$dir"/host-*/anchor; do
        [ -e "$a" ] || continue
        h=$(cat "$a")
        nsenter -t "$h" -m sh -c "grep -o ' $dir/[^ ]*' /proc/self/mounts | sort -r |
            while read -r m; do umount -l \"\$m\"; done" 2>/dev/null || true
    done
    nsenter -t "$srv" -m -n -u gluster --mode=script volume stop lfs force || true
    nsenter -t "$srv" -m -n -u gluster --mode=script volume delete lfs || true
    pids=$(pids_in_netns "$ns")
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    sleep 0.5
    ip netns delete "$ns"
    rm -rf "$dir"
    ;;
*)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
