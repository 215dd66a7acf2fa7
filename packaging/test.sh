#!/usr/bin/env bash
# The whole test suite: installs the Debian packages the tests start for real,
# mounts tracefs when missing, then runs every test of the workspace (unit,
# golden end to end, bad input, daemon life cycle, a real Prometheus scraping
# the agent, smaps storms under eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/install-deps.sh --test
# The stalls collector's classic tracepoints are found through tracefs, which
# minimal VMs (the dev VM among them) boot without; systemd hosts mount it.
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/kernel/tracing && [[ ! -d /sys/kernel/debug/tracing/events ]]; then
    mount -t tracefs nodev /sys/kernel/tracing
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
profile=default
[[ -n "${CI:-}" ]] && profile=ci
cargo nextest run --workspace --locked --profile "$profile"
