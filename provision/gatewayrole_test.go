package provision

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// slotParams are a gateway slot's parameters, as infra/stack renders them.
func slotParams(slot int, admin bool) Params {
	p := baseParams()
	p.Role = RoleGateway
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
		"all-in-one + slot": {func(p *Params) { p.Role = RoleAllInOne }, "gateway role only"},
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
	if out, err := runStep(env, "gateway_secrets"); err != nil {
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
	if fi, _ := os.Stat(filepath.Join(root, "run/iotgw-secrets/gateway.env")); fi.Mode().Perm() != 0o600 || gidOf(fi) != 0 {
		t.Errorf("gateway.env is readable beyond root")
	}
	if log, _ := os.ReadFile(ps.argv); strings.Contains(string(log), "MIIE") {
		t.Errorf("the key on a command line:\n%s", log)
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
