#!/usr/bin/env bash
# The whole test suite: installs the Debian packages the tests start for real,
# then runs every test of the workspace (unit, golden end to end, bad input,
# daemon life cycle, a real Prometheus scraping the agent).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/install-deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
profile=default
[[ -n "${CI:-}" ]] && profile=ci
cargo nextest run --workspace --locked --profile "$profile"
