// Package broker runs iot-gateway's embedded MQTT broker (mochi-mqtt/server/v2):
// per-device bcrypt passwords, an ACL that confines each device to its own
// sensors/<site>/<device>/ subtree, TLS with an optional self-made CA, and
// sessions, queued messages and retained messages kept in a bbolt file so a
// restart loses nothing that was queued.
//
// Hosts without a broker package (Amazon Linux 2023) run it as `iotgw broker`;
// `iotgw demo` starts it in-process on loopback.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"
)

// Defaults applied by New to zero-valued Options fields.
const (
	DefaultMaxInflight   = 1000
	DefaultMaxQueued     = 65535
	DefaultSessionExpiry = 7 * 24 * time.Hour
	DefaultCloseTimeout  = 5 * time.Second

	// maxQueuedLimit is mochi's ceiling: it counts stored QoS>0 messages per
	// client in a uint16.
	maxQueuedLimit = 65535

	// storeFile is the bbolt file inside DataDir.
	storeFile = "broker.db"
)

// Options configure a Broker. The zero value of every field except
// Listeners and Users/AllowAnonymous is usable.
type Options struct {
	// Listeners the broker accepts clients on; at least one. A listener
	// without TLS must bind a loopback address unless AllowPlainPublic.
	Listeners []Listener

	// Users who may connect. Empty Users with AllowAnonymous false is an
	// error: no client could ever connect, which is always a mistake in
	// the configuration rather than something to run with.
	Users []User

	// AllowAnonymous lets clients without a username connect with full
	// access (publish and subscribe anywhere). For the local demo only.
	// Clients that send a username are still checked against Users.
	AllowAnonymous bool

	// AllowPlainPublic allows a listener without TLS on a non-loopback
	// address. Off by default: passwords would cross the network in clear.
	AllowPlainPublic bool

	// GatewayUsers are the usernames (each in Users) that may subscribe to
	// sensors/... and $share/<group>/sensors/...; every other user is a
	// device confined to its own subtree.
	GatewayUsers []string

	// DataDir keeps persistent sessions, their subscriptions, queued QoS>0
	// messages and retained messages in DataDir/broker.db. "" keeps them in
	// memory only.
	DataDir string

	// MaxInflight bounds the messages waiting to be written to one connected
	// client (mochi's client write buffer); beyond it messages to that client
	// are dropped and logged. Default 1000.
	MaxInflight int

	// MaxQueued bounds the QoS>0 messages stored per client, in flight or
	// queued while it is offline; beyond it new messages for that client are
	// dropped and logged. Default and maximum 65535 (mochi's limit).
	MaxQueued int

	// SessionExpiry is how long a disconnected persistent session, and any
	// queued or retained message, is kept. Default 7 days.
	SessionExpiry time.Duration

	// Throttle bounds password guessing; the zero value uses the defaults.
	Throttle ThrottleOptions

	// CloseTimeout bounds how long Close waits for clients to go away before
	// closing the store. Default 5s.
	CloseTimeout time.Duration

	// Logger receives the broker's logs; nil means slog.Default().
	Logger *slog.Logger

	// Connection-level limits (limits.go; the package README's "Limits"
	// table says what a client sees when it hits each). Zero means the
	// Default* value.

	// MaxPacketSize bounds every packet, CONNECT included, in bytes from
	// the fixed header on; a larger one closes the connection at its
	// header, before its body is read.
	MaxPacketSize int
	// ConnectTimeout bounds the time from accept to a complete CONNECT,
	// TLS handshake included.
	ConnectTimeout time.Duration
	// MaxConnections bounds open sockets, authenticated or not, over all
	// listeners; MaxConnectionsPerAddress bounds them per source IP.
	MaxConnections           int
	MaxConnectionsPerAddress int
	// WriteTimeout bounds one write to a client; a client that does not
	// read for that long is disconnected.
	WriteTimeout time.Duration
	// MaxQueuedBytes bounds the payload bytes waiting to be written to one
	// connected client; a client that would exceed it is disconnected.
	MaxQueuedBytes int
	// MaxOfflineBytes bounds the QoS 1/2 messages (payload plus about
	// 1 KiB each) a device's persistent session holds while it is offline;
	// MaxOfflineBytesGateway a gateway's or anonymous client's. Over the
	// budget, the session's oldest messages are dropped.
	MaxOfflineBytes        int
	MaxOfflineBytesGateway int
	// MaxKeepalive is the keep-alive given to a client that asks for 0 or
	// more (MQTT 5 clients are told in CONNACK); one that sends nothing for
	// 1.5 times it is disconnected. Whole seconds.
	MaxKeepalive time.Duration

	noLimits bool // benchmarks only: mochi's listener, no limits, no per-message access hooks
}

// Listener is one network endpoint. TLS nil means plain MQTT.
type Listener struct {
	ID   string
	Addr string // host:port; port 0 picks a free port (see Broker.Addr)
	TLS  *tls.Config
}

// CertificateOnly as a User's PasswordHash means the user logs in only
// with a client certificate naming it; passwords are always refused.
const CertificateOnly = "!"

// User is a client identity. Device users have Site and Device set and may
// publish only under sensors/<Site>/<Device>/. Gateway users (listed in
// Options.GatewayUsers) leave them empty.
type User struct {
	Username     string
	PasswordHash string // bcrypt, or CertificateOnly
	Site, Device string
}

// Broker is an MQTT broker built from Options.
type Broker struct {
	opts   Options
	log    *slog.Logger
	access *accessHook
	// logLimiter is the log's rate limiter (its clock is replaced in tests).
	logLimiter *logLimiter

	mu      sync.Mutex
	srv     *mqtt.Server
	started bool
	closed  bool

	limits *limiter // set by Start
}

// New validates o and returns a broker that is not yet listening.
func New(o Options) (*Broker, error) {
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.MaxQueued == 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.SessionExpiry == 0 {
		o.SessionExpiry = DefaultSessionExpiry
	}
	if o.CloseTimeout == 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := o.checkLimits(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	listenersCopy := make([]Listener, len(o.Listeners))
	for i, l := range o.Listeners {
		if l.TLS != nil {
			l.TLS = hardenTLS(l.TLS)
		}
		listenersCopy[i] = l
	}
	o.Listeners = listenersCopy
	safe := newSafeHandler(o.Logger.Handler())
	log := slog.New(safe).With("component", "broker")
	access, err := newAccessHook(o.Users, o.GatewayUsers, o.AllowAnonymous, log)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	access.throttle = newThrottle(o.Throttle)
	if err := access.setDummyHash(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &Broker{opts: o, log: log, logLimiter: safe.limiter, access: access}, nil
}

func (o *Options) validate() error {
	if len(o.Listeners) == 0 {
		return optErr("Listeners", "at least one listener is required")
	}
	ids := map[string]bool{}
	for i, l := range o.Listeners {
		if l.ID == "" {
			return fmt.Errorf("option Listeners[%d].ID: empty", i)
		}
		if ids[l.ID] {
			return fmt.Errorf("option Listeners[%d].ID: duplicate id %q", i, l.ID)
		}
		ids[l.ID] = true
		host, _, err := net.SplitHostPort(l.Addr)
		if err != nil {
			return fmt.Errorf("option Listeners[%d].Addr %q: %w", i, l.Addr, err)
		}
		if l.TLS == nil && !o.AllowPlainPublic && !isLoopback(host) {
			return fmt.Errorf("option Listeners[%d].Addr %q: a plain (non-TLS) listener must bind a loopback address unless AllowPlainPublic is set", i, l.Addr)
		}
		if l.TLS != nil && len(l.TLS.Certificates) == 0 && l.TLS.GetCertificate == nil {
			return fmt.Errorf("option Listeners[%d].TLS: no certificate", i)
		}
	}
	if len(o.Users) == 0 && !o.AllowAnonymous {
		return optErr("Users", "empty and AllowAnonymous is false, so no client could connect")
	}
	if o.MaxInflight < 1 {
		return fmt.Errorf("option MaxInflight: must be at least 1, got %d", o.MaxInflight)
	}
	if o.MaxQueued < 1 || o.MaxQueued > maxQueuedLimit {
		return fmt.Errorf("option MaxQueued: must be between 1 and %d, got %d", maxQueuedLimit, o.MaxQueued)
	}
	if o.SessionExpiry < time.Second {
		return fmt.Errorf("option SessionExpiry: must be at least 1s, got %s", o.SessionExpiry)
	}
	if o.CloseTimeout < 0 {
		return fmt.Errorf("option CloseTimeout: must not be negative, got %s", o.CloseTimeout)
	}
	return o.Throttle.validate()
}

func optErr(name, msg string) error { return fmt.Errorf("option %s: %s", name, msg) }

// isLoopback reports whether host names only the loopback interface.
// "" (all interfaces) is not loopback.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Start opens the store (if DataDir is set), binds every listener and starts
// serving. It returns once clients can connect.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed {
		return errors.New("broker: Start called twice or after Close")
	}
	b.started = true

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = int32(b.opts.MaxInflight)
	caps.MaximumInflight = uint16(b.opts.MaxQueued)
	expiry := int64(b.opts.SessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = expiry
	caps.MaximumSessionExpiryInterval = uint32(min(expiry, int64(^uint32(0))))
	// Acknowledgements must not echo the publisher's user properties back
	// (MQTT 5 3.4.2.2: they are the server's, not the client's).
	caps.Compatibilities.NoInheritedPropertiesOnAck = true

	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 b.log,
		SysTopicResendInterval: 10,
	})
	b.srv = srv
	b.access.clients = srv.Clients
	b.access.bare = b.opts.noLimits
	if err := srv.AddHook(b.access, nil); err != nil {
		return fmt.Errorf("broker: add access hook: %w", err)
	}
	if err := srv.AddHook(&expiryHook{srv: srv}, nil); err != nil {
		return fmt.Errorf("broker: add expiry hook: %w", err)
	}
	offline, err := b.addLimits(srv)
	if err != nil {
		return fmt.Errorf("broker: add limits hook: %w", err)
	}
	if b.opts.DataDir != "" {
		if err := os.MkdirAll(b.opts.DataDir, 0o700); err != nil {
			return fmt.Errorf("broker: DataDir: %w", err)
		}
		path := filepath.Join(b.opts.DataDir, storeFile)
		store := boltStore{new(bolt.Hook)}
		err := srv.AddHook(store, &bolt.Options{
			Path:    path,
			Options: &bbolt.Options{Timeout: 2 * time.Second},
		})
		if err != nil {
			return fmt.Errorf("broker: open store %s: %w (is another broker using it?)", path, err)
		}
		if offline != nil {
			offline.store = store // messages it drops leave the store too
		}
	}
	for _, l := range b.opts.Listeners {
		if err := srv.AddListener(b.listener(l)); err != nil {
			b.shutdown()
			return fmt.Errorf("broker: listener %s on %s: %w", l.ID, l.Addr, err)
		}
	}
	if err := srv.Serve(); err != nil {
		b.shutdown()
		return fmt.Errorf("broker: start: %w", err)
	}
	for _, l := range b.opts.Listeners {
		b.log.Info("listening", "listener", l.ID, "addr", b.addr(l.ID), "tls", l.TLS != nil)
	}
	return nil
}

// Addr returns the bound host:port of the listener with the given id, or ""
// when there is no such listener or the broker is not started.
func (b *Broker) Addr(listenerID string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr(listenerID)
}

func (b *Broker) addr(id string) string {
	if b.srv == nil {
		return ""
	}
	l, ok := b.srv.Listeners.Get(id)
	if !ok {
		return ""
	}
	return l.Address()
}

// Close disconnects every client, waits up to CloseTimeout for their
// sessions to be saved, then closes the listeners and the store. Persistent
// sessions and their queued messages stay in DataDir for the next Start.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.srv == nil {
		return nil
	}
	b.shutdown()
	b.log.Info("stopped")
	return nil
}

// shutdown stops a started (possibly half-started) server. mochi's own Close
// stops the store while client goroutines may still be writing their last
// state to it, so clients are disconnected and waited for first.
func (b *Broker) shutdown() {
	srv := b.srv
	srv.Listeners.CloseAll(func(id string) {
		for _, cl := range srv.Clients.GetByListener(id) {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	})
	done := make(chan struct{})
	go func() {
		srv.Listeners.ClientsWg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(b.opts.CloseTimeout):
		b.log.Warn("clients still attached at close timeout", "timeout", b.opts.CloseTimeout)
	}
	_ = srv.Close()
}

// AccessStats counts the CONNECTs the access rules refused and the retain
// flags they removed since Start.
func (b *Broker) AccessStats() AccessStats {
	s := &b.access.stats
	return AccessStats{
		Refused:        s.refused.Load(),
		BadPassword:    s.badPassword.Load(),
		Throttled:      s.throttled.Load(),
		RetainStripped: s.retainStripped.Load(),
	}
}

// HashPassword returns the bcrypt hash of password at bcrypt.DefaultCost.
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	return string(h), nil
}
