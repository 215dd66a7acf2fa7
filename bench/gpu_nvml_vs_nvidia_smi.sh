#!/usr/bin/env bash
# GPU collection cost: hostwatch's gpu collector (NVML in-process, one worker
# thread per GPU) against polling `nvidia-smi --query-gpu` once a second, the
# way exporters built on nvidia-smi do. Also prints hostwatch's figures next
# to nvidia-smi's for the same moment, to check the NVML path against it.
#
# NOT RUN YET: written on a machine without an NVIDIA GPU. Run it on a GPU
# host and record the output in bench/RESULTS.md:
#
#   cargo build --release && bench/gpu_nvml_vs_nvidia_smi.sh
#
# Needs: nvidia-smi, curl, awk; no root. Optional load during the comparison:
# LOAD=torch runs a large matrix multiply on every GPU with the host's
# python3 and PyTorch (skipped with a note when either is missing), so the
# figures are checked under load, not only idle.
#
# Measured, each over DURATION seconds (default 60) of one poll per second:
#   baseline   hostwatch with every collector disabled (its fixed cost)
#   hostwatch  hostwatch with only the gpu collector, interval 1s
#   smi-loop   one long-lived `nvidia-smi --query-gpu=... -l 1` process
#   smi-exec   a new `nvidia-smi --query-gpu=...` process every second
# CPU is user + system time from /proc (for smi-exec, of the nvidia-smi
# children, which their parent shell waits for). The result is CPU
# milliseconds per GPU per second of polling; hostwatch's is shown both whole
# and less the baseline. hostwatch's own wall time per collection
# (hostwatch_collector_duration_seconds) includes the two 20 ms PCIe samples
# NVML takes per GPU, in parallel across GPUs; nvidia-smi's query below does
# not read PCIe throughput, so hostwatch does somewhat more work per poll.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
HOSTWATCH=${HOSTWATCH:-target/release/hostwatch}
LOAD=${LOAD:-}
FIELDS=index,uuid,name,driver_version,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,enforced.power.limit,temperature.gpu,clocks.sm,clocks.mem,clocks_throttle_reasons.active,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total

die() { echo "error: $*" >&2; exit 1; }
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this benchmark needs an NVIDIA GPU host"
command -v curl >/dev/null || die "curl not found"
[[ -x $HOSTWATCH ]] || die "$HOSTWATCH missing: run cargo build --release first"

GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
((GPUS > 0)) || die "nvidia-smi lists no GPU"
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# utime + stime (+ cutime + cstime with $2 = children) of $1, in seconds.
cpu_seconds() {
    awk -v ticks="$TICKS" -v children="${2:-}" '{
        sub(/^.*\) /, "")   # the command name may contain spaces
        # Fields after the name start at state (field 3): utime is 14, stime 15, cutime 16, cstime 17.
        t = $12 + $13
        if (children != "") t += $14 + $15
        printf "%.4f\n", t / ticks
    }' "/proc/$1/stat"
}

# A config that disables every collector but those named.
config_with() {
    local keep=" $* "
    "$HOSTWATCH" collectors --config /dev/null 2>/dev/null | awk 'NR > 1 { print $1 }' | while read -r name; do
        if [[ $keep == *" $name "* ]]; then
            printf '[collectors.%s]\nenabled = true\ninterval = "1s"\n' "$name"
        else
            printf '[collectors.%s]\nenabled = false\n' "$name"
        fi
    done
}

# Starts hostwatch with only the named collectors on a free loopback port;
# sets HW_PID and HW_ADDR.
start_hostwatch() {
    config_with "$@" >"$WORK/hostwatch.toml"
    "$HOSTWATCH" run --config "$WORK/hostwatch.toml" --listen 127.0.0.1:0 --log-format json 2>"$WORK/hostwatch.log" &
    HW_PID=$!
    PIDS+=("$HW_PID")
    HW_ADDR=
    for _ in $(seq 100); do
        kill -0 "$HW_PID" 2>/dev/null || die "hostwatch exited: $(cat "$WORK/hostwatch.log")"
        HW_ADDR=$(grep -o '"listen":"[^"]*"' "$WORK/hostwatch.log" | head -1 | cut -d'"' -f4 || true)
        [[ -n $HW_ADDR ]] && curl -sf "http://$HW_ADDR/readyz" >/dev/null && return
        sleep 0.1
    done
    die "hostwatch did not become ready: $(cat "$WORK/hostwatch.log")"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Each measurement sets RESULT to CPU seconds over DURATION. They run in this
# shell, not in $(...), so the exit trap knows every process they start.

# hostwatch collecting on its own (no scrape during the measured span).
measure_hostwatch() {
    start_hostwatch "$@"
    sleep 3 # first collections, thread start-up
    local before after
    before=$(cpu_seconds "$HW_PID")
    sleep "$DURATION"
    after=$(cpu_seconds "$HW_PID")
    if [[ " $* " == *" gpu "* ]]; then
        curl -sf "http://$HW_ADDR/metrics" >"$WORK/metrics.txt"
    fi
    stop "$HW_PID"
    RESULT=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.4f", a - b }')
}

measure_smi_loop() {
    nvidia-smi --query-gpu="$FIELDS" --format=csv,noheader,nounits -l 1 >/dev/null &
    local pid=$!
    PIDS+=("$pid")
    sleep 3
    local before after
    before=$(cpu_seconds "$pid")
    sleep "$DURATION"
    after=$(cpu_seconds "$pid")
    stop "$pid"
    RESULT=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.4f", a - b }')
}

measure_smi_exec() {
    # The loop's shell waits for each nvidia-smi, so their CPU time lands in
    # its cutime/cstime; it reports that just before it ends.
    bash -c '
        end=$((SECONDS + '"$DURATION"'))
        while ((SECONDS < end)); do
            nvidia-smi --query-gpu='"$FIELDS"' --format=csv,noheader,nounits >/dev/null
            sleep 1
        done
        cat /proc/$$/stat
    ' >"$WORK/exec.stat"
    RESULT=$(awk -v ticks="$TICKS" '{ sub(/^.*\) /, ""); printf "%.4f", ($14 + $15) / ticks }' "$WORK/exec.stat")
}

per_gpu_ms() { awk -v cpu="$1" -v d="$DURATION" -v g="$GPUS" 'BEGIN { printf "%.3f", cpu / d / g * 1000 }'; }

echo "# GPU collection cost: hostwatch (NVML) against nvidia-smi --query-gpu"
echo
echo "Run: $(date -u +%F) on $(hostname), $(nproc) CPUs, $GPUS GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | awk '{$1=$1; print}' | paste -sd ';'), driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1), $DURATION s per scenario, hostwatch $("$HOSTWATCH" --version)"
echo

measure_hostwatch none
baseline=$RESULT
measure_hostwatch gpu
hostwatch=$RESULT
measure_smi_loop
loop=$RESULT
measure_smi_exec
exec_cpu=$RESULT
net=$(awk -v a="$hostwatch" -v b="$baseline" 'BEGIN { printf "%.4f", a - b }')

echo "| poller | CPU s over ${DURATION} s | CPU ms per GPU per second |"
echo "|---|---|---|"
echo "| hostwatch, no collector (baseline) | $baseline | $(per_gpu_ms "$baseline") |"
echo "| hostwatch, gpu collector | $hostwatch | $(per_gpu_ms "$hostwatch") |"
echo "| hostwatch, gpu collector less baseline | $net | $(per_gpu_ms "$net") |"
echo "| nvidia-smi -l 1 (one process) | $loop | $(per_gpu_ms "$loop") |"
echo "| nvidia-smi every second (new process) | $exec_cpu | $(per_gpu_ms "$exec_cpu") |"
echo
duration=$(awk '/^hostwatch_collector_duration_seconds\{collector="gpu"\}/ {print $2}' "$WORK/metrics.txt")
echo "hostwatch's last gpu collection took ${duration:-?} s of wall time (all GPUs, in parallel)."
grep -E '^hostwatch_(collector_up|collector_errors_total)\{collector="gpu"' "$WORK/metrics.txt" || true
grep -E '^hostwatch_gpu_state\{.*\} 1' "$WORK/metrics.txt" || true
echo

# --- figures side by side --------------------------------------------------
if [[ $LOAD == torch ]]; then
    if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        python3 - <<'EOF' &
import time, torch
streams = []
for i in range(torch.cuda.device_count()):
    a = torch.randn(8192, 8192, device=f"cuda:{i}")
    streams.append((a, a.clone()))
end = time.time() + 120
while time.time() < end:
    for a, b in streams:
        a.copy_(a @ b / 8192)
    torch.cuda.synchronize()
EOF
        PIDS+=($!)
        echo "Load: an 8192x8192 float32 matrix multiply on every GPU (PyTorch $(python3 -c 'import torch; print(torch.__version__)'))."
        sleep 15
    else
        echo "Load: none (LOAD=torch asked, but python3 with a CUDA PyTorch is missing)."
    fi
else
    echo "Load: none (idle GPUs; LOAD=torch adds a matrix multiply)."
fi
echo
start_hostwatch gpu
sleep 3
curl -sf "http://$HW_ADDR/metrics" >"$WORK/compare.txt"
nvidia-smi --query-gpu="$FIELDS" --format=csv,noheader,nounits >"$WORK/smi.csv"
stop "$HW_PID"

value() { # family, gpu index, extra label matcher
    grep "^$1{gpu=\"$2\"" "$WORK/compare.txt" | grep -- "${3:-}" | head -1 | awk '{print $2}'
}
echo "| gpu | figure | hostwatch | nvidia-smi |"
echo "|---|---|---|---|"
while IFS=', ' read -r index uuid rest; do
    IFS=',' read -r -a f <<<"$(echo "$rest" | sed 's/, /,/g')"
    # f: name driver util.gpu util.mem mem.used mem.total power.draw power.limit temp clocks.sm clocks.mem throttle ecc.c ecc.u
    mib() { awk -v v="$1" 'BEGIN { printf "%.0f MiB", v / 1048576 }'; }
    pct() { awk -v v="$1" 'BEGIN { printf "%.0f %%", v * 100 }'; }
    mhz() { awk -v v="$1" 'BEGIN { printf "%.0f MHz", v / 1e6 }'; }
    echo "| $index | uuid | $(grep -o "hostwatch_gpu_info{gpu=\"$index\",uuid=\"[^\"]*\"" "$WORK/compare.txt" | sed 's/.*uuid="//; s/"$//') | $uuid |"
    echo "| $index | utilization | $(pct "$(value hostwatch_gpu_utilization_ratio "$index")") | ${f[2]} % |"
    echo "| $index | memory utilization | $(pct "$(value hostwatch_gpu_memory_utilization_ratio "$index")") | ${f[3]} % |"
    echo "| $index | memory used | $(mib "$(value hostwatch_gpu_memory_used_bytes "$index")") | ${f[4]} MiB |"
    echo "| $index | memory total | $(mib "$(value hostwatch_gpu_memory_total_bytes "$index")") | ${f[5]} MiB |"
    echo "| $index | power draw | $(value hostwatch_gpu_power_draw_watts "$index") W | ${f[6]} W |"
    echo "| $index | power limit | $(value hostwatch_gpu_power_limit_watts "$index") W | ${f[7]} W |"
    echo "| $index | temperature | $(value hostwatch_gpu_temperature_celsius "$index") °C | ${f[8]} °C |"
    echo "| $index | SM clock | $(mhz "$(value hostwatch_gpu_clock_hertz "$index" 'clock="sm"')") | ${f[9]} MHz |"
    echo "| $index | memory clock | $(mhz "$(value hostwatch_gpu_clock_hertz "$index" 'clock="memory"')") | ${f[10]} MHz |"
    echo "| $index | throttle reasons | $(grep "^hostwatch_gpu_clock_throttle_reasons{gpu=\"$index\"" "$WORK/compare.txt" | awk '$2 == 1' | sed 's/.*reason="//; s/".*//' | paste -sd ' ' | sed 's/^$/none/') | ${f[11]} |"
    echo "| $index | ECC corrected, uncorrected | $(value hostwatch_gpu_ecc_errors_total "$index" 'type="corrected"'), $(value hostwatch_gpu_ecc_errors_total "$index" 'type="uncorrected"') | ${f[12]}, ${f[13]} |"
    echo "| $index | SM active (GPM) | $(value hostwatch_gpu_sm_active_ratio "$index") (supported: $(value hostwatch_gpu_gpm_supported "$index")) | n/a |"
    echo "| $index | PCIe rx, tx | $(value hostwatch_gpu_pcie_throughput_bytes_per_second "$index" 'direction="receive"'), $(value hostwatch_gpu_pcie_throughput_bytes_per_second "$index" 'direction="transmit"') B/s | see nvidia-smi dmon -s t |"
done <"$WORK/smi.csv"
echo
echo "The two reads are a second or two apart: utilization, power and clocks move in between, under load most of all."
