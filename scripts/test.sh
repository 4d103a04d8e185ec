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
# Without -race: the Pulumi program (the pulumi-aws SDK is large and its
# tests gain nothing from it) and app/e2e (it runs the iotgw binary and the
# services as separate processes; the detector would only slow its
# publisher down).
mapfile -t race_pkgs < <(go list ./... | grep -v -e '/infra' -e '/provision' -e '/app/e2e')
mapfile -t other_pkgs < <(go list ./... | grep -e '/infra' -e '/provision' -e '/app/e2e')
go test -race -count=1 -timeout 30m "${race_pkgs[@]}"
echo "== go test (end to end, infra, provisioning)"
go test -count=1 -timeout 40m "${other_pkgs[@]}"
