#!/usr/bin/env bash
# Builds the iotgw binary for the EC2 architectures into dist/, with a
# sha256 file and an Ed25519 signature (.sig, raw 64 bytes) beside each, and
# the signing key's public half as dist/iotgw-signing.pub. The Pulumi program
# uploads the one matching the instance type (dist/iotgw-linux-<arch>) and
# the host installs it only if the signature verifies with the stack's
# signingPublicKey (provision/signing has the format).
#
# Beside them, the operators' binary iotgw-admin (device add; app/cmd/
# iotgw-admin) as dist/iotgw-admin-linux-<arch> with a sha256 file. It is
# not signed: it is never a host artifact, and without a .sig the Pulumi
# program refuses it as artifactPath.
#
#   scripts/build.sh                 # VERSION from git describe
#   VERSION=v1.2.3 scripts/build.sh
#   ARCHES="arm64" scripts/build.sh  # only one architecture
#
# The signing key (PKCS #8 PEM, e.g. `openssl genpkey -algorithm ed25519`):
#   IOTGW_SIGNING_KEY       the PEM text itself (CI: a repository secret)
#   IOTGW_SIGNING_KEY_FILE  a file holding it
# Neither set: a development key, made on first use in
# ${XDG_CONFIG_HOME:-~/.config}/iotgw/dev-signing.key, is used, with a warning.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ARCHES=${ARCHES:-"amd64 arm64"}
OUT=${OUT:-dist}

mkdir -p "$OUT"
bins=()
sign=(go run ./provision/cmd/iotgw-sign)
if [[ -n ${IOTGW_SIGNING_KEY:-} ]]; then
	key_args=()
elif [[ -n ${IOTGW_SIGNING_KEY_FILE:-} ]]; then
	key_args=(-key "$IOTGW_SIGNING_KEY_FILE")
else
	dev_key=${XDG_CONFIG_HOME:-$HOME/.config}/iotgw/dev-signing.key
	mkdir -p "$(dirname "$dev_key")"
	"${sign[@]}" -genkey "$dev_key"
	echo "warning: signing with the development key $dev_key; set IOTGW_SIGNING_KEY or IOTGW_SIGNING_KEY_FILE for a release" >&2
	key_args=(-key "$dev_key")
fi
for arch in $ARCHES; do
	bin="$OUT/iotgw-linux-$arch"
	echo "building $bin ($VERSION)"
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION" -o "$bin.tmp" ./app/cmd/iotgw
	mv -f "$bin.tmp" "$bin"
	(cd "$OUT" && sha256sum "iotgw-linux-$arch" >"iotgw-linux-$arch.sha256")
	cat "$OUT/iotgw-linux-$arch.sha256"
	bins+=("$bin")

	admin="$OUT/iotgw-admin-linux-$arch"
	echo "building $admin ($VERSION)"
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION" -o "$admin.tmp" ./app/cmd/iotgw-admin
	mv -f "$admin.tmp" "$admin"
	(cd "$OUT" && sha256sum "iotgw-admin-linux-$arch" >"iotgw-admin-linux-$arch.sha256")
	cat "$OUT/iotgw-admin-linux-$arch.sha256"
done
"${sign[@]}" ${key_args[@]+"${key_args[@]}"} -pub "$OUT/iotgw-signing.pub" "${bins[@]}"
echo "signed ${bins[*]} with the key of $OUT/iotgw-signing.pub"
