package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// These tests attack a running broker over real sockets, one finding of
// the front-door review each.

func connectParams(user, pass, id string, clean bool) packets.ConnectParams {
	return packets.ConnectParams{Username: []byte(user), Password: []byte(pass), ClientIdentifier: id, Clean: clean}
}

// gatewaySubscriber connects the gateway user, subscribes to sensors/# and
// returns the channel its messages arrive on.
func gatewaySubscriber(t *testing.T, url string) chan paho.Message {
	t.Helper()
	msgs := make(chan paho.Message, 100)
	gw := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", onMessage: msgs})
	if code := subscribe(t, gw, "sensors/#", 1); code != 1 {
		t.Fatalf("gateway subscribe: %#x", code)
	}
	return msgs
}

// expectOnly reads the next message and fails unless it is the marker:
// messages of one connection are handled in order, so anything forged
// before the marker would have arrived first.
func expectOnly(t *testing.T, msgs chan paho.Message, marker string) paho.Message {
	t.Helper()
	m := recv(t, msgs)
	if string(m.Payload()) != marker {
		t.Fatalf("got %s %q (retained=%v), want only the marker %q", m.Topic(), m.Payload(), m.Retained(), marker)
	}
	return m
}

func TestWillOutsideSubtreeRefused(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	addr := b.Addr("plain")
	msgs := gatewaySubscriber(t, "tcp://"+addr)

	// dev1 asks for a retained QoS 1 Will on dev2's topic.
	forger := dialRaw(t, addr, 4)
	cp := connectParams("dev1", "dev1-secret", "dev1", true)
	cp.WillFlag, cp.WillTopic, cp.WillPayload, cp.WillQos, cp.WillRetain = true, "sensors/plant-a/dev2/temp", []byte(`{"temperature":99}`), 1, true
	if code := forger.connect(cp, packets.Properties{}); code != 0x05 {
		t.Fatalf("CONNECT with a Will on another device's topic: CONNACK %#x, want 0x05 not authorized", code)
	}
	if err := forger.waitClosed(); err != nil {
		t.Fatalf("refused connection not closed: %v", err)
	}

	// A Will in its own subtree is kept, without the retain flag.
	dev := dialRaw(t, addr, 4)
	cp.WillTopic = "sensors/plant-a/dev1/status"
	cp.WillPayload = []byte("will")
	if code := dev.connect(cp, packets.Properties{}); code != 0 {
		t.Fatalf("CONNECT with an own Will: CONNACK %#x", code)
	}
	dev.conn.Close() // no DISCONNECT: the Will is published
	if m := expectOnly(t, msgs, "will"); m.Topic() != "sensors/plant-a/dev1/status" {
		t.Fatalf("will on %s", m.Topic())
	}
	late := make(chan paho.Message, 10)
	sub := mustConnect(t, clientConf{url: "tcp://" + addr, user: "gateway", pass: "gw-secret", onMessage: late})
	subscribe(t, sub, "sensors/#", 1)
	marker := mustConnect(t, clientConf{url: "tcp://" + addr, user: "dev2", pass: "dev2-secret"})
	wait(t, marker.Publish("sensors/plant-a/dev2/x", 1, false, "marker"))
	expectOnly(t, late, "marker")
	if got := b.AccessStats().RetainStripped; got != 1 {
		t.Errorf("RetainStripped = %d, want 1", got)
	}
}

func TestDeviceCannotRetain(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	dev := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret"})
	wait(t, dev.Publish("sensors/plant-a/dev1/temp", 1, true, `{"temperature":1}`))
	// mochi sends PUBACK before it delivers the message; it handles one
	// connection's packets in order, so the PUBACK of a second publish (to
	// a topic the gateway does not subscribe to) says the first has been
	// delivered, and cannot reach the subscription below as a live message.
	wait(t, dev.Publish("replies/plant-a/dev1/sync", 1, false, "sync"))

	// A subscription made after the retained publish gets nothing retained.
	msgs := gatewaySubscriber(t, url)
	wait(t, dev.Publish("sensors/plant-a/dev1/temp", 1, false, "marker"))
	expectOnly(t, msgs, "marker")
	if got := b.AccessStats().RetainStripped; got != 1 {
		t.Errorf("RetainStripped = %d, want 1", got)
	}
}

func TestClientIDSquatting(t *testing.T) {
	o := plainOptions(t)
	o.DataDir = t.TempDir()
	b := startBroker(t, o)
	addr := b.Addr("plain")

	tests := []struct {
		name, user, pass, id string
		clean                bool
		want                 byte
	}{
		{"device takes the gateway's id first", "dev1", "dev1-secret", "iotgw", false, 0x02},
		{"device uses another device's id", "dev1", "dev1-secret", "dev2", false, 0x02},
		{"device with a made-up persistent id", "dev1", "dev1-secret", "dev1-1", false, 0x02},
		{"device with a made-up clean id", "dev1", "dev1-secret", "dev1-x", true, 0x02},
		{"device with its own name", "dev1", "dev1-secret", "dev1", false, 0},
		{"device with an empty id and a clean session", "dev1", "dev1-secret", "", true, 0},
		{"gateway uses a device's id", "gateway", "gw-secret", "dev2", false, 0x02},
		{"gateway with its own id", "gateway", "gw-secret", "iotgw", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, addr, 4)
			if got := c.connect(connectParams(tt.user, tt.pass, tt.id, tt.clean), packets.Properties{}); got != tt.want {
				t.Fatalf("CONNACK %#x, want %#x", got, tt.want)
			}
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		})
	}

	// One device cannot fill the store with sessions.
	for i := range 200 {
		c := dialRaw(t, addr, 4)
		if got := c.connect(connectParams("dev2", "dev2-secret", fmt.Sprintf("s-%d", i), false), packets.Properties{}); got != 0x02 {
			t.Fatalf("session %d: CONNACK %#x, want 0x02", i, got)
		}
		c.conn.Close()
	}
	for _, cl := range b.srv.Clients.GetAll() {
		if string(cl.Properties.Username) == "dev2" {
			t.Errorf("dev2 holds session %q", cl.ID)
		}
	}
}

func throttledOptions(t *testing.T) Options {
	o := plainOptions(t)
	o.Throttle = ThrottleOptions{FreeFailures: 3, AddrLockoutMax: time.Minute, UserLockoutMax: time.Minute}
	return o
}

// fakeClock is a clock tests move by hand, so lockouts and log windows do
// not depend on how fast a loaded machine runs the test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestPasswordGuessingThrottledPerAddress(t *testing.T) {
	b := startBroker(t, throttledOptions(t))
	clock := newFakeClock()
	b.access.throttle.now = clock.Now
	addr := b.Addr("plain")
	attempt := func(local, user, pass string) byte {
		c := dialRawFrom(t, local, addr, 4)
		defer c.conn.Close()
		return c.connect(connectParams(user, pass, "", true), packets.Properties{})
	}
	// The free failures are answered "bad user name or password"; the one
	// past them starts a lockout, during which even the right password is
	// refused without being checked.
	for i := range 4 {
		if got := attempt("127.0.0.1", "dev1", fmt.Sprint("guess-", i)); got != 0x04 {
			t.Fatalf("guess %d: CONNACK %#x, want 0x04", i, got)
		}
	}
	checks := b.access.throttle.checks.Load()
	if got := attempt("127.0.0.1", "dev2", "dev2-secret"); got != 0x03 {
		t.Fatalf("right password during the address lockout: CONNACK %#x, want 0x03", got)
	}
	if b.access.throttle.checks.Load() != checks {
		t.Fatal("a locked-out attempt cost a bcrypt comparison")
	}
	// Other addresses are unaffected.
	if got := attempt("127.0.0.2", "dev2", "dev2-secret"); got != 0 {
		t.Fatalf("another address: CONNACK %#x", got)
	}
	// Refusals during the lockout do not extend it; it ends by itself 1 s
	// after the first failure past the free ones.
	clock.Advance(999 * time.Millisecond)
	if got := attempt("127.0.0.1", "dev2", "dev2-secret"); got != 0x03 {
		t.Fatalf("just before the lockout ends: CONNACK %#x, want 0x03", got)
	}
	clock.Advance(2 * time.Millisecond)
	if got := attempt("127.0.0.1", "dev2", "dev2-secret"); got != 0 {
		t.Fatalf("after the lockout: CONNACK %#x, want 0", got)
	}
	// The next failure doubles the lockout.
	attempt("127.0.0.1", "dev1", "guess-again")
	clock.Advance(1500 * time.Millisecond)
	if got := attempt("127.0.0.1", "dev2", "dev2-secret"); got != 0x03 {
		t.Fatalf("1.5 s into the doubled lockout: CONNACK %#x, want 0x03", got)
	}
	if st := b.AccessStats(); st.BadPassword != 5 || st.Throttled != 3 {
		t.Errorf("stats %+v, want 5 bad passwords and 3 throttled", st)
	}
}

func TestPasswordGuessingThrottledPerUser(t *testing.T) {
	b := startBroker(t, throttledOptions(t))
	b.access.throttle.now = newFakeClock().Now
	addr := b.Addr("plain")
	// A guesser spreads over addresses: the user name locks out all the same.
	for i := range 4 {
		c := dialRawFrom(t, fmt.Sprintf("127.0.0.%d", 10+i), addr, 4)
		if got := c.connect(connectParams("dev1", "wrong", "", true), packets.Properties{}); got != 0x04 {
			t.Fatalf("guess %d: CONNACK %#x", i, got)
		}
	}
	c := dialRawFrom(t, "127.0.0.20", addr, 4)
	if got := c.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{}); got != 0x03 {
		t.Fatalf("right password during the user lockout: CONNACK %#x, want 0x03", got)
	}
	c = dialRawFrom(t, "127.0.0.20", addr, 4)
	if got := c.connect(connectParams("dev2", "dev2-secret", "", true), packets.Properties{}); got != 0 {
		t.Fatalf("another user: CONNACK %#x", got)
	}
}

// TestUnknownUserCostsAKnownUsersCheck: refusing an unknown name must take
// a bcrypt comparison like a wrong password, or timing lists the users.
func TestUnknownUserCostsAKnownUsersCheck(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	addr := b.Addr("plain")
	for _, user := range []string{"nobody", "dev1"} {
		before := b.access.throttle.checks.Load()
		c := dialRawFrom(t, "127.0.0.3", addr, 4)
		if got := c.connect(connectParams(user, "wrong", "", true), packets.Properties{}); got != 0x04 {
			t.Fatalf("%s: CONNACK %#x", user, got)
		}
		if n := b.access.throttle.checks.Load() - before; n != 1 {
			t.Errorf("%s: %d bcrypt comparisons, want 1", user, n)
		}
	}
	cost, err := bcrypt.Cost(b.access.dummyHash)
	if err != nil || cost != bcrypt.MinCost {
		t.Errorf("dummy hash cost %d (%v), want the users' %d", cost, err, bcrypt.MinCost)
	}
}

func TestConcurrentPasswordChecksBounded(t *testing.T) {
	o := plainOptions(t)
	slow, err := bcrypt.GenerateFromPassword([]byte("slow-secret"), 12)
	if err != nil {
		t.Fatal(err)
	}
	o.Users = append(o.Users, User{Username: "slow", PasswordHash: string(slow), Site: "s", Device: "slow"})
	o.Throttle = ThrottleOptions{FreeFailures: 100, MaxConcurrentChecks: 1, CheckQueueTimeout: 20 * time.Millisecond}
	b := startBroker(t, o)
	addr := b.Addr("plain")
	var wg sync.WaitGroup
	codes := make(chan byte, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialRawFrom(t, fmt.Sprintf("127.0.0.%d", 30+i), addr, 4)
			codes <- c.connect(connectParams("slow", "wrong", "", true), packets.Properties{})
		}()
	}
	wg.Wait()
	close(codes)
	busy := 0
	for c := range codes {
		if c == 0x03 {
			busy++
		}
	}
	if peak := b.access.throttle.peak.Load(); peak != 1 {
		t.Errorf("peak concurrent checks %d, want 1", peak)
	}
	if busy == 0 {
		t.Error("no attempt was turned away while the check slot was taken")
	}
}

// TestLogsCarryNoSecrets: passwords and payloads never reach the log, and
// repeated refusals are rate-limited.
func TestLogsCarryNoSecrets(t *testing.T) {
	var mu sync.Mutex
	var logBuf bytes.Buffer
	o := plainOptions(t)
	o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logBuf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.Throttle = ThrottleOptions{FreeFailures: 10_000}
	b := startBroker(t, o)
	b.logLimiter.now = newFakeClock().Now // one window for the whole test
	addr := b.Addr("plain")

	// A second CONNECT on an authenticated connection, carrying a password.
	c := dialRaw(t, addr, 4)
	if got := c.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{}); got != 0 {
		t.Fatalf("CONNACK %#x", got)
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Username: []byte("dev1"), UsernameFlag: true,
			Password: []byte("SECOND-CONNECT-PASSWORD"), PasswordFlag: true, Keepalive: 30}})
	if err := c.waitClosed(); err != nil {
		t.Fatal(err)
	}
	// A refused QoS 1 publish with a large payload.
	c = dialRaw(t, addr, 4)
	c.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{})
	payload := strings.Repeat("PAYLOAD-BYTES-", 4000)
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1,
		TopicName: "sensors/plant-a/dev2/temp", Payload: []byte(payload)})
	if err := c.waitClosed(); err != nil {
		t.Fatal(err)
	}
	// Many connections with keep-alive 0 and many wrong passwords.
	for i := range 60 {
		c := dialRaw(t, addr, 4)
		cp := connectParams("dev2", "dev2-secret", "", true)
		cp.Keepalive = 0
		cp.UsernameFlag, cp.PasswordFlag = true, true
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp})
		c.mustRead(packets.Connack)
		c.conn.Close()
		w := dialRaw(t, addr, 4)
		w.connect(connectParams("dev2", fmt.Sprint("wrong-", i), "", true), packets.Properties{})
		w.conn.Close()
	}
	// Each refusal is logged before its CONNACK is sent, so all are in.
	mu.Lock()
	text := logBuf.String()
	mu.Unlock()
	for _, secret := range []string{"SECOND-CONNECT-PASSWORD", "dev1-secret", "dev2-secret", "PAYLOAD-BYTES"} {
		if strings.Contains(text, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
	if n := strings.Count(text, "level=WARN msg=\"client keepalive"); n != 0 {
		t.Errorf("%d keep-alive warnings", n)
	}
	if n := strings.Count(text, "connect refused: bad user name or password"); n > logBurst {
		t.Errorf("%d refusal lines for 60 refusals, want at most %d", n, logBurst)
	}
	if len(text) > 64<<10 {
		t.Errorf("log grew to %d bytes", len(text))
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// TestMQTT5PubackReasonCode: a QoS 1 publish with user properties is
// acknowledged with reason 0x00 and without the publisher's properties.
func TestMQTT5PubackReasonCode(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	c := dialRaw(t, b.Addr("plain"), 5)
	if got := c.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{}); got != 0 {
		t.Fatalf("CONNACK %#x", got)
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName: "sensors/plant-a/dev1/temp", Payload: []byte(`{"t":1}`),
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "content-type", Val: "json"}}}})
	ack := c.mustRead(packets.Puback)
	if ack.PacketID != 7 || ack.ReasonCode != 0 {
		t.Errorf("PUBACK id %d reason %#x, want id 7 reason 0x00", ack.PacketID, ack.ReasonCode)
	}
	if len(ack.Properties.User) != 0 {
		t.Errorf("PUBACK echoes user properties %v", ack.Properties.User)
	}
}

func TestTLSRefusesNonAEADSuites(t *testing.T) {
	dir := t.TempDir()
	g, err := EnsureCertificates(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLSConfig(g.CertFile, g.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	o := plainOptions(t)
	o.Listeners = []Listener{{ID: "tls", Addr: "127.0.0.1:0", TLS: tc}}
	b := startBroker(t, o)
	pool := caPool(t, g.CAFile)
	dial := func(suite uint16) error {
		c, err := tls.Dial("tcp", b.Addr("tls"), &tls.Config{RootCAs: pool, ServerName: "localhost",
			MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
		t.Error("TLS 1.2 with a CBC suite accepted")
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Errorf("TLS 1.2 with AES-GCM: %v", err)
	}
}

func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// TestClientCertificateIdentity: with client_auth, a device certificate
// from the broker's CA is the device's identity.
func TestClientCertificateIdentity(t *testing.T) {
	dataDir := t.TempDir()
	users := filepath.Join(t.TempDir(), "users")
	content := "gateway:::" + testHash(t, "gw-secret") + "\n" +
		"dev1:plant-a:dev1:" + CertificateOnly + "\n" +
		"dev2:plant-a:dev2:" + testHash(t, "dev2-secret") + "\n"
	if err := os.WriteFile(users, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgText := fmt.Sprintf(`data_dir = %q
users_file = %q
gateway_users = ["gateway"]
[plain]
addr = "127.0.0.1:0"
[tls]
addr = "127.0.0.1:0"
generate_ca = true
client_auth = "optional"
`, dataDir, users)
	cfg, err := ParseConfig(cfgText)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cfg.Options(quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, opts)
	msgs := gatewaySubscriber(t, "tcp://"+b.Addr("plain"))
	pool := caPool(t, filepath.Join(cfg.TLSDir(), "ca.pem"))
	cert := func(user string) tls.Certificate {
		certPEM, keyPEM, err := IssueClientCert(cfg.TLSDir(), user, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	tlsURL := "ssl://" + b.Addr("tls")
	withCert := func(c tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{c}}
	}

	dev1 := mustConnect(t, clientConf{url: tlsURL, id: "dev1", tls: withCert(cert("dev1"))})
	wait(t, dev1.Publish("sensors/plant-a/dev1/temp", 1, false, "from-cert"))
	expectOnly(t, msgs, "from-cert")
	// The certificate's identity is confined like a password login.
	wait(t, dev1.Publish("sensors/plant-a/dev2/temp", 0, false, "forged"))
	wait(t, dev1.Publish("sensors/plant-a/dev1/temp", 1, false, "marker"))
	expectOnly(t, msgs, "marker")

	if _, err := connect(t, clientConf{url: tlsURL, user: "dev2", pass: "dev2-secret", tls: withCert(cert("dev1"))}); err == nil {
		t.Error("a certificate for dev1 logged in as dev2")
	}
	if _, err := connect(t, clientConf{url: tlsURL, tls: withCert(cert("nobody"))}); err == nil {
		t.Error("a certificate for an unknown user was accepted")
	}
	if _, err := connect(t, clientConf{url: tlsURL, user: "dev1", pass: "anything", tls: &tls.Config{RootCAs: pool, ServerName: "localhost"}}); err == nil {
		t.Error("a certificate-only user logged in with a password")
	}
	// Without a certificate, optional mode still takes passwords.
	mustConnect(t, clientConf{url: tlsURL, user: "dev2", pass: "dev2-secret", tls: &tls.Config{RootCAs: pool, ServerName: "localhost"}})

	// A certificate from another CA fails the handshake.
	other := t.TempDir()
	if _, err := EnsureCertificates(other, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	foreignPEM, foreignKey, err := IssueClientCert(other, "dev1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(foreignPEM, foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, clientConf{url: tlsURL, id: "dev1", tls: withCert(foreign)}); err == nil {
		t.Error("a certificate from another CA was accepted")
	}
}

func TestClientCertificateRequired(t *testing.T) {
	dataDir := t.TempDir()
	cfg, err := ParseConfig(fmt.Sprintf(`data_dir = %q
gateway_users = ["gateway"]
[[users]]
username = "gateway"
password_hash = %q
[plain]
addr = ""
[tls]
addr = "127.0.0.1:0"
generate_ca = true
client_auth = "require"
`, dataDir, testHash(t, "gw-secret")))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cfg.Options(quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, opts)
	pool := caPool(t, filepath.Join(cfg.TLSDir(), "ca.pem"))
	if _, err := connect(t, clientConf{url: "ssl://" + b.Addr("tls"), user: "gateway", pass: "gw-secret",
		tls: &tls.Config{RootCAs: pool, ServerName: "localhost"}}); err == nil {
		t.Error("client_auth = require accepted a client without a certificate")
	}
}

// TestCommandRoundTripConfined: a gateway's command reaches only the device
// it names, and only that device's reply reaches the gateway.
func TestCommandRoundTripConfined(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	url := "tcp://" + b.Addr("plain")
	replies := make(chan paho.Message, 10)
	gw := mustConnect(t, clientConf{url: url, user: "gateway", pass: "gw-secret", onMessage: replies})
	if code := subscribe(t, gw, "replies/#", 1); code != 1 {
		t.Fatalf("gateway subscribe replies/#: %#x", code)
	}
	cmds1, cmds2 := make(chan paho.Message, 10), make(chan paho.Message, 10)
	dev1 := mustConnect(t, clientConf{url: url, user: "dev1", pass: "dev1-secret", onMessage: cmds1})
	dev2 := mustConnect(t, clientConf{url: url, user: "dev2", pass: "dev2-secret", onMessage: cmds2})
	if code := subscribe(t, dev1, "commands/plant-a/dev1/#", 1); code != 1 {
		t.Fatalf("dev1 subscribe to its commands: %#x", code)
	}
	if code := subscribe(t, dev2, "commands/plant-a/dev2/#", 1); code != 1 {
		t.Fatalf("dev2 subscribe to its commands: %#x", code)
	}
	wait(t, gw.Publish("commands/plant-a/dev1/set_interval", 1, false, "c1"))
	if m := recv(t, cmds1); string(m.Payload()) != "c1" {
		t.Fatalf("dev1 got %q", m.Payload())
	}
	// dev2 forges a reply as dev1 (dropped), then answers its own.
	wait(t, dev2.Publish("replies/plant-a/dev1/c1", 0, false, "forged"))
	wait(t, dev2.Publish("replies/plant-a/dev2/c2", 1, false, "marker"))
	expectOnly(t, replies, "marker")
	wait(t, dev1.Publish("replies/plant-a/dev1/c1", 1, false, "done"))
	expectOnly(t, replies, "done")
	// dev2's first command is its own: dev1's never reached it.
	wait(t, gw.Publish("commands/plant-a/dev2/set_interval", 1, false, "c2"))
	if m := recv(t, cmds2); string(m.Payload()) != "c2" {
		t.Fatalf("dev2 got %s %q first, want its own c2", m.Topic(), m.Payload())
	}
}
