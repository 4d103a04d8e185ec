#!/usr/bin/env bash
# Deploy a stack by hand, the way .github/workflows/deploy.yml does it from CI:
# build, check the stack configuration, preview, ask, update, wait until the
# host is healthy, print the outputs. docs/deploy.md has the details.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: scripts/deploy.sh [--yes] [--no-build] [--no-wait] STACK

Deploys the Pulumi stack STACK (for example dev or prod) from this checkout:

  1. scripts/build.sh               dist/iotgw-linux-{amd64,arm64} + .sha256 + .sig
                                    (signed with IOTGW_SIGNING_KEY or
                                    IOTGW_SIGNING_KEY_FILE, else a development key)
  2. pulumi stack select STACK      and a check of the required config keys
  3. pulumi preview --diff
  4. confirmation                   skipped with --yes
  5. pulumi up --yes --skip-preview
  6. health                         EC2 status checks, then GET /readyz on the
                                    host through SSM Run Command
  7. pulumi stack output

Options:
  --yes        do not ask before pulumi up (needed when stdin is not a terminal)
  --no-build   deploy the binaries already in dist/
  --no-wait    do not wait for the host's health
  -h, --help   this text

Needs: Go, the Pulumi CLI (logged in to the stack's backend), AWS credentials,
and the AWS CLI v2 for the health check.
Environment: HEALTH_TIMEOUT (seconds, default 900) bounds the health wait;
READYZ_URL (default http://127.0.0.1:9273/readyz) is fetched on the host.

Exit status: 0 deployed and healthy; 1 a step failed or the answer was no;
2 something to install or set first (the message says what).
EOF
}

# refuse prints why the deploy cannot start and what to do, and exits 2.
refuse() {
	echo "deploy: $1" >&2
	shift
	for line in "$@"; do
		echo "  $line" >&2
	done
	exit 2
}

step() { echo "== $*" >&2; }

yes=false
build=true
wait_health=true
stack=""
while [ $# -gt 0 ]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	-y | --yes) yes=true ;;
	--no-build) build=false ;;
	--no-wait) wait_health=false ;;
	-*) refuse "unknown option $1" "see scripts/deploy.sh --help" ;;
	*)
		[ -z "$stack" ] || refuse "one stack at a time (got $stack and $1)"
		stack=$1
		;;
	esac
	shift
done
[ -n "$stack" ] || refuse "which stack?" "usage: scripts/deploy.sh [--yes] STACK   (e.g. dev)"
$yes || [ -t 0 ] || refuse "stdin is not a terminal, so nobody can confirm: pass --yes"

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- what must be there before anything runs ---

command -v pulumi >/dev/null 2>&1 ||
	refuse "the pulumi CLI is not on PATH" \
		"install it: https://www.pulumi.com/docs/install/ (curl -fsSL https://get.pulumi.com | sh)" \
		"then log in to the stack's backend: pulumi login [s3://bucket | --local]"
command -v go >/dev/null 2>&1 ||
	refuse "go is not on PATH (it builds the binaries and runs the Pulumi program)" \
		"install the version named in go.mod: https://go.dev/doc/install"

if command -v aws >/dev/null 2>&1; then
	# Any region answers for the caller's identity; the stack's region is not
	# known before the stack is selected.
	if ! caller=$(aws sts get-caller-identity --region "${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}" \
		--query Arn --output text 2>&1); then
		refuse "no usable AWS credentials (aws sts get-caller-identity failed)" \
			"${caller//$'\n'/ }" \
			"set AWS_PROFILE (after aws sso login / aws configure), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
	fi
	echo "AWS identity: $caller" >&2
else
	if [ -z "${AWS_PROFILE:-}" ] && [ -z "${AWS_ACCESS_KEY_ID:-}" ] &&
		[ -z "${AWS_WEB_IDENTITY_TOKEN_FILE:-}" ] &&
		[ -z "${AWS_CONTAINER_CREDENTIALS_FULL_URI:-}" ] &&
		[ -z "${AWS_CONTAINER_CREDENTIALS_RELATIVE_URI:-}" ]; then
		refuse "no AWS credentials found" \
			"set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)," \
			"or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE;" \
			"better: install the AWS CLI v2 (https://aws.amazon.com/cli/) so this script can check them"
	fi
	if $wait_health; then
		refuse "the AWS CLI is needed for the health check" \
			"install the AWS CLI v2 (https://aws.amazon.com/cli/), or pass --no-wait"
	fi
fi

pulumi whoami >/dev/null 2>&1 ||
	refuse "the pulumi CLI is not logged in to a backend" \
		"run pulumi login (Pulumi Cloud), pulumi login s3://your-state-bucket, or pulumi login --local"

# --- build ---

if $build; then
	step "build (scripts/build.sh)"
	[ -x scripts/build.sh ] || refuse "scripts/build.sh is missing or not executable"
	scripts/build.sh
fi

# --- stack and its configuration ---

step "pulumi stack select $stack"
pulumi stack select "$stack" ||
	refuse "no stack $stack in this backend" \
		"create it: pulumi stack init $stack, then set its config (infra/README.md, docs/deploy.md)"

# The program checks every key itself; these are the ones without a default,
# caught here before a slow preview. Values are never printed.
missing=()
for key in aws:region owner; do
	pulumi config get --stack "$stack" "$key" >/dev/null 2>&1 || missing+=("pulumi config set --stack $stack $key <value>")
done
for key in influxAdminPassword influxToken mqttPassword; do
	pulumi config get --stack "$stack" "$key" >/dev/null 2>&1 || missing+=("pulumi config set --stack $stack --secret $key <value>")
done
if [ ${#missing[@]} -gt 0 ]; then
	refuse "stack $stack lacks required configuration; set it with" "${missing[@]}"
fi
# The host installs only a binary signed by the stack's key. Unpinned, the
# program trusts whatever key signed dist/ (dist/iotgw-signing.pub).
if ! pulumi config get --stack "$stack" signingPublicKey >/dev/null 2>&1; then
	echo "deploy: warning: stack $stack does not pin signingPublicKey, so the key that signed dist/ is trusted;" \
		"pin it: pulumi config set --stack $stack signingPublicKey \"\$(sed -n 2p dist/iotgw-signing.pub)\"" >&2
fi
region=$(pulumi config get --stack "$stack" aws:region)

# --- preview, confirm, up ---

step "pulumi preview --diff ($stack)"
pulumi preview --diff --stack "$stack"

if ! $yes; then
	read -r -p "Deploy these changes to stack $stack? [y/N] " answer
	case $answer in
	y | Y | yes | YES) ;;
	*)
		echo "deploy: not deployed" >&2
		exit 1
		;;
	esac
fi

step "pulumi up ($stack)"
pulumi up --yes --skip-preview --stack "$stack"

# --- health ---

if $wait_health; then
	timeout=${HEALTH_TIMEOUT:-900}
	readyz=${READYZ_URL:-http://127.0.0.1:9273/readyz}
	instance=$(pulumi stack output --stack "$stack" instanceId)
	deadline=$((SECONDS + timeout))

	step "waiting for EC2 status checks on $instance"
	# The waiter polls every 15 s for 10 minutes.
	aws ec2 wait instance-status-ok --region "$region" --instance-ids "$instance" || {
		echo "deploy: $instance did not pass its EC2 status checks within 10 minutes" >&2
		exit 1
	}

	step "GET $readyz on $instance (SSM Run Command, up to ${timeout}s)"
	# The first boot installs InfluxDB before the gateway starts, so the host
	# retries /readyz itself; the command fails if it never answers 2xx.
	tries=$(((timeout + 9) / 10))
	script="for i in \$(seq 1 $tries); do curl -fsS '$readyz' && exit 0; sleep 10; done; echo 'readyz: no 2xx' >&2; exit 1"
	params=$(printf '{"commands":["%s"],"executionTimeout":["%d"]}' "$script" "$((timeout + 60))")
	command_id=""
	# The SSM agent registers some time after boot; until then send-command
	# answers InvalidInstanceId.
	while [ -z "$command_id" ]; do
		if command_id=$(aws ssm send-command --region "$region" --instance-ids "$instance" \
			--document-name AWS-RunShellScript --comment "iot-gateway deploy: readyz" \
			--parameters "$params" --query Command.CommandId --output text 2>/dev/null); then
			break
		fi
		command_id=""
		[ "$SECONDS" -lt "$deadline" ] || {
			echo "deploy: $instance is not reachable through SSM after ${timeout}s" >&2
			exit 1
		}
		sleep 10
	done
	status=InProgress
	while :; do
		status=$(aws ssm get-command-invocation --region "$region" --command-id "$command_id" \
			--instance-id "$instance" --query Status --output text 2>/dev/null || echo Pending)
		case $status in
		Pending | InProgress | Delayed) ;;
		*) break ;;
		esac
		if [ "$SECONDS" -ge $((deadline + 120)) ]; then
			echo "deploy: readyz check still $status after ${timeout}s" >&2
			exit 1
		fi
		sleep 5
	done
	aws ssm get-command-invocation --region "$region" --command-id "$command_id" \
		--instance-id "$instance" --query '[StandardOutputContent,StandardErrorContent]' --output text
	if [ "$status" != Success ]; then
		echo "deploy: $instance is not healthy (readyz command: $status);" \
			"look at: aws ssm start-session --region $region --target $instance, then journalctl -u iotgw" >&2
		exit 1
	fi
	echo "$instance is healthy" >&2
fi

step "outputs ($stack)"
pulumi stack output --stack "$stack"
