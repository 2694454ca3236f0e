#!/usr/bin/env bash
# Installs layerfs where mount(8) and mount.fuse3 find it, with its manual
# page layerfs(8), and layerfs-volume beside it (it runs the layerfs it
# finds there) with its pages and the systemd units of its plugin service
# (contrib/systemd/, ExecStart pointed at PREFIX). PREFIX defaults to
# /usr/local, UNIT_DIR to /etc/systemd/system. For a Debian package, see
# scripts/package/deb.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ci/toolchain.sh
prefix=${PREFIX:-/usr/local}
unit_dir=${UNIT_DIR:-/etc/systemd/system}
build_release
install -D -m 0755 "$bin" "$prefix/bin/layerfs"
# The workspace's second crate; build_release's cargo build makes both.
install -D -m 0755 "${bin%/*}/layerfs-volume" "$prefix/bin/layerfs-volume"
install -d "$prefix/share/man/man8"
"$bin" --man > "$prefix/share/man/man8/layerfs.8"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"${bin%/*}/layerfs-volume" generate-docs "$gen"
install -m 0644 "$gen"/man8/*.8 "$prefix/share/man/man8/"
# An older install put the page in section 1.
rm -f "$prefix/share/man/man1/layerfs.1"
install -d "$unit_dir"
sed "s|/usr/bin/layerfs-volume|$prefix/bin/layerfs-volume|" \
  contrib/systemd/layerfs-volume.service > "$unit_dir/layerfs-volume.service"
install -m 0644 contrib/systemd/layerfs-volume.socket "$unit_dir/"
echo "installed $prefix/bin/layerfs, $prefix/bin/layerfs-volume, their manual" \
     "pages in $prefix/share/man/man8 and $unit_dir/layerfs-volume.{service,socket}"
echo "start the plugin with: systemctl daemon-reload && systemctl enable --now layerfs-volume.socket"
