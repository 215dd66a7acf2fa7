#!/usr/bin/env bash
# Installs what building hostwatch needs, and with --test what its test suite
# and benchmarks start for real (Prometheus server and promtool, node_exporter,
# iproute2, ethtool, iperf3, Python; and in a Python virtual environment the S3
# server moto and the clients boto3 and aws-cli). Debian 12 / Ubuntu 22.04 or newer.
# Idempotent and quick when everything is present. Packaged services are not
# started by the install (a policy-rc.d guard), so a developer's machine does
# not gain a Prometheus on :9090.
set -euo pipefail

packages=(build-essential pkg-config ca-certificates curl)
if [[ "${1:-}" == "--test" ]]; then
    packages+=(prometheus prometheus-node-exporter iproute2 ethtool iperf3 python3 python3-venv procps strace
        clang-19 llvm-19 libbpf-dev bpftool make)
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install as root: apt-get install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$guard" >/dev/null
        $sudo chmod +x "$guard"
        trap '$sudo rm -f "$guard"' EXIT
    fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: the workspace needs 1.95 or newer, which Debian does not ship; rustup
# installs it for the current user when cargo is absent.
if ! command -v cargo >/dev/null && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95
fi

# The S3 proxy's tests and benchmark: a real S3 server (moto) and the clients
# people use (boto3, aws-cli), pinned, in a virtual environment of their own
# (Debian's Python refuses pip installs into the system, PEP 668). The tests
# find it at $HOSTWATCH_TEST_VENV, by default ~/.cache/hostwatch-test-venv.
if [[ "${1:-}" == "--test" ]]; then
    venv="${HOSTWATCH_TEST_VENV:-$HOME/.cache/hostwatch-test-venv}"
    wanted=("moto[server]==5.2.1" "boto3==1.43.11" "awscli==1.45.11")
    if ! "$venv/bin/python" -c 'import moto, boto3, awscli' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${wanted[@]}"
    fi
fi
