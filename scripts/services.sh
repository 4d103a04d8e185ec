#!/usr/bin/env bash
# Real services for local runs and tests.
#
#   scripts/services.sh install        mosquitto and curl (apt, when missing) and influxd 1.8.10
#                                      (go install, cached in .tools/bin)
#   scripts/services.sh influxd DIR    start influxd with throw-away data in DIR on a free
#                                      loopback port; prints "PID PORT" once it takes writes
#
# Hosts run InfluxDB 2.x. InfluxDB 2 needs Rust to build from source, so local runs and
# tests use InfluxDB OSS 1.8.10 with flux-enabled = true: it serves the same /api/v2/write,
# /api/v2/query and /health (bucket "db/rp", empty token).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"
influxd_version=v1.8.10
# IOTGW_INFLUXD names an influxd binary to use instead of the one in .tools/bin.
influxd_bin=${IOTGW_INFLUXD:-$tools/influxd}

install_packages() {
	local need=()
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
	command -v curl >/dev/null 2>&1 || need+=(curl)
	[ ${#need[@]} -gt 0 ] || return 0
	echo "installing ${need[*]} (apt)" >&2
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	# The tests start their own brokers; the packaged service is not needed.
	$sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

install_influxd() {
	if [ -x "$influxd_bin" ]; then
		return
	fi
	echo "building influxd $influxd_version from the Go module proxy (about two minutes)" >&2
	mkdir -p "$tools"
	GOBIN="$tools" GOFLAGS=-mod=mod go install "github.com/influxdata/influxdb/cmd/influxd@$influxd_version"
}

# The tests' own starter (app/internal/testsvc): the same configuration, and a
# readiness check that waits for the meta store (/health answers before it is open).
start_influxd() {
	local dir=$1
	install_packages
	install_influxd
	(cd "$root" && go run ./app/internal/testsvc/influxd -bin "$influxd_bin" "$dir")
}

case "${1:-}" in
install)
	install_packages
	install_influxd
	;;
influxd)
	start_influxd "${2:?usage: services.sh influxd DIR}"
	;;
*)
	echo "usage: $0 install | influxd DIR" >&2
	exit 2
	;;
esac
