#!/usr/bin/env bash
# Builds the iotgw binary for the EC2 architectures into dist/, with a
# sha256 file beside each. The Pulumi program uploads the one matching the
# instance type (dist/iotgw-linux-<arch>).
#
#   scripts/build.sh                 # VERSION from git describe
#   VERSION=v1.2.3 scripts/build.sh
#   ARCHES="arm64" scripts/build.sh  # only one architecture
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ARCHES=${ARCHES:-"amd64 arm64"}
OUT=${OUT:-dist}

mkdir -p "$OUT"
for arch in $ARCHES; do
	bin="$OUT/iotgw-linux-$arch"
	echo "building $bin ($VERSION)"
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION" -o "$bin.tmp" ./app/cmd/iotgw
	mv -f "$bin.tmp" "$bin"
	(cd "$OUT" && sha256sum "iotgw-linux-$arch" >"iotgw-linux-$arch.sha256")
	cat "$OUT/iotgw-linux-$arch.sha256"
done
