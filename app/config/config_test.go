package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func noEnv(string) (string, bool) { return "", false }

// The sample documents the defaults: loading it must give exactly Default().
func TestSampleIsTheDefaults(t *testing.T) {
	c, err := Load(write(t, Sample), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("sample.toml and Default() differ:\n%+v\n%+v", c, Default())
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, e := range Env {
		if !strings.Contains(Sample, e.name) {
			t.Errorf("sample.toml does not document %s", e.name)
		}
	}
}

func TestPrecedence(t *testing.T) {
	p := write(t, "[mqtt]\nurl = \"tcp://file:1883\"\nqos = 2\n[influx]\nbucket = \"file\"\nflush_interval = \"1s\"\n")
	env := map[string]string{"IOTGW_MQTT_URL": "ssl://env:8883", "IOTGW_MQTT_TOPICS": "a/#, $share/g/b/+ ,", "IOTGW_INFLUX_TOKEN": ""}
	c, err := Load(p, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.URL != "ssl://env:8883" || c.MQTT.QoS != 2 || c.Influx.Bucket != "file" ||
		c.Influx.FlushInterval.Duration != time.Second || !reflect.DeepEqual(c.MQTT.Topics, []string{"a/#", "$share/g/b/+"}) {
		t.Fatalf("unexpected %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("empty token must be accepted: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name, body string
		env        map[string]string
		want       string
	}{
		{"unknown key", "[mqtt]\nurll = \"x\"\n", nil, "unknown key mqtt.urll"},
		{"unknown table", "[mqttt]\nurl = \"x\"\n", nil, "unknown key mqttt"},
		{"bad type", "[mqtt]\nqos = \"one\"\n", nil, "qos"},
		{"bad duration", "[influx]\ntimeout = \"soon\"\n", nil, "not a duration"},
		{"bad gzip", "[influx]\ngzip = \"maybe\"\n", nil, `maybe is not true, false or "auto"`},
		{"syntax", "[mqtt\n", nil, "gw.toml"},
		{"bad env int", "", map[string]string{"IOTGW_MQTT_QOS": "high"}, "environment IOTGW_MQTT_QOS"},
		{"bad protocol number", "[mqtt]\nprotocol = 3\n", nil, `3 is not "5" or "3.1.1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, tt.body), func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := Load("/nonexistent/gw.toml", noEnv); err == nil || !strings.Contains(err.Error(), "open /nonexistent/gw.toml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"mqtt url", func(c *Config) { c.MQTT.URL = "localhost" }, "mqtt.url"},
		{"mqtt scheme", func(c *Config) { c.MQTT.URL = "http://x:1" }, "mqtt.url: scheme"},
		{"qos", func(c *Config) { c.MQTT.QoS = 3 }, "mqtt.qos"},
		{"memory limit too low", func(c *Config) { c.Gateway.MemoryLimit = 1 << 20 }, "gateway.memory_limit"},
		{"no topics", func(c *Config) { c.MQTT.Topics = nil }, "mqtt.topics"},
		{"bad filter", func(c *Config) { c.MQTT.Topics = []string{"a/#/b"} }, "mqtt.topics"},
		{"bad share", func(c *Config) { c.MQTT.Topics = []string{"$share/g"} }, "mqtt.topics"},
		{"connections need share", func(c *Config) { c.MQTT.Connections = 2 }, "mqtt.connections"},
		{"cert without key", func(c *Config) { c.MQTT.CertFile = "/x" }, "mqtt.cert_file"},
		{"missing ca", func(c *Config) { c.MQTT.CAFile = "/nonexistent/ca.pem" }, "mqtt.ca_file"},
		{"pattern", func(c *Config) { c.Mapping.TopicPattern = "a/{b}" }, "mapping"},
		{"influx url", func(c *Config) { c.Influx.URL = "localhost:8086" }, "influx.url"},
		{"bucket", func(c *Config) { c.Influx.Bucket = "" }, "influx.bucket"},
		{"batch", func(c *Config) { c.Influx.BatchSize = 0 }, "influx.batch_size"},
		{"flush", func(c *Config) { c.Influx.FlushInterval.Duration = 0 }, "influx.flush_interval"},
		{"spool dir", func(c *Config) { c.Spool.Dir = "" }, "spool.dir"},
		{"policy", func(c *Config) { c.Spool.Policy = "drop" }, "spool.policy"},
		{"http", func(c *Config) { c.HTTP.Addr = "9273" }, "http.addr"},
		{"log", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{"protocol", func(c *Config) { c.MQTT.Protocol = "3" }, "mqtt.protocol"},
		{"session expiry zero", func(c *Config) { c.MQTT.SessionExpiry.Duration = 0 }, "mqtt.session_expiry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestProtocol(t *testing.T) {
	for _, tt := range []struct {
		body string
		env  string
		want Protocol
	}{
		{`protocol = "5"`, "", MQTT5}, {`protocol = "3.1.1"`, "", MQTT311}, {"protocol = 5", "", MQTT5},
		{"protocol = 4", "", MQTT311}, {"", "", MQTT5}, {"", "3.1.1", MQTT311},
	} {
		env := func(k string) (string, bool) { return tt.env, k == "IOTGW_MQTT_PROTOCOL" && tt.env != "" }
		c, err := Load(write(t, "[mqtt]\n"+tt.body+"\n"), env)
		if err == nil {
			err = c.Validate()
		}
		if err != nil || c.MQTT.Protocol != tt.want {
			t.Errorf("%q env %q: %q, %v; want %q", tt.body, tt.env, c.MQTT.Protocol, err, tt.want)
		}
	}
}

func TestGzip(t *testing.T) {
	for _, tt := range []struct {
		body string
		want Gzip
	}{
		{"gzip = true", GzipOn}, {"gzip = false", GzipOff}, {`gzip = "auto"`, GzipAuto}, {"", GzipAuto},
	} {
		c, err := Load(write(t, "[influx]\n"+tt.body+"\n"), noEnv)
		if err != nil || c.Influx.Gzip != tt.want {
			t.Errorf("%q: %q, %v; want %q", tt.body, c.Influx.Gzip, err, tt.want)
		}
	}
	for _, tt := range []struct {
		g    Gzip
		url  string
		want bool
	}{
		{GzipAuto, "http://127.0.0.1:8086", false},
		{GzipAuto, "http://localhost:8086", false},
		{GzipAuto, "http://[::1]:8086", false},
		{GzipAuto, "https://influx.example.com", true},
		{GzipAuto, "http://10.0.0.5:8086", true},
		{GzipOn, "http://127.0.0.1:8086", true},
		{GzipOff, "https://influx.example.com", false},
	} {
		if got := tt.g.Enabled(tt.url); got != tt.want {
			t.Errorf("%s.Enabled(%s) = %v", tt.g, tt.url, got)
		}
	}
}

// The command API is never served in clear text off loopback.
func TestCommandsAPIAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, cert string
		wantKey    string
	}{
		{"127.0.0.1:9273", "", ""},
		{"localhost:9273", "", ""},
		{"[::1]:9273", "", ""},
		{":9273", "", "http.addr"},
		{"0.0.0.0:9273", "", "http.addr"},
		{"10.0.0.5:9273", "", "http.addr"},
		{"10.0.0.5:9273", "/etc/iotgw/api.pem", ""},
		{"", "", "commands.token"},
	} {
		c := Default()
		c.HTTP.Addr = tc.addr
		c.Commands.Token = "0123456789abcdef"
		if tc.cert != "" {
			c.Commands.TLSCertFile, c.Commands.TLSKeyFile = tc.cert, tc.cert
		}
		err := c.Validate()
		switch {
		case tc.wantKey == "" && err != nil:
			t.Errorf("%q: %v", tc.addr, err)
		case tc.wantKey != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantKey+":")):
			t.Errorf("%q: %v, want an error about %s", tc.addr, err, tc.wantKey)
		}
	}
	// Off (no token): any address is fine.
	c := Default()
	c.HTTP.Addr = "0.0.0.0:9273"
	if err := c.Validate(); err != nil {
		t.Errorf("API off: %v", err)
	}
}

func TestLinePrecision(t *testing.T) {
	c, err := Load(write(t, "[mqtt]\nline_topics = [\"lp/#\"]\n[mapping.line_precision]\n\"lp/ms/#\" = \"ms\"\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.MapperConfig().LinePrecision; len(got) != 1 || got["lp/ms/#"] != "ms" {
		t.Fatalf("MapperConfig().LinePrecision = %v", got)
	}
	c, err = Load(write(t, "[mapping.line_precision]\n\"lp/#\" = \"minutes\"\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "mapping: line_precision \"lp/#\"") {
		t.Fatalf("Validate = %v, want an error naming mapping line_precision", err)
	}
}

// The export reads the same environment table as the gateway: the
// IOTGW_INFLUX_* variables and its own IOTGW_EXPORT_* ones.
func TestEnvExport(t *testing.T) {
	env := map[string]string{
		"IOTGW_INFLUX_URL": "http://db:8086", "IOTGW_INFLUX_TOKEN": "", "IOTGW_INFLUX_ORG": "iot", "IOTGW_INFLUX_BUCKET": "sensors",
		"IOTGW_EXPORT_BUCKET": "b", "IOTGW_EXPORT_PREFIX": "p", "IOTGW_EXPORT_DIR": "/d", "IOTGW_S3_ENDPOINT": "http://s3:9000",
		"IOTGW_EXPORT_PART_SIZE": "6291456", "IOTGW_EXPORT_SKIP_DASHBOARDS": "true",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := Load(write(t, "[influx]\ntoken = \"from-file\"\n"), lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := Export{Bucket: "b", Prefix: "p", Dir: "/d", S3Endpoint: "http://s3:9000", PartSize: 6 << 20, SkipDashboards: true}
	in := c.Influx
	if in.URL != "http://db:8086" || in.Token != "" || in.Org != "iot" || in.Bucket != "sensors" || c.Export != want {
		t.Errorf("got %+v %+v", in, c.Export)
	}
	env["IOTGW_EXPORT_SKIP_DASHBOARDS"] = "maybe"
	if _, err := Load("", lookup); err == nil || !strings.Contains(err.Error(), "export.skip_dashboards") {
		t.Errorf("bad bool: %v", err)
	}
}

// A bad [export] value fails the gateway's validation too (run --check),
// naming the key, while an empty bucket does not: the gateway never uploads.
func TestValidateExport(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults without an export bucket: %v", err)
	}
	for _, tt := range []struct {
		body, want string
	}{
		{"[export]\nprefix = \"/x/\"\n", "export.prefix"},
		{"[export]\npart_size = 1024\n", "export.part_size"},
		{"[export]\nmax_catch_up_days = 1000\n", "export.max_catch_up_days"},
		{"[export]\ns3_endpoint = \"localhost:9000\"\n", "export.s3_endpoint"},
	} {
		c, err := Load(write(t, tt.body), noEnv)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error naming %s", tt.body, err, tt.want)
		}
	}
}

func TestTimestampProperty(t *testing.T) {
	c, err := Load(write(t, "[mapping]\ntimestamp_property = \"device-ts\"\ntimestamp_property_precision = \"us\"\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if mc := c.MapperConfig(); mc.TimestampProperty != "device-ts" || mc.TimestampPropertyPrecision != "us" {
		t.Fatalf("MapperConfig() = %+v", mc)
	}
	if d := Default(); d.Mapping.TimestampProperty != "" || d.Mapping.TimestampPropertyPrecision != "ms" {
		t.Fatalf("defaults %+v, want off and ms", d.Mapping)
	}
	for _, tt := range []struct{ file, want string }{
		{"[mapping]\ntimestamp_property = \"ts\"\ntimestamp_property_precision = \"minutes\"\n",
			`mapping: timestamp_property_precision: precision "minutes" is not ns, us, ms or s`},
		{"[mapping]\ntimestamp_property = \"t\\u0001s\"\n", `mapping: timestamp_property "t\x01s"`},
		{"[mapping]\ntimestamp_property = \"" + strings.Repeat("k", 129) + "\"\n", `mapping: timestamp_property "kkk`},
	} {
		c, err := Load(write(t, tt.file), noEnv)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: Validate = %v, want %s", tt.file, err, tt.want)
		}
	}
}
