// Package mqtt subscribes to the broker (MQTT 5 or 3.1.1, persistent
// session) and hands every message to the pipeline together with its Ack.
// Acknowledgement is manual: the broker keeps a message until the pipeline
// says it is safe on disk. Control packets are encoded and decoded with
// paho.golang's packets codec (MQTT 5) and paho.mqtt.golang's (3.1.1); see
// session.go for why the session itself is not paho's client.
package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// Config is the broker connection.
type Config struct {
	URL                string
	ClientID           string
	Username, Password string
	QoS                byte
	Topics             []string // JSON payloads
	LineTopics         []string // line-protocol payloads
	// TopicCache keeps each topic's interned name and payload format; the
	// gateway passes its mapper's (sensor.Mapper.Topics), so one lookup per
	// message serves both. nil: the Source makes its own.
	TopicCache  *sensor.TopicCache
	Connections int // >1: one client per connection, ids suffixed -1, -2, ...
	// Protocol is V5 (MQTT 5) or V311 (MQTT 3.1.1, also for 0).
	Protocol byte
	// SessionExpiry is how long an MQTT 5 broker keeps the session (the
	// subscriptions and the messages queued for it) after the connection
	// ends: 0 is DefaultSessionExpiry, negative never expires.
	SessionExpiry time.Duration
	// ReceiveMaximum is the MQTT 5 Receive Maximum per connection: how
	// many QoS 1/2 messages the broker may have unacknowledged at once
	// (0: 65535). The gateway sets it to what one spool append takes.
	ReceiveMaximum int
	// ExpectSession says the broker should already hold a session for
	// these client ids (the gateway ran with them before); a CONNACK
	// without one is then logged and reported to SessionLost, as is one
	// on any later reconnect.
	ExpectSession        bool
	SessionLost          func(conn int)
	MaxPayload           int // largest payload the handler accepts; 0: sensor.DefaultMaxPayload
	KeepAlive            time.Duration
	ConnectTimeout       time.Duration
	MaxReconnectInterval time.Duration
	CAFile               string
	CertFile, KeyFile    string
	InsecureSkipVerify   bool
}

// Handler receives each message on the connection's read loop, so it must
// return quickly and must not keep msg.Payload after it returns (it points
// into the read buffer); ack may be called later from any goroutine, once.
type Handler func(msg Message, format sensor.Format, ack Ack)

// StateFunc is told when a connection goes up (subscribed) or down.
type StateFunc func(conn int, connected bool, err error)

// Source is the set of broker connections.
type Source struct {
	clients   []*client
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// TLSConfig builds the client TLS settings from files (TLS 1.2 or later,
// the CA bundle to trust, a client certificate for mutual TLS).
func TLSConfig(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // opt-in, documented
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates found", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Start begins connecting every configured connection in the background
// and returns at once; connection state is reported through state.
// Disconnections are retried forever with backoff, and the subscriptions
// are made again on each reconnect.
func Start(ctx context.Context, cfg Config, h Handler, state StateFunc, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Connections < 1 {
		cfg.Connections = 1
	}
	version := V311
	switch cfg.Protocol {
	case 0, V311:
	case V5:
		version = V5
	default:
		return nil, fmt.Errorf("mqtt: protocol version %d is not 4 (3.1.1) or 5", cfg.Protocol)
	}
	tc, err := TLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	raw := cfg.URL
	// Accept paho's spellings of TLS too.
	if rest, ok := strings.CutPrefix(raw, "ssl://"); ok {
		raw = "mqtts://" + rest
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	var filters, lines []string
	var qos []byte
	for _, t := range cfg.Topics {
		filters, qos = append(filters, t), append(qos, cfg.QoS)
	}
	for _, t := range cfg.LineTopics {
		filters, qos, lines = append(filters, t), append(qos, cfg.QoS), append(lines, t)
	}
	topics := cfg.TopicCache
	if topics == nil {
		topics = sensor.NewTopicCache(nil, 0)
	}
	s := &Source{closed: make(chan struct{})}
	for i := 0; i < cfg.Connections; i++ {
		id := cfg.ClientID
		if cfg.Connections > 1 {
			id = fmt.Sprintf("%s-%d", cfg.ClientID, i+1)
		}
		s.clients = append(s.clients, &client{idx: i, id: id, version: version, url: u, cfg: cfg, tc: tc, expectSession: cfg.ExpectSession,
			filters: filters, qos: qos, lines: lines, h: h, state: state, log: log,
			topics: topics})
	}
	for _, c := range s.clients {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.run(ctx, s.closed)
		}()
	}
	return s, nil
}

// routeFormat picks the payload format of a topic: line protocol if it
// matches a line-protocol filter, JSON otherwise.
func routeFormat(lineFilters []string, topic string) sensor.Format {
	for _, filter := range lineFilters {
		if Match(filter, topic) {
			return sensor.FormatLine
		}
	}
	return sensor.FormatJSON
}

// Match reports whether topic matches the filter (with + and #, and a
// $share/<group>/ prefix ignored).
func Match(filter, topic string) bool {
	if strings.HasPrefix(filter, "$share/") {
		if parts := strings.SplitN(filter, "/", 3); len(parts) == 3 {
			filter = parts[2]
		}
	}
	fl := strings.Split(filter, "/")
	tl := strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

func nonZero(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Close disconnects every connection (acknowledgements already given are
// sent first) and waits for the read loops to end; a handler blocked at
// that moment must return for Close to return. Unacknowledged messages
// stay with the broker.
func (s *Source) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	var wg sync.WaitGroup
	for _, c := range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.disconnect()
		}()
	}
	wg.Wait()
	s.wg.Wait()
}

// Connected reports whether every connection is up and subscribed.
func (s *Source) Connected() bool {
	for _, c := range s.clients {
		if !c.up.Load() {
			return false
		}
	}
	return true
}
