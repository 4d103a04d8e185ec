#!/bin/bash
# iotgw-setup: brings an Amazon Linux 2023 host up as an iot-gateway node.
#
# Run by cloud-init on first boot; safe to run again at any time: every step
# checks before it acts, and a second run reports "0 changed".
#
# ROOT=/some/dir runs the host-side configuration steps against a directory
# instead of / (tests do this). Package installs, AWS calls, mounts and
# service starts are then skipped (OFFLINE=1), since they need the real host;
# WITH_AWS=1 still runs the broker users step with the `aws` found on PATH
# (tests put a stub there).
set -euo pipefail
umask 022

ROOT=${ROOT:-}
if [[ -n $ROOT ]]; then OFFLINE=${OFFLINE:-1}; else OFFLINE=${OFFLINE:-0}; fi
PAYLOAD=${PAYLOAD:-$ROOT/usr/local/lib/iotgw/payload}
HOST_ENV=${HOST_ENV:-$PAYLOAD/etc/iotgw/host.env}
set -a
# shellcheck source=/dev/null
. "$HOST_ENV"
set +a

ROLE=${ROLE:-all-in-one}
# gateway: a slot of the scale topology, only `iotgw run` (AWS IoT Core is
# the broker, Amazon Timestream for InfluxDB the database).
gateway_role() { [[ $ROLE == gateway ]]; }
CHANGED=0
GATEWAY_UPDATED=0
# Set when something a running service reads has changed: only then is it
# restarted.
RESTART_BROKER=0
RESTART_GATEWAY=0
# How the health check verifies the broker's certificate.
BROKER_VERIFY=(-CAfile /var/lib/iotgw-broker/tls/ca.crt -verify_hostname localhost)
log() { printf 'iotgw-setup: %s\n' "$*"; }
changed() { CHANGED=$((CHANGED + 1)); log "changed: $*"; }
die() {
	log "FAILURE: $*"
	if [[ $OFFLINE == 0 && -w /dev/console ]]; then
		printf 'iotgw-setup: FAILURE: %s\n' "$*" >/dev/console || true
	fi
	exit 1
}
online() { [[ $OFFLINE == 0 ]]; }
aws_ok() { online || [[ ${WITH_AWS:-0} == 1 ]]; }

# id_of NAME: numeric uid of NAME in $ROOT/etc/passwd (0 when absent).
id_of() {
	awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { if (!found) print 0 }' "$ROOT/etc/passwd" 2>/dev/null || echo 0
}
gid_of() {
	awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { if (!found) print 0 }' "$ROOT/etc/group" 2>/dev/null || echo 0
}

# put_file SRC DST MODE: install SRC as DST (root-owned) unless identical.
put_file() {
	local src=$1 dst=$2 mode=$3
	if [[ -f $dst ]] && cmp -s "$src" "$dst" &&
		[[ $(stat -c '%a %u %g' "$dst") == "${mode#0} 0 0" ]]; then
		return 0
	fi
	install -D -o 0 -g 0 -m "$mode" "$src" "$dst"
	changed "$dst"
	case $dst in
	*/iotgw/broker.toml | */iotgw-broker.service) RESTART_BROKER=1 ;;
	*/iotgw/gateway.toml | */iotgw.service) RESTART_GATEWAY=1 ;;
	esac
}

# put_dir DIR MODE USER GROUP: create DIR with that mode and owner.
put_dir() {
	local dir=$1 mode=$2 uid gid
	uid=$(id_of "$3")
	gid=$(gid_of "$4")
	if [[ -d $dir ]] && [[ $(stat -c '%a %u %g' "$dir") == "${mode#0} $uid $gid" ]]; then
		return 0
	fi
	mkdir -p "$dir"
	chown "$uid:$gid" "$dir"
	chmod "$mode" "$dir"
	changed "$dir/"
}

# Step 1: configuration files, units and scripts from the rendered payload.
install_payload() {
	local f rel mode
	while IFS= read -r f; do
		rel=${f#"$PAYLOAD"/}
		mode=0644
		[[ -x $f ]] && mode=0755
		put_file "$f" "$ROOT/$rel" "$mode"
	done < <(find "$PAYLOAD" -type f | LC_ALL=C sort)
}

# Step 2: system users for the services.
system_users() {
	local before after
	before=$({ cat "$ROOT/etc/passwd" "$ROOT/etc/group" 2>/dev/null || true; } | sha256sum)
	local args=()
	[[ -n $ROOT ]] && args=(--root="$ROOT")
	systemd-sysusers "${args[@]}" "$ROOT/etc/sysusers.d/iotgw.conf"
	after=$({ cat "$ROOT/etc/passwd" "$ROOT/etc/group" 2>/dev/null || true; } | sha256sum)
	[[ $before == "$after" ]] || changed "system users iotgw, iotgw-broker"
}

# data_device prints the block device of the data volume, waiting for the
# attachment (it is made after the instance starts).
data_device() {
	if [[ -n ${DATA_DEVICE_PATH:-} ]]; then
		echo "$DATA_DEVICE_PATH"
		return
	fi
	local i cand=()
	# Nitro instances expose EBS volumes as NVMe with the volume id as serial.
	[[ -n $DATA_VOLUME_ID ]] && cand+=("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${DATA_VOLUME_ID//-/}")
	cand+=("$DATA_DEVICE")
	for ((i = 0; i < 300; i++)); do
		for d in "${cand[@]}"; do
			if [[ -b $d ]]; then
				readlink -f "$d"
				return
			fi
		done
		sleep 1
	done
	die "data volume ${DATA_VOLUME_ID:-$DATA_DEVICE} did not appear in 300s"
}

# Step 3: the data volume: formatted only when blank, mounted by UUID.
data_volume() {
	local dev fstype pttype uuid block tmp
	dev=$(data_device)
	fstype=$(blkid -p -o value -s TYPE "$dev" || true)
	pttype=$(blkid -p -o value -s PTTYPE "$dev" || true)
	if [[ -z $fstype ]]; then
		# Never format something that holds anything we can recognise.
		[[ -z $pttype ]] || die "data volume $dev has a $pttype partition table and no filesystem; refusing to format"
		mkfs -t "$DATA_FSTYPE" -L iotgw-data "$dev" >/dev/null 2>&1 ||
			mkfs -t "$DATA_FSTYPE" -F -L iotgw-data "$dev" >/dev/null
		changed "formatted $dev as $DATA_FSTYPE"
		fstype=$DATA_FSTYPE
	fi
	uuid=$(blkid -p -o value -s UUID "$dev")
	[[ -n $uuid ]] || die "no filesystem UUID on $dev"

	local binds=(influxdb iotgw iotgw-broker) b
	gateway_role && binds=(iotgw)
	block="# BEGIN iotgw (managed by iotgw-setup)
UUID=$uuid /data $fstype defaults,nofail,x-systemd.device-timeout=60s 0 2"
	for b in "${binds[@]}"; do
		block+="
/data/$b /var/lib/$b none bind,nofail,x-systemd.requires-mounts-for=/data 0 0"
	done
	block+="
# END iotgw"
	mkdir -p "$ROOT/etc"
	[[ -e $ROOT/etc/fstab ]] || : >"$ROOT/etc/fstab"
	tmp=$(mktemp)
	awk '/^# BEGIN iotgw/ { skip = 1 } !skip { print } /^# END iotgw/ { skip = 0 }' "$ROOT/etc/fstab" >"$tmp"
	printf '%s\n' "$block" >>"$tmp"
	if cmp -s "$tmp" "$ROOT/etc/fstab"; then
		rm -f "$tmp"
	else
		cat "$tmp" >"$ROOT/etc/fstab"
		rm -f "$tmp"
		changed "$ROOT/etc/fstab"
	fi

	put_dir "$ROOT/data" 0755 root root
	if online; then
		systemctl daemon-reload
		mountpoint -q /data || { mount /data && changed "mounted /data"; }
	fi
	gateway_role || put_dir "$ROOT/data/influxdb" 0750 influxdb influxdb
	put_dir "$ROOT/data/iotgw" 0750 iotgw iotgw
	gateway_role || put_dir "$ROOT/data/iotgw-broker" 0750 iotgw-broker iotgw-broker
	local m
	for m in "${binds[@]}"; do
		# A mounted mount point shows the data volume's directory: leave it.
		if online && mountpoint -q "/var/lib/$m"; then continue; fi
		put_dir "$ROOT/var/lib/$m" 0755 root root
		if online; then mount "/var/lib/$m" && changed "mounted /var/lib/$m"; fi
	done
}

# Step 4: the broker's TLS material on the data volume. The CA survives
# instance replacement, so devices keep trusting it; the server certificate
# is reissued when the host's names change.
broker_tls() {
	local dir=$ROOT/data/iotgw-broker/tls names uid gid san i=1 n
	names=${TLS_NAMES:-$(host_names)}
	uid=$(id_of iotgw-broker)
	gid=$(gid_of iotgw-broker)
	put_dir "$dir" 0750 iotgw-broker iotgw-broker
	if online && provided_tls "$dir" "$uid" "$gid"; then
		BROKER_VERIFY=(-CAfile /etc/pki/tls/certs/ca-bundle.crt)
		return 0
	fi
	if [[ ! -s $dir/ca.key || ! -s $dir/ca.crt ]]; then
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
			-subj "/CN=iot-gateway $STACK broker CA" \
			-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
			-keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
		chmod 0600 "$dir/ca.key"
		chmod 0644 "$dir/ca.crt"
		rm -f "$dir/server.crt"
		changed "$dir/ca.crt"
		RESTART_BROKER=1
	fi
	if [[ ! -s $dir/server.crt || $(cat "$dir/server.names" 2>/dev/null) != "$names" ]]; then
		san=""
		for n in $names; do
			if [[ $n =~ ^[0-9.]+$ ]]; then san+="IP.$i:$n,"; else san+="DNS.$i:$n,"; fi
			i=$((i + 1))
		done
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
			-subj "/CN=${names%% *}" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
		openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
			-CAcreateserial -days 825 -out "$dir/server.crt" \
			-extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "${san%,}") 2>/dev/null
		rm -f "$dir/server.csr" "$dir/ca.srl"
		printf '%s' "$names" >"$dir/server.names"
		chmod 0600 "$dir/server.key"
		chmod 0644 "$dir/server.crt" "$dir/server.names"
		changed "$dir/server.crt for $names"
		RESTART_BROKER=1
	fi
	# The server key is the broker's alone; the CA key stays root's.
	chown "$uid:$gid" "$dir/server.key" "$dir/ca.crt" "$dir/server.crt" "$dir/server.names"
	chown 0:0 "$dir/ca.key"
	if online; then
		aws ssm put-parameter --region "$AWS_REGION" --name "$PARAM_PATH/broker-ca" --type String \
			--overwrite --value "file://$dir/ca.crt" >/dev/null ||
			log "warning: could not publish the broker CA to $PARAM_PATH/broker-ca"
	fi
}

# provided_tls DIR UID GID: use the certificate and key the operator put in
# SSM ($PARAM_PATH/broker-tls-cert, SecureString broker-tls-key), if any.
provided_tls() {
	local dir=$1 uid=$2 gid=$3 tmp
	tmp=$(mktemp -d)
	if ! aws ssm get-parameter --region "$AWS_REGION" --name "$PARAM_PATH/broker-tls-cert" \
		--query Parameter.Value --output text >"$tmp/server.crt" 2>/dev/null ||
		! ssm_secret broker-tls-key >"$tmp/server.key" 2>/dev/null; then
		rm -rf "$tmp"
		return 1
	fi
	if ! cmp -s "$tmp/server.crt" "$dir/server.crt" || ! cmp -s "$tmp/server.key" "$dir/server.key"; then
		install -o "$uid" -g "$gid" -m 0644 "$tmp/server.crt" "$dir/server.crt"
		install -o "$uid" -g "$gid" -m 0600 "$tmp/server.key" "$dir/server.key"
		changed "$dir/server.crt from $PARAM_PATH/broker-tls-cert"
		RESTART_BROKER=1
	fi
	rm -rf "$tmp"
}

# host_names prints the names devices may use for this host, from IMDSv2.
host_names() {
	local tok names="localhost 127.0.0.1" v k
	if online; then
		tok=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token || true)
		for k in public-hostname public-ipv4 local-hostname local-ipv4; do
			v=$(curl -fsS -H "X-aws-ec2-metadata-token: $tok" "http://169.254.169.254/latest/meta-data/$k" 2>/dev/null || true)
			[[ -n $v ]] && names+=" $v"
		done
	fi
	printf '%s' "$names"
}

# Step 5 (online): InfluxDB 2 from InfluxData's signed repository, pinned.
install_influxdb() {
	local key fpr
	if rpm -q "influxdb2-$INFLUX_VERSION" >/dev/null 2>&1; then
		return 0
	fi
	key=$(mktemp)
	curl -fsSL --retry 5 -o "$key" "$INFLUX_KEY_URL"
	# Exactly one primary key, and it is the one we expect.
	fpr=$(gpg --show-keys --with-colons --with-fingerprint "$key" |
		awk -F: '$1 == "pub" { n++; want = 1 } $1 == "fpr" && want { print $10; want = 0 } END { if (n != 1) print "keys:" n }')
	[[ $fpr == "$INFLUX_KEY_FINGERPRINT" ]] ||
		die "InfluxData signing key fingerprint is ${fpr//$'\n'/ }, want $INFLUX_KEY_FINGERPRINT"
	install -m 0644 "$key" /etc/pki/rpm-gpg/RPM-GPG-KEY-influxdata
	rm -f "$key"
	cat >/etc/yum.repos.d/influxdata.repo <<'REPO'
[influxdata]
name=InfluxData Repository - Stable
baseurl=https://repos.influxdata.com/stable/$basearch/main
enabled=1
gpgcheck=1
repo_gpgcheck=0
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-influxdata
REPO
	dnf install -y "influxdb2-$INFLUX_VERSION" influxdb2-cli >/dev/null
	changed "installed influxdb2-$INFLUX_VERSION"
}

# verify_signature FILE SIG: SIG (base64) is the Ed25519 signature of FILE
# by the key in the user-data (/etc/iotgw/signing.pub). The host checks it
# with OpenSSL before it has a binary of its own; the key does not come
# from SSM, where the artifact's address and sha256 are.
verify_signature() {
	local file=$1 sig=$2 pub=$ROOT/etc/iotgw/signing.pub tmp
	[[ -s $pub ]] || die "no signing key $pub"
	tmp=$(mktemp)
	if ! base64 -d <<<"$sig" >"$tmp" 2>/dev/null || [[ $(stat -c %s "$tmp") != 64 ]] ||
		! openssl pkeyutl -verify -pubin -inkey "$pub" -rawin -in "$file" -sigfile "$tmp" >/dev/null 2>&1; then
		rm -f "$tmp"
		die "gateway artifact signature does not verify with $pub"
	fi
	rm -f "$tmp"
}

# install_gateway FILE SHA256 SIG: verify and install the gateway binary,
# keeping the previous one for rollback.
install_gateway() {
	local file=$1 want=$2 got dst=$ROOT/usr/local/bin/iotgw
	verify_signature "$file" "$3"
	got=$(sha256sum "$file" | awk '{ print $1 }')
	[[ $got == "$want" ]] || die "gateway artifact sha256 is $got, want $want"
	if [[ -f $dst ]] && cmp -s "$file" "$dst"; then
		return 0
	fi
	mkdir -p "$(dirname "$dst")"
	[[ -f $dst ]] && cp -p "$dst" "$dst.prev"
	install -o 0 -g 0 -m 0755 "$file" "$dst.new"
	mv -f "$dst.new" "$dst"
	GATEWAY_UPDATED=1
	RESTART_BROKER=1
	RESTART_GATEWAY=1
	changed "$dst ($want)"
}

# Step 6: the gateway binary. Online it comes from the S3 object named in
# the SSM parameter $PARAM_PATH/artifact ("s3://bucket/key sha256 sig").
gateway_binary() {
	local ref uri sha sig tmp
	if [[ -n ${IOTGW_ARTIFACT_FILE:-} ]]; then
		install_gateway "$IOTGW_ARTIFACT_FILE" "$IOTGW_ARTIFACT_SHA256" "${IOTGW_ARTIFACT_SIG:-}"
		return
	fi
	online || return 0
	ref=$(aws ssm get-parameter --region "$AWS_REGION" --name "$PARAM_PATH/artifact" \
		--query Parameter.Value --output text)
	read -r uri sha sig <<<"$ref"
	if [[ -n ${IOTGW_EXPECT_SHA256:-} && $sha != "$IOTGW_EXPECT_SHA256" ]]; then
		die "$PARAM_PATH/artifact names $sha, the rollout expects $IOTGW_EXPECT_SHA256"
	fi
	tmp=$(mktemp)
	aws s3 cp --region "$AWS_REGION" --only-show-errors "$uri" "$tmp"
	install_gateway "$tmp" "$sha" "$sig"
	rm -f "$tmp"
}

# Step 7: the broker's users file, username:site:device:bcrypt-hash per line.
# The gateway's line is its password from SSM hashed by the installed
# `iotgw broker hash-password` (on stdin, never in argv). bcrypt salts each
# hash, so the line is kept as long as the parameter's version and date,
# recorded in the comment above it, are unchanged. Each device is a
# SecureString $PARAM_PATH/devices/<site>/<device> holding a bcrypt hash
# (from `iotgw broker hash-password`); its username is <site>/<device>.
# Unchanged content is not rewritten and does not restart the broker.
broker_users() {
	local dst=$ROOT/etc/iotgw/broker-users iotgw=$ROOT/usr/local/bin/iotgw
	local version tag gwline tmp name value rel site device gid n=0
	aws_ok || return 0
	version=$(aws ssm get-parameter --region "$AWS_REGION" --name "$PARAM_PATH/mqtt-password" \
		--query 'Parameter.[Version,LastModifiedDate]' --output text) ||
		die "cannot read $PARAM_PATH/mqtt-password"
	tag="# $MQTT_USERNAME: $PARAM_PATH/mqtt-password version ${version//[[:space:]]/ }"
	gwline=""
	if [[ -f $dst ]] && grep -qxF -- "$tag" "$dst"; then
		gwline=$(awk -F: -v u="$MQTT_USERNAME" '$1 == u && $2 == "" && $3 == "" { print; exit }' "$dst")
	fi
	if [[ -z $gwline ]]; then
		gwline="$MQTT_USERNAME:::$(ssm_secret mqtt-password | "$iotgw" broker hash-password)" ||
			die "cannot hash the gateway's broker password"
		[[ $gwline == "$MQTT_USERNAME:::\$2"* ]] || die "iotgw broker hash-password printed no bcrypt hash"
		# The gateway reads its password at start (iotgw-secrets.service).
		RESTART_GATEWAY=1
	fi
	tmp=$(mktemp)
	{
		printf '# Written by iotgw-setup from SSM %s; edits are overwritten.\n' "$PARAM_PATH"
		printf '%s\n%s\n' "$tag" "$gwline"
		aws ssm get-parameters-by-path --region "$AWS_REGION" --path "$PARAM_PATH/devices" \
			--recursive --with-decryption --query 'Parameters[].[Name,Value]' --output text |
			while IFS=$'\t' read -r name value; do
				rel=${name#"$PARAM_PATH/devices/"}
				site=${rel%%/*}
				device=${rel#*/}
				if [[ $rel == "$name" || $rel != */* || ! $site =~ ^[A-Za-z0-9_.-]+$ || ! $device =~ ^[A-Za-z0-9_.-]+$ ||
					! $value =~ ^\$2[abxy]?\$[0-9][0-9]\$[./A-Za-z0-9]{53}$ ]]; then
					log "warning: skipping $name: want $PARAM_PATH/devices/<site>/<device> holding a bcrypt hash" >&2
					continue
				fi
				printf '%s/%s:%s:%s:%s\n' "$site" "$device" "$site" "$device" "$value"
			done | LC_ALL=C sort
	} >"$tmp" || {
		rm -f "$tmp"
		die "cannot list the device parameters under $PARAM_PATH/devices"
	}
	gid=$(gid_of iotgw-broker)
	if [[ -f $dst ]] && cmp -s "$tmp" "$dst" && [[ $(stat -c '%a %u %g' "$dst") == "640 0 $gid" ]]; then
		rm -f "$tmp"
		return 0
	fi
	n=$(grep -c -v '^#' "$tmp" || true)
	install -D -o 0 -g "$gid" -m 0640 "$tmp" "$dst"
	rm -f "$tmp"
	changed "$dst ($n users)"
	RESTART_BROKER=1
}

# Step 8: enable the units (offline this only writes the symlinks).
enable_units() {
	local u args=() units=(iotgw-broker.service iotgw.service iotgw-export.timer)
	[[ -n $ROOT ]] && args=(--root="$ROOT")
	if gateway_role; then
		# One slot exports for all of them.
		units=(iotgw.service)
		[[ $INFLUX_ADMIN == 1 ]] && units+=(iotgw-export.timer)
	fi
	for u in "${units[@]}"; do
		if ! systemctl "${args[@]}" is-enabled --quiet "$u" 2>/dev/null; then
			systemctl "${args[@]}" enable --quiet "$u" 2>/dev/null
			changed "enabled $u"
		fi
	done
}

ssm_secret() {
	aws ssm get-parameter --region "$AWS_REGION" --with-decryption --name "$PARAM_PATH/$1" \
		--query Parameter.Value --output text
}

# Step 9 (online): start InfluxDB, run its one-time setup with the admin
# password and token from SSM (sent on stdin, never on a command line), and
# apply the dashboard.
setup_influxdb() {
	systemctl enable --now --quiet influxdb.service
	wait_for "InfluxDB /health" curl -fsS http://127.0.0.1:8086/health
	if curl -fsS http://127.0.0.1:8086/api/v2/setup | grep -q '"allowed": *true'; then
		INFLUX_PASSWORD=$(ssm_secret influx-admin-password) INFLUX_TOKEN=$(ssm_secret influx-token) \
			python3 -c 'import json, os
days = int(os.environ["INFLUX_RETENTION_DAYS"])
print(json.dumps({"username": os.environ["INFLUX_ADMIN_USER"], "password": os.environ["INFLUX_PASSWORD"],
  "token": os.environ["INFLUX_TOKEN"], "org": os.environ["INFLUX_ORG"], "bucket": os.environ["INFLUX_BUCKET"],
  "retentionPeriodSeconds": days * 86400}))' |
			curl -fsS -o /dev/null -H 'Content-Type: application/json' --data @- http://127.0.0.1:8086/api/v2/setup
		changed "InfluxDB setup: org $INFLUX_ORG, bucket $INFLUX_BUCKET"
	fi
	influx_tokens
	local state=/data/iotgw-setup sum
	mkdir -p "$state"
	sum=$(sha256sum /etc/iotgw/dashboards/iotgw.json | awk '{ print $1 }')
	if [[ $(cat "$state/dashboard.sha256" 2>/dev/null) != "$sum" ]]; then
		export INFLUX_HOST=http://127.0.0.1:8086 INFLUX_ORG
		INFLUX_TOKEN=$(ssm_secret influx-token)
		export INFLUX_TOKEN
		if [[ ! -s $state/influx-stack-id ]]; then
			influx stacks init --stack-name iotgw --json |
				python3 -c 'import json, sys; print(json.load(sys.stdin)["ID"])' >"$state/influx-stack-id"
		fi
		influx apply --stack-id "$(cat "$state/influx-stack-id")" --file /etc/iotgw/dashboards/iotgw.json --force yes >/dev/null
		unset INFLUX_TOKEN
		echo "$sum" >"$state/dashboard.sha256"
		changed "applied dashboard iotgw.json"
	fi
}

# Step 9b (online): the gateway's and the export's own InfluxDB tokens, made
# with the operator token, which no service gets: `iotgw run` may only write
# the bucket, `iotgw export` only read it, its org, dashboards, variables and
# labels. Each goes to the SecureString gateway.toml or export.env names,
# $PARAM_PATH/influx-run-token or influx-export-token. The authorization's id is kept on
# the data volume, so a token is kept while InfluxDB has it and the
# parameter holds it; else it is revoked and made again. Tokens go through
# files and stdin, never a command line.
influx_tokens() {
	local url=${INFLUX_URL:-${INFLUXDB_URL:-http://127.0.0.1:8086}} hdr tok ids kind
	mkdir -p "$ROOT/data/iotgw-setup"
	chmod 0700 "$ROOT/data/iotgw-setup"
	hdr=$(mktemp)
	if gateway_role; then
		influx_signin "$url" "$hdr"
	else
		tok=$(ssm_secret influx-token) || die "cannot read $PARAM_PATH/influx-token"
		printf 'Authorization: Token %s\n' "$tok" >"$hdr"
	fi
	ids=$(curl -fsS -H @"$hdr" "$url/api/v2/buckets?org=$INFLUX_ORG&name=$INFLUX_BUCKET" |
		python3 -c 'import json, sys; b = json.load(sys.stdin)["buckets"][0]; print(b["orgID"], b["id"])') ||
		die "cannot find bucket $INFLUX_BUCKET of org $INFLUX_ORG"
	for kind in run export; do
		# shellcheck disable=SC2086 # ids is "orgID bucketID"
		influx_token "$kind" "$url" "$hdr" $ids
	done
	rm -f "$hdr"
}

# influx_signin URL HEADERFILE: Timestream for InfluxDB hands out no
# operator token; sign in as the admin (the password from SSM, in a header
# file, never on a command line) and write the session cookie as a header.
influx_signin() {
	local url=$1 hdr=$2 basic resp cookie
	basic=$(mktemp)
	{
		printf 'Authorization: Basic '
		printf '%s:%s' "$INFLUX_ADMIN_USER" "$(ssm_secret influx-admin-password)" | base64 -w0
		printf '\n'
	} >"$basic" || die "cannot read $PARAM_PATH/influx-admin-password"
	resp=$(curl -fsS -o /dev/null -D - -X POST -H @"$basic" "$url/api/v2/signin") || {
		rm -f "$basic"
		die "cannot sign in to InfluxDB at $url as $INFLUX_ADMIN_USER"
	}
	rm -f "$basic"
	cookie=$(printf '%s\n' "$resp" | tr -d '\r' | awk 'tolower($1) == "set-cookie:" { split($2, c, ";"); print c[1]; exit }')
	[[ -n $cookie ]] || die "InfluxDB at $url sent no session cookie"
	printf 'Cookie: %s\n' "$cookie" >"$hdr"
}

# dashboard_api: the dashboard onto Timestream for InfluxDB through the API
# `influx apply` uses (a stack, then POST /api/v2/templates/apply), since a
# slot has no influx CLI; applied again only when the file changes.
dashboard_api() {
	local url=${INFLUX_URL:-$INFLUXDB_URL} hdr state=$ROOT/data/iotgw-setup sum org body
	local file=$ROOT/etc/iotgw/dashboards/iotgw.json
	mkdir -p "$state"
	sum=$(sha256sum "$file" | awk '{ print $1 }')
	[[ $(cat "$state/dashboard.sha256" 2>/dev/null) == "$sum" ]] && return 0
	hdr=$(mktemp)
	influx_signin "$url" "$hdr"
	org=$(curl -fsS -H @"$hdr" "$url/api/v2/orgs?org=$INFLUX_ORG" |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["orgs"][0]["id"])') ||
		die "cannot find org $INFLUX_ORG"
	if [[ ! -s $state/influx-stack-id ]]; then
		ORG=$org python3 -c 'import json, os; print(json.dumps({"orgID": os.environ["ORG"], "name": "iotgw"}))' |
			curl -fsS -H @"$hdr" -H 'Content-Type: application/json' --data @- "$url/api/v2/stacks" |
			python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' >"$state/influx-stack-id.new" ||
			die "cannot create the InfluxDB stack for the dashboard"
		mv -f "$state/influx-stack-id.new" "$state/influx-stack-id"
	fi
	body=$(mktemp)
	ORG=$org STACK_ID=$(cat "$state/influx-stack-id") python3 -c 'import json, os, sys
print(json.dumps({"orgID": os.environ["ORG"], "stackID": os.environ["STACK_ID"], "dryRun": False,
  "template": {"contents": json.load(open(sys.argv[1]))}}))' "$file" >"$body"
	curl -fsS -o /dev/null -H @"$hdr" -H 'Content-Type: application/json' --data @"$body" "$url/api/v2/templates/apply" ||
		die "InfluxDB refused the dashboard template"
	rm -f "$hdr" "$body"
	echo "$sum" >"$state/dashboard.sha256"
	changed "applied dashboard iotgw.json"
}

# influx_token KIND URL HEADERFILE ORGID BUCKETID
influx_token() {
	local kind=$1 url=$2 hdr=$3 param=influx-$1-token idf value tmp
	idf=$ROOT/data/iotgw-setup/$param.id
	value=$(ssm_secret "$param") || die "cannot read $PARAM_PATH/$param"
	if [[ -s $idf && $value != pending:* ]] &&
		curl -fsS -o /dev/null -H @"$hdr" "$url/api/v2/authorizations/$(cat "$idf")"; then
		return 0
	fi
	if [[ -s $idf ]]; then
		curl -fsS -o /dev/null -X DELETE -H @"$hdr" "$url/api/v2/authorizations/$(cat "$idf")" || true
	fi
	tmp=$(mktemp)
	KIND=$kind ORG=$4 BUCKET=$5 STACK=$STACK python3 -c 'import json, os
o, b, k = os.environ["ORG"], os.environ["BUCKET"], os.environ["KIND"]
def p(action, kind, **r): return {"action": action, "resource": dict(type=kind, **r)}
perms = {"run": [p("write", "buckets", id=b, orgID=o)],
  "export": [p("read", "buckets", id=b, orgID=o), p("read", "orgs", id=o)] +
    [p("read", t, orgID=o) for t in ("dashboards", "variables", "labels")]}[k]
print(json.dumps({"orgID": o, "description": "iotgw %s (%s)" % (k, os.environ["STACK"]), "permissions": perms}))' |
		curl -fsS -H @"$hdr" -H 'Content-Type: application/json' --data @- "$url/api/v2/authorizations" >"$tmp" ||
		die "cannot create the InfluxDB token for iotgw $kind"
	python3 -c 'import json, sys
a = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(a["id"])
open(sys.argv[1], "w").write(a["token"])' "$tmp" "$idf.new"
	aws ssm put-parameter --region "$AWS_REGION" --name "$PARAM_PATH/$param" --type SecureString \
		--overwrite --value "file://$tmp" >/dev/null || die "cannot store $PARAM_PATH/$param"
	rm -f "$tmp"
	mv -f "$idf.new" "$idf"
	changed "InfluxDB token for iotgw $kind in $PARAM_PATH/$param"
	if [[ $kind == run ]]; then RESTART_GATEWAY=1; fi
}

# `iotgw-setup gateway-secrets` (iotgw-secrets.service, before each start of
# iotgw.service): the gateway's password and InfluxDB token from SSM into
# /run/iotgw-secrets/gateway.env (memory, root only), which systemd reads
# for iotgw.service, so the gateway runs without the instance metadata
# service. Retries for 5 minutes, since it runs early in a boot.
gateway_secrets() {
	local dst=$ROOT/run/iotgw-secrets/gateway.env pw="" tok="" i
	if gateway_role; then
		gateway_iot_identity
		pw=-
	fi
	for ((i = 0; i < 60; i++)); do
		if gateway_role; then
			tok=$(ssm_secret influx-run-token) && break
		else
			pw=$(ssm_secret mqtt-password) && tok=$(ssm_secret influx-run-token) && break
			pw=""
		fi
		tok=""
		sleep "${SECRETS_RETRY:-5}"
	done
	[[ -n $pw && -n $tok ]] || die "cannot read $PARAM_PATH/mqtt-password and $PARAM_PATH/influx-run-token"
	[[ $tok != pending:* ]] || die "$PARAM_PATH/influx-run-token is not made yet: run iotgw-setup"
	# A systemd environment file quotes, escapes and expands: only values
	# that need none of it.
	[[ $pw =~ ^[A-Za-z0-9+/=._~:@%,-]+$ ]] || die "$PARAM_PATH/mqtt-password has characters other than letters, digits and +/=._~:@%,-"
	[[ $tok =~ ^[A-Za-z0-9+/=_-]+$ ]] || die "$PARAM_PATH/influx-run-token is not an InfluxDB token"
	mkdir -p "$(dirname "$dst")"
	(
		umask 077
		if gateway_role; then
			printf 'IOTGW_INFLUX_TOKEN=%s\n' "$tok" >"$dst.new"
		else
			printf 'IOTGW_MQTT_PASSWORD=%s\nIOTGW_INFLUX_TOKEN=%s\n' "$pw" "$tok" >"$dst.new"
		fi
	)
	mv -f "$dst.new" "$dst"
}

# `iotgw-setup export-secrets` (iotgw-export-secrets.service, before each
# start of iotgw-export.service): the export role assumed with the instance
# role, its session into /run/iotgw-export-secrets/aws.env (memory, root
# only), which systemd reads for iotgw-export.service, so the export runs
# without the instance metadata service and with nothing but the export
# role. An hour is the longest session a role assumed with instance
# credentials may have (role chaining). Retries for 5 minutes, since the
# timer may fire early in a boot. A gateway slot has no export role (its
# VPC has no STS endpoint): its export keeps the slot role.
export_secrets() {
	local dst=$ROOT/run/iotgw-export-secrets/aws.env creds="" i key secret token extra
	if gateway_role; then
		log "gateway slot: the export uses the slot role"
		return 0
	fi
	[[ -n ${EXPORT_ROLE_ARN:-} ]] || die "EXPORT_ROLE_ARN is not set in $HOST_ENV"
	for ((i = 0; i < 60; i++)); do
		creds=$(aws sts assume-role --region "$AWS_REGION" --role-arn "$EXPORT_ROLE_ARN" \
			--role-session-name "iotgw-export-$STACK" --duration-seconds 3600 \
			--query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text) && break
		creds=""
		sleep "${SECRETS_RETRY:-5}"
	done
	[[ -n $creds ]] || die "cannot assume $EXPORT_ROLE_ARN"
	read -r key secret token extra <<<"$creds"
	[[ -z $extra ]] || die "aws sts assume-role answered more than a key, a secret and a token"
	# A systemd environment file quotes, escapes and expands: only values
	# that need none of it (AWS's are letters, digits and +/=).
	[[ $key =~ ^[A-Z0-9]{16,128}$ ]] || die "aws sts assume-role answered an access key id that is not one"
	[[ $secret =~ ^[A-Za-z0-9+/=]+$ && $token =~ ^[A-Za-z0-9+/=]+$ ]] ||
		die "aws sts assume-role answered a secret or session token with characters other than letters, digits and +/="
	mkdir -p "$(dirname "$dst")"
	(
		umask 077
		printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_SESSION_TOKEN=%s\nAWS_REGION=%s\n' \
			"$key" "$secret" "$token" "$AWS_REGION" >"$dst.new"
	)
	mv -f "$dst.new" "$dst"
	log "export credentials: a session of $EXPORT_ROLE_ARN, for an hour"
}

# gateway_iot_identity: the gateways' IoT Core certificate and private key
# from SSM into /run/iotgw-secrets (memory), readable by the iotgw group
# only; the environment file next to them stays root's. The unit runs with
# no capabilities but the iotgw group (a drop-in), so the chown below only
# names the group the files already have.
gateway_iot_identity() {
	local dir=$ROOT/run/iotgw-secrets gid i ok=0
	gid=$(gid_of iotgw)
	mkdir -p "$dir"
	for ((i = 0; i < 60; i++)); do
		if aws ssm get-parameter --region "$AWS_REGION" --name "$PARAM_PATH/iot-gateway-cert" \
			--query Parameter.Value --output text >"$dir/iot.crt.new" 2>/dev/null &&
			(umask 077 && ssm_secret iot-gateway-key >"$dir/iot.key.new") 2>/dev/null; then
			ok=1
			break
		fi
		sleep "${SECRETS_RETRY:-5}"
	done
	[[ $ok == 1 ]] || die "cannot read $PARAM_PATH/iot-gateway-cert and $PARAM_PATH/iot-gateway-key"
	grep -q -- '-----BEGIN CERTIFICATE-----' "$dir/iot.crt.new" || die "$PARAM_PATH/iot-gateway-cert is not a PEM certificate"
	grep -q -- 'PRIVATE KEY-----' "$dir/iot.key.new" || die "$PARAM_PATH/iot-gateway-key is not a PEM private key"
	chown "0:$gid" "$dir" "$dir/iot.crt.new" "$dir/iot.key.new"
	chmod 0750 "$dir"
	chmod 0640 "$dir/iot.crt.new" "$dir/iot.key.new"
	mv -f "$dir/iot.crt.new" "$dir/iot.crt"
	mv -f "$dir/iot.key.new" "$dir/iot.key"
}

# healthy CMD...: retry CMD for up to 120 s.
healthy() {
	local i
	for ((i = 0; i < 120; i++)); do
		"$@" </dev/null >/dev/null 2>&1 && return 0
		sleep 1
	done
	return 1
}

# wait_for WHAT CMD...: like healthy, but fails the run.
wait_for() {
	local what=$1
	shift
	healthy "$@" || die "$what not healthy after 120s"
}

# Step 10 (online): start everything, restarting only what changed, and
# check it answers.
start_and_check() {
	systemctl daemon-reload
	if gateway_role; then
		if [[ $RESTART_GATEWAY == 1 ]]; then systemctl restart iotgw.service; else systemctl start iotgw.service; fi
		[[ $INFLUX_ADMIN == 1 ]] && systemctl start iotgw-export.timer
		check_gateway "gateway slot $SLOT healthy"
		return
	fi
	if [[ $RESTART_BROKER == 1 ]]; then
		systemctl restart iotgw-broker.service
	else
		systemctl start iotgw-broker.service
	fi
	if [[ $RESTART_GATEWAY == 1 ]]; then
		systemctl restart iotgw.service
	else
		systemctl start iotgw.service
	fi
	systemctl start iotgw-export.timer
	wait_for "broker (TLS 8883)" openssl s_client -connect 127.0.0.1:8883 -verify_return_error "${BROKER_VERIFY[@]}"
	wait_for "broker (1883)" bash -c 'exec 3<>/dev/tcp/127.0.0.1/1883'
	wait_for "InfluxDB /health" curl -fsS http://127.0.0.1:8086/health
	check_gateway "broker, InfluxDB and gateway healthy; export timer armed"
}

# check_gateway MESSAGE: /readyz answers, else put the previous binary back.
check_gateway() {
	if ! healthy curl -fsS "http://$HTTP_ADDR/readyz"; then
		if [[ $GATEWAY_UPDATED == 1 && -f /usr/local/bin/iotgw.prev ]]; then
			# The new binary does not come up: put the previous one back.
			mv -f /usr/local/bin/iotgw.prev /usr/local/bin/iotgw
			if gateway_role; then systemctl restart iotgw.service; else systemctl restart iotgw-broker.service iotgw.service; fi
			healthy curl -fsS "http://$HTTP_ADDR/readyz" ||
				die "new gateway binary failed /readyz, and so does the previous one after rollback"
			die "new gateway binary failed /readyz; rolled back to the previous binary"
		fi
		die "gateway /readyz not healthy after 120s"
	fi
	local msg="SUCCESS: $1"
	log "$msg"
	if [[ -w /dev/console ]]; then printf 'iotgw-setup: %s\n' "$msg" >/dev/console || true; fi
}

main() {
	[[ $(id -u) == 0 ]] || die "must run as root"
	if [[ ${1:-} == gateway-secrets ]]; then
		gateway_secrets
		return
	fi
	if [[ ${1:-} == export-secrets ]]; then
		export_secrets
		return
	fi
	# cloud-init and the SSM rollout association may start it at the same
	# time on first boot: one run at a time.
	mkdir -p "$ROOT/run/lock"
	exec 9>>"$ROOT/run/lock/iotgw-setup.lock"
	flock 9
	install_payload
	if gateway_role; then
		system_users
		data_volume
		gateway_binary
		enable_units
		if online; then
			# One slot makes the tokens; the others wait for them
			# (iotgw-secrets.service retries).
			if [[ $INFLUX_ADMIN == 1 ]]; then
				influx_tokens
				dashboard_api
			fi
			start_and_check
		fi
		log "done, $CHANGED changed"
		return
	fi
	# The package creates the influxdb user that owns its data directory.
	if online; then install_influxdb; fi
	system_users
	data_volume
	broker_tls
	gateway_binary
	broker_users
	enable_units
	if online; then
		setup_influxdb
		start_and_check
	fi
	log "done, $CHANGED changed"
}

# Sourced (by the tests, to run one step), it only defines the steps.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
