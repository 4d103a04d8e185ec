#!/usr/bin/env bash
# The local demo pipeline: simulated sensors → MQTT → gateway → InfluxDB.
# Uses the InfluxDB named by IOTGW_INFLUX_URL when set; otherwise starts a
# throw-away local one (built on first use) and stops it afterwards.
# Extra arguments go to `iotgw demo` (e.g. --duration 10s).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -z "${IOTGW_INFLUX_URL:-}" ]; then
	data=$(mktemp -d)
	read -r pid port < <(scripts/services.sh influxd "$data")
	trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
	export IOTGW_INFLUX_URL="http://127.0.0.1:$port" IOTGW_INFLUX_TOKEN="" IOTGW_INFLUX_BUCKET="db/rp"
	echo "local InfluxDB 1.8 (v2 API) at $IOTGW_INFLUX_URL, bucket db/rp"
fi
go run ./app/cmd/iotgw demo "$@"
