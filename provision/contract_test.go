package provision

// Contract tests: the rendered gateway.toml and broker.toml are loaded with
// the loaders the iotgw binary uses, so a key renamed or removed in app/
// (or a value it would refuse) fails here, not on a host at first boot.

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/export"
)

// ssmResolved are the gateway.toml keys whose ssm:/path values the binary
// resolves: `iotgw run` resolves all three (app/cmd/iotgw/run.go), `iotgw
// export` influx.token (export.go). An ssm: value anywhere else would reach
// the program as a literal string.
var ssmResolved = map[string]bool{"mqtt.username": true, "mqtt.password": true, "influx.token": true}

// rendered returns the payload file for a host path, as rendered for p.
func rendered(t *testing.T, p Params, hostPath string) string {
	t.Helper()
	fl, err := Files(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fl {
		if f.Path == PayloadDir+hostPath {
			return f.Content
		}
	}
	t.Fatalf("%s is not rendered", hostPath)
	return ""
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGatewayConfigContract loads gateway.toml as `iotgw run` does
// (config.Load with no environment, then Validate: unknown keys and bad
// values fail) and its [influx]/[export] part as `iotgw export` does
// (defaults, then export's own Validate with upload on), and checks the
// paths and addresses the units and the broker expect.
func TestGatewayConfigContract(t *testing.T) {
	for name, p := range configs() {
		t.Run(name, func(t *testing.T) {
			path := writeTemp(t, "gateway.toml", rendered(t, p, GatewayConfig))
			cfg, err := config.Load(path, nil)
			if err != nil {
				t.Fatalf("config.Load: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			p := p.withDefaults()
			check := func(key string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %v, want %v", key, got, want)
				}
			}
			check("gateway.id", cfg.Gateway.ID, p.Stack)
			check("mqtt.client_id", cfg.MQTT.ClientID, p.MQTTClientID)
			check("mqtt.username", cfg.MQTT.Username, p.MQTTUsername)
			check("mqtt.qos", cfg.MQTT.QoS, p.MQTTQoS)
			check("mqtt.topics", cfg.MQTT.Topics, p.MQTTTopics)
			check("influx.org", cfg.Influx.Org, p.InfluxOrg)
			check("influx.bucket", cfg.Influx.Bucket, p.InfluxBucket)
			check("http.addr", cfg.HTTP.Addr, p.HTTPAddr)
			check("spool.dir", cfg.Spool.Dir, SpoolDir)
			check("export.dir", cfg.Export.Dir, ExportDir)
			check("export.bucket", cfg.Export.Bucket, p.ExportBucket)
			check("export.region", cfg.Export.Region, p.Region)
			// The export's S3 keys must fall under the prefix the host's
			// IAM policy allows (Params.ExportPrefix + "*").
			check("export.prefix", cfg.Export.Prefix+"/", p.ExportPrefix)
			// Plain MQTT to this host's broker, on its plain listener.
			check("mqtt.url", cfg.MQTT.URL, "tcp://127.0.0.1:"+MQTTPlainPort)
			check("mqtt.ca_file", cfg.MQTT.CAFile+cfg.MQTT.CertFile+cfg.MQTT.KeyFile, "")
			// The gateway's health check in iotgw-setup reads HTTP_ADDR.
			if env := rendered(t, p, "/etc/iotgw/host.env"); !strings.Contains(env, "HTTP_ADDR='"+cfg.HTTP.Addr+"'\n") {
				t.Errorf("host.env HTTP_ADDR is not http.addr %s", cfg.HTTP.Addr)
			}

			// What `iotgw export` does with the same file.
			ex := cfg.Export.WithDefaults()
			if err := ex.Validate(true); err != nil {
				t.Errorf("export Validate: %v", err)
			}
			in := export.Influx{URL: cfg.Influx.URL, Token: cfg.Influx.Token, Org: cfg.Influx.Org, Bucket: cfg.Influx.Bucket}
			if err := in.Validate(); err != nil {
				t.Errorf("export Influx.Validate: %v", err)
			}
		})
	}
}

// TestGatewaySSMReferences: every ssm: value in gateway.toml is in a key
// the binary resolves and names one of GatewaySecrets under the stack's
// path (infra/stack's tests check that the stack creates each of those),
// and every GatewaySecrets entry is used.
func TestGatewaySSMReferences(t *testing.T) {
	for name, p := range configs() {
		t.Run(name, func(t *testing.T) {
			var doc map[string]any
			if _, err := toml.Decode(rendered(t, p, GatewayConfig), &doc); err != nil {
				t.Fatal(err)
			}
			refs := map[string]string{} // key -> ssm:/path
			var walk func(key string, v any)
			walk = func(key string, v any) {
				switch v := v.(type) {
				case map[string]any:
					for k, x := range v {
						walk(strings.TrimPrefix(key+"."+k, "."), x)
					}
				case []any:
					for _, x := range v {
						walk(key, x)
					}
				case string:
					if strings.HasPrefix(v, "ssm:") {
						refs[key] = v
					}
				}
			}
			walk("", doc)
			if len(refs) == 0 {
				t.Fatal("no ssm: references: the secrets would have to be on disk")
			}
			used := map[string]bool{}
			for key, ref := range refs {
				if !ssmResolved[key] {
					t.Errorf("%s = %q: iotgw does not resolve ssm: references in %s", key, ref, key)
				}
				param, ok := strings.CutPrefix(ref, "ssm:"+p.ParamPath+"/")
				if !ok || !contains(GatewaySecrets, param) {
					t.Errorf("%s = %q: not one of %v under %s", key, ref, GatewaySecrets, p.ParamPath)
				}
				used[param] = true
			}
			for _, s := range GatewaySecrets {
				if !used[s] {
					t.Errorf("GatewaySecrets lists %s, gateway.toml does not use it", s)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestBrokerConfigContract loads broker.toml with broker.LoadConfig (unknown
// keys and invalid combinations fail) and checks it points at what
// iotgw-setup writes. broker.LoadConfig reads no other file, so the test
// then moves the file paths into a temporary directory holding a users file
// in iotgw-setup's format and a certificate, and runs Config.Options, which
// reads them as `iotgw broker` does at start (users file syntax, bcrypt
// hashes, the gateway user present, the certificate and key usable).
func TestBrokerConfigContract(t *testing.T) {
	gwHash, err := broker.HashPassword("gw-secret")
	if err != nil {
		t.Fatal(err)
	}
	devHash, err := broker.HashPassword("device-secret")
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range configs() {
		t.Run(name, func(t *testing.T) {
			p := p.withDefaults()
			c, err := broker.LoadConfig(writeTemp(t, "broker.toml", rendered(t, p, BrokerConfig)))
			if err != nil {
				t.Fatalf("broker.LoadConfig: %v", err)
			}
			check := func(key string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %v, want %v", key, got, want)
				}
			}
			check("data_dir", c.DataDir, BrokerDataDir)
			check("users_file", c.UsersFile, BrokerUsersFile)
			check("gateway_users", c.GatewayUsers, []string{p.MQTTUsername})
			check("allow_anonymous", c.AllowAnonymous, false)
			check("allow_plain_public", c.AllowPlainPublic, p.MQTTPlaintextPublic)
			check("tls.cert_file", c.TLS.CertFile, BrokerTLSDir+"/server.crt")
			check("tls.key_file", c.TLS.KeyFile, BrokerTLSDir+"/server.key")
			check("tls.generate_ca", c.TLS.GenerateCA, false)
			host, port, err := net.SplitHostPort(c.Plain.Addr)
			if err != nil {
				t.Fatal(err)
			}
			check("plain.addr port", port, MQTTPlainPort)
			check("plain.addr is loopback", host == "127.0.0.1", !p.MQTTPlaintextPublic)
			check("tls.addr", c.TLS.Addr, ":"+MQTTTLSPort)

			// Read the files as the broker does at start.
			dir := t.TempDir()
			g, err := broker.EnsureCertificates(filepath.Join(dir, "tls"), []string{"gw.example.com"}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			users := "# Written by iotgw-setup\n" +
				"# " + p.MQTTUsername + ": " + p.ParamPath + "/mqtt-password version 1\n" +
				p.MQTTUsername + ":::" + gwHash + "\n" +
				"plant-a/sensor-1:plant-a:sensor-1:" + devHash + "\n"
			c.UsersFile = filepath.Join(dir, "broker-users")
			if err := os.WriteFile(c.UsersFile, []byte(users), 0o600); err != nil {
				t.Fatal(err)
			}
			c.DataDir, c.TLS.CertFile, c.TLS.KeyFile = dir, g.CertFile, g.KeyFile
			o, err := c.Options(nil)
			if err != nil {
				t.Fatalf("Options: %v", err)
			}
			if len(o.Users) != 2 || len(o.Listeners) != 2 {
				t.Errorf("Options: %d users, %d listeners; want 2 and 2", len(o.Users), len(o.Listeners))
			}
		})
	}
}

// TestSetupPathsMatchUnits: each directory a service writes (per the
// rendered configuration) lies under one of the StateDirectory= of its unit,
// since ProtectSystem=strict makes everything else read-only; and the paths
// iotgw-setup writes the broker's files to are those broker.toml names.
func TestSetupPathsMatchUnits(t *testing.T) {
	units, err := Units()
	if err != nil {
		t.Fatal(err)
	}
	writable := func(unit string) []string {
		var dirs []string
		for _, m := range regexp.MustCompile(`(?m)^(?:StateDirectory|ReadWritePaths)=(.*)$`).FindAllStringSubmatch(string(units[unit]), -1) {
			for _, d := range strings.Fields(m[1]) {
				if !strings.HasPrefix(d, "/") {
					d = "/var/lib/" + d
				}
				dirs = append(dirs, d)
			}
		}
		sort.Strings(dirs)
		return dirs
	}
	under := func(path string, dirs []string) bool {
		for _, d := range dirs {
			if path == d || strings.HasPrefix(path, d+"/") {
				return true
			}
		}
		return false
	}
	for _, w := range []struct{ unit, key, path string }{
		{"iotgw.service", "spool.dir", SpoolDir},
		{"iotgw-export.service", "export.dir", ExportDir},
		{"iotgw-broker.service", "data_dir", BrokerDataDir},
	} {
		dirs := writable(w.unit)
		if !under(w.path, dirs) {
			t.Errorf("%s: %s %s is not under its writable paths %v", w.unit, w.key, w.path, dirs)
		}
		var mounts []string
		for _, m := range regexp.MustCompile(`(?m)^RequiresMountsFor=(.*)$`).FindAllStringSubmatch(string(units[w.unit]), -1) {
			mounts = append(mounts, strings.Fields(m[1])...)
		}
		if !under(w.path, mounts) {
			t.Errorf("%s: %s %s is not under a RequiresMountsFor= (%v): it could land on the root disk", w.unit, w.key, w.path, mounts)
		}
	}
	export := string(units["iotgw-export.service"])
	if !regexp.MustCompile(`(?m)^ExecStart=\S+ export .*--catch-up`).MatchString(export) {
		t.Error("iotgw-export.service does not run --catch-up: days missed while the host was down would not be exported")
	}
	if strings.Contains(export, "CacheDirectory=") {
		t.Error("iotgw-export.service uses CacheDirectory=: the catch-up state must survive")
	}
	if strings.Contains(string(units["iotgw.service"]), "IOTGW_SPOOL_DIR") {
		t.Error("iotgw.service overrides spool.dir from gateway.toml")
	}

	script := string(SetupScriptSource())
	for _, want := range []string{
		"dst=$ROOT" + BrokerUsersFile,
		`"$dir/server.crt"`, `"$dir/server.key"`,
		"BROKER_VERIFY=(-CAfile " + BrokerTLSDir + "/ca.crt",
		// The bind mounts: /data/<name> on /var/lib/<name>, the broker's
		// among them (TestSetupTempRoot reads the fstab a run writes).
		"/data/$b /var/lib/$b none bind", "binds=(influxdb iotgw " + strings.TrimPrefix(BrokerDataDir, "/var/lib/") + ")",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("setup-host.sh lacks %q", want)
		}
	}
}
