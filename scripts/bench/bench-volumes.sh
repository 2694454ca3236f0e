#!/usr/bin/env bash
# Volume figures for issue 11, in one run, as ratios: creating a volume from
# a 30,000-file seed against `cp -a` of the seed, snapshot and clone time,
# `export --since` after changing 1% of the files against a full export,
# writing 2,000 small files into a mounted volume against a plain
# directory; then, with a Docker Engine of the script's own (Debian's
# dockerd, if installed): a new volume filled with the same 30,000 files by
# Docker's `local` driver (copied from an image) against the layerfs plugin
# (`from=` the seed), and a container writing 2,000 small files into a
# layerfs volume against a plain bind mount and a `local` volume, and the
# same writes (plus one 256 MiB dd) into a layerfs volume with a size limit
# against one without, in the same run: what capacity enforcement costs. Needs
# root; runs in a private mount namespace.
#   scripts/bench/bench-volumes.sh [DIR]   (scratch dir, default a new temp dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/volume-lib.sh
in_private_namespace "$0" "$@"
B="$VOLUME_BIN"
D="${1:-$(mktemp -d /tmp/layerfs-vbench.XXXXXX)}"
S="$D/store"
K="$D/docker"
dk() { docker -H "unix://$K/docker.sock" "$@"; }
# The engine and its plugin are stopped by pid, containers first so that
# dockerd unmounts their volumes; then whatever is still mounted under $D.
cleanup() {
  if [ -n "${dockerd_pid:-}" ]; then
    for c in $(dk ps -aq 2>/dev/null); do dk rm -f "$c" >/dev/null 2>&1 || true; done
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
  fi
  if [ -n "${plugin_pid:-}" ]; then
    kill -TERM "$plugin_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$plugin_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$plugin_pid" 2>/dev/null || true
  fi
  umount_under "$D"
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/plain"
make_seed "$D/seed"
ratio() { printf "%.4f" "$(echo "scale=6; $1 / $2" | bc)"; }

empty=$(t "$B" --store "$S" create empty)
seeded=$(t "$B" --store "$S" create seeded --from "$D/seed")
cpa=$(t cp -a "$D/seed" "$D/copy")
snap=$(t "$B" --store "$S" snapshot seeded s1)
clone=$(t "$B" --store "$S" clone seeded@s1 cl)
M=$("$B" --store "$S" mount seeded)
for d in $(seq 0 99); do echo changed > "$M/d$d/f1"; rm "$M/d$d/f2"; done
for d in $(seq 100 199); do echo more >> "$M/d$d/f3"; done
"$B" --store "$S" umount seeded
E=$("$B" --store "$S" mount empty)
w_vol=$(t sh -c "for i in \$(seq 2000); do echo \$i > $E/\$i; done")
w_dir=$(t sh -c "for i in \$(seq 2000); do echo \$i > $D/plain/\$i; done")
"$B" --store "$S" umount empty
full=$(t "$B" --store "$S" export seeded -o "$D/full.tar")
inc=$(t "$B" --store "$S" export seeded --since s1 -o "$D/inc.tar")
fsz=$(stat -c %s "$D/full.tar"); isz=$(stat -c %s "$D/inc.tar")
"$B" --store "$S" rm cl >/dev/null
rm -rf "$D/copy" "$D/full.tar" "$D/inc.tar"

# The Docker rows, with an engine started here as crates/layerfs-volume/tests/volumes.rs does: its
# own data root, exec root, socket, pidfile and config file, and a temp dir
# over /run/docker/plugins (this is a private mount namespace) where the
# layerfs plugin serves.
docker_rows=
if command -v dockerd >/dev/null && command -v docker >/dev/null && [ -x /bin/busybox ]; then
  docker_rows=1
  mkdir -p "$K/data" "$K/exec" "$K/plugins" "$K/rootfs/bin" /run/docker/plugins
  mount --bind "$K/plugins" /run/docker/plugins
  echo "{\"deprecated-key-path\": \"$K/key.json\"}" > "$K/daemon.json"
  "$B" --store "$D/dstore" serve > "$K/plugin.log" 2>&1 &
  plugin_pid=$!
  dockerd --data-root "$K/data" --exec-root "$K/exec" -H "unix://$K/docker.sock" \
    --pidfile "$K/docker.pid" --config-file "$K/daemon.json" \
    --iptables=false --ip6tables=false --bridge=none > "$K/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for i in $(seq 600); do
    dk info >/dev/null 2>&1 && break
    [ "$i" = 600 ] && { cat "$K/dockerd.log" >&2; exit 1; }
    sleep 0.1
  done
  # Two images: busybox alone, and busybox with the seed as /data. Docker
  # copies an image's /data into an empty volume mounted there, so the
  # write rows use the first, where every target starts empty.
  cp /bin/busybox "$K/rootfs/bin/busybox"
  for a in sh true test ls wc echo dd rm; do ln -s busybox "$K/rootfs/bin/$a"; done
  tar -C "$K/rootfs" -cf - . | dk import - vb-bb:1 >/dev/null
  tar -cf - -C "$K/rootfs" . -C "$D" --transform 's,^seed,data,' seed | dk import - vb-seed:1 >/dev/null
  run=(run --rm --network none)
  dk "${run[@]}" vb-bb:1 true # the first container pays one-off set-up
  # A new volume filled with the 30,000 files, as a container sees it.
  fill_local() { dk volume create v1 && dk "${run[@]}" -v v1:/data vb-seed:1 true; }
  fill_layerfs() { dk volume create -d layerfs -o "from=$D/seed" v2 && dk "${run[@]}" -v v2:/data vb-seed:1 true; }
  d_local=$(t fill_local)
  d_lfs=$(t fill_layerfs)
  for v in v1 v2; do
    n=$(dk "${run[@]}" -v "$v:/data" vb-bb:1 sh -c 'ls /data/d2999 | wc -l; test -f /data/d0/f0 && echo ok')
    [ "$n" = "$(printf '10\nok')" ] || { echo "volume $v does not hold the seed: $n" >&2; exit 1; }
  done
  # A container's 2,000 small writes (creates), each target new and empty;
  # three interleaved rounds, the fastest of each kept, since one run of
  # about a second swings with the machine's load.
  writes='i=0; while [ $i -lt 2000 ]; do echo $i > /data/f$i; i=$((i+1)); done'
  min() { echo "if ($1 < $2) $1 else $2" | bc; }
  c_bind=1000 c_local=1000 c_lfs=1000 m_bind=1000 m_local=1000 m_lfs=1000
  c_cap=1000 m_cap=1000 dd_lfs=1000 dd_cap=1000
  big='dd if=/dev/zero of=/data/big bs=1M count=256 2>/dev/null'
  for r in 1 2 3; do
    mkdir "$D/bind$r"
    dk volume create "w1-$r" >/dev/null
    dk volume create -d layerfs "w2-$r" >/dev/null
    dk volume create -d layerfs -o size=1G "w3-$r" >/dev/null
    c_bind=$(min "$c_bind" "$(t dk "${run[@]}" -v "$D/bind$r:/data" vb-bb:1 sh -c "$writes")")
    c_local=$(min "$c_local" "$(t dk "${run[@]}" -v "w1-$r:/data" vb-bb:1 sh -c "$writes")")
    c_lfs=$(min "$c_lfs" "$(t dk "${run[@]}" -v "w2-$r:/data" vb-bb:1 sh -c "$writes")")
    c_cap=$(min "$c_cap" "$(t dk "${run[@]}" -v "w3-$r:/data" vb-bb:1 sh -c "$writes")")
    dd_lfs=$(min "$dd_lfs" "$(t dk "${run[@]}" -v "w2-$r:/data" vb-bb:1 sh -c "$big")")
    dd_cap=$(min "$dd_cap" "$(t dk "${run[@]}" -v "w3-$r:/data" vb-bb:1 sh -c "$big")")
    for v in "w2-$r" "w3-$r"; do
      dk "${run[@]}" -v "$v:/data" vb-bb:1 sh -c 'rm /data/big' >/dev/null
    done
    for v in "$D/bind$r" "w1-$r" "w2-$r" "w3-$r"; do
      n=$(dk "${run[@]}" -v "$v:/data" vb-bb:1 sh -c 'ls /data | wc -l; cat /data/f1999')
      [ "$n" = "$(printf '2000\n1999')" ] || { echo "$v holds not the 2,000 files: $n" >&2; exit 1; }
    done
    # The same runs without the writes: what mounting the target costs.
    m_bind=$(min "$m_bind" "$(t dk "${run[@]}" -v "$D/bind$r:/data" vb-bb:1 true)")
    m_local=$(min "$m_local" "$(t dk "${run[@]}" -v "w1-$r:/data" vb-bb:1 true)")
    m_lfs=$(min "$m_lfs" "$(t dk "${run[@]}" -v "w2-$r:/data" vb-bb:1 true)")
    m_cap=$(min "$m_cap" "$(t dk "${run[@]}" -v "w3-$r:/data" vb-bb:1 true)")
  done
  c_empty=$(t dk "${run[@]}" vb-bb:1 true)
fi

# ratio = layerfs / baseline: below 1, layerfs is faster (or smaller).
row() { printf '%-52s %-22s %10s %10s %10s\n' "$@"; }
s() { printf '%.3f' "$1"; }
row "workload" "baseline" "baseline" "layerfs" "ratio"
row "create a volume from the 30,000-file seed (s)" "cp -a of the seed" "$(s "$cpa")" "$(s "$seeded")" "$(ratio "$seeded" "$cpa")"
row "create an empty volume (s)" "-" "-" "$(s "$empty")" "-"
row "snapshot (s)" "-" "-" "$(s "$snap")" "-"
row "clone (s)" "-" "-" "$(s "$clone")" "-"
row "export --since after changing 1% (s)" "full export" "$(s "$full")" "$(s "$inc")" "$(ratio "$inc" "$full")"
row "export --since after changing 1% (bytes)" "full export" "$fsz" "$isz" "$(ratio "$isz" "$fsz")"
row "2,000 small writes from the host (s)" "plain dir" "$(s "$w_dir")" "$(s "$w_vol")" "$(ratio "$w_vol" "$w_dir")"
if [ -n "$docker_rows" ]; then
  row "new volume with the 30,000 files + docker run (s)" "local, from image" "$(s "$d_local")" "$(s "$d_lfs")" "$(ratio "$d_lfs" "$d_local")"
  row "container: 2,000 small writes, best of 3 (s)" "bind mount" "$(s "$c_bind")" "$(s "$c_lfs")" "$(ratio "$c_lfs" "$c_bind")"
  row "container: 2,000 small writes, best of 3 (s)" "local volume" "$(s "$c_local")" "$(s "$c_lfs")" "$(ratio "$c_lfs" "$c_local")"
  row "container: only mounting it, best of 3 (s)" "bind mount" "$(s "$m_bind")" "$(s "$m_lfs")" "$(ratio "$m_lfs" "$m_bind")"
  row "container: only mounting it, best of 3 (s)" "local volume" "$(s "$m_local")" "$(s "$m_lfs")" "$(ratio "$m_lfs" "$m_local")"
  row "container: nothing mounted (s)" "-" "$(s "$c_empty")" "-" "-"
  # Capacity: a layerfs volume with -o size=1G against one without.
  row "capacity: 2,000 small writes, best of 3 (s)" "layerfs, no limit" "$(s "$c_lfs")" "$(s "$c_cap")" "$(ratio "$c_cap" "$c_lfs")"
  row "capacity: dd 256 MiB, bs=1M, best of 3 (s)" "layerfs, no limit" "$(s "$dd_lfs")" "$(s "$dd_cap")" "$(ratio "$dd_cap" "$dd_lfs")"
  row "capacity: only mounting it, best of 3 (s)" "layerfs, no limit" "$(s "$m_lfs")" "$(s "$m_cap")" "$(ratio "$m_cap" "$m_lfs")"
else
  echo "(no dockerd/docker or /bin/busybox: Docker rows left out)"
fi
