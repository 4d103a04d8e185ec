#!/bin/bash
# iotgw-bootstrap: the first thing a host runs (cloud-init), and what each
# rollout runs. It fetches the gateway binary named in SSM, checks its sha256
# and its Ed25519 signature with the key from the user-data, and only then
# runs it: `iotgw provision-files` writes the setup script, units and
# configuration for this host's parameters (an SSM parameter), and the setup
# script installs them and the binary.
#
# Tests set ROOT (a directory standing in for /), IOTGW_ARTIFACT_FILE,
# IOTGW_ARTIFACT_SHA256, IOTGW_ARTIFACT_SIG and IOTGW_HOST_PARAMS_FILE
# instead of reading SSM and S3.
set -euo pipefail
umask 022

ROOT=${ROOT:-}
log() { printf 'iotgw-bootstrap: %s\n' "$*"; }
die() {
	log "FAILURE: $*"
	if [[ -z $ROOT && -w /dev/console ]]; then printf 'iotgw-bootstrap: FAILURE: %s\n' "$*" >/dev/console || true; fi
	exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root"

# Hosts made before the bootstrap have only host.env; it names the same
# STACK, AWS_REGION and PARAM_PATH.
ENV_FILE=$ROOT/etc/iotgw/bootstrap.env
[[ -f $ENV_FILE ]] || ENV_FILE=$ROOT/etc/iotgw/host.env
# shellcheck source=/dev/null
. "$ENV_FILE"
HOST_PARAMS=${HOST_PARAMS:-$PARAM_PATH/host-params}
PUB=$ROOT/etc/iotgw/signing.pub
[[ -s $PUB ]] || die "no signing key $PUB"

mkdir -p "$ROOT/run/lock"
exec 8>>"$ROOT/run/lock/iotgw-bootstrap.lock"
flock 8

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n ${IOTGW_ARTIFACT_FILE:-} ]]; then
	cp "$IOTGW_ARTIFACT_FILE" "$work/iotgw"
	sha=$IOTGW_ARTIFACT_SHA256 sig=${IOTGW_ARTIFACT_SIG:-}
else
	ref=$(aws ssm get-parameter --region "$AWS_REGION" --name "$PARAM_PATH/artifact" \
		--query Parameter.Value --output text) || die "cannot read $PARAM_PATH/artifact"
	read -r uri sha sig <<<"$ref"
	if [[ -n ${IOTGW_EXPECT_SHA256:-} && $sha != "$IOTGW_EXPECT_SHA256" ]]; then
		die "$PARAM_PATH/artifact names $sha, the rollout expects $IOTGW_EXPECT_SHA256"
	fi
	aws s3 cp --region "$AWS_REGION" --only-show-errors "$uri" "$work/iotgw" || die "cannot fetch $uri"
fi
got=$(sha256sum "$work/iotgw" | awk '{ print $1 }')
[[ $got == "$sha" ]] || die "gateway artifact sha256 is $got, want $sha"
if ! base64 -d <<<"$sig" >"$work/sig" 2>/dev/null || [[ $(stat -c %s "$work/sig") != 64 ]] ||
	! openssl pkeyutl -verify -pubin -inkey "$PUB" -rawin -in "$work/iotgw" -sigfile "$work/sig" >/dev/null 2>&1; then
	die "gateway artifact signature does not verify with $PUB"
fi
chmod 0755 "$work/iotgw"

if [[ -n ${IOTGW_HOST_PARAMS_FILE:-} ]]; then
	cp "$IOTGW_HOST_PARAMS_FILE" "$work/params.json"
else
	aws ssm get-parameter --region "$AWS_REGION" --name "$HOST_PARAMS" \
		--query Parameter.Value --output text >"$work/params.json" || die "cannot read $HOST_PARAMS"
fi
if [[ -n ${IOTGW_EXPECT_PARAMS:-} ]]; then
	got=$(tr -d '\n' <"$work/params.json" | sha256sum | awk '{ print $1 }')
	[[ $got == "$IOTGW_EXPECT_PARAMS" ]] || die "$HOST_PARAMS has sha256 $got, the rollout expects $IOTGW_EXPECT_PARAMS"
fi

"$work/iotgw" provision-files --params "$work/params.json" --signing-key "$PUB" --root "${ROOT:-/}" ||
	die "iotgw provision-files refused the host parameters in $HOST_PARAMS"
log "verified gateway binary $sha; running the setup"
IOTGW_ARTIFACT_FILE=$work/iotgw IOTGW_ARTIFACT_SHA256=$sha IOTGW_ARTIFACT_SIG=$sig "$ROOT/usr/local/sbin/iotgw-setup" "$@"
