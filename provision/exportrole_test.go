package provision

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// unitLines returns the values of key= in a unit, in order.
func unitLines(unit, key string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(key)+`=(.*)$`).FindAllStringSubmatch(unit, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestExportUnitsLeastPrivilege: on the all-in-one host the export reaches
// neither the instance metadata service nor the instance role; its AWS
// credentials are the export role's session, written root only by
// iotgw-export-secrets.service; the gateway's unit gets none of it.
func TestExportUnitsLeastPrivilege(t *testing.T) {
	for name, p := range configs() {
		ex := rendered(t, p, "/etc/systemd/system/iotgw-export.service")
		if got := unitLines(ex, "IPAddressDeny"); len(got) != 1 || got[0] != "169.254.169.254/32 fd00:ec2::254/128 link-local" {
			t.Errorf("%s: iotgw-export.service IPAddressDeny= %q: it can reach the instance metadata service", name, got)
		}
		if len(unitLines(ex, "IPAddressAllow")) != 0 {
			t.Errorf("%s: iotgw-export.service has IPAddressAllow=, which wins over IPAddressDeny=", name)
		}
		if got := unitLines(ex, "Requires"); len(got) != 1 || got[0] != "iotgw-export-secrets.service" {
			t.Errorf("%s: iotgw-export.service Requires= %q, want iotgw-export-secrets.service", name, got)
		}
		if after := unitLines(ex, "After"); len(after) != 1 || !contains(strings.Fields(after[0]), "iotgw-export-secrets.service") {
			t.Errorf("%s: iotgw-export.service After= %q: it may start before its credentials", name, after)
		}
		envs := unitLines(ex, "EnvironmentFile")
		if len(envs) == 0 || envs[len(envs)-1] != ExportCredsFile {
			t.Errorf("%s: iotgw-export.service's last EnvironmentFile= is not %s: %q", name, ExportCredsFile, envs)
		}
		if stop := unitLines(ex, "ExecStopPost"); len(stop) != 1 || stop[0] != "+/bin/rm -f "+ExportCredsFile {
			t.Errorf("%s: iotgw-export.service leaves its session in /run: ExecStopPost= %q", name, stop)
		}
		if u := unitLines(ex, "User"); len(u) != 1 || u[0] != "iotgw" || !strings.Contains(ex, "\nPrivateUsers=yes\n") {
			// Its own user namespace keeps other iotgw processes (the
			// gateway) from ptrace and /proc/<pid>/mem of the export.
			t.Errorf("%s: iotgw-export.service User= %q, or no PrivateUsers=yes", name, u)
		}

		sec := rendered(t, p, "/etc/systemd/system/iotgw-export-secrets.service")
		if got := unitLines(sec, "ExecStart"); len(got) != 1 || got[0] != SetupScript+" export-secrets" {
			t.Errorf("%s: iotgw-export-secrets.service ExecStart= %q", name, got)
		}
		if len(unitLines(sec, "User")) != 0 || len(unitLines(sec, "DynamicUser")) != 0 {
			t.Errorf("%s: iotgw-export-secrets.service is not root: it writes a root-only file", name)
		}
		if len(unitLines(sec, "IPAddressDeny")) != 0 {
			t.Errorf("%s: iotgw-export-secrets.service cannot reach the instance role", name)
		}
		for k, want := range map[string]string{"RuntimeDirectory": "iotgw-export-secrets", "RuntimeDirectoryMode": "0700", "UMask": "0077", "Type": "oneshot"} {
			if got := unitLines(sec, k); len(got) != 1 || got[0] != want {
				t.Errorf("%s: iotgw-export-secrets.service %s= %q, want %s", name, k, got, want)
			}
		}
		if filepath.Dir(ExportCredsFile) != "/run/"+unitLines(sec, "RuntimeDirectory")[0] {
			t.Errorf("%s: %s is not in iotgw-export-secrets.service's RuntimeDirectory", name, ExportCredsFile)
		}
		if got := unitLines(sec, "RemainAfterExit"); len(got) != 0 && got[0] != "no" {
			t.Errorf("%s: iotgw-export-secrets.service RemainAfterExit=%s: the next export would get an expired session", name, got[0])
		}

		// The gateway: no instance metadata service, and nothing of the
		// export's: not its credentials, not its unit, not its token.
		gw := rendered(t, p, "/etc/systemd/system/iotgw.service")
		for _, bad := range []string{ExportCredsFile, "iotgw-export-secrets", ExportEnvFile} {
			if strings.Contains(gw, bad) {
				t.Errorf("%s: iotgw.service names %s", name, bad)
			}
		}
		if !strings.Contains(gw, "\nIPAddressDeny=169.254.169.254/32 fd00:ec2::254/128 link-local\n") {
			t.Errorf("%s: iotgw.service can reach the instance metadata service", name)
		}
		if strings.Contains(rendered(t, p, GatewayConfig), "influx-export-token") {
			t.Errorf("%s: gateway.toml names the export's token", name)
		}
		if !strings.Contains(rendered(t, p, "/etc/iotgw/host.env"), "\nEXPORT_ROLE_ARN='"+p.ExportRoleArn+"'\n") {
			t.Errorf("%s: host.env does not name the export role", name)
		}
		fl, _ := Files(p)
		for _, f := range fl {
			if strings.HasSuffix(f.Path, "iotgw-export.service.d/gateway.conf") {
				t.Errorf("%s: the all-in-one host gets the slots' export drop-in", name)
			}
		}
	}

	// Slot 0 keeps its slot role (no STS endpoint in the slots' VPC): the
	// drop-in gives its export the metadata service back and no
	// credentials file.
	p := slotParams(0, true)
	dropIn := rendered(t, p, "/etc/systemd/system/iotgw-export.service.d/gateway.conf")
	if got := unitLines(dropIn, "IPAddressDeny"); len(got) != 1 || got[0] != "" {
		t.Errorf("slot drop-in IPAddressDeny= %q, want it reset", got)
	}
	if got := unitLines(dropIn, "EnvironmentFile"); len(got) == 0 || got[0] != "" || contains(got, ExportCredsFile) {
		t.Errorf("slot drop-in EnvironmentFile= %q: it must reset the list and leave out %s", got, ExportCredsFile)
	}
}

// stsStub is an aws stand-in answering `aws sts assume-role` with the
// fields in answer (or failing when it is empty), logging each command line.
func stsStub(t *testing.T) (bin, argv, answer string) {
	t.Helper()
	dir := t.TempDir()
	bin, argv, answer = filepath.Join(dir, "bin"), filepath.Join(dir, "argv"), filepath.Join(dir, "answer")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/bash
echo "aws $*" >>%q
[[ $1 == sts && $2 == assume-role && -s %q ]] || { echo "An error occurred (AccessDenied)" >&2; exit 254; }
cat %q
`, argv, answer, answer)
	if err := os.WriteFile(filepath.Join(bin, "aws"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, argv, answer
}

// TestExportSecretsStep runs `iotgw-setup export-secrets` against an STS
// stand-in: the session lands root only where iotgw-export.service reads
// it, as the variables the AWS SDK's default chain takes before the
// metadata service; values a systemd environment file would mangle, and a
// failed assume-role, are refused.
func TestExportSecretsStep(t *testing.T) {
	p := baseParams()
	root, env := stepEnv(t, p)
	bin, argv, answer := stsStub(t)
	env = append(env, "PATH="+bin+":"+os.Getenv("PATH"), "OFFLINE=1", "SECRETS_RETRY=0")
	const key, secret, token = "ASIAEXAMPLE0KEY0ID00", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLE//////////wEaDJ+token=="
	set := func(v string) {
		if err := os.WriteFile(answer, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set(key + "\t" + secret + "\t" + token + "\n")
	if out, err := runStep(env, "export_secrets"); err != nil {
		t.Fatalf("export_secrets: %v\n%s", err, out)
	}
	dst := filepath.Join(root, ExportCredsFile)
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", ExportCredsFile, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(dst)
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	want := map[string]string{"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token, "AWS_REGION": p.Region}
	if fmt.Sprint(vars) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", ExportCredsFile, vars, want)
	}
	log, _ := os.ReadFile(argv)
	for _, w := range []string{"--role-arn " + p.ExportRoleArn + " ", "--duration-seconds 3600", "--role-session-name iotgw-export-dev", "--region " + p.Region} {
		if !strings.Contains(string(log), w) {
			t.Errorf("assume-role without %q:\n%s", w, log)
		}
	}
	if strings.Contains(string(log), secret) || strings.Contains(string(log), token) {
		t.Errorf("a credential on a command line:\n%s", log)
	}

	// What the export's AWS SDK makes of that environment: the export
	// role's session, from the environment, before any metadata service.
	for k, v := range vars {
		t.Setenv(k, v)
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(root, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(root, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	cfg, err := awsconfig.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID != key || creds.SecretAccessKey != secret || creds.SessionToken != token || creds.Source != "EnvConfigCredentials" || cfg.Region != p.Region {
		t.Errorf("the SDK took %s/%s from %s, region %s", creds.AccessKeyID, creds.SessionToken, creds.Source, cfg.Region)
	}

	for name, c := range map[string]struct{ answer, want string }{
		"assume-role refused":  {"", "cannot assume " + p.ExportRoleArn},
		"quote in secret":      {key + "\t" + `se"cret` + "\t" + token + "\n", "characters other than"},
		"dollar in token":      {key + "\t" + secret + "\t" + "tok$HOME" + "\n", "characters other than"},
		"not an access key":    {"akia-lower\t" + secret + "\t" + token + "\n", "not one"},
		"more than three":      {key + "\t" + secret + "\t" + token + "\tAWS_X=1\n", "more than"},
		"token on a new line":  {key + "\t" + secret + "\n" + token + "\n", "characters other than"},
		"no token at all":      {key + "\t" + secret + "\n", "characters other than"},
		"newline in the value": {key + "\t" + secret + "\t" + token + "\nAWS_X=1\n", ""},
	} {
		if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		set(c.answer)
		out, err := runStep(env, "export_secrets")
		if c.want == "" {
			// read takes the first line only: what follows never
			// reaches the file.
			got, _ := os.ReadFile(dst)
			if err != nil || strings.Contains(string(got), "AWS_X") {
				t.Errorf("%s: %v\n%s\n%s", name, err, out, got)
			}
			continue
		}
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v, want an error with %q\n%s", name, err, c.want, out)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("%s: %s written anyway", name, ExportCredsFile)
		}
	}

	// No role named: a clear failure, not a session of something else.
	if err := os.WriteFile(filepath.Join(root, "etc/iotgw/host.env"), []byte(strings.ReplaceAll(rendered(t, p, "/etc/iotgw/host.env"), p.ExportRoleArn, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	set(key + "\t" + secret + "\t" + token + "\n")
	if out, err := runStep(env, "export_secrets"); err == nil || !strings.Contains(out, "EXPORT_ROLE_ARN is not set") {
		t.Errorf("no export role: %v\n%s", err, out)
	}

	// A gateway slot has no export role: the step writes nothing.
	sroot, senv := stepEnv(t, slotParams(0, true))
	senv = append(senv, "PATH="+bin+":"+os.Getenv("PATH"), "OFFLINE=1", "SECRETS_RETRY=0")
	if out, err := runStep(senv, "export_secrets"); err != nil {
		t.Errorf("slot: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(sroot, ExportCredsFile)); !os.IsNotExist(err) {
		t.Errorf("slot: %s written", ExportCredsFile)
	}
}
