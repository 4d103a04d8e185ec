package command

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// ConnConfig is the gateway's command connection to the broker, separate
// from its ingest session: a slow command must never hold up readings, and
// the ingest session's persistent queue is not the place for replies.
type ConnConfig struct {
	URL                string
	ClientID           string
	Username, Password string
	TLS                *tls.Config // for ssl://, wss://; nil: system roots
	KeepAlive          time.Duration
	ConnectTimeout     time.Duration
	// ReplyFilter is the subscription for replies (ReplyFilter(gateway));
	// "" subscribes to replies/#.
	ReplyFilter string
}

// Conn is an MQTT 5 connection (paho.golang's autopaho, which reconnects)
// that publishes commands with their request/response properties and
// hands every message under replies/# to the Manager.
type Conn struct {
	cm  *autopaho.ConnectionManager
	up  atomic.Bool
	log *slog.Logger

	// Refused replies are counted each, logged at most once per
	// refusedLogEvery: devices decide how many there are.
	lastRefusedLog atomic.Int64
	refusedQuiet   atomic.Int64
}

const refusedLogEvery = 10 * time.Second

func (c *Conn) refused(topic string, err error) {
	now := time.Now().UnixNano()
	last := c.lastRefusedLog.Load()
	if now-last < int64(refusedLogEvery) || !c.lastRefusedLog.CompareAndSwap(last, now) {
		c.refusedQuiet.Add(1)
		return
	}
	c.log.Warn("command reply refused", "topic", cutText(topic), "err", err, "not_logged_since_last", c.refusedQuiet.Swap(0))
}

// Connected reports whether the connection is up.
func (c *Conn) Connected() bool { return c.up.Load() }

// Dial starts the connection; it reconnects in the background until ctx
// ends. onState (may be nil) sees it go up and down.
func Dial(ctx context.Context, cfg ConnConfig, m *Manager, log *slog.Logger, onState func(up bool)) (*Conn, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("command connection: %q is not a broker URL", cfg.URL)
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Conn{log: log}
	keep := uint16(max(cfg.KeepAlive, time.Second) / time.Second)
	if cfg.KeepAlive == 0 {
		keep = 30
	}
	state := func(up bool) {
		c.up.Store(up)
		if onState != nil {
			onState(up)
		}
	}
	ac := autopaho.ClientConfig{
		ServerUrls: []*url.URL{u},
		TlsCfg:     cfg.TLS,
		KeepAlive:  keep,
		// A session that outlives a short outage keeps the replies the
		// broker queued for the gateway meanwhile.
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         600,
		ConnectTimeout:                cfg.ConnectTimeout,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(100*time.Millisecond, 30*time.Second, 2*time.Second, 2),
		ConnectUsername:               cfg.Username,
		ConnectPassword:               []byte(cfg.Password),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				filter := cmp.Or(cfg.ReplyFilter, RepliesRoot+"/#")
				sa, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
				if err == nil && len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
					err = fmt.Errorf("refused with reason 0x%02x", sa.Reasons[0])
				}
				if err != nil {
					log.Error("command connection: subscribe to replies failed; replies will not be seen", "filter", filter, "err", err)
					return
				}
				log.Info("command connection up", "broker", u.Redacted())
				state(true)
			}()
		},
		OnConnectionDown: func() bool {
			state(false)
			log.Warn("command connection down; reconnecting")
			return true
		},
		OnConnectError: func(err error) { log.Warn("command connection: connect failed", "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				p := pr.Packet
				var corr []byte
				if p.Properties != nil {
					corr = p.Properties.CorrelationData
				}
				if err := m.HandleReply(p.Topic, corr, p.Payload); err != nil {
					c.refused(p.Topic, err)
				}
				return true, nil
			}},
		},
	}
	cm, err := autopaho.NewConnection(ctx, ac)
	if err != nil {
		return nil, fmt.Errorf("command connection: %w", err)
	}
	c.cm = cm
	return c, nil
}

// ErrNotConnected: the command connection is down.
var ErrNotConnected = errors.New("the gateway's command connection to the broker is down")

// Publish sends a command QoS 1 with the MQTT 5 request/response
// properties and waits for the PUBACK.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte, p Properties) error {
	if !c.up.Load() {
		return ErrNotConnected
	}
	exp := uint32(max(p.Expiry, time.Second) / time.Second)
	format := byte(1) // UTF-8 JSON
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.cm.Publish(pctx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload, Properties: &paho.PublishProperties{
		ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData, MessageExpiry: &exp,
		PayloadFormat: &format, ContentType: "application/json",
	}})
	if errors.Is(err, autopaho.ConnectionDownError) {
		return ErrNotConnected
	}
	return err
}

// Close disconnects, waiting at most a second.
func (c *Conn) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.cm.Disconnect(ctx)
}
