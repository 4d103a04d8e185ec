package provision

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	iotgwOnce sync.Once
	iotgwBin  string
	iotgwErr  error
	iotgwOut  []byte
)

// buildIotgw builds the real gateway binary once per test run: the
// bootstrap runs its provision-files.
func buildIotgw(t *testing.T) string {
	t.Helper()
	goTool := requireTool(t, "go", "golang")
	iotgwOnce.Do(func() {
		dir, err := os.MkdirTemp("", "iotgw-bin-")
		if err != nil {
			iotgwErr = err
			return
		}
		iotgwBin = filepath.Join(dir, "iotgw")
		cmd := exec.Command(goTool, "build", "-o", iotgwBin, "../app/cmd/iotgw")
		iotgwOut, iotgwErr = cmd.CombinedOutput()
	})
	if iotgwErr != nil {
		t.Fatalf("go build iotgw: %v\n%s", iotgwErr, iotgwOut)
	}
	return iotgwBin
}

// TestBootstrap runs the user-data's bootstrap against a temporary root
// with the real iotgw binary: a binary whose sha256 or signature is wrong is
// refused before it runs (nothing is written), and a good one writes
// exactly the files provision.Files renders for the host parameters, then
// the setup installs them and the binary.
func TestBootstrap(t *testing.T) {
	requireRoot(t)
	requireTool(t, "systemd-sysusers", "systemd")
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	requireTool(t, "openssl", "openssl")
	requireTool(t, "systemctl", "systemd")
	bin := buildIotgw(t)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	sha, sig := hex.EncodeToString(sum[:]), testSigner.sign(data)

	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	bfiles, err := BootstrapFiles(baseBootstrap())
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(root, bfiles); err != nil {
		t.Fatal(err)
	}
	p := baseParams()
	p.DataFSType = "ext4"
	hp, err := HostParams(p)
	if err != nil {
		t.Fatal(err)
	}
	params := filepath.Join(tmp, "params.json")
	if err := os.WriteFile(params, hp, 0o644); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(tmp, "data.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	run := func(artifact, sha, sig string, extra ...string) (string, error) {
		cmd := exec.Command("bash", filepath.Join(root, BootstrapScript))
		cmd.Env = append(os.Environ(), "ROOT="+root, "DATA_DEVICE_PATH="+disk, "TLS_NAMES=localhost 127.0.0.1",
			"IOTGW_ARTIFACT_FILE="+artifact, "IOTGW_ARTIFACT_SHA256="+sha, "IOTGW_ARTIFACT_SIG="+sig,
			"IOTGW_HOST_PARAMS_FILE="+params)
		cmd.Env = append(cmd.Env, extra...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	tampered := filepath.Join(tmp, "tampered")
	if err := os.WriteFile(tampered, append(bytes.Clone(data), 0), 0o755); err != nil {
		t.Fatal(err)
	}
	tsum := sha256.Sum256(append(bytes.Clone(data), 0))
	for name, c := range map[string][3]string{
		"wrong sha256":   {bin, strings.Repeat("0", 64), sig},
		"tampered":       {tampered, hex.EncodeToString(tsum[:]), sig},
		"not base64 sig": {bin, sha, "!!"},
	} {
		out, err := run(c[0], c[1], c[2])
		if err == nil || !strings.Contains(out, "FAILURE") {
			t.Errorf("%s: bootstrap accepted it: %v\n%s", name, err, out)
		}
		if _, err := os.Stat(filepath.Join(root, SetupScript)); err == nil {
			t.Fatalf("%s: files written before the binary was verified", name)
		}
	}
	hsum := sha256.Sum256(hp)
	if out, err := run(bin, sha, sig, "IOTGW_EXPECT_PARAMS="+strings.Repeat("1", 64)); err == nil || !strings.Contains(out, "the rollout expects") {
		t.Errorf("parameters other than the rollout's accepted: %v\n%s", err, out)
	}

	out, err := run(bin, sha, sig, "IOTGW_EXPECT_PARAMS="+hex.EncodeToString(hsum[:]))
	if err != nil || !strings.Contains(out, "iotgw-setup: done") {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	want, err := Files(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range want {
		got, err := os.ReadFile(filepath.Join(root, f.Path))
		if err != nil || string(got) != f.Content {
			t.Errorf("%s: not what Files renders (%v)", f.Path, err)
		}
		// And the setup installed the payload into place.
		if rel, ok := strings.CutPrefix(f.Path, PayloadDir); ok {
			got, err := os.ReadFile(filepath.Join(root, rel))
			if err != nil || string(got) != f.Content {
				t.Errorf("%s: not installed (%v)", rel, err)
			}
		}
	}
	installed, err := os.ReadFile(filepath.Join(root, "usr/local/bin/iotgw"))
	if err != nil || !bytes.Equal(installed, data) {
		t.Errorf("gateway binary not installed: %v", err)
	}
	// A second run converges: nothing changes.
	out, err = run(bin, sha, sig)
	if err != nil || !strings.Contains(out, "iotgw-setup: done, 0 changed") {
		t.Errorf("second bootstrap changed something: %v\n%s", err, out)
	}
}

// TestBootstrapGatewaySlot: the same bootstrap brings a gateway slot up as
// only the gateway: the data volume holds only the spool's directory, the
// broker and InfluxDB are neither installed nor enabled, and only the
// token-making slot arms the export.
func TestBootstrapGatewaySlot(t *testing.T) {
	requireRoot(t)
	requireTool(t, "systemd-sysusers", "systemd")
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	requireTool(t, "openssl", "openssl")
	requireTool(t, "systemctl", "systemd")
	bin := buildIotgw(t)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	for _, admin := range []bool{false, true} {
		tmp := t.TempDir()
		root := filepath.Join(tmp, "root")
		b := baseBootstrap()
		b.HostParams = b.ParamPath + "/slots/1/host-params"
		bfiles, err := BootstrapFiles(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteFiles(root, bfiles); err != nil {
			t.Fatal(err)
		}
		p := slotParams(1, admin)
		p.DataFSType = "ext4"
		hp, err := HostParams(p)
		if err != nil {
			t.Fatal(err)
		}
		params := filepath.Join(tmp, "params.json")
		disk := filepath.Join(tmp, "data.img")
		if err := os.WriteFile(params, hp, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, 64<<20); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", filepath.Join(root, BootstrapScript))
		cmd.Env = append(os.Environ(), "ROOT="+root, "DATA_DEVICE_PATH="+disk,
			"IOTGW_ARTIFACT_FILE="+bin, "IOTGW_ARTIFACT_SHA256="+hex.EncodeToString(sum[:]), "IOTGW_ARTIFACT_SIG="+testSigner.sign(data),
			"IOTGW_HOST_PARAMS_FILE="+params)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "iotgw-setup: done") {
			t.Fatalf("bootstrap (admin %v): %v\n%s", admin, err, out)
		}
		fstab, _ := os.ReadFile(filepath.Join(root, "etc/fstab"))
		if !strings.Contains(string(fstab), "/data/iotgw /var/lib/iotgw none bind") ||
			strings.Contains(string(fstab), "influxdb") || strings.Contains(string(fstab), "iotgw-broker") {
			t.Errorf("fstab of a slot:\n%s", fstab)
		}
		for _, absent := range []string{BrokerConfig, "etc/systemd/system/iotgw-broker.service", "etc/influxdb/config.toml"} {
			if _, err := os.Stat(filepath.Join(root, absent)); err == nil {
				t.Errorf("slot has %s", absent)
			}
		}
		wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
		if _, err := os.Lstat(filepath.Join(wants, "iotgw.service")); err != nil {
			t.Errorf("iotgw.service not enabled: %v", err)
		}
		_, err = os.Lstat(filepath.Join(root, "etc/systemd/system/timers.target.wants/iotgw-export.timer"))
		if (err == nil) != admin {
			t.Errorf("admin %v: export timer enabled = %v", admin, err == nil)
		}
	}
}
