#!/usr/bin/env bash
# Builds the Debian package layerfs_VERSION_ARCH.deb with dpkg-deb: both
# binaries, the manual pages (layerfs(8) from doc/layerfs.8, a page per
# layerfs-volume command from clap), bash, zsh and fish completions (from
# clap), the systemd units, the store configuration file (a conffile) and
# the maintainer scripts of scripts/package/debian/.
#   --bin-dir DIR   take layerfs and layerfs-volume from DIR instead of
#                   building them (the package test passes cargo's own)
#   --out DIR       where the .deb goes (default: the current directory)
# Prints the path of the package.
set -euo pipefail
out=$PWD
bin_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
out=$(realpath "$out")
cd "$(dirname "$0")/../.."
if [ -z "$bin_dir" ]; then
  . scripts/ci/toolchain.sh
  build_release >&2
  bin_dir=${bin%/*}
fi
for b in layerfs layerfs-volume; do
  [ -x "$bin_dir/$b" ] || { echo "error: no $bin_dir/$b" >&2; exit 1; }
done

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# dpkg-deb wants 0755 directories whatever the umask (mktemp makes 0700).
umask 022
chmod 0755 "$root"

install -D -m 0755 "$bin_dir/layerfs" "$root/usr/bin/layerfs"
install -D -m 0755 "$bin_dir/layerfs-volume" "$root/usr/bin/layerfs-volume"
# The release profile keeps line tables for backtraces (debug = 1): 25 MB
# a binary. The package ships them without, as Debian's own do.
if command -v strip >/dev/null; then
  strip --strip-debug "$root/usr/bin/layerfs" "$root/usr/bin/layerfs-volume"
fi

man=$root/usr/share/man/man8
gen=$root/gen
"$bin_dir/layerfs-volume" generate-docs "$gen"
install -d "$man"
"$bin_dir/layerfs" --man > "$man/layerfs.8"
cp "$gen"/man8/*.8 "$man/"
gzip -9n "$man"/*.8

comp=$root/usr/share
install -d "$comp/bash-completion/completions" "$comp/zsh/vendor-completions" \
           "$comp/fish/vendor_completions.d"
"$bin_dir/layerfs" --completions bash > "$comp/bash-completion/completions/layerfs"
"$bin_dir/layerfs" --completions zsh > "$comp/zsh/vendor-completions/_layerfs"
"$bin_dir/layerfs" --completions fish > "$comp/fish/vendor_completions.d/layerfs.fish"
cp "$gen/completions/bash/layerfs-volume.bash" "$comp/bash-completion/completions/layerfs-volume"
cp "$gen/completions/zsh/_layerfs-volume" "$comp/zsh/vendor-completions/"
cp "$gen/completions/fish/layerfs-volume.fish" "$comp/fish/vendor_completions.d/"
rm -rf "$gen"

install -D -m 0644 contrib/systemd/layerfs-volume.service "$root/lib/systemd/system/layerfs-volume.service"
install -D -m 0644 contrib/systemd/layerfs-volume.socket "$root/lib/systemd/system/layerfs-volume.socket"
install -D -m 0644 contrib/etc/volumes.toml "$root/etc/layerfs/volumes.toml"
install -D -m 0644 LICENSE "$root/usr/share/doc/layerfs/copyright"

install -d "$root/DEBIAN"
install -m 0755 scripts/package/debian/postinst scripts/package/debian/prerm \
                scripts/package/debian/postrm "$root/DEBIAN/"
echo /etc/layerfs/volumes.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: layerfs
Version: $version
Architecture: $arch
Maintainer: layerfs maintainers <maintainers@users.noreply.h-seed-2bbf3e93.example>
Installed-Size: $size
Depends: fuse3, libc6
Recommends: docker.io | podman
Section: admin
Priority: optional
Description: union filesystem on FUSE with Linux overlayfs semantics
 layerfs mounts a stack of read-only lower directories under an optional
 writable upper directory, with the semantics and on-disk format of Linux
 kernel overlayfs (mount -t fuse.layerfs).
 .
 layerfs-volume keeps persistent copy-on-write volumes as layerfs layer
 stacks, with snapshots, clones and incremental export, and serves them
 to Docker and podman as the volume plugin "layerfs" (socket-activated
 by layerfs-volume.socket).
CONTROL
deb=$out/layerfs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
