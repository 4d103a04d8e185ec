package stack

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRolloutCommand runs the rollout association's command with bash in a
// private mount namespace, where /usr/local/sbin, /usr/local/bin and /run
// are temporary directories holding stand-ins that log their calls: on a
// host made before the bootstrap, the host's own setup installs the new
// binary, which then writes the bootstrap from the host parameters; on a
// bootstrapped host only the bootstrap runs; both with the sha256s the
// stack expects, and a failing step stops the command.
func TestRolloutCommand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the test bind-mounts stand-ins over /usr/local in its own mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare (util-linux)")
	}
	e := env{stack: "dev", region: mockRegion, account: mockAccount, partition: "aws"}
	params := `{"Stack":"dev"}`
	psum := sha256.Sum256([]byte(params))
	art := strings.Repeat("ab", 32)
	cmd := RolloutCommand(e, art, params, e.hostParamsName())

	run := func(t *testing.T, bootstrapped, setupFails bool) (string, error) {
		dir := t.TempDir()
		sbin, bin, runDir, stubs := filepath.Join(dir, "sbin"), filepath.Join(dir, "bin"), filepath.Join(dir, "run"), filepath.Join(dir, "stubs")
		for _, d := range []string{sbin, bin, runDir, stubs} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		log := filepath.Join(dir, "log")
		stub := func(path, body string) {
			if err := os.WriteFile(path, []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		logLine := `echo "$(basename "$0") $* expect=${IOTGW_EXPECT_SHA256:-} params=${IOTGW_EXPECT_PARAMS:-}" >>` + log
		bootstrap := logLine
		if bootstrapped {
			stub(filepath.Join(sbin, "iotgw-bootstrap"), bootstrap)
		}
		setup := logLine
		if setupFails {
			setup += "\nexit 3"
		}
		stub(filepath.Join(sbin, "iotgw-setup"), setup)
		// The new binary writes the bootstrap (as provision-files does).
		stub(filepath.Join(bin, "iotgw"), logLine+"\ncat /run/iotgw-host-params.json >>"+log+"\n"+
			"printf '#!/bin/bash\\n%s\\n' '"+strings.ReplaceAll(bootstrap, "'", `'\''`)+"' >/usr/local/sbin/iotgw-bootstrap; chmod 755 /usr/local/sbin/iotgw-bootstrap")
		stub(filepath.Join(stubs, "aws"), logLine+"\necho '"+params+"'")
		script := "set -e; mount --bind " + sbin + " /usr/local/sbin; mount --bind " + bin + " /usr/local/bin; mount --bind " + runDir + " /run; " +
			"export PATH=" + stubs + ":$PATH; exec bash -c " + shellQuote(cmd)
		out, err := exec.Command(unshare, "--mount", "--propagation", "private", "bash", "-c", script).CombinedOutput()
		b, _ := os.ReadFile(log)
		return string(b) + string(out), err
	}

	expect := "expect=" + art + " params=" + hex.EncodeToString(psum[:])
	t.Run("host made before the bootstrap", func(t *testing.T) {
		out, err := run(t, false, false)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		want := []string{
			"iotgw-setup  expect=" + art + " params=",
			"aws ssm get-parameter --region " + mockRegion + " --name /iot-gateway/dev/host-params --query Parameter.Value --output text expect= params=",
			"iotgw provision-files --params /run/iotgw-host-params.json expect= params=",
			params,
			"iotgw-bootstrap  " + expect,
		}
		if got := strings.Split(strings.TrimSpace(out), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("calls:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
		}
	})
	t.Run("bootstrapped host", func(t *testing.T) {
		out, err := run(t, true, false)
		if err != nil || strings.TrimSpace(out) != "iotgw-bootstrap  "+expect {
			t.Errorf("%v\n%s", err, out)
		}
	})
	t.Run("the old setup fails", func(t *testing.T) {
		out, err := run(t, false, true)
		if err == nil || strings.Contains(out, "provision-files") || strings.Contains(out, "iotgw-bootstrap") {
			t.Errorf("went on after a failed setup: %v\n%s", err, out)
		}
	})
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
