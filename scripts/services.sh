#!/usr/bin/env bash
# Real services for local runs and tests.
#
#   scripts/services.sh install        mosquitto and curl (apt, when missing) and influxd 1.8.10
#                                      (go install, cached in .tools/bin)
#   scripts/services.sh influxd DIR    start influxd with throw-away data in DIR on a free
#                                      loopback port; prints "PID PORT" once /health is OK
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

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

start_influxd() {
	local dir=$1
	install_packages
	install_influxd
	mkdir -p "$dir"
	local port rpc
	port=$(free_port)
	rpc=$(free_port)
	cat >"$dir/influxd.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$port"
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
[logging]
  level = "warn"
CONF
	"$influxd_bin" -config "$dir/influxd.conf" >"$dir/influxd.log" 2>&1 &
	local pid=$!
	for _ in $(seq 1 600); do
		if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
			curl -fsS -XPOST "http://127.0.0.1:$port/query" --data-urlencode "q=CREATE DATABASE db WITH NAME rp" >/dev/null
			echo "$pid $port"
			return
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$dir/influxd.log" >&2
			echo "influxd exited" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "influxd did not become healthy" >&2
	kill "$pid"
	exit 1
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
