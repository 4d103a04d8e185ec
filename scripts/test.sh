#!/usr/bin/env bash
# The whole test suite against real services: mosquitto and InfluxDB 1.8
# (v2 API) processes started by the tests themselves on free ports.
# Installs what is missing first (mosquitto from apt, influxd with go install).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/services.sh install
export IOTGW_INFLUXD="$root/.tools/bin/influxd"

echo "== go vet"
go vet ./...

echo "== go test (race detector on the gateway code)"
# The Pulumi program is tested without -race: the pulumi-aws SDK is large
# and its tests gain nothing from it.
mapfile -t app_pkgs < <(go list ./... | grep -v -e '/infra' -e '/provision')
mapfile -t other_pkgs < <(go list ./... | grep -e '/infra' -e '/provision' || true)
go test -race -count=1 -timeout 30m "${app_pkgs[@]}"
if [ ${#other_pkgs[@]} -gt 0 ]; then
	go test -count=1 -timeout 20m "${other_pkgs[@]}"
fi
