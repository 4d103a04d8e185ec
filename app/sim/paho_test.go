package sim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// startBroker runs an in-process MQTT broker on a free loopback port and
// returns a func that stops it (also run at the end of the test) and its address.
func startBroker(t *testing.T, tc *tls.Config) (stop func(), addr string) {
	t.Helper()
	s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0", TLSConfig: tc})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(func() { s.Close() }) }
	t.Cleanup(stop)
	return stop, l.Address()
}

// subscriber collects every message under sensors/#.
type subscriber struct {
	mu  sync.Mutex
	got map[string]int // topic + payload → times received
	n   int
	c   mqtt.Client
}

func subscribe(t *testing.T, addr string) *subscriber {
	t.Helper()
	s := &subscriber{got: map[string]int{}}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("test-sub").SetCleanSession(true)
	s.c = mqtt.NewClient(opts)
	if tok := s.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	tok := s.c.Subscribe("sensors/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.got[m.Topic()+" "+string(m.Payload())]++
		s.n++
		s.mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { s.c.Disconnect(0) })
	return s
}

func (s *subscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *subscriber) waitFor(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("subscriber received %d of %d", s.count(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPahoIntegration(t *testing.T) {
	_, addr := startBroker(t, nil)
	sub := subscribe(t, addr)
	pub, err := NewPahoPublisher(PahoConfig{URL: "tcp://" + addr, ClientID: "test-pub"})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	var sent []Message
	o := Options{Devices: 10, Sites: 2, TotalRate: 5000, Count: 500, QoS: 1, BadRatio: 0.05, Seed: 1}
	rep, err := Run(context.Background(), o, pub, func(m Message) { sent = append(sent, m) })
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 500 || rep.Acked != 500 || rep.Failed != 0 || rep.Unacked != 0 {
		t.Fatalf("report %+v", rep)
	}
	if rep.Bad[BadOversized] == 0 {
		t.Errorf("want an oversized payload through the broker too: %v", rep.Bad)
	}
	sub.waitFor(t, 500)
	sub.c.Disconnect(250)
	if n := sub.count(); n != 500 {
		t.Fatalf("subscriber received %d, want exactly 500", n)
	}
	// Some malformed payloads (like {}) repeat, so compare as multisets.
	want := map[string]int{}
	for _, m := range sent {
		want[m.Topic+" "+string(m.Payload)]++
	}
	for k, n := range want {
		if sub.got[k] != n {
			t.Fatalf("%.80q received %d times, published %d", k, sub.got[k], n)
		}
	}
}

func TestPahoBrokerGone(t *testing.T) {
	t.Run("before the run", func(t *testing.T) {
		s, addr := startBroker(t, nil)
		pub, err := NewPahoPublisher(PahoConfig{URL: "tcp://" + addr})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		s()
		waitLost(t, pub)
		rep, err := Run(context.Background(), Options{TotalRate: 1000, Count: 20, QoS: 1}, pub, nil)
		if err == nil || rep.Failed != 20 || rep.Acked != 0 {
			t.Fatalf("report %+v, error %v; want every publish failed", rep, err)
		}
	})
	t.Run("during the run", func(t *testing.T) {
		s, addr := startBroker(t, nil)
		pub, err := NewPahoPublisher(PahoConfig{URL: "tcp://" + addr})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		var n int
		stopped := make(chan struct{})
		rep, err := Run(context.Background(), Options{TotalRate: 2000, Count: 1000, QoS: 1, DrainTimeout: 2 * time.Second}, pub,
			func(Message) {
				if n++; n == 200 {
					go func() { s(); close(stopped) }()
				}
			})
		<-stopped
		if err == nil || rep.Failed == 0 || rep.Acked == 0 {
			t.Fatalf("report %+v, error %v; want some acked, then failures", rep, err)
		}
		if rep.Acked+rep.Failed+rep.Unacked != rep.Sent || rep.Sent != 1000 {
			t.Errorf("report does not add up: %+v", rep)
		}
	})
}

func waitLost(t *testing.T, p *PahoPublisher) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.c.IsConnectionOpen() {
		if time.Now().After(deadline) {
			t.Fatal("publisher did not notice the broker stopping")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPahoTLS(t *testing.T) {
	certPEM, tc := selfSigned(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	_, addr := startBroker(t, tc)

	pub, err := NewPahoPublisher(PahoConfig{URL: "ssl://" + addr, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), Options{TotalRate: 1000, Count: 10, QoS: 1}, pub, nil)
	pub.Close()
	if err != nil || rep.Acked != 10 {
		t.Fatalf("report %+v, error %v", rep, err)
	}

	// Without the CA the broker's certificate is not trusted.
	if _, err := NewPahoPublisher(PahoConfig{URL: "ssl://" + addr, ConnectTimeout: 2 * time.Second}); err == nil {
		t.Error("connected to a self-signed broker without its CA")
	}
}

func TestNewPahoPublisherErrors(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)

	tests := []struct {
		cfg  PahoConfig
		want string
	}{
		{PahoConfig{URL: "http://localhost:1883"}, "scheme"},
		{PahoConfig{URL: "tcp://"}, "no host"},
		{PahoConfig{URL: "tcp://u:secret@" + closedAddr, ConnectTimeout: 2 * time.Second}, "connect to tcp://u:xxxxx@"},
		{PahoConfig{URL: "tcp://localhost:1883", CAFile: notPEM}, "needs an ssl://"},
		{PahoConfig{URL: "ssl://localhost:8883", CAFile: notPEM}, "no PEM certificates"},
		{PahoConfig{URL: "ssl://localhost:8883", CAFile: "/nonexistent/ca.pem"}, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.cfg.URL, func(t *testing.T) {
			_, err := NewPahoPublisher(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
			var oe *OptionError
			if isConfig := errors.As(err, &oe); isConfig == strings.HasPrefix(tc.want, "connect") {
				t.Errorf("error %v: *OptionError is %v, want it only for bad configuration", err, isConfig)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

// selfSigned makes a certificate for 127.0.0.1 that is its own CA.
func selfSigned(t *testing.T) ([]byte, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test broker"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
