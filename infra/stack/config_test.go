package stack

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func TestInstanceArch(t *testing.T) {
	for typ, want := range map[string]string{
		"t4g.small": "arm64", "m7g.large": "arm64", "c7gn.xlarge": "arm64", "c8gd.large": "arm64",
		"r8g.medium": "arm64", "x2gd.large": "arm64", "im4gn.large": "arm64", "is4gen.large": "arm64",
		"a1.medium": "arm64", "g5g.xlarge": "arm64", "hpc7g.4xlarge": "arm64",
		"t3.small": "x86_64", "t3a.micro": "x86_64", "m7i.large": "x86_64", "c7a.large": "x86_64",
		"m5zn.large": "x86_64", "g5.xlarge": "x86_64", "inf2.xlarge": "x86_64", "p4d.24xlarge": "x86_64",
	} {
		if got := InstanceArch(typ); got != want {
			t.Errorf("InstanceArch(%s) = %s, want %s", typ, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	valid := func() Config {
		c := Defaults()
		c.Owner = "team"
		c.InfluxAdminPassword, c.InfluxToken, c.MQTTPassword = testAdminPassword, testToken, testMQTTPassword
		c.SigningPublicKey = string(testSigner.pub)
		return c
	}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantKey string // "" means valid
	}{
		{"defaults", func(c *Config) {}, ""},
		{"everything open that may be", func(c *Config) {
			c.MQTTCidrs = []string{"0.0.0.0/0", "::/0"}
			c.AdminCidrs = []string{"198.51.100.4/32"}
			c.SSHCidrs = []string{"2001:db8::/48"}
		}, ""},
		{"x86 type with its arch", func(c *Config) { c.InstanceType, c.Architecture = "m7i.large", "x86_64" }, ""},
		{"missing owner", func(c *Config) { c.Owner = "" }, "owner"},
		{"bad mqtt cidr", func(c *Config) { c.MQTTCidrs = []string{"203.0.113.0/33"} }, "mqttCidrs"},
		{"not a cidr", func(c *Config) { c.MQTTCidrs = []string{"example.com"} }, "mqttCidrs"},
		{"host bits", func(c *Config) { c.AdminCidrs = []string{"198.51.100.7/24"} }, "adminCidrs"},
		{"ssh from anywhere", func(c *Config) { c.SSHCidrs = []string{"0.0.0.0/0"} }, "sshCidrs"},
		{"ssh from anywhere v6", func(c *Config) { c.SSHCidrs = []string{"::/0"} }, "sshCidrs"},
		{"ssh from half the internet", func(c *Config) { c.SSHCidrs = []string{"128.0.0.0/1"} }, "sshCidrs"},
		{"influx from a v6 /16", func(c *Config) { c.AdminCidrs = []string{"2001::/16"} }, "adminCidrs"},
		{"influx from anywhere", func(c *Config) { c.AdminCidrs = []string{"10.0.0.0/8", "0.0.0.0/0"} }, "adminCidrs"},
		{"arm type, x86 arch", func(c *Config) { c.Architecture = "x86_64" }, "architecture"},
		{"x86 type, arm arch", func(c *Config) { c.InstanceType, c.Architecture = "c7i.large", "arm64" }, "architecture"},
		{"unknown arch", func(c *Config) { c.Architecture = "riscv64" }, "architecture"},
		{"bad instance type", func(c *Config) { c.InstanceType = "large" }, "instanceType"},
		{"missing admin password", func(c *Config) { c.InfluxAdminPassword = "" }, KeyInfluxAdminPassword},
		{"missing token", func(c *Config) { c.InfluxToken = "" }, KeyInfluxToken},
		{"missing mqtt password", func(c *Config) { c.MQTTPassword = "" }, KeyMQTTPassword},
		{"short password", func(c *Config) { c.InfluxAdminPassword = "short" }, KeyInfluxAdminPassword},
		{"mqtt password from openssl rand -base64", func(c *Config) { c.MQTTPassword = "q1w+/Zx9Lk3=" }, ""},
		{"mqtt password with a quote", func(c *Config) { c.MQTTPassword = `mqtt-"PASSWORD"` }, KeyMQTTPassword},
		{"mqtt password with a dollar", func(c *Config) { c.MQTTPassword = "mqtt-$HOME-word" }, KeyMQTTPassword},
		{"mqtt password with a space", func(c *Config) { c.MQTTPassword = "mqtt password" }, KeyMQTTPassword},
		{"bad ssh key", func(c *Config) { c.SSHPublicKey = "-----BEGIN PRIVATE KEY-----" }, "sshPublicKey"},
		{"tiny root", func(c *Config) { c.RootVolumeSize = 4 }, "rootVolumeSize"},
		{"gp3 iops", func(c *Config) { c.DataVolumeIops = 100 }, "dataVolumeIops"},
		{"snapshot time", func(c *Config) { c.SnapshotTime = "25:00" }, "snapshotTime"},
		{"export prefix", func(c *Config) { c.ExportPrefix = "exports" }, "exportPrefix"},
		{"export prefix over artifacts", func(c *Config) { c.ExportPrefix = "artifacts/" }, "exportPrefix"},
		{"qos", func(c *Config) { c.MQTTQoS = 3 }, "mqttQos"},
		{"topic", func(c *Config) { c.MQTTTopics = []string{"sensors/\"x"} }, "mqttTopics"},
		{"influx version", func(c *Config) { c.InfluxVersion = "latest" }, "influxVersion"},
		{"subnet id", func(c *Config) { c.SubnetID = "sn-1" }, "subnetId"},
		{"plain MQTT from listed networks", func(c *Config) {
			c.MQTTPlaintext, c.MQTTCidrs = true, []string{"203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"}
		}, ""},
		{"plain MQTT from anywhere", func(c *Config) { c.MQTTPlaintext, c.MQTTCidrs = true, []string{"0.0.0.0/0"} }, "mqttPlaintext"},
		{"plain MQTT from anywhere v6", func(c *Config) { c.MQTTPlaintext, c.MQTTCidrs = true, []string{"2001:db8::/48", "::/0"} }, "mqttPlaintext"},
		{"plain MQTT from half the internet", func(c *Config) { c.MQTTPlaintext, c.MQTTCidrs = true, []string{"0.0.0.0/1"} }, "mqttPlaintext"},
		{"no signing key", func(c *Config) { c.SigningPublicKey = "" }, "signingPublicKey"},
		{"signing key is the private key", func(c *Config) { c.SigningPublicKey = string(testSigner.key) }, "signingPublicKey"},
		{"signing key not ed25519", func(c *Config) {
			c.SigningPublicKey = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBSXzgMQ4n0wFIxy01VBhlP+EeLqY\nsRNNN+vIFyFm3U2bpGn/2mxO9BJnTnzOeWMzCvTS8RKWUSUq1Pc61uzGGw==\n-----END PUBLIC KEY-----\n"
		}, "signingPublicKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			err := c.Validate()
			if tt.wantKey == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted it, want an error naming %s", tt.wantKey)
			}
			if !strings.HasPrefix(err.Error(), tt.wantKey+": ") {
				t.Errorf("error %q does not start with the key %s", err, tt.wantKey)
			}
			if strings.Count(err.Error(), "\n") != 0 {
				t.Errorf("one mistake gave several errors: %q", err)
			}
		})
	}
}

// withConfig runs body in a mocked program whose stack config is cfg
// (keys without the project prefix) and whose secret keys are secrets.
func withConfig(t *testing.T, cfg map[string]any, secrets []string, body pulumi.RunFunc) (*mocks, error) {
	t.Helper()
	full := map[string]string{}
	for k, v := range cfg {
		if s, ok := v.(string); ok {
			full[Project+":"+k] = s
			continue
		}
		b, _ := json.Marshal(v)
		full[Project+":"+k] = string(b)
	}
	var sk []string
	for _, k := range secrets {
		sk = append(sk, Project+":"+k)
	}
	b, _ := json.Marshal(full)
	t.Setenv("PULUMI_CONFIG", string(b))
	b, _ = json.Marshal(sk)
	t.Setenv("PULUMI_CONFIG_SECRET_KEYS", string(b))
	m := &mocks{}
	return m, pulumi.RunErr(body, pulumi.WithMocks(Project, "dev", m))
}

func TestLoadConfig(t *testing.T) {
	art := signedArtifact(t, []byte("x"))
	cfg := map[string]any{
		"signingPublicKey":     string(testSigner.pub),
		"owner":                "team",
		"mqttCidrs":            []string{"203.0.113.0/24"},
		"sshCidrs":             []string{"192.0.2.1/32"},
		"mqttPlaintext":        "true",
		"dataVolumeSize":       "50",
		"artifactPath":         art,
		KeyInfluxAdminPassword: testAdminPassword,
		KeyInfluxToken:         testToken,
		KeyMQTTPassword:        testMQTTPassword,
	}
	var got Config
	_, err := withConfig(t, cfg, []string{KeyInfluxAdminPassword, KeyInfluxToken, KeyMQTTPassword}, func(ctx *pulumi.Context) error {
		var err error
		got, err = LoadConfig(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if got.Owner != "team" || got.InstanceType != "t4g.small" || !got.MQTTPlaintext || got.DataVolumeSize != 50 ||
		len(got.SSHCidrs) != 1 || got.MQTTCidrs[0] != "203.0.113.0/24" || got.InfluxToken != testToken ||
		got.ArtifactPath != art || !got.DataVolumeRetain || got.Arch() != "arm64" || got.SigningPublicKey != string(testSigner.pub) {
		t.Errorf("LoadConfig = %+v", got)
	}

	// The key's one base64 line does as well as the PEM file.
	cfg["signingPublicKey"] = strings.Split(string(testSigner.pub), "\n")[1]
	_, err = withConfig(t, cfg, []string{KeyInfluxAdminPassword, KeyInfluxToken, KeyMQTTPassword}, func(ctx *pulumi.Context) error {
		var err error
		got, err = LoadConfig(ctx)
		return err
	})
	if err != nil || got.SigningPublicKey != string(testSigner.pub) {
		t.Errorf("signingPublicKey from its base64 line: %q, %v", got.SigningPublicKey, err)
	}
}

func TestArtifactPathDefault(t *testing.T) {
	// Relative to the directory of Pulumi.yaml: the repository root, found
	// upwards from the package directory when the CLI does not say.
	cfg := map[string]any{"owner": "team", "signingPublicKey": string(testSigner.pub), KeyInfluxAdminPassword: testAdminPassword, KeyInfluxToken: testToken, KeyMQTTPassword: testMQTTPassword}
	var got Config
	_, err := withConfig(t, cfg, []string{KeyInfluxAdminPassword, KeyInfluxToken, KeyMQTTPassword}, func(ctx *pulumi.Context) error {
		var err error
		got, err = LoadConfig(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	want := filepath.Join(filepath.Dir(filepath.Dir(wd)), "dist", "iotgw-linux-arm64")
	if got.ArtifactPath != want {
		t.Errorf("ArtifactPath = %s, want %s", got.ArtifactPath, want)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	// The whole program refuses to start, naming each bad key, before it
	// declares any resource.
	cfg := map[string]any{
		"owner":          "team",
		"instanceType":   "t4g.small",
		"architecture":   "x86_64",
		"sshCidrs":       []string{"0.0.0.0/0"},
		"dataVolumeSize": "lots",
		KeyInfluxToken:   testToken, // set, but not as a secret
	}
	m, err := withConfig(t, cfg, nil, Run)
	if err == nil {
		t.Fatal("Run accepted a bad configuration")
	}
	for _, key := range []string{"architecture", "sshCidrs", "dataVolumeSize", KeyInfluxAdminPassword, KeyMQTTPassword, KeyInfluxToken + ": is stored in plain text"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
	if strings.Contains(err.Error(), testToken) {
		t.Errorf("error shows the secret value")
	}
	if len(m.resources) != 0 || len(m.calls) != 0 {
		t.Errorf("%d resources and %d calls before the configuration error", len(m.resources), len(m.calls))
	}
}

func TestIngressRulesRefuseInternet(t *testing.T) {
	// Validate refuses these already; IngressRules refuses them on its own
	// so no caller can skip the rule.
	for _, c := range []Config{
		{SSHCidrs: []string{"0.0.0.0/0"}},
		{AdminCidrs: []string{"::/0"}},
	} {
		if _, err := IngressRules(c); err == nil {
			t.Errorf("IngressRules(%+v) accepted an internet-wide rule", c)
		}
	}
	for _, cidr := range []string{"0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "2000::/3"} {
		if rules, err := IngressRules(Config{MQTTCidrs: []string{"203.0.113.0/24", cidr}, MQTTPlaintext: true}); err == nil {
			t.Errorf("plain MQTT from %s: %v", cidr, rules)
		}
	}
	rules, err := IngressRules(Config{MQTTCidrs: []string{"0.0.0.0/0"}})
	if err != nil || len(rules) != 1 || rules[0].Port != PortMQTTTLS {
		t.Errorf("MQTT over TLS from anywhere: %v, %v", rules, err)
	}
}

func TestRunFromConfig(t *testing.T) {
	art := signedArtifact(t, []byte("x"))
	cfg := map[string]any{
		"signingPublicKey":     string(testSigner.pub),
		"owner":                "team-sensors",
		"mqttCidrs":            []string{"203.0.113.0/24"},
		"artifactPath":         art,
		KeyInfluxAdminPassword: testAdminPassword,
		KeyInfluxToken:         testToken,
		KeyMQTTPassword:        testMQTTPassword,
	}
	m, err := withConfig(t, cfg, []string{KeyInfluxAdminPassword, KeyInfluxToken, KeyMQTTPassword}, Run)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(m.byType("aws:ec2/instance:Instance")) != 1 || len(m.byType("aws:s3/bucketV2:BucketV2")) != 1 {
		t.Errorf("Run declared %d resources, without the instance or bucket", len(m.resources))
	}
}
