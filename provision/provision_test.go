package provision

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/iot-gateway/iot-gateway/app/broker"
)

// requireTool returns the path of a tool the test needs. Outside CI a
// missing tool skips the test with a clear message; in CI (CI=true) it
// fails, so a missing install step cannot hide behind a skip.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found; install the Debian package %s", name, pkg)
	}
	t.Skipf("%s not found (Debian package %s); skipping outside CI", name, pkg)
	return ""
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test runs as root (it sets file owners in a temporary root)")
	}
	t.Skip("not root; the temporary-root test sets file owners")
}

func baseParams() Params {
	return Params{
		Stack:               "dev",
		Region:              "eu-central-1",
		ParamPath:           "/iot-gateway/dev",
		DataVolumeID:        "vol-0123456789abcdef0",
		ExportBucket:        "iot-gateway-dev-0a1b2c3d",
		ExportRoleArn:       "arn:aws:iam::123456789012:role/host-export-role-1a2b3c4",
		MQTTQoS:             1,
		InfluxRetentionDays: 0,
		SigningPublicKey:    string(testSigner.pub),
	}
}

// configs are the stack shapes the user-data is rendered for.
func configs() map[string]Params {
	all := baseParams()
	all.Stack, all.ParamPath = "prod-eu", "/iot-gateway/prod-eu"
	all.InfluxListenPublic = true
	all.MQTTPlaintextPublic = true
	all.MQTTTopics = []string{"sensors/#", "sensors/+/+/status"}
	all.MQTTQoS = 2
	all.InfluxRetentionDays = 400
	all.InfluxOrg, all.InfluxBucket = "acme", "telemetry"
	all.ExportPrefix = "daily/"
	noVolumeID := baseParams()
	noVolumeID.DataVolumeID = ""
	noVolumeID.DataDevice = "/dev/xvdf"
	return map[string]Params{"defaults": baseParams(), "everything-on": all, "device-name-only": noVolumeID}
}

func baseBootstrap() Bootstrap {
	return Bootstrap{
		Stack:            "dev",
		Region:           "eu-central-1",
		ParamPath:        "/iot-gateway/dev",
		HostParams:       "/iot-gateway/dev/host-params",
		SigningPublicKey: string(testSigner.pub),
	}
}

// bootstraps are the user-data shapes: the all-in-one host and a gateway
// slot of the scale topology, which reads its own parameters.
func bootstraps() map[string]Bootstrap {
	slot := baseBootstrap()
	slot.Stack, slot.ParamPath, slot.HostParams = "prod-eu", "/iot-gateway/prod-eu", "/iot-gateway/prod-eu/slots/11/host-params"
	return map[string]Bootstrap{"all-in-one": baseBootstrap(), "gateway-slot": slot}
}

func TestRenderUserData(t *testing.T) {
	for name, b := range bootstraps() {
		t.Run(name, func(t *testing.T) {
			ud, err := RenderUserData(b)
			if err != nil {
				t.Fatal(err)
			}
			gz, err := GzipUserData(b)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("user-data: %d bytes, %d gzipped (budget %d, EC2 %d)", len(ud), len(gz), UserDataBudget, MaxUserData)
			if len(gz) > UserDataBudget {
				t.Errorf("gzipped user-data %d bytes > budget %d", len(gz), UserDataBudget)
			}
			zr, err := gzip.NewReader(bytes.NewReader(gz))
			if err != nil {
				t.Fatal(err)
			}
			back, _ := io.ReadAll(zr)
			if !bytes.Equal(back, ud) {
				t.Error("gzip does not round-trip")
			}
			if gz2, _ := GzipUserData(b); !bytes.Equal(gz, gz2) {
				t.Error("GzipUserData is not deterministic")
			}

			// The YAML carries every file byte for byte.
			var doc struct {
				WriteFiles []struct {
					Path, Owner, Permissions, Content string
				} `yaml:"write_files"`
				Runcmd [][]string `yaml:"runcmd"`
			}
			if err := yaml.Unmarshal(ud, &doc); err != nil {
				t.Fatalf("user-data is not YAML: %v", err)
			}
			want, _ := BootstrapFiles(b)
			if len(doc.WriteFiles) != len(want) {
				t.Fatalf("%d files in user-data, want %d", len(doc.WriteFiles), len(want))
			}
			for i, f := range doc.WriteFiles {
				if f.Path != want[i].Path || f.Permissions != want[i].Mode || f.Content != want[i].Content {
					t.Errorf("file %s differs after the YAML round trip", want[i].Path)
				}
			}
			if len(doc.Runcmd) != 1 || doc.Runcmd[0][0] != BootstrapScript {
				t.Errorf("runcmd = %v", doc.Runcmd)
			}
			for _, w := range []string{"HOST_PARAMS='" + b.HostParams + "'", "PARAM_PATH='" + b.ParamPath + "'", "AWS_REGION='" + b.Region + "'"} {
				if !bytes.Contains(ud, []byte(w)) {
					t.Errorf("user-data lacks %s", w)
				}
			}

			cloudInitSchema(t, ud)
		})
	}
}

// TestUserDataBudget: the budget is enforced, not only measured.
func TestUserDataBudget(t *testing.T) {
	b := baseBootstrap()
	var noise strings.Builder
	for h := sha256.Sum256(nil); noise.Len() < 3*UserDataBudget; h = sha256.Sum256(h[:]) {
		noise.WriteString(hex.EncodeToString(h[:]))
	}
	b.HostParams = b.ParamPath + "/" + noise.String()
	if _, err := GzipUserData(b); err == nil || !strings.Contains(err.Error(), "budget") {
		t.Errorf("incompressible oversized user-data: %v", err)
	}
	b = baseBootstrap()
	b.HostParams = "/elsewhere/host-params"
	if _, err := RenderUserData(b); err == nil || !strings.Contains(err.Error(), "HostParams") {
		t.Errorf("host parameters outside the stack's path: %v", err)
	}
}

func TestHostParamsRoundTrip(t *testing.T) {
	for name, p := range configs() {
		b, err := HostParams(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Contains(b, []byte("PUBLIC KEY")) {
			t.Errorf("%s: host parameters carry the signing key", name)
		}
		back, err := ParseHostParams(b, p.SigningPublicKey)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want, _ := Files(p)
		got, err := Files(back)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("%s: files from the parsed parameters differ", name)
		}
	}
	b, _ := HostParams(baseParams())
	// A key smuggled into the parameters is refused, not used.
	evil := bytes.Replace(b, []byte("{"), []byte(`{"SigningPublicKey":"x",`), 1)
	if _, err := ParseHostParams(evil, string(testSigner.pub)); err == nil {
		t.Error("host parameters with a signing key accepted")
	}
	if _, err := ParseHostParams(bytes.Replace(b, []byte(`"InfluxOrg":"iot"`), []byte(`"InfluxOrg":"a'b"`), 1), string(testSigner.pub)); err == nil {
		t.Error("unsafe value in host parameters accepted")
	}
}

func cloudInitSchema(t *testing.T, ud []byte) {
	t.Helper()
	ci := requireTool(t, "cloud-init", "cloud-init")
	f := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(f, ud, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(ci, "schema", "--config-file", f).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
		t.Errorf("cloud-init schema: %v\n%s", err, out)
	}
}

func TestRenderedValues(t *testing.T) {
	p := configs()["everything-on"]
	files, err := Files(p)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]string{}
	for _, f := range files {
		byPath[strings.TrimPrefix(f.Path, PayloadDir)] = f.Content
	}
	checks := map[string][]string{
		"/etc/iotgw/gateway.toml": {
			`password = "ssm:/iot-gateway/prod-eu/mqtt-password"`,
			`token = "ssm:/iot-gateway/prod-eu/influx-run-token"`,
			`topics = ["sensors/#", "sensors/+/+/status"]`, `qos = 2`, `org = "acme"`, `bucket = "telemetry"`,
			`addr = "127.0.0.1:9273"`, `prefix = "daily"`, `client_id = "iotgw-prod-eu"`,
		},
		"/etc/iotgw/broker.toml":           {`addr = ":1883"`, "allow_plain_public = true", `gateway_users = ["iotgw"]`},
		"/etc/influxdb/config.toml":        {`http-bind-address = ":8086"`},
		"/etc/iotgw/host.env":              {"INFLUX_RETENTION_DAYS='400'", "PARAM_PATH='/iot-gateway/prod-eu'", "DATA_FSTYPE='xfs'"},
		"/etc/iotgw/dashboards/iotgw.json": {`"kind": "Dashboard"`, `r._measurement == \"environment\"`},
	}
	for path, wants := range checks {
		for _, w := range wants {
			if !strings.Contains(byPath[path], w) {
				t.Errorf("%s lacks %s", path, w)
			}
		}
	}
	def, _ := Files(baseParams())
	for _, f := range def {
		if strings.HasSuffix(f.Path, "broker.toml") &&
			(!strings.Contains(f.Content, `addr = "127.0.0.1:1883"`) || strings.Contains(f.Content, "allow_plain_public")) {
			t.Error("plain MQTT is not loopback-only by default")
		}
		if strings.HasSuffix(f.Path, "influxdb/config.toml") && !strings.Contains(f.Content, `"127.0.0.1:8086"`) {
			t.Error("InfluxDB is not loopback-only by default")
		}
	}
}

func TestParamsValidate(t *testing.T) {
	tests := map[string]func(*Params){
		"no stack":         func(p *Params) { p.Stack = "" },
		"quote in bucket":  func(p *Params) { p.ExportBucket = `b"; rm -rf /` },
		"newline in org":   func(p *Params) { p.InfluxOrg = "a\nb" },
		"dollar in topic":  func(p *Params) { p.MQTTTopics = []string{"$SYS/#"} },
		"relative path":    func(p *Params) { p.ParamPath = "iot-gateway/dev" },
		"prefix without /": func(p *Params) { p.ExportPrefix = "exports" },
		"prefix only /":    func(p *Params) { p.ExportPrefix = "/" },
		"prefix with //":   func(p *Params) { p.ExportPrefix = "a//b/" },
		"leading / prefix": func(p *Params) { p.ExportPrefix = "/exports/" },
		"topic outside":    func(p *Params) { p.MQTTTopics = []string{"site/+/status"} },
		"topic #":          func(p *Params) { p.MQTTTopics = []string{"#"} },
		"qos":              func(p *Params) { p.MQTTQoS = 5 },
		"space":            func(p *Params) { p.Region = "eu central" },
		"no export role":   func(p *Params) { p.ExportRoleArn = "" },
		"export role user": func(p *Params) { p.ExportRoleArn = "arn:aws:iam::123456789012:user/export" },
		"export role name": func(p *Params) { p.ExportRoleArn = "host-export-role" },
	}
	for name, edit := range tests {
		p := baseParams()
		edit(&p)
		if _, err := Files(p); err == nil {
			t.Errorf("%s: rendered without error", name)
		}
	}
}

// unitDir writes the units to a directory with ExecStart pointing at a stub
// binary, since systemd-analyze verify checks that the binary exists.
func unitDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	stub := filepath.Join(dir, "iotgw")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	units, err := Units()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range units {
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/iotgw"), []byte(stub))
		b = bytes.ReplaceAll(b, []byte(SetupScript), []byte(stub))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func unitNames(t *testing.T) []string {
	units, err := Units()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range units {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) != 6 {
		t.Fatalf("units = %v, want 6", names)
	}
	return names
}

// TestEveryUnitShipped: each unit file in files/systemd reaches the host,
// byte for byte, where systemd looks for it; a unit the others want but
// the host never gets would leave them failing on first boot.
func TestEveryUnitShipped(t *testing.T) {
	units, err := Units()
	if err != nil {
		t.Fatal(err)
	}
	fl, err := Files(baseParams())
	if err != nil {
		t.Fatal(err)
	}
	shipped := map[string]string{}
	for _, f := range fl {
		shipped[f.Path] = f.Content
	}
	for name, b := range units {
		got, ok := shipped[PayloadDir+"/etc/systemd/system/"+name]
		if !ok || got != string(b) {
			t.Errorf("%s is not in the user-data as /etc/systemd/system/%s", name, name)
		}
	}
}

func TestUnitsVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", "systemd")
	dir := unitDir(t)
	for _, name := range unitNames(t) {
		out, err := exec.Command(sa, "verify", filepath.Join(dir, name)).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

var exposureRe = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+)`)

func TestUnitsExposure(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", "systemd")
	dir := unitDir(t)
	for _, name := range unitNames(t) {
		if !strings.HasSuffix(name, ".service") {
			continue
		}
		out, _ := exec.Command(sa, "security", "--offline=yes", filepath.Join(dir, name)).CombinedOutput()
		m := exposureRe.FindSubmatch(out)
		if m == nil {
			t.Errorf("%s: no exposure level in:\n%s", name, out)
			continue
		}
		level, _ := strconv.ParseFloat(string(m[2]), 64)
		t.Logf("%s exposure %.1f", name, level)
		// iotgw-secrets.service and iotgw-export-secrets.service run as
		// root (they read root's files and write /run) and need the
		// network for SSM and STS.
		limit := 1.5
		switch name {
		case "iotgw-secrets.service", "iotgw-export-secrets.service":
			limit = 2.0
		case "iotgw-broker.service":
			// The internet talks to it: no local sockets, its own mounts.
			limit = 1.1
		}
		if level > limit {
			t.Errorf("%s exposure %.1f > %.1f:\n%s", name, level, limit, out)
		}
	}
}

func TestTimerCalendar(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", "systemd")
	units, _ := Units()
	timer := string(units["iotgw-export.timer"])
	for _, want := range []string{"Persistent=true", "RandomizedDelaySec=", "Unit=iotgw-export.service"} {
		if !strings.Contains(timer, want) {
			t.Errorf("timer lacks %s", want)
		}
	}
	m := regexp.MustCompile(`(?m)^OnCalendar=(.*)$`).FindStringSubmatch(timer)
	if m == nil {
		t.Fatal("timer has no OnCalendar")
	}
	out, err := exec.Command(sa, "calendar", m[1]).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze calendar %q: %v\n%s", m[1], err, out)
	}
	if !strings.Contains(string(out), "Normalized form: *-*-* 03:00:00\n") {
		t.Errorf("calendar %q does not normalise to *-*-* 03:00:00:\n%s", m[1], out)
	}
}

func TestUnitsContract(t *testing.T) {
	units, _ := Units()
	gw := string(units["iotgw.service"])
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "ExecStart=/usr/local/bin/iotgw run --config /etc/iotgw/gateway.toml",
		"StateDirectory=iotgw", "RequiresMountsFor=/var/lib/iotgw",
	} {
		if !strings.Contains(gw, want) {
			t.Errorf("iotgw.service lacks %s", want)
		}
	}
	if !strings.Contains(string(units["iotgw-broker.service"]), "ExecStart=/usr/local/bin/iotgw broker --config /etc/iotgw/broker.toml") {
		t.Error("iotgw-broker.service does not run iotgw broker")
	}
	if !strings.Contains(string(units["iotgw-export.service"]), "ExecStart=/usr/local/bin/iotgw export --config /etc/iotgw/gateway.toml") {
		t.Error("iotgw-export.service does not run iotgw export")
	}
	for name, b := range units {
		if strings.HasSuffix(name, ".service") {
			for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service", "RestrictAddressFamilies="} {
				if !strings.Contains(string(b), want) {
					t.Errorf("%s lacks %q", name, want)
				}
			}
		}
	}
}

func TestShellcheck(t *testing.T) {
	sc := requireTool(t, "shellcheck", "shellcheck")
	dir := t.TempDir()
	script := filepath.Join(dir, "iotgw-setup")
	if err := os.WriteFile(script, SetupScriptSource(), 0o755); err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(dir, "iotgw-bootstrap")
	if err := os.WriteFile(boot, BootstrapScriptSource(), 0o755); err != nil {
		t.Fatal(err)
	}
	scripts := []string{script, boot}
	// The repository's own scripts too.
	more, _ := filepath.Glob("../scripts/*.sh")
	scripts = append(scripts, more...)
	for _, s := range scripts {
		out, err := exec.Command(sc, "--severity=style", s).CombinedOutput()
		if err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}
}

// TestSetupTempRoot runs the setup script's host-side steps against a
// temporary root: a second run must change nothing.
func TestSetupTempRoot(t *testing.T) {
	requireRoot(t)
	requireTool(t, "systemd-sysusers", "systemd")
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	requireTool(t, "openssl", "openssl")
	requireTool(t, "systemctl", "systemd")

	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	p := baseParams()
	p.DataFSType = "ext4" // xfsprogs is not needed for the test
	files, err := Files(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		mode, _ := strconv.ParseUint(f.Mode, 8, 32)
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(f.Content), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(tmp, "data.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	// The gateway artifact is a stand-in for iotgw whose `broker
	// hash-password` prints, in turn, one of two real bcrypt hashes of the
	// gateway's password: like the real one, each call gives another hash.
	stubs := newSetupStubs(t, tmp)
	bin := filepath.Join(tmp, "iotgw")
	if err := os.WriteFile(bin, stubs.iotgw, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(stubs.iotgw)
	sig := testSigner.sign(stubs.iotgw)

	runArtifact := func(artifact, sha, sig string) (string, error) {
		cmd := exec.Command("bash", filepath.Join(root, SetupScript))
		cmd.Env = append(os.Environ(), "ROOT="+root, "DATA_DEVICE_PATH="+disk, "TLS_NAMES=localhost 127.0.0.1 gw.example.com",
			"IOTGW_ARTIFACT_FILE="+artifact, "IOTGW_ARTIFACT_SHA256="+sha, "IOTGW_ARTIFACT_SIG="+sig,
			"WITH_AWS=1", "PATH="+stubs.bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	run := func(sha string) (string, error) { return runArtifact(bin, sha, sig) }
	out, err := run(hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "changed: formatted") {
		t.Errorf("first run did not format the blank volume:\n%s", out)
	}
	if !strings.Contains(out, "warning: skipping /iot-gateway/dev/devices/no-site") {
		t.Errorf("a device parameter not named <site>/<device> was not reported:\n%s", out)
	}
	first := snapshot(t, root)
	uuid := blkUUID(t, disk)

	out, err = run(hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "iotgw-setup: done, 0 changed") {
		t.Errorf("second run changed something:\n%s", out)
	}
	second := snapshot(t, root)
	if first != second {
		t.Errorf("second run changed the tree:\n--- first\n%s\n--- second\n%s", first, second)
	}
	if blkUUID(t, disk) != uuid {
		t.Error("second run reformatted the data volume")
	}

	// Expected files, owners and modes.
	uid := func(name string) int { return lookupID(t, filepath.Join(root, "etc/passwd"), name) }
	gid := func(name string) int { return lookupID(t, filepath.Join(root, "etc/group"), name) }
	for _, w := range []struct {
		path     string
		mode     fs.FileMode
		uid, gid int
	}{
		{"etc/iotgw/gateway.toml", 0o644, 0, 0},
		{"etc/iotgw/broker.toml", 0o644, 0, 0},
		{"etc/iotgw/host.env", 0o644, 0, 0},
		{"etc/influxdb/config.toml", 0o644, 0, 0},
		{"etc/systemd/system/iotgw.service", 0o644, 0, 0},
		{"etc/systemd/system/iotgw-export.timer", 0o644, 0, 0},
		{"etc/systemd/system/iotgw-secrets.service", 0o644, 0, 0},
		{"etc/iotgw/export.env", 0o644, 0, 0},
		{"etc/iotgw/signing.pub", 0o644, 0, 0},
		{"etc/systemd/system/influxdb.service.d/iotgw.conf", 0o644, 0, 0},
		{"usr/local/bin/iotgw", 0o755, 0, 0},
		{"data", fs.ModeDir | 0o755, 0, 0},
		{"data/iotgw", fs.ModeDir | 0o750, uid("iotgw"), gid("iotgw")},
		{"data/iotgw-broker", fs.ModeDir | 0o750, uid("iotgw-broker"), gid("iotgw-broker")},
		{"data/iotgw-broker/tls/server.key", 0o600, uid("iotgw-broker"), gid("iotgw-broker")},
		{"data/iotgw-broker/tls/server.crt", 0o644, uid("iotgw-broker"), gid("iotgw-broker")},
		{"data/iotgw-broker/tls/ca.key", 0o600, 0, 0},
		{"etc/iotgw/broker-users", 0o640, 0, gid("iotgw-broker")},
		{"var/lib/iotgw", fs.ModeDir | 0o755, 0, 0},
	} {
		fi, err := os.Lstat(filepath.Join(root, w.path))
		if err != nil {
			t.Errorf("%s: %v", w.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != w.mode || int(st.Uid) != w.uid || int(st.Gid) != w.gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", w.path, fi.Mode(), st.Uid, st.Gid, w.mode, w.uid, w.gid)
		}
	}
	if uid("iotgw") == 0 || uid("iotgw-broker") == 0 {
		t.Error("system users not created")
	}
	for _, link := range []string{"multi-user.target.wants/iotgw.service", "multi-user.target.wants/iotgw-broker.service", "timers.target.wants/iotgw-export.timer"} {
		if _, err := os.Readlink(filepath.Join(root, "etc/systemd/system", link)); err != nil {
			t.Errorf("not enabled: %s", link)
		}
	}
	fstab, _ := os.ReadFile(filepath.Join(root, "etc/fstab"))
	for _, want := range []string{"UUID=" + uuid + " /data ext4 defaults,nofail", "/data/iotgw /var/lib/iotgw none bind,nofail"} {
		if !strings.Contains(string(fstab), want) {
			t.Errorf("fstab lacks %q:\n%s", want, fstab)
		}
	}
	tls := filepath.Join(root, "data/iotgw-broker/tls")
	if out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(tls, "ca.crt"), filepath.Join(tls, "server.crt")).CombinedOutput(); err != nil {
		t.Errorf("server certificate does not verify against the CA: %s", out)
	}
	if out, _ := exec.Command("openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", filepath.Join(tls, "server.crt")).CombinedOutput(); !strings.Contains(string(out), "DNS:gw.example.com") {
		t.Errorf("server certificate names: %s", out)
	}

	brokerUsersAfterSetup(t, root, stubs, func() (string, error) { return run(hex.EncodeToString(sum[:])) })

	// A binary whose checksum does not match is refused and not installed.
	out, err = run(strings.Repeat("0", 64))
	if err == nil || !strings.Contains(out, "FAILURE: gateway artifact sha256") {
		t.Errorf("bad checksum accepted: %v\n%s", err, out)
	}

	// Someone who can change the S3 object and the SSM parameter (address
	// and sha256) but not the user-data: a tampered binary with its own
	// sha256, or one signed by another key, is refused and not installed.
	installed, _ := os.ReadFile(filepath.Join(root, "usr/local/bin/iotgw"))
	tampered := append(bytes.Clone(stubs.iotgw), []byte("# tampered\n")...)
	evil := filepath.Join(tmp, "iotgw-tampered")
	if err := os.WriteFile(evil, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	tsum := sha256.Sum256(tampered)
	for name, s := range map[string]string{
		"tampered, old signature":  sig,
		"signed by another key":    newTestSigner(t).sign(tampered),
		"no signature":             "",
		"truncated signature":      sig[:40],
		"signature is not base64!": "!!" + sig[2:],
	} {
		out, err := runArtifact(evil, hex.EncodeToString(tsum[:]), s)
		if err == nil || !strings.Contains(out, "FAILURE: gateway artifact signature does not verify") {
			t.Errorf("%s: accepted: %v\n%s", name, err, out)
		}
		if now, _ := os.ReadFile(filepath.Join(root, "usr/local/bin/iotgw")); !bytes.Equal(now, installed) {
			t.Fatalf("%s: the installed binary changed", name)
		}
	}
}

// snapshot lists every path under root with type, mode, owner, mtime and a
// content hash, so any change between runs shows.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		extra := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			extra, _ = os.Readlink(path)
		case fi.Mode().IsRegular():
			c, _ := os.ReadFile(path)
			s := sha256.Sum256(c)
			extra = hex.EncodeToString(s[:8])
		}
		rel, _ := filepath.Rel(root, path)
		fmt.Fprintf(&b, "%s %v %d:%d %d %s\n", rel, fi.Mode(), st.Uid, st.Gid, fi.ModTime().UnixNano(), extra)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func blkUUID(t *testing.T, dev string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "UUID", dev).Output()
	if err != nil {
		t.Fatalf("blkid %s: %v", dev, err)
	}
	return strings.TrimSpace(string(out))
}

func lookupID(t *testing.T, file, name string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 2 && f[0] == name {
			id, _ := strconv.Atoi(f[2])
			return id
		}
	}
	return 0
}

// setupStubs are the stand-ins TestSetupTempRoot gives iotgw-setup: an `aws`
// on PATH answering the SSM calls of the broker users step, and the gateway
// artifact's `iotgw broker hash-password`.
type setupStubs struct {
	bin      string // directory with the aws stub, put first on PATH
	iotgw    []byte // the artifact iotgw-setup installs as /usr/local/bin/iotgw
	hashes   [2]string
	devHash  string
	counter  string // how many times hash-password ran
	argv     string // every aws and iotgw command line, one per line
	version  string // file holding the mqtt-password parameter's version
	password string
}

func newSetupStubs(t *testing.T, dir string) *setupStubs {
	t.Helper()
	s := &setupStubs{
		bin:      filepath.Join(dir, "bin"),
		counter:  filepath.Join(dir, "hash-count"),
		argv:     filepath.Join(dir, "argv"),
		version:  filepath.Join(dir, "mqtt-password-version"),
		password: "gw-secret-not-in-argv",
	}
	var err error
	for i := range s.hashes {
		if s.hashes[i], err = broker.HashPassword(s.password); err != nil {
			t.Fatal(err)
		}
	}
	if s.devHash, err = broker.HashPassword("device-secret"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.version, []byte("3"), 0o644); err != nil {
		t.Fatal(err)
	}
	aws := fmt.Sprintf(`#!/bin/bash
# aws stand-in: the SSM calls of iotgw-setup's broker users step.
echo "aws $*" >>%[1]q
args=" $* "
case $args in
*" get-parameter "*"--name /iot-gateway/dev/mqtt-password "*"Parameter.[Version,LastModifiedDate]"*)
	printf '%%s\t2026-11-20T10:00:00+00:00\n' "$(cat %[2]q)" ;;
*" get-parameter "*"--with-decryption "*"--name /iot-gateway/dev/mqtt-password "*"Parameter.Value"*)
	printf '%%s\n' %[3]q ;;
*" get-parameters-by-path "*"--path /iot-gateway/dev/devices "*"--recursive "*"--with-decryption "*)
	printf '/iot-gateway/dev/devices/plant-b/sensor-2\t%%s\n' '%[4]s'
	printf '/iot-gateway/dev/devices/plant-a/sensor-1\t%%s\n' '%[4]s'
	printf '/iot-gateway/dev/devices/no-site\t%%s\n' '%[4]s'
	printf '/iot-gateway/dev/devices/plant-a/sensor-3\tnot-a-hash\n' ;;
*) echo "aws stub: unexpected call: $*" >&2; exit 255 ;;
esac
`, s.argv, s.version, s.password, s.devHash)
	if err := os.WriteFile(filepath.Join(s.bin, "aws"), []byte(aws), 0o755); err != nil {
		t.Fatal(err)
	}
	s.iotgw = []byte(fmt.Sprintf(`#!/bin/sh
# iotgw stand-in: broker hash-password only.
echo "iotgw $*" >>%[1]q
[ "$*" = "broker hash-password" ] || exit 2
read -r pw
[ "$pw" = %[2]q ] || { echo "unexpected password on stdin" >&2; exit 3; }
n=$(cat %[3]q 2>/dev/null || echo 0)
echo $((n + 1)) >%[3]q
if [ $((n %% 2)) = 0 ]; then echo '%[4]s'; else echo '%[5]s'; fi
`, s.argv, s.password, s.counter, s.hashes[0], s.hashes[1]))
	return s
}

func (s *setupStubs) hashCalls(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(s.counter)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// brokerUsersAfterSetup checks the users file iotgw-setup wrote (after its
// two runs) with the broker's own loader, then that a new version of the
// gateway's password parameter rehashes it and a further run changes nothing.
func brokerUsersAfterSetup(t *testing.T, root string, s *setupStubs, rerun func() (string, error)) {
	t.Helper()
	usersPath := filepath.Join(root, BrokerUsersFile)
	users, err := os.ReadFile(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.hashCalls(t); n != 1 {
		t.Errorf("hash-password ran %d times in two runs, want 1: an unchanged password must keep its hash", n)
	}
	want := "# Written by iotgw-setup from SSM /iot-gateway/dev; edits are overwritten.\n" +
		"# iotgw: /iot-gateway/dev/mqtt-password version 3 2026-11-20T10:00:00+00:00\n" +
		"iotgw:::" + s.hashes[0] + "\n" +
		"plant-a/sensor-1:plant-a:sensor-1:" + s.devHash + "\n" +
		"plant-b/sensor-2:plant-b:sensor-2:" + s.devHash + "\n"
	if string(users) != want {
		t.Errorf("broker-users:\n%s\nwant:\n%s", users, want)
	}
	argv, _ := os.ReadFile(s.argv)
	if strings.Contains(string(argv), s.password) {
		t.Errorf("the gateway's password appeared on a command line:\n%s", argv)
	}

	// The rendered broker.toml with its paths under root loads, and its
	// users and certificate are usable, by the broker's own code.
	c, err := broker.LoadConfig(filepath.Join(root, BrokerConfig))
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = filepath.Join(root, c.DataDir)
	c.UsersFile = filepath.Join(root, c.UsersFile)
	// /var/lib/iotgw-broker is a bind mount of /data/iotgw-broker on the host.
	c.TLS.CertFile = filepath.Join(root, "data/iotgw-broker", strings.TrimPrefix(c.TLS.CertFile, BrokerDataDir))
	c.TLS.KeyFile = filepath.Join(root, "data/iotgw-broker", strings.TrimPrefix(c.TLS.KeyFile, BrokerDataDir))
	o, err := c.Options(nil)
	if err != nil {
		t.Fatalf("broker Options on what iotgw-setup wrote: %v", err)
	}
	if len(o.Users) != 3 {
		t.Errorf("broker read %d users, want 3", len(o.Users))
	}

	// A new version of the password: the gateway's line is hashed again.
	if err := os.WriteFile(s.version, []byte("4"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := rerun()
	if err != nil {
		t.Fatalf("run after a password change: %v\n%s", err, out)
	}
	if !strings.Contains(out, "changed: "+usersPath+" (3 users)") || !strings.Contains(out, "done, 1 changed") {
		t.Errorf("a new password version did not rewrite only the users file:\n%s", out)
	}
	users, _ = os.ReadFile(usersPath)
	if !strings.Contains(string(users), "version 4 ") || !strings.Contains(string(users), "iotgw:::"+s.hashes[1]+"\n") {
		t.Errorf("gateway line not rehashed for version 4:\n%s", users)
	}
	if out, err := rerun(); err != nil || !strings.Contains(out, "done, 0 changed") {
		t.Errorf("run after the rehash changed something: %v\n%s", err, out)
	}
	if n := s.hashCalls(t); n != 2 {
		t.Errorf("hash-password ran %d times, want 2", n)
	}
}
