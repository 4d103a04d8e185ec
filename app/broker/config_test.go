package broker

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSampleConfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.toml")
	if err := os.WriteFile(path, []byte(SampleConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	// The sample states each default; apart from the keys it sets for a
	// host, it must equal DefaultConfig.
	want := DefaultConfig()
	want.UsersFile = "/etc/iotgw/broker-users"
	want.GatewayUsers = []string{"gateway"}
	want.TLS.GenerateCA = true
	want.TLS.Hosts = []string{}
	if c.DataDir != want.DataDir || c.UsersFile != want.UsersFile || c.MaxInflight != want.MaxInflight ||
		c.MaxQueued != want.MaxQueued || c.SessionExpiry != want.SessionExpiry || c.CloseTimeout != want.CloseTimeout ||
		c.LogLevel != want.LogLevel || c.Plain != want.Plain || c.TLS.Addr != want.TLS.Addr ||
		c.TLS.GenerateCA != want.TLS.GenerateCA || c.AllowAnonymous || c.AllowPlainPublic ||
		len(c.GatewayUsers) != 1 || c.GatewayUsers[0] != "gateway" || len(c.Users) != 0 {
		t.Fatalf("sample config = %+v, want %+v", c, want)
	}
}

func TestParseConfigErrorsNameTheKey(t *testing.T) {
	const base = "users_file = \"/u\"\n"
	const gen = "tls.generate_ca = true\n"
	tests := []struct {
		name, text, want string
	}{
		{"unknown key", base + "max_inflights = 3\n", "max_inflights"},
		{"unknown nested key", base + "[tls]\ncert = \"x\"\n", "tls.cert"},
		{"wrong type", base + "max_inflight = \"many\"\n", "max_inflight"},
		{"bad duration", base + "session_expiry = \"forever\"\n", "session_expiry"},
		{"queue too large", base + gen + "max_queued = 70000\n", "max_queued"},
		{"zero inflight", base + gen + "max_inflight = 0\n", "max_inflight"},
		{"short expiry", base + gen + "session_expiry = \"10ms\"\n", "session_expiry"},
		{"log level", base + gen + "log_level = \"loud\"\n", "log_level"},
		{"log format", base + gen + "log_format = \"xml\"\n", "log_format"},
		{"public plain", base + "[plain]\naddr = \"0.0.0.0:1883\"\n", "plain.addr"},
		{"plain all interfaces", base + "[plain]\naddr = \":1883\"\n", "plain.addr"},
		{"plain no port", base + "[plain]\naddr = \"127.0.0.1\"\n", "plain.addr"},
		{"tls without cert", base + "[tls]\naddr = \":8883\"\n", "tls.cert_file"},
		{"tls cert without key", base + "[tls]\ncert_file = \"/c\"\n", "tls.cert_file"},
		{"generate_ca without data_dir", base + "data_dir = \"\"\n[tls]\ngenerate_ca = true\n", "tls.generate_ca"},
		{"no listener", base + "[plain]\naddr = \"\"\n[tls]\naddr = \"\"\n", "tls.addr"},
		{"no users", "[tls]\ngenerate_ca = true\n", "users_file"},
		{"inline user without hash", base + "[tls]\ngenerate_ca = true\n[[users]]\nusername = \"d\"\n", "users[0].password_hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(tt.text)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseConfig: %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestParseConfigAllowsPublicPlain(t *testing.T) {
	c, err := ParseConfig("allow_anonymous = true\nallow_plain_public = true\n[plain]\naddr = \"0.0.0.0:1883\"\n[tls]\naddr = \"\"\n")
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.Options(quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Listeners) != 1 || o.Listeners[0].TLS != nil || !o.AllowPlainPublic {
		t.Fatalf("listeners %+v", o.Listeners)
	}
}

func TestOptionsErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("dev1:a:b:"+testHash(t, "x")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, text, want string }{
		{"missing users file", "users_file = \"" + filepath.Join(dir, "nope") + "\"\n[tls]\naddr = \"\"\n", "users_file"},
		{"unknown gateway", "users_file = \"" + users + "\"\ngateway_users = [\"gw\"]\n[tls]\naddr = \"\"\n", "GatewayUsers[0]"},
		{"missing cert", "users_file = \"" + users + "\"\n[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n", "tls.cert_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(tt.text)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Options(quietLogger()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Options: %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestParseUsers(t *testing.T) {
	h := testHash(t, "pw")
	users, err := ParseUsers(strings.NewReader("# comment\n\n  gateway:::" + h + "\ndev1:plant-a:dev1:" + h + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 || users[0] != (User{Username: "gateway", PasswordHash: h}) ||
		users[1] != (User{Username: "dev1", Site: "plant-a", Device: "dev1", PasswordHash: h}) {
		t.Fatalf("users = %+v", users)
	}
	for _, bad := range []string{
		"dev1:plant-a:" + h,        // three fields
		":a:b:" + h,                // empty username
		"dev1:plant-a::" + h,       // device missing
		"dev1:a:b:plaintext",       // not bcrypt
		"ok:a:b:" + h + "\nbroken", // line 2
	} {
		if _, err := ParseUsers(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("ParseUsers(%q): %v, want an error with a line number", bad, err)
		}
	}
}

func FuzzParseUsers(f *testing.F) {
	f.Add("gateway:::$2a$04$abcdefghijklmnopqrstuu\ndev:s:d:$2a$04$x\n# c\n")
	f.Add("a:b:c")
	f.Add(":::::")
	f.Fuzz(func(t *testing.T, text string) {
		users, err := ParseUsers(strings.NewReader(text))
		if err != nil {
			return
		}
		for _, u := range users {
			if u.Username == "" || strings.Contains(u.Username, ":") || (u.Site == "") != (u.Device == "") ||
				!strings.HasPrefix(u.PasswordHash, "$2") {
				t.Fatalf("accepted bad user %+v", u)
			}
		}
	})
}

func TestEnsureCertificatesReuses(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	g1, err := EnsureCertificates(dir, []string{"broker.test", "10.0.0.5"}, now)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca1, cert1 := read(g1.CAFile), read(g1.CertFile)

	g2, err := EnsureCertificates(dir, []string{"broker.test", "10.0.0.5"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca1, read(g2.CAFile)) || !bytes.Equal(cert1, read(g2.CertFile)) {
		t.Fatal("second start did not reuse the CA and server certificate")
	}

	// New host name: same CA, new server certificate covering it.
	g3, err := EnsureCertificates(dir, []string{"broker.test", "other.test"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca1, read(g3.CAFile)) {
		t.Fatal("CA changed")
	}
	if bytes.Equal(cert1, read(g3.CertFile)) {
		t.Fatal("server certificate not reissued for a new host")
	}
	// Close to expiry: reissued.
	cert3 := read(g3.CertFile)
	if _, err := EnsureCertificates(dir, []string{"broker.test", "other.test"}, now.Add(serverValidity-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(cert3, read(g3.CertFile)) {
		t.Fatal("server certificate not renewed near expiry")
	}
	tc, err := ServerTLSConfig(g3.CertFile, g3.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf := tc.Certificates[0].Leaf
	for _, h := range []string{"broker.test", "other.test", "localhost", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	if fi, _ := os.Stat(g3.KeyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("server key mode %v", fi.Mode().Perm())
	}
}

func TestEnsureCertificatesRejectsForeignCA(t *testing.T) {
	dir := t.TempDir()
	g, err := EnsureCertificates(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A CA key that does not match the certificate must not be used.
	other := t.TempDir()
	g2, err := EnsureCertificates(other, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(g2.CAKeyFile)
	if err := os.WriteFile(g.CAKeyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureCertificates(dir, nil, time.Now()); err == nil {
		t.Fatal("mismatched CA key accepted")
	}
}

func TestLogFormatJSON(t *testing.T) {
	c := DefaultConfig()
	c.LogFormat = "json"
	var buf strings.Builder
	c.Logger(&buf).Info("hello", "k", 1)
	if !strings.HasPrefix(buf.String(), "{") || !strings.Contains(buf.String(), `"msg":"hello"`) {
		t.Fatalf("log_format json wrote %q", buf.String())
	}
}
