#!/usr/bin/env bash
# The local demo pipeline: simulated sensors → MQTT → gateway → InfluxDB.
# Uses the InfluxDB named by IOTGW_INFLUX_URL when set; otherwise starts a
# throw-away local one (built on first use, or IOTGW_INFLUXD) and stops it
# afterwards. Extra arguments go to `iotgw demo` (e.g. --duration 10s).
# Exits 0 when every well-formed reading reached InfluxDB, non-zero otherwise.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cleanup() {
	# influxd was started by services.sh, so it is not this shell's child
	# and `wait` cannot reap it: wait for it to be gone instead.
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	rm -rf "$data"
}

if [ -z "${IOTGW_INFLUX_URL:-}" ]; then
	data=$(mktemp -d)
	read -r pid port < <(scripts/services.sh influxd "$data")
	trap cleanup EXIT
	export IOTGW_INFLUX_URL="http://127.0.0.1:$port" IOTGW_INFLUX_TOKEN="" IOTGW_INFLUX_BUCKET="db/rp"
	echo "local InfluxDB 1.8 (v2 API) at $IOTGW_INFLUX_URL, bucket db/rp"
fi
go run ./app/cmd/iotgw demo "$@"
