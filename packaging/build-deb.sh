#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (metadata: [package.metadata.deb]
# in agent/Cargo.toml), installing the pinned cargo-deb first when it is
# missing or another version:
#
#   packaging/build-deb.sh                  release build, then target/debian/hostwatch_<version>-1_<arch>.deb
#   packaging/build-deb.sh --install-tool   only install cargo-deb (install-deps.sh --test calls this)
#   packaging/build-deb.sh --binary PATH    package PATH as /usr/bin/hostwatch instead of building
#                                           (tests/deb.rs packages the binary its test build made,
#                                           sparing the suite a release build)
#
# Other arguments go to `cargo deb` (e.g. --output DIR, --fast, --deb-revision 2).
# Prints the path of the package it built on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# 3.8.0 needs Rust 1.85 and builds with the workspace's 1.95.
CARGO_DEB_VERSION=3.8.0

install_tool() {
    if [[ "$(cargo deb --version 2>/dev/null)" != *" $CARGO_DEB_VERSION"* ]]; then
        cargo install --locked --quiet cargo-deb --version "=$CARGO_DEB_VERSION"
    fi
}

binary=""
args=()
while (($#)); do
    case "$1" in
    --install-tool)
        install_tool
        exit 0
        ;;
    --binary)
        binary="$(realpath "${2:?--binary needs a path}")"
        shift 2
        ;;
    *)
        args+=("$1")
        shift
        ;;
    esac
done

install_tool
# target/debian unless the arguments name another --output.
output=(--output "${CARGO_TARGET_DIR:-$PWD/target}/debian")
for arg in "${args[@]}"; do
    if [[ "$arg" == --output* ]]; then output=(); fi
done

# cargo deb prints the package's path on stdout, its progress on stderr.
if [[ -n "$binary" ]]; then
    # cargo-deb takes the binary from <target dir>/release/hostwatch: stage
    # PATH there, in a target directory of its own.
    staging="$(mktemp -d)"
    trap 'rm -rf "$staging"' EXIT
    mkdir "$staging/release"
    cp "$binary" "$staging/release/hostwatch"
    built="$(CARGO_TARGET_DIR="$staging" cargo deb -p hostwatch --no-build "${output[@]}" "${args[@]}")"
else
    built="$(cargo deb -p hostwatch --locked "${output[@]}" "${args[@]}")"
fi
echo "${built##*$'\n'}"
