package provision

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// slotParams are a gateway slot's parameters, as infra/stack renders them.
func slotParams(slot int, admin bool) Params {
	p := baseParams()
	p.Role = RoleGateway
	p.ExportRoleArn = ""
	p.Slot = slot
	p.MQTTClientID = "iot-gateway-dev-gw-" + string(rune('0'+slot))
	p.BrokerURL = "ssl://a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:8883"
	p.InfluxURL = "https://abc123-xyz.eu-central-1.timestream-influxdb.amazonaws.com:8086"
	p.MQTTConnections = 3
	p.MQTTTopics = []string{"$share/iotgw/sensors/#"}
	p.InfluxAdmin = admin
	return p
}

func TestGatewayRoleFiles(t *testing.T) {
	fl, err := Files(slotParams(1, false))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range fl {
		got[strings.TrimPrefix(f.Path, PayloadDir)] = true
	}
	for _, absent := range []string{BrokerConfig, "/etc/influxdb/config.toml", "/etc/systemd/system/iotgw-broker.service",
		"/etc/systemd/system/influxdb.service.d/iotgw.conf"} {
		if got[absent] {
			t.Errorf("a gateway slot gets %s: it runs no broker and no InfluxDB", absent)
		}
	}
	for _, present := range []string{GatewayConfig, "/etc/iotgw/host.env", "/etc/systemd/system/iotgw.service",
		"/etc/systemd/system/iotgw-secrets.service", SigningKeyFile, SetupScript, BootstrapScript} {
		if !got[present] {
			t.Errorf("a gateway slot lacks %s", present)
		}
	}
	env := rendered(t, slotParams(1, false), "/etc/iotgw/host.env")
	for _, w := range []string{"ROLE='gateway'\n", "SLOT='1'\n", "INFLUX_ADMIN='0'\n", "INFLUXDB_URL='https://abc123-xyz."} {
		if !strings.Contains(env, w) {
			t.Errorf("host.env lacks %q", w)
		}
	}
	if !strings.Contains(rendered(t, slotParams(0, true), "/etc/iotgw/host.env"), "INFLUX_ADMIN='1'\n") {
		t.Error("slot 0 does not make the InfluxDB tokens")
	}
}

// TestGatewaySlotConfigContract loads a slot's gateway.toml as `iotgw run`
// does: IoT Core over TLS with the slot's client id, connections and
// certificate, a shared subscription, no password, Timestream over HTTPS.
func TestGatewaySlotConfigContract(t *testing.T) {
	p := slotParams(2, false)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "iot.crt"), filepath.Join(dir, "iot.key")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	toml := rendered(t, p, GatewayConfig)
	toml = strings.ReplaceAll(strings.ReplaceAll(toml, IoTCertFile, cert), IoTKeyFile, key)
	cfg, err := config.Load(writeTemp(t, "gateway.toml", toml), nil)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for k, c := range map[string][2]any{
		"gateway.id":        {cfg.Gateway.ID, "dev-2"},
		"mqtt.url":          {cfg.MQTT.URL, p.BrokerURL},
		"mqtt.client_id":    {cfg.MQTT.ClientID, p.MQTTClientID},
		"mqtt.connections":  {cfg.MQTT.Connections, 3},
		"mqtt.topics":       {cfg.MQTT.Topics, []string{"$share/iotgw/sensors/#"}},
		"mqtt.cert_file":    {cfg.MQTT.CertFile, cert},
		"mqtt.key_file":     {cfg.MQTT.KeyFile, key},
		"mqtt.password":     {cfg.MQTT.Password, ""},
		"mqtt.insecure":     {cfg.MQTT.InsecureSkipVerify, false},
		"influx.url":        {cfg.Influx.URL, p.InfluxURL},
		"influx.token":      {cfg.Influx.Token, "ssm:/iot-gateway/dev/influx-run-token"},
		"spool.dir":         {cfg.Spool.Dir, SpoolDir},
		"mqtt.ca_file(sys)": {cfg.MQTT.CAFile, ""},
	} {
		if !reflect.DeepEqual(c[0], c[1]) {
			t.Errorf("%s = %v, want %v", k, c[0], c[1])
		}
	}
}

func TestGatewayRoleValidate(t *testing.T) {
	for name, c := range map[string]struct {
		edit func(*Params)
		want string
	}{
		"plain broker":      {func(p *Params) { p.BrokerURL = "tcp://x:1883" }, "BrokerURL"},
		"plain influx":      {func(p *Params) { p.InfluxURL = "http://x:8086" }, "InfluxURL"},
		"no broker":         {func(p *Params) { p.BrokerURL = "" }, "BrokerURL"},
		"not shared":        {func(p *Params) { p.MQTTTopics = []string{"sensors/#"} }, "shared subscription"},
		"share outside":     {func(p *Params) { p.MQTTTopics = []string{"$share/g/commands/#"} }, "not under sensors/"},
		"too many conns":    {func(p *Params) { p.MQTTConnections = 65 }, "MQTTConnections"},
		"public influx":     {func(p *Params) { p.InfluxListenPublic = true }, "all-in-one role"},
		"unknown role":      {func(p *Params) { p.Role = "broker" }, "Role"},
		"bad share group":   {func(p *Params) { p.MQTTTopics = []string{"$share/a b/sensors/#"} }, "MQTTTopics"},
		"dollar elsewhere":  {func(p *Params) { p.MQTTTopics = []string{"$share/g/sensors/$x"} }, "MQTTTopics"},
		"all-in-one + slot": {func(p *Params) { p.Role, p.ExportRoleArn = RoleAllInOne, baseParams().ExportRoleArn }, "gateway role only"},
		"export role":       {func(p *Params) { p.ExportRoleArn = baseParams().ExportRoleArn }, "no STS endpoint"},
	} {
		p := slotParams(1, false)
		c.edit(&p)
		if _, err := Files(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %s", name, err, c.want)
		}
	}
}

// TestGatewayIoTIdentityStep runs gateway_secrets for a slot against the
// aws stand-in: the IoT certificate and key land in memory, readable by the
// iotgw group and no one else, the environment file holds only the token,
// and a parameter that is not a PEM key is refused.
func TestGatewayIoTIdentityStep(t *testing.T) {
	requireRoot(t)
	requireTool(t, "bash", "bash")
	root, env := stepEnv(t, slotParams(1, false))
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("iotgw:x:973:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ps := newParamStore(t)
	const tok = "Zm9vYmFy-run_TOKEN=="
	certPEM := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	keyPEM := "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
	ps.set("influx-run-token", tok)
	ps.set(IoTCertParam, certPEM)
	ps.set(IoTKeyParam, keyPEM)
	env = append(env, "PATH="+ps.bin+":"+os.Getenv("PATH"), "OFFLINE=1", "SECRETS_RETRY=0")
	// As iotgw-secrets.service runs it on a slot: root with no
	// capabilities (CapabilityBoundingSet= empty), in the group its
	// drop-in names.
	dropIn := rendered(t, slotParams(1, false), "/etc/systemd/system/iotgw-secrets.service.d/gateway.conf")
	if !strings.Contains(dropIn, "\nGroup=iotgw\n") {
		t.Fatalf("the slot's iotgw-secrets.service drop-in does not set Group=iotgw:\n%s", dropIn)
	}
	setpriv := requireTool(t, "setpriv", "util-linux")
	asUnit := func(gid string) (string, error) {
		cmd := exec.Command(setpriv, "--regid="+gid, "--clear-groups", "--bounding-set=-all", "--inh-caps=-all",
			"bash", "-c", `source "$SCRIPT"; gateway_secrets`)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asUnit("973"); err != nil {
		t.Fatalf("gateway_secrets: %v\n%s", err, out)
	}
	for f, want := range map[string]string{IoTCertFile: certPEM, IoTKeyFile: keyPEM} {
		path := filepath.Join(root, f)
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v", f, b, err)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o640 || gidOf(fi) != 973 {
			t.Errorf("%s: mode %v gid %d, want 0640 group iotgw", f, fi.Mode().Perm(), gidOf(fi))
		}
	}
	envb, _ := os.ReadFile(filepath.Join(root, "run/iotgw-secrets/gateway.env"))
	if string(envb) != "IOTGW_INFLUX_TOKEN="+tok+"\n" {
		t.Errorf("gateway.env = %q", envb)
	}
	if fi, _ := os.Stat(filepath.Join(root, "run/iotgw-secrets/gateway.env")); fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("gateway.env is readable beyond root")
	}
	if log, _ := os.ReadFile(ps.argv); strings.Contains(string(log), "MIIE") {
		t.Errorf("the key on a command line:\n%s", log)
	}
	// Without the drop-in's group the unit cannot hand the files to iotgw.
	if out, err := asUnit("0"); err == nil {
		t.Errorf("gateway_secrets gave the files to iotgw without CAP_CHOWN or the group:\n%s", out)
	}
	ps.set(IoTKeyParam, "not a key")
	if out, err := runStep(env, "gateway_secrets"); err == nil || !regexp.MustCompile(`iot-gateway-key is not a PEM`).MatchString(out) {
		t.Errorf("bad key accepted: %v\n%s", err, out)
	}
}

func gidOf(fi os.FileInfo) uint32 {
	if fi == nil {
		return 1 << 31
	}
	return fi.Sys().(*syscall.Stat_t).Gid
}

// fakeTimestream answers like Timestream for InfluxDB (InfluxDB 2's
// OpenAPI): no operator token, a session cookie from POST /api/v2/signin
// with the admin's basic credentials, then the token calls (fakeInflux) and
// the template calls `influx apply` makes (GET /api/v2/orgs, POST
// /api/v2/stacks, POST /api/v2/templates/apply).
type fakeTimestream struct {
	influx   *fakeInflux
	password string
	mu       sync.Mutex
	stacks   int
	applied  []map[string]any
	errs     []string
}

const tsSession = "influxdb-oss-session=c2Vzc2lvbi0x"

func (f *fakeTimestream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == "POST" && r.URL.Path == "/api/v2/signin" {
		if r.Header.Get("Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:"+f.password)) {
			http.Error(w, `{"code":"unauthorized","message":"Unauthorized"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Set-Cookie", tsSession+"; Path=/api/; HttpOnly")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Header.Get("Cookie") != tsSession || r.Header.Get("Authorization") != "" {
		f.errs = append(f.errs, r.Method+" "+r.URL.Path+" without the session")
		http.Error(w, `{"code":"unauthorized","message":"unauthorized access"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == "GET" && r.URL.Path == "/api/v2/orgs" && r.URL.Query().Get("org") == "iot":
		fmt.Fprint(w, `{"links":{},"orgs":[{"id":"o00000000000000o","name":"iot"}]}`)
	case r.Method == "POST" && r.URL.Path == "/api/v2/stacks":
		var b map[string]any
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b["orgID"] != "o00000000000000o" || b["name"] != "iotgw" {
			f.errs = append(f.errs, fmt.Sprintf("stacks body %v %v", b, err))
		}
		f.stacks++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"s%015d","orgID":"o00000000000000o","events":[]}`, f.stacks)
	case r.Method == "POST" && r.URL.Path == "/api/v2/templates/apply":
		var b map[string]any
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			f.errs = append(f.errs, "apply body: "+err.Error())
		}
		f.applied = append(f.applied, b)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"sources":[],"stackID":"s000000000000001","diff":{},"summary":{}}`)
	default:
		// The token calls: fakeInflux takes the operator's token, which
		// stands for the session here.
		r.Header.Set("Authorization", "Token "+f.influx.operator)
		f.mu.Unlock()
		f.influx.ServeHTTP(w, r)
		f.mu.Lock()
	}
}

// TestGatewayInfluxStep runs slot 0's InfluxDB steps (influx_tokens,
// dashboard_api) against fakeTimestream: it signs in with the admin password
// from SSM, makes both tokens and stores them, applies the dashboard once
// (again only when the file changes), and never puts the password or a
// token on a command line.
func TestGatewayInfluxStep(t *testing.T) {
	requireTool(t, "curl", "curl")
	requireTool(t, "python3", "python3")
	root, env := stepEnv(t, slotParams(0, true))
	const pw = "admin-PASSWORD-5f2b9c"
	ts := &fakeTimestream{influx: &fakeInflux{operator: "session", auths: map[string]fakeAuth{}}, password: pw}
	srv := httptest.NewServer(ts)
	defer srv.Close()
	ps := newParamStore(t)
	ps.set("influx-admin-password", pw)
	ps.set("influx-run-token", TokenPlaceholder+" written by gateway slot 0")
	ps.set("influx-export-token", TokenPlaceholder+" written by gateway slot 0")
	env = append(env, "INFLUX_URL="+srv.URL, "PATH="+ps.bin+":"+os.Getenv("PATH"), "OFFLINE=1")
	step := func() string {
		t.Helper()
		out, err := runStep(env, `influx_tokens; dashboard_api; echo "changed=$CHANGED"`)
		if err != nil {
			t.Fatalf("slot 0 InfluxDB steps: %v\n%s", err, out)
		}
		return out
	}
	out := step()
	if !strings.Contains(out, "changed=3") {
		t.Errorf("first run:\n%s", out)
	}
	for _, n := range []string{"influx-run-token", "influx-export-token"} {
		if _, ok := ts.influx.byToken(ps.get(n)); !ok {
			t.Errorf("%s = %q is not a token InfluxDB made", n, ps.get(n))
		}
	}
	if len(ts.applied) != 1 || ts.stacks != 1 {
		t.Fatalf("applied %d times, %d stacks", len(ts.applied), ts.stacks)
	}
	a := ts.applied[0]
	var want []any
	mustUnmarshal(t, rendered(t, slotParams(0, true), "/etc/iotgw/dashboards/iotgw.json"), &want)
	if a["orgID"] != "o00000000000000o" || a["stackID"] != "s000000000000001" || a["dryRun"] != false ||
		!reflect.DeepEqual(a["template"].(map[string]any)["contents"], want) {
		t.Errorf("apply body (template contents omitted): orgID %v stackID %v dryRun %v", a["orgID"], a["stackID"], a["dryRun"])
	}
	if out := step(); !strings.Contains(out, "changed=0") || len(ts.applied) != 1 {
		t.Errorf("second run changed something (%d applies):\n%s", len(ts.applied), out)
	}
	// A changed dashboard is applied again, to the same stack.
	dash := filepath.Join(root, "etc/iotgw/dashboards/iotgw.json")
	b, _ := os.ReadFile(dash)
	if err := os.WriteFile(dash, bytes.Replace(b, []byte("["), []byte("[ "), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if step(); len(ts.applied) != 2 || ts.stacks != 1 || ts.applied[1]["stackID"] != "s000000000000001" {
		t.Errorf("changed dashboard: %d applies, %d stacks", len(ts.applied), ts.stacks)
	}
	if log, _ := os.ReadFile(ps.argv); strings.Contains(string(log), pw) || strings.Contains(string(log), "tok-") {
		t.Errorf("a secret on a command line:\n%s", log)
	}
	if len(ts.errs)+len(ts.influx.errs) != 0 {
		t.Errorf("server saw: %v %v", ts.errs, ts.influx.errs)
	}
	ps.set("influx-admin-password", "wrong-password")
	_ = os.Remove(filepath.Join(root, "data/iotgw-setup/dashboard.sha256"))
	if out, err := runStep(env, "dashboard_api"); err == nil || !strings.Contains(out, "cannot sign in") {
		t.Errorf("wrong password: %v\n%s", err, out)
	}
}

func mustUnmarshal(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatal(err)
	}
}
