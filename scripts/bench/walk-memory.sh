#!/usr/bin/env bash
# Memory of a long walk: a lower with ENTRIES entries (default 1,000,000:
# 10,000 directories of 100 empty files) is walked WALKS times (default 4)
# through layerfs, with the kernel's dentry and inode caches dropped after
# each walk (echo 2 > /proc/sys/vm/drop_caches: host-wide, harmless).
# Prints the daemon's RSS (at the end of each walk and once the kernel has
# forgotten it) and open fds; fails if open fds grow or the RSS stays near
# the walk's peak (see the test for the bound).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "walk-memory.sh: needs root" >&2; exit 1; }
LAYERFS_WALK_ENTRIES=${ENTRIES:-1000000} LAYERFS_WALKS=${WALKS:-4} timeout 3600 unshare -m --propagation private \
  cargo test --release --test load -- --exact walking_a_large_tree_keeps_memory_and_fds_flat --nocapture
