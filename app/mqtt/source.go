// Package mqtt subscribes to the broker with paho.mqtt.golang and hands
// every message to the pipeline together with a function that acknowledges
// it. Acknowledgement is manual: the broker keeps a message until the
// pipeline says it is safe on disk.
package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-gateway/iot-gateway/app"
)

// Config is the broker connection.
type Config struct {
	URL                  string
	ClientID             string
	Username, Password   string
	QoS                  byte
	Topics               []string // JSON payloads
	LineTopics           []string // line-protocol payloads
	Connections          int      // >1: one client per connection, ids suffixed -1, -2, ...
	KeepAlive            time.Duration
	ConnectTimeout       time.Duration
	MaxReconnectInterval time.Duration
	CAFile               string
	CertFile, KeyFile    string
	InsecureSkipVerify   bool
}

// Handler receives each message. It runs on paho's delivery goroutine, so
// it must return quickly; ack may be called later from any goroutine, once.
type Handler func(msg app.Message, format app.Format, ack func())

// StateFunc is told when a connection goes up or down.
type StateFunc func(conn int, connected bool, err error)

// Source is the set of broker connections.
type Source struct {
	clients   []paho.Client
	lost      []chan struct{} // one per client: its connection dropped
	closed    chan struct{}
	closeOnce sync.Once
	log       *slog.Logger
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
// Disconnections are retried
// forever with backoff, and the subscriptions are made again on each
// reconnect.
func Start(ctx context.Context, cfg Config, h Handler, state StateFunc, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Connections < 1 {
		cfg.Connections = 1
	}
	tc, err := TLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	formats := map[string]app.Format{}
	for _, t := range cfg.Topics {
		formats[t] = app.FormatJSON
	}
	for _, t := range cfg.LineTopics {
		formats[t] = app.FormatLine
	}
	s := &Source{log: log, closed: make(chan struct{})}
	for i := 0; i < cfg.Connections; i++ {
		lost := make(chan struct{}, 1)
		s.lost = append(s.lost, lost)
		s.clients = append(s.clients, newClient(cfg, i, tc, formats, h, func(conn int, up bool, err error) {
			if !up {
				select {
				case lost <- struct{}{}:
				default:
				}
			}
			if state != nil {
				state(conn, up, err)
			}
		}, log))
	}
	for i, c := range s.clients {
		go s.keepConnected(ctx, i, c, cfg)
	}
	return s, nil
}

func newClient(cfg Config, idx int, tc *tls.Config, formats map[string]app.Format, h Handler, state StateFunc, log *slog.Logger) paho.Client {
	id := cfg.ClientID
	if cfg.Connections > 1 {
		id = fmt.Sprintf("%s-%d", cfg.ClientID, idx+1)
	}
	url := cfg.URL
	// paho spells TLS "ssl://" or "tls://"; accept the common mqtt(s):// too.
	if rest, ok := strings.CutPrefix(url, "mqtts://"); ok {
		url = "ssl://" + rest
	} else if rest, ok := strings.CutPrefix(url, "mqtt://"); ok {
		url = "tcp://" + rest
	}
	o := paho.NewClientOptions().
		AddBroker(url).
		SetClientID(id).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetTLSConfig(tc).
		// A persistent session: the broker queues QoS 1/2 messages while
		// the gateway is away and redelivers unacknowledged ones.
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetKeepAlive(nonZero(cfg.KeepAlive, 30*time.Second)).
		SetConnectTimeout(nonZero(cfg.ConnectTimeout, 10*time.Second)).
		SetAutoReconnect(false). // keepConnected reconnects sooner
		SetWriteTimeout(10 * time.Second).
		SetCustomOpenConnectionFn(dialBuffered(tc, nonZero(cfg.ConnectTimeout, 10*time.Second)))
	filters := map[string]byte{}
	for t := range formats {
		filters[t] = cfg.QoS
	}
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		// Messages of a persistent session can arrive before the
		// subscriptions are renewed; route them by matching the filters.
		deliver(m, routeFormat(formats, m.Topic()), h)
	})
	o.SetOnConnectHandler(func(c paho.Client) {
		log.Info("mqtt connected", "broker", cfg.URL, "client_id", id)
		tok := c.SubscribeMultiple(filters, nil)
		tok.Wait()
		if err := tok.Error(); err != nil {
			if !c.IsConnectionOpen() {
				// The connection dropped while subscribing: the
				// connection-lost handler has reported it already.
				log.Warn("mqtt subscribe interrupted by a lost connection", "client_id", id, "err", err)
				return
			}
			log.Error("mqtt subscribe failed; dropping the connection to try again", "client_id", id, "err", err)
			c.Disconnect(0)
			if state != nil {
				state(idx, false, err)
			}
			return
		}
		if st, ok := tok.(*paho.SubscribeToken); ok {
			for topic, code := range st.Result() {
				if code >= 0x80 {
					log.Error("mqtt subscription refused", "client_id", id, "topic", topic, "code", code)
				}
			}
		}
		if state != nil {
			state(idx, true, nil)
		}
	})
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		log.Warn("mqtt connection lost", "client_id", id, "err", err)
		if state != nil {
			state(idx, false, err)
		}
	})
	return paho.NewClient(o)
}

func deliver(m paho.Message, f app.Format, h Handler) {
	h(app.Message{Topic: m.Topic(), Payload: m.Payload(), Received: time.Now()}, f, m.Ack)
}

// routeFormat picks the payload format of the first filter matching topic.
func routeFormat(formats map[string]app.Format, topic string) app.Format {
	for filter, f := range formats {
		if f == app.FormatLine && Match(filter, topic) {
			return f
		}
	}
	return app.FormatJSON
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

// keepConnected connects and, whenever the connection drops, connects
// again: first after 50 ms, then backing off to MaxReconnectInterval.
// paho's own auto-reconnect waits a fixed second first, long enough for a
// busy broker to overflow this session's queue (mosquitto keeps 1000
// messages per client by default) while the gateway is away.
func (s *Source) keepConnected(ctx context.Context, idx int, c paho.Client, cfg Config) {
	lost := s.lost[idx]
	maxWait := nonZero(cfg.MaxReconnectInterval, 30*time.Second)
	for {
		wait := 50 * time.Millisecond
		for {
			tok := c.Connect()
			select {
			case <-tok.Done():
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			}
			if tok.Error() == nil || c.IsConnectionOpen() {
				break // connected ("already connected" counts)
			}
			s.log.Warn("mqtt connect failed", "broker", cfg.URL, "connection", idx+1, "retry_in", wait, "err", tok.Error())
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			}
			wait = min(wait*2, maxWait)
		}
		for {
			select {
			case <-lost:
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			}
			// A signal can be stale: a drop during the subscribe after a
			// connect is reported twice. Reconnect only when really down.
			if !c.IsConnectionOpen() {
				break
			}
		}
	}
}

// Close disconnects every connection, waiting up to quiesce for work in
// progress. Unacknowledged messages stay with the broker.
func (s *Source) Close(quiesce time.Duration) {
	s.closeOnce.Do(func() { close(s.closed) })
	var wg sync.WaitGroup
	for _, c := range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Disconnect(uint(quiesce / time.Millisecond))
		}()
	}
	wg.Wait()
}

// Connected reports whether every connection is up.
func (s *Source) Connected() bool {
	for _, c := range s.clients {
		if !c.IsConnectionOpen() {
			return false
		}
	}
	return true
}
