package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"
)

const waitFor = 10 * time.Second

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testHash is a cheap bcrypt hash so tests do not spend seconds hashing.
func testHash(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func testUsers(t testing.TB) []User {
	return []User{
		{Username: "gateway", PasswordHash: testHash(t, "gw-secret")},
		{Username: "dev1", PasswordHash: testHash(t, "dev1-secret"), Site: "plant-a", Device: "dev1"},
		{Username: "dev2", PasswordHash: testHash(t, "dev2-secret"), Site: "plant-a", Device: "dev2"},
	}
}

func plainOptions(t testing.TB) Options {
	return Options{
		Listeners:    []Listener{{ID: "plain", Addr: "127.0.0.1:0"}},
		Users:        testUsers(t),
		GatewayUsers: []string{"gateway"},
		Logger:       quietLogger(),
	}
}

func startBroker(t testing.TB, o Options) *Broker {
	t.Helper()
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

type clientConf struct {
	url, user, pass, id string
	tls                 *tls.Config
	persistent          bool
	onMessage           chan paho.Message
	onLost              chan error
}

func connect(t testing.TB, c clientConf) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(c.url).
		SetUsername(c.user).SetPassword(c.pass).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(waitFor).SetCleanSession(!c.persistent).
		SetTLSConfig(c.tls)
	if c.id != "" {
		opts.SetClientID(c.id)
	}
	if c.onMessage != nil {
		opts.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.onMessage <- m })
	}
	if c.onLost != nil {
		opts.SetConnectionLostHandler(func(_ paho.Client, err error) { c.onLost <- err })
	}
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(waitFor) {
		return nil, fmt.Errorf("connect to %s timed out", c.url)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl, nil
}

func mustConnect(t testing.TB, c clientConf) paho.Client {
	t.Helper()
	cl, err := connect(t, c)
	if err != nil {
		t.Fatalf("connect %s as %q: %v", c.url, c.user, err)
	}
	return cl
}

func wait(t testing.TB, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(waitFor) {
		t.Fatal("token timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatal(err)
	}
}

// subscribe subscribes and returns the SUBACK return code.
func subscribe(t testing.TB, cl paho.Client, filter string, qos byte) byte {
	t.Helper()
	tok := cl.Subscribe(filter, qos, nil)
	wait(t, tok)
	// paho keys the result by the filter without a $share/<group>/ prefix.
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	t.Fatalf("no SUBACK code for %s", filter)
	return 0
}

func recv(t testing.TB, ch chan paho.Message) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message within", waitFor)
		return nil
	}
}

// TestTLSFromConfig runs the broker the way `iotgw broker` does: a config
// with generate_ca and a users file; a device connects over TLS trusting
// the generated CA, and the gateway receives its reading.
func TestTLSFromConfig(t *testing.T) {
	dir := t.TempDir()
	usersFile := filepath.Join(dir, "users")
	lines := "# test users\ngateway:::" + testHash(t, "gw-secret") + "\n" +
		"dev1:plant-a:dev1:" + testHash(t, "dev1-secret") + "\n"
	if err := os.WriteFile(usersFile, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(fmt.Sprintf(`
data_dir = %q
users_file = %q
gateway_users = ["gateway"]
[plain]
addr = "127.0.0.1:0"
[tls]
addr = "127.0.0.1:0"
generate_ca = true
hosts = ["broker.test"]
`, filepath.Join(dir, "data"), usersFile))
	if err != nil {
		t.Fatal(err)
	}
	o, err := cfg.Options(quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, o)

	caPEM, err := os.ReadFile(filepath.Join(cfg.TLSDir(), "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	for _, key := range []string{"ca.key", "server.key"} {
		fi, err := os.Stat(filepath.Join(cfg.TLSDir(), key))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", key, fi.Mode().Perm())
		}
	}

	msgs := make(chan paho.Message, 10)
	gw := mustConnect(t, clientConf{url: "tcp://" + b.Addr("plain"), user: "gateway", pass: "gw-secret", onMessage: msgs})
	if code := subscribe(t, gw, "$share/gw/sensors/#", 1); code != 1 {
		t.Fatalf("gateway shared subscribe: return code %#x", code)
	}

	tlsURL := "ssl://" + b.Addr("tls")
	dev := mustConnect(t, clientConf{url: tlsURL, user: "dev1", pass: "dev1-secret",
		tls: &tls.Config{RootCAs: pool, ServerName: "broker.test"}})
	wait(t, dev.Publish("sensors/plant-a/dev1/temp", 1, false, "21.5"))
	m := recv(t, msgs)
	if m.Topic() != "sensors/plant-a/dev1/temp" || string(m.Payload()) != "21.5" {
		t.Fatalf("got %s %q", m.Topic(), m.Payload())
	}

	// A client that does not trust the CA is refused by its own TLS check,
	// and TLS 1.1 is refused by the broker.
	if _, err := connect(t, clientConf{url: tlsURL, user: "dev1", pass: "dev1-secret", tls: &tls.Config{ServerName: "broker.test"}}); err == nil {
		t.Error("connect without trusting the CA succeeded")
	}
	old := &tls.Config{RootCAs: pool, ServerName: "broker.test", MaxVersion: tls.VersionTLS11}
	if _, err := connect(t, clientConf{url: tlsURL, user: "dev1", pass: "dev1-secret", tls: old}); err == nil {
		t.Error("TLS 1.1 connect succeeded")
	}
}

func TestAuthentication(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	tests := []struct {
		name, user, pass string
		ok               bool
	}{
		{"right password", "dev1", "dev1-secret", true},
		{"right password again (cached)", "dev1", "dev1-secret", true},
		{"wrong password", "dev1", "dev2-secret", false},
		{"wrong password after a cached success", "dev1", "dev1-secret ", false},
		{"unknown user", "nobody", "dev1-secret", false},
		{"anonymous", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := connect(t, clientConf{url: url, user: tt.user, pass: tt.pass})
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("accepted")
			}
			if cl != nil {
				cl.Disconnect(100)
			}
		})
	}
}

func TestAnonymousAllowed(t *testing.T) {
	o := Options{
		Listeners:      []Listener{{ID: "plain", Addr: "127.0.0.1:0"}},
		AllowAnonymous: true,
		Logger:         quietLogger(),
	}
	b := startBroker(t, o)
	url := "tcp://" + b.Addr("plain")
	msgs := make(chan paho.Message, 10)
	sub := mustConnect(t, clientConf{url: url, onMessage: msgs})
	if code := subscribe(t, sub, "sensors/#", 1); code != 1 {
		t.Fatalf("subscribe: %#x", code)
	}
	pub := mustConnect(t, clientConf{url: url})
	wait(t, pub.Publish("sensors/s/d/temp", 1, false, "1"))
	recv(t, msgs)
	// A username that is not configured is still refused.
	if _, err := connect(t, clientConf{url: url, user: "who", pass: "x"}); err == nil {
		t.Error("unknown user accepted with AllowAnonymous")
	}
}

// TestDeviceConfinedToSubtree: a device's publishes outside its own subtree
// never reach the gateway, and its subscriptions are refused.
func TestDeviceConfinedToSubtree(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	msgs := make(chan paho.Message, 100)
	gw := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", onMessage: msgs})
	if code := subscribe(t, gw, "sensors/#", 1); code != 1 {
		t.Fatalf("gateway subscribe: %#x", code)
	}

	dev := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret"})
	for _, topic := range []string{"sensors/plant-a/dev2/temp", "sensors/plant-b/dev1/temp", "sensors/plant-a/dev1x/temp", "sensors/plant-a"} {
		wait(t, dev.Publish(topic, 0, false, "forged"))
	}
	// Packets of one connection are handled in order: once the marker
	// arrives, anything forged before it would have arrived already.
	wait(t, dev.Publish("sensors/plant-a/dev1", 0, false, "marker"))
	if m := recv(t, msgs); string(m.Payload()) != "marker" {
		t.Fatalf("gateway got %s %q, want only the marker", m.Topic(), m.Payload())
	}

	// Subscriptions: refused everywhere but its own commands, including
	// its own readings.
	for _, filter := range []string{"sensors/plant-a/dev2/#", "sensors/#", "sensors/plant-a/dev1/#", "#", "commands/plant-a/dev2/#", "commands/#"} {
		if code := subscribe(t, dev, filter, 1); code != 0x80 {
			t.Errorf("device subscribe %s: return code %#x, want 0x80", filter, code)
		}
	}

	// QoS 1 outside the subtree: an MQTT 3.1.1 broker cannot nack a publish,
	// so it drops the connection, and the message is not forwarded.
	lost := make(chan error, 1)
	dev2 := mustConnect(t, clientConf{url: url, user: "dev2", pass: "dev2-secret", onLost: lost})
	dev2.Publish("sensors/plant-a/dev1/temp", 1, false, "forged-qos1")
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("broker kept a device that published QoS 1 outside its subtree")
	}
	dev2 = mustConnect(t, clientConf{url: url, user: "dev2", pass: "dev2-secret"})
	wait(t, dev2.Publish("sensors/plant-a/dev2/temp", 1, false, "marker2"))
	if m := recv(t, msgs); string(m.Payload()) != "marker2" {
		t.Fatalf("gateway got %s %q, want marker2", m.Topic(), m.Payload())
	}
}

func TestGatewayCannotPublishReadings(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	msgs := make(chan paho.Message, 10)
	gw := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", onMessage: msgs})
	if code := subscribe(t, gw, "sensors/#", 0); code != 0 {
		t.Fatalf("subscribe: %#x", code)
	}
	if code := subscribe(t, gw, "#", 0); code != 0x80 {
		t.Errorf("gateway subscribe #: %#x, want 0x80", code)
	}
	wait(t, gw.Publish("sensors/plant-a/dev1/temp", 0, false, "forged"))
	dev := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret"})
	wait(t, dev.Publish("sensors/plant-a/dev1/temp", 0, false, "real"))
	if m := recv(t, msgs); string(m.Payload()) != "real" {
		t.Fatalf("got %q, want real", m.Payload())
	}
}

func TestClientIDBoundToUser(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", id: "gw-1", persistent: true})
	if _, err := connect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret", id: "gw-1"}); err == nil {
		t.Fatal("a device took over the gateway's client id")
	}
	// The owner itself may take its session over.
	mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", id: "gw-1", persistent: true})
}

// TestPersistentSessionSurvivesRestart: messages queued for an offline
// persistent subscriber are delivered after a broker restart.
func TestPersistentSessionSurvivesRestart(t *testing.T) {
	const n = 100
	o := plainOptions(t)
	o.DataDir = t.TempDir()

	b1, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Start(); err != nil {
		t.Fatal(err)
	}
	url := "tcp://" + b1.Addr("plain")
	gw := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", id: "gw-1", persistent: true})
	if code := subscribe(t, gw, "sensors/#", 1); code != 1 {
		t.Fatalf("subscribe: %#x", code)
	}
	gw.Disconnect(250)

	dev := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret"})
	for i := range n {
		wait(t, dev.Publish("sensors/plant-a/dev1/seq", 1, false, fmt.Sprint(i)))
	}
	dev.Disconnect(100)
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}

	b2 := startBroker(t, o)
	msgs := make(chan paho.Message, 2*n)
	mustConnect(t, clientConf{url: "tcp://" + b2.Addr("plain"), user: "gateway", pass: "gw-secret", id: "gw-1", persistent: true, onMessage: msgs})
	got := map[string]bool{}
	for len(got) < n {
		m := recv(t, msgs)
		got[string(m.Payload())] = true
	}
	for i := range n {
		if !got[fmt.Sprint(i)] {
			t.Errorf("message %d missing", i)
		}
	}
}

func TestNewValidates(t *testing.T) {
	good := plainOptions(t)
	tests := []struct {
		name   string
		change func(o *Options)
		want   string
	}{
		{"no listeners", func(o *Options) { o.Listeners = nil }, "Listeners"},
		{"plain public", func(o *Options) { o.Listeners[0].Addr = "0.0.0.0:1883" }, "AllowPlainPublic"},
		{"plain all interfaces", func(o *Options) { o.Listeners[0].Addr = ":1883" }, "Listeners[0].Addr"},
		{"bad addr", func(o *Options) { o.Listeners[0].Addr = "1883" }, "Listeners[0].Addr"},
		{"duplicate listener", func(o *Options) { o.Listeners = append(o.Listeners, o.Listeners[0]) }, "duplicate"},
		{"tls without cert", func(o *Options) { o.Listeners[0].TLS = &tls.Config{} }, "Listeners[0].TLS"},
		{"nobody could connect", func(o *Options) { o.Users = nil; o.GatewayUsers = nil }, "Users"},
		{"bad hash", func(o *Options) { o.Users[1].PasswordHash = "plain" }, "PasswordHash"},
		{"device without site", func(o *Options) { o.Users[1].Site = "" }, "Site"},
		{"device with slash", func(o *Options) { o.Users[1].Device = "a/b" }, "Device"},
		{"duplicate user", func(o *Options) { o.Users[2].Username = "dev1" }, "duplicate"},
		{"unknown gateway", func(o *Options) { o.GatewayUsers = []string{"gw2"} }, "GatewayUsers[0]"},
		{"queue too large", func(o *Options) { o.MaxQueued = 100000 }, "MaxQueued"},
		{"negative inflight", func(o *Options) { o.MaxInflight = -1 }, "MaxInflight"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			o.Listeners = append([]Listener(nil), good.Listeners...)
			o.Users = append([]User(nil), good.Users...)
			tt.change(&o)
			_, err := New(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error naming %s", err, tt.want)
			}
		})
	}
	o := good
	o.Listeners = []Listener{{ID: "p", Addr: "0.0.0.0:0"}}
	o.AllowPlainPublic = true
	if _, err := New(o); err != nil {
		t.Fatalf("AllowPlainPublic: %v", err)
	}
}

func TestACL(t *testing.T) {
	h, err := newAccessHook(testUsers(t), []string{"gateway"}, false, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, topic string
		write, want bool
	}{
		{"dev1", "sensors/plant-a/dev1/temp", true, true},
		{"dev1", "sensors/plant-a/dev1", true, true},
		{"dev1", "sensors/plant-a/dev1/a/b/c", true, true},
		{"dev1", "sensors/plant-a/dev10/temp", true, false},
		{"dev1", "sensors/plant-a/dev2/temp", true, false},
		{"dev1", "sensors/plant-a", true, false},
		{"dev1", "other/topic", true, false},
		{"dev1", "sensors/plant-a/dev1/#", false, false},
		{"dev1", "sensors/plant-a/dev1/temp", false, false},
		{"dev1", "commands/plant-a/dev1/#", false, true},
		{"dev1", "commands/plant-a/dev1/set_interval", false, true},
		{"dev1", "commands/plant-a/dev1/+", false, true},
		{"dev1", "commands/plant-a/dev2/#", false, false},
		{"dev1", "commands/plant-a/+/#", false, false},
		{"dev1", "commands/#", false, false},
		{"dev1", "commands/plant-a/dev1x/#", false, false},
		{"dev1", "commands/plant-a/dev1/set_interval", true, false},
		{"dev1", "replies/plant-a/dev1/c-123", true, true},
		{"dev1", "replies/plant-a/dev2/c-123", true, false},
		{"dev1", "replies/plant-a/dev1/#", false, false},
		{"gateway", "sensors/#", false, true},
		{"gateway", "sensors/plant-a/+/temp", false, true},
		{"gateway", "sensors/plant-a/dev1/temp", false, true},
		{"gateway", "$share/gw/sensors/#", false, true},
		{"gateway", "$share//sensors/#", false, false},
		{"gateway", "$share/gw/#", false, false},
		{"gateway", "#", false, false},
		{"gateway", "+/plant-a/#", false, false},
		{"gateway", "sensorsX/#", false, false},
		{"gateway", "$SYS/#", false, false},
		{"gateway", "sensors/plant-a/dev1/temp", true, false},
		{"gateway", "$SYS/x", true, false},
		{"gateway", "gateways/gateway/status", true, true},
		{"gateway", "commands/plant-a/dev1/set_interval", true, true},
		{"gateway", "replies/plant-a/dev1/c-1", true, false},
		{"gateway", "replies/#", false, true},
		{"gateway", "$share/gw/replies/#", false, true},
		{"gateway", "commands/#", false, false},
		{"", "sensors/#", false, false},
		{"nobody", "sensors/x/y/z", true, false},
	}
	for _, tt := range tests {
		if got := h.allowed(tt.user, tt.topic, tt.write); got != tt.want {
			t.Errorf("allowed(%q, %q, write=%v) = %v, want %v", tt.user, tt.topic, tt.write, got, tt.want)
		}
	}
}

func TestCloseWithoutStart(t *testing.T) {
	b, err := New(plainOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestStoreLockedByAnotherBroker(t *testing.T) {
	o := plainOptions(t)
	o.DataDir = t.TempDir()
	startBroker(t, o)
	b2, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Start(); err == nil || !strings.Contains(err.Error(), storeFile) {
		t.Fatalf("second broker on the same DataDir: %v", err)
	}
}

// TestExpiredSharedMemberLosesItsTurn: once a departed member's session
// expires, the live members of its shared group get every message.
func TestExpiredSharedMemberLosesItsTurn(t *testing.T) {
	o := plainOptions(t)
	o.SessionExpiry = time.Second
	b := startBroker(t, o)
	url := "tcp://" + b.Addr("plain")
	msgs := make(chan paho.Message, 200)
	live := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", id: "gw-live", persistent: true, onMessage: msgs})
	subscribe(t, live, "$share/g/sensors/#", 1)
	gone := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", id: "gw-gone", persistent: true})
	subscribe(t, gone, "$share/g/sensors/#", 1)
	gone.Disconnect(100)
	deadline := time.Now().Add(waitFor)
	for {
		if _, ok := b.srv.Clients.Get("gw-gone"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the departed session did not expire")
		}
		time.Sleep(50 * time.Millisecond)
	}
	dev := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret"})
	const n = 50
	for i := range n {
		wait(t, dev.Publish("sensors/plant-a/dev1/seq", 1, false, fmt.Sprint(i)))
	}
	for i := range n {
		select {
		case <-msgs:
		case <-time.After(waitFor):
			t.Fatalf("live member got %d of %d", i, n)
		}
	}
}
