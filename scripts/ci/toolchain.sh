# Sourced by the scripts that build layerfs: checks for a Rust toolchain
# new enough for Cargo.toml's rust-version, and builds with cargo's own
# progress output (compiling lines, "Blocking waiting for file lock").

# Prints how to get a toolchain, then exits.
no_toolchain() {
  cat >&2 <<EOF
error: $1
layerfs needs Rust $rust_version or newer (Cargo.toml: rust-version) and a C
linker. Debian 12's own rustc (1.63) is too old; install a current
toolchain with rustup, as the user who builds:

  apt-get install -y curl gcc
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "\$HOME/.cargo/env"

then run $0 again.
EOF
  exit 1
}

# Exits with a clear message unless cargo, rustc >= rust-version and cc
# are there.
check_toolchain() {
  rust_version=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
  # rustup installs into ~/.cargo/bin, which a fresh shell may not have
  # on PATH yet.
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
  fi
  command -v cargo >/dev/null || no_toolchain "cargo is not installed (or not on PATH)"
  command -v rustc >/dev/null || no_toolchain "rustc is not installed (or not on PATH)"
  local have
  have=$(rustc --version | awk '{print $2}')
  local want_major want_minor have_major have_minor
  IFS=. read -r want_major want_minor _ <<<"$rust_version"
  IFS=. read -r have_major have_minor _ <<<"${have%%-*}"
  if [ "$have_major" -lt "$want_major" ] ||
     { [ "$have_major" -eq "$want_major" ] && [ "$have_minor" -lt "$want_minor" ]; }; then
    no_toolchain "rustc $have ($(command -v rustc)) is older than $rust_version"
  fi
  command -v cc >/dev/null || no_toolchain "no C linker (cc): apt-get install -y gcc"
}

# Builds the release binary, showing cargo's progress; sets $bin.
build_release() {
  check_toolchain
  echo "== building layerfs with $(rustc --version | awk '{print $1, $2}')" \
       "(the first build compiles the dependencies: about 1-2 minutes)"
  cargo build --release
  # Wherever CARGO_TARGET_DIR or a cargo config puts it.
  local target
  target=$(cargo metadata --no-deps --format-version 1 |
           sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin=${target:-$PWD/target}/release/layerfs
}
