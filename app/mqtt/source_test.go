package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"sensors/#", "sensors/a/b/c", true},
		{"sensors/+/b/#", "sensors/a/b/c", true},
		{"sensors/+", "sensors/a/b", false},
		{"$share/g/lp/#", "lp/x", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"#", "anything/at/all", true},
	}
	for _, tt := range tests {
		if got := Match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v", tt.filter, tt.topic, got)
		}
	}
}

type received struct {
	mu   sync.Mutex
	msgs []sensor.Message
	fmts []sensor.Format
	got  chan struct{}
}

func (r *received) handle(msg Message, f sensor.Format, ack Ack) {
	m := msg.Message
	m.Payload = bytes.Clone(m.Payload) // it points into the read buffer
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.fmts = append(r.fmts, f)
	r.mu.Unlock()
	ack.Ack()
	r.got <- struct{}{}
}

func publishTLS(t *testing.T, url string, certs testsvc.Certs, topic, payload string) {
	t.Helper()
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(certs.CA)
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("pub").
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// Mutual TLS against a real mosquitto that requires client certificates;
// line-protocol subscriptions are told apart from JSON ones.
func TestMutualTLS(t *testing.T) {
	certs := testsvc.MakeCerts(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{TLS: &testsvc.TLSFiles{
		CAFile: certs.CA, CertFile: certs.ServerCert, KeyFile: certs.ServerKey, RequireClientCert: true}})
	r := &received{got: make(chan struct{}, 10)}
	up := make(chan bool, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, err := Start(ctx, Config{URL: mq.URL(), ClientID: "gw-tls", QoS: 1, Topics: []string{"sensors/#"},
		LineTopics: []string{"lp/#"}, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey},
		r.handle, func(_ int, connected bool, _ error) { up <- connected }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	select {
	case ok := <-up:
		if !ok {
			t.Fatal("connection reported down")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no connection over mutual TLS")
	}
	publishTLS(t, mq.URL(), certs, "sensors/s/d/m", `{"v":1}`)
	publishTLS(t, mq.URL(), certs, "lp/x", `m v=1`)
	for i := 0; i < 2; i++ {
		select {
		case <-r.got:
		case <-time.After(10 * time.Second):
			t.Fatal("message not received")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	formats := map[string]sensor.Format{}
	for i, m := range r.msgs {
		formats[m.Topic] = r.fmts[i]
	}
	if formats["sensors/s/d/m"] != sensor.FormatJSON || formats["lp/x"] != sensor.FormatLine {
		t.Fatalf("formats = %v", formats)
	}
}

// Without a client certificate, or trusting the wrong CA, the gateway never
// reports a connection (and keeps retrying in the background).
func TestTLSRefused(t *testing.T) {
	certs := testsvc.MakeCerts(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{TLS: &testsvc.TLSFiles{
		CAFile: certs.CA, CertFile: certs.ServerCert, KeyFile: certs.ServerKey, RequireClientCert: true}})
	for name, cfg := range map[string]Config{
		"no client certificate": {CAFile: certs.CA},
		"untrusted server":      {CAFile: certs.OtherCA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.URL, cfg.ClientID, cfg.QoS, cfg.Topics = mq.URL(), "gw-refused", 1, []string{"sensors/#"}
			up := make(chan bool, 10)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src, err := Start(ctx, cfg, func(Message, sensor.Format, Ack) {}, func(_ int, c bool, _ error) { up <- c }, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			select {
			case ok := <-up:
				if ok {
					t.Fatal("connected without a valid TLS setup")
				}
			case <-time.After(2 * time.Second): // bounded wait for something that must not happen
			}
			if src.Connected() {
				t.Fatal("connected without a valid TLS setup")
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	if _, err := TLSConfig(Config{CAFile: "/nonexistent/ca.pem"}); err == nil {
		t.Fatal("missing CA file accepted")
	}
	bad := t.TempDir() + "/ca.pem"
	_ = os.WriteFile(bad, []byte("not pem"), 0o600)
	if _, err := TLSConfig(Config{CAFile: bad}); err == nil {
		t.Fatal("garbage CA file accepted")
	}
}
