#!/usr/bin/env bash
# Installs what building hostwatch needs, and with --test what its test suite
# and benchmarks start for real (Prometheus server and promtool, Alertmanager,
# node_exporter, iproute2, ethtool, iperf3, Python with and without symbols,
# py-spy; and in a Python virtual environment the S3 server moto and the
# clients boto3 and aws-cli) and the Debian packaging tools (dpkg-dev, the
# pinned cargo-deb). Debian 12 / Ubuntu 22.04 or newer.
# Idempotent and quick when everything is present. Packaged services are not
# started by the install (a policy-rc.d guard), so a developer's machine does
# not gain a Prometheus on :9090.
set -euo pipefail

packages=(build-essential pkg-config ca-certificates curl)
if [[ "${1:-}" == "--test" ]]; then
    packages+=(prometheus prometheus-node-exporter iproute2 ethtool iperf3 python3 python3-venv procps strace systemd openssl curl
        clang-19 llvm-19 libbpf-dev bpftool make python3-psutil util-linux
        prometheus-alertmanager dpkg-dev
        # The GIL tests: python3.11-dbg brings python3.11d (a full symbol
        # table) and the build-id debug file of the stripped python3.11, and
        # pins python3.11 to its own version so the build-ids match.
        python3.11 python3.11-dbg python3-pip)
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

# py-spy (PyPI) for bench/gil_overhead.py: a standalone binary in a wheel.
if [[ "${1:-}" == "--test" ]] && ! command -v py-spy >/dev/null; then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo /usr/bin/python3 -m pip install -q --break-system-packages --root-user-action=ignore py-spy==0.4.3
fi

# The Debian package's builder (tests/deb.rs runs packaging/build-deb.sh),
# pinned there; a cargo install, so after Rust.
if [[ "${1:-}" == "--test" ]]; then
    "$(dirname "$0")/build-deb.sh" --install-tool
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
