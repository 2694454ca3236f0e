#!/usr/bin/env bash
# Builds layerfs, makes a small three-layer stack (with a whiteout and an
# opaque directory), mounts it, shows the merge, and unmounts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/ci/toolchain.sh

# What the demo needs besides the toolchain, checked before the long build.
if [ "$(id -u)" != 0 ]; then
  echo "error: run the demo as root (it makes a whiteout device and trusted.* xattrs)" >&2
  exit 1
fi
[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
command -v setfattr >/dev/null || { echo "error: setfattr is missing: apt-get install -y attr" >&2; exit 1; }
build_release

work=$(mktemp -d /tmp/layerfs-demo.XXXXXX)
mnt=$work/merged
cleanup() { umount "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work"/{base,middle,top,upper,work} "$mnt"

echo "base layer"      > "$work/base/readme"
echo "old config"      > "$work/base/config"
mkdir -p "$work/base/cache" && echo "stale" > "$work/base/cache/entry"
echo "to be deleted"   > "$work/base/tmpfile"

echo "new config"      > "$work/middle/config"
mknod "$work/middle/tmpfile" c 0 0                       # whiteout: hides tmpfile
mkdir -p "$work/middle/cache" && echo "fresh" > "$work/middle/cache/new"
setfattr -n trusted.overlay.opaque -v y "$work/middle/cache"   # opaque: hides base/cache/*

echo "app binary"      > "$work/top/app"

fingerprint() { (cd "$work" && find base middle top -printf '%p %s %m %T@\n' | sort | md5sum); }
before=$(fingerprint)
echo
echo "== layers (top first): top, middle, base; writes go to upper"
"$bin" -o "lowerdir=$work/top:$work/middle:$work/base,upperdir=$work/upper,workdir=$work/work" "$mnt"
echo "== mounted: $(grep " $mnt " /proc/mounts)"
echo "== merged tree:"
(cd "$mnt" && find . -mindepth 1 | sort | sed 's/^/   /')
echo "== config says: $(cat "$mnt/config")   (middle wins over base)"
echo "== cache/ holds: $(ls "$mnt/cache")   (opaque: base's entry hidden)"
echo "== tmpfile: $(ls "$mnt/tmpfile" 2>&1 | sed 's/^ls: //')   (middle's whiteout hides base's tmpfile)"
echo "hello" > "$mnt/created" && rm "$mnt/readme"
echo "== after writing 'created' and removing 'readme', the upper dir holds:"
(cd "$work/upper" && find . -mindepth 1 | sort) | while read -r path; do
  what=$(stat -c '%F' "$work/upper/$path")
  case $what in
    "regular file")
      what="a regular file, written through the mount" ;;
    "character special file")
      what="a character device 0/0 (ls -l: c 0, 0): the whiteout that hides base's ${path#./}" ;;
  esac
  printf '   %-10s %s\n' "$path" "$what"
done
umount "$mnt"
if [ "$(fingerprint)" = "$before" ]; then
  echo "== unmounted; the lower layers are unchanged"
else
  echo "== ERROR: a lower layer changed" >&2
  exit 1
fi
