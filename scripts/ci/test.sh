#!/usr/bin/env bash
# Runs the whole test suite. Needs root (the tests mount FUSE and kernel
# overlayfs); installs the Debian packages the tests use when missing.
#   --install-only   install the packages, run nothing (what .ci/run uses)
#   other arguments  passed on to cargo test (e.g. --test read_path)
# With CI or LAYERFS_REQUIRE_ALL=1 set, a test that cannot run here (not
# root, a tool missing) fails instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/ci/toolchain.sh
install_only=false
[ "${1:-}" = --install-only ] && install_only=true && shift
# Before the packages: a missing toolchain is said at once.
$install_only || check_toolchain

# Every package a test runs a tool from: the mounts (fuse3, util-linux's
# mount, unshare, setpriv, prlimit, flock), layer building (attr,
# coreutils, tar), the container tests (runc, crun, podman, uidmap for
# rootless podman, busybox-static for the image), the Debian tests
# (debootstrap, dpkg, strace), process control (procps: kill, pkill) and
# the manual page check (groff-base), a loop-mounted ext2 upper
# (e2fsprogs), xfs_io to shut an upper down (xfsprogs), a GlusterFS
# volume in a network namespace (glusterfs-server, glusterfs-client,
# iproute2), Docker Engine for the volume tests (docker.io), the
# database the live-snapshot tests write and check (sqlite3), and for the
# package test apt and systemd's systemd-socket-activate (systemd, where
# it is not PID 1).
packages=(fuse3 attr coreutils util-linux procps tar runc crun podman uidmap
          busybox-static debootstrap dpkg strace groff-base e2fsprogs xfsprogs
          glusterfs-server glusterfs-client iproute2 docker.io sqlite3 apt systemd)

missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
else
  echo "warning: not a Debian system: install the equivalents of: ${packages[*]}" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
fi
$install_only && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "warning: not root: the mounted tests will be skipped (fail, with CI set)" >&2
fi
# Mounted tests use a few processes each; two at a time fit two cores.
# Every test binary runs whatever fails (--no-fail-fast); tests that return
# early through the skip rule (tests/common's cannot_run) note themselves in
# $LAYERFS_SKIP_LOG, so that they count as skipped, not passed.
# Arguments are passed on to cargo test (e.g. --test read_path).
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
status=0
LAYERFS_SKIP_LOG=$skips cargo test --release --no-fail-fast "$@" -- \
  --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# The failing and skipped tests, then one closing line for the whole suite.
awk -v skips="$skips" -f scripts/ci/test-summary.awk "$log" || status=1
exit "$status"
