#!/usr/bin/env bash
# Backlog-drain benchmark: the gateway empties a backlog of QoS 1 readings
# that mosquitto holds for it into InfluxDB (app/e2e BenchmarkBacklogDrain),
# with max_inflight_messages 1000 and with mosquitto's default of 20.
# Reports msg/s, the gateway's peak RSS, and the CPU time per message of the
# gateway, mosquitto and influxd (they share the machine's cores).
#
# Usage: scripts/bench-drain.sh [-p] [-l]
#   -p  also save a CPU profile of the gateway during the drain and print
#       its top 10 (profiling costs some throughput: compare without -p)
#   -l  also run the latency-under-load probe (BenchmarkLatencyUnderLoad)
#
# Environment:
#   IOTGW_BENCH_BACKLOG   readings in the backlog (default 200000; the
#                         inflight-20 variant uses a quarter of it)
#   IOTGW_BENCH_SPOOL_TMPFS=1
#                         the gateway's spool on /dev/shm (tmpfs: no fsync
#                         cost), to compare with the disk-backed default
#   IOTGW_BENCH_CONNECTIONS=N
#                         N > 1: the gateway drains through N broker
#                         connections in one $share/iotgw/ subscription
#   IOTGW_BENCH_DEVICES=N[,N...]
#                         fleet size: one drain per count (devices-N) over N
#                         distinct topics instead of the default run, on a
#                         gateway that has heard from every device once (the
#                         warm-up also creates InfluxDB's series), e.g.
#                         100,10000,100000; 1000000 needs ~2 GB for influxd
#   IOTGW_BENCH_GATEWAY_ENV
#                         comma list of K=V for the gateway process only
#                         (e.g. GOGC=50)
#   IOTGW_INFLUXD         influxd 1.8 binary (default .tools/bin/influxd)
#   IOTGW_MOSQUITTO       mosquitto binary (default: found on PATH/sbin)
#   OUT                   where profiles go (default ./bench-out)
set -euo pipefail

cd "$(dirname "$0")/.."
profile=0
latency=0
while getopts "pl" opt; do
	case "$opt" in
	p) profile=1 ;;
	l) latency=1 ;;
	*)
		sed -n '2,33p' "$0"
		exit 2
		;;
	esac
done

if [[ -z "${IOTGW_INFLUXD:-}" ]]; then
	for c in .tools/bin/influxd ../main/.tools/bin/influxd; do
		if [[ -x "$c" ]]; then
			IOTGW_INFLUXD="$(cd "$(dirname "$c")" && pwd)/influxd"
			break
		fi
	done
fi
export IOTGW_INFLUXD
out="${OUT:-bench-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

pattern='BacklogDrain'
if [[ $latency == 1 ]]; then
	pattern='BacklogDrain|LatencyUnderLoad'
fi
if [[ $profile == 1 ]]; then
	export IOTGW_BENCH_CPUPROFILE="$out/drain.cpu"
fi

echo "backlog ${IOTGW_BENCH_BACKLOG:-200000}, connections ${IOTGW_BENCH_CONNECTIONS:-1}," \
	"spool on $([[ ${IOTGW_BENCH_SPOOL_TMPFS:-} == 1 ]] && echo tmpfs || echo disk)," \
	"devices ${IOTGW_BENCH_DEVICES:-10}, influxd ${IOTGW_INFLUXD:-?}, $(nproc) cores"
go test ./app/e2e -run '^$' -bench "$pattern" -benchtime 1x -count 1 -timeout 30m -v |
	tee "$out/bench.txt" |
	grep -E '^(Benchmark|    bench_test)|ok|FAIL' || true

if [[ $profile == 1 ]]; then
	for p in "$out"/drain.cpu.*; do
		[[ -f "$p" ]] || continue
		echo
		echo "== CPU profile $p (top 10, flat) =="
		go tool pprof -top -nodecount 10 "$p" 2>/dev/null | sed -n '1,20p'
		echo "== by package and function, cumulative =="
		go tool pprof -top -cum -nodecount 15 "$p" 2>/dev/null | tail -n 15
	done
fi
