package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	gwmqtt "github.com/iot-gateway/iot-gateway/app/mqtt"
)

// PahoConfig says how to reach the broker.
type PahoConfig struct {
	// URL is tcp://host:1883, ssl://host:8883, ws://host/mqtt or wss://...
	// (mqtt://, mqtts:// and tls:// are accepted too).
	URL                string
	Username, Password string
	ClientID           string // "" means the user name (what iotgw broker requires of a device), else iotgw-sim-<random hex>
	// CAFile is a PEM bundle of CAs to trust for ssl:// and wss://; empty
	// means the system roots.
	CAFile         string
	ConnectTimeout time.Duration // 0 means 10s
}

// PahoPublisher publishes over one MQTT connection. It does not reconnect:
// after the connection is lost every publish fails, and Run reports it.
type PahoPublisher struct {
	c mqtt.Client
}

var _ AsyncPublisher = (*PahoPublisher)(nil)

// NewPahoPublisher connects to the broker and returns once the broker has
// accepted the connection. A bad URL or CA file is an *OptionError.
func NewPahoPublisher(cfg PahoConfig) (*PahoPublisher, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, &OptionError{Option: "URL", Value: strconv.Quote(cfg.URL), Reason: err.Error()}
	}
	var secure bool
	switch u.Scheme {
	case "tcp", "mqtt", "ws":
	case "ssl", "tls", "mqtts", "wss":
		secure = true
	default:
		return nil, &OptionError{Option: "URL", Value: strconv.Quote(u.Redacted()), Reason: "scheme must be tcp, ssl, ws or wss"}
	}
	if u.Host == "" {
		return nil, &OptionError{Option: "URL", Value: strconv.Quote(u.Redacted()), Reason: "no host"}
	}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.URL).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).
		SetWriteTimeout(10 * time.Second)
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	opts.SetConnectTimeout(timeout)

	id := cfg.ClientID
	if id == "" {
		id = cfg.Username
	}
	if id == "" {
		var b [6]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
		id = "iotgw-sim-" + hex.EncodeToString(b[:])
	}
	opts.SetClientID(id)

	if cfg.CAFile != "" && !secure {
		return nil, &OptionError{Option: "CAFile", Value: cfg.CAFile, Reason: fmt.Sprintf("needs an ssl:// or wss:// URL, not %q", u.Redacted())}
	}
	if secure {
		tc, err := gwmqtt.TLSConfig(gwmqtt.Config{CAFile: cfg.CAFile})
		if err != nil {
			return nil, &OptionError{Option: "CAFile", Value: cfg.CAFile, Reason: err.Error()}
		}
		opts.SetTLSConfig(tc)
	}

	c := mqtt.NewClient(opts)
	t := c.Connect()
	if !t.WaitTimeout(timeout + time.Second) {
		c.Disconnect(0)
		return nil, fmt.Errorf("sim: connect to %s: timed out after %v", u.Redacted(), timeout)
	}
	if err := t.Error(); err != nil {
		return nil, fmt.Errorf("sim: connect to %s: %w", u.Redacted(), err)
	}
	return &PahoPublisher{c: c}, nil
}

// PublishAsync starts a publish; the token completes when the broker has
// acknowledged it (QoS 1, 2) or it was written (QoS 0).
func (p *PahoPublisher) PublishAsync(topic string, qos byte, payload []byte) Token {
	return p.c.Publish(topic, qos, false, payload)
}

// Publish publishes and waits for completion or ctx.
func (p *PahoPublisher) Publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	t := p.c.Publish(topic, qos, false, payload)
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close disconnects, giving in-flight work a quarter second to finish.
func (p *PahoPublisher) Close() error {
	if !p.c.IsConnectionOpen() {
		p.c.Disconnect(0)
		return errors.New("sim: MQTT connection was already lost")
	}
	p.c.Disconnect(250)
	return nil
}
