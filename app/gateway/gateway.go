// Package gateway runs the pipeline: MQTT messages are decoded, appended to
// the durable spool in fsynced groups and only then acknowledged; one writer
// drains the spool into InfluxDB in large batches and advances it only after
// a 2xx. Bad input goes to the dead-letter file and is counted; it never
// holds up the good readings next to it.
//
// By responsibility: ingest.go (session → decode → spool append →
// acknowledge), delivery.go (spool → InfluxDB: batching, retry, splitting a
// rejected batch), health.go (readiness, the systemd watchdog), watch.go
// (the fleet watch and the gateway's own points). New takes the parts
// (Store, PointWriter, DeadSink, a Connect for the message source, a
// clock) as Options; app/cmd/iotgw translates the configuration into them.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// Tuning that is not worth a configuration key.
const (
	// inboxSize bounds messages decoded but not yet spooled. It must exceed
	// the broker's in-flight window (mosquitto: 20 by default, often raised
	// to 1000) so the connection's read loop never waits on the spool.
	inboxSize = 8192
	// maxGroup bounds messages per fsync.
	maxGroup = 4096
	// batchMaxBytes bounds an InfluxDB request body before compression.
	batchMaxBytes = 8 << 20
	// drainTimeout bounds how long shutdown keeps writing the spool out;
	// what is left stays on disk for the next start.
	drainTimeout = 5 * time.Second
	// maxSplitRequests bounds the requests spent narrowing down the bad
	// points of one rejected batch: halving a batch in which every point
	// is bad would cost two requests per point. What is still unresolved
	// then is dead-lettered whole, as reasonPartlyRejected. (Halves too
	// large for the server are always written, whatever the count.)
	maxSplitRequests = 256
	// maxErrText bounds a server's error text kept in logs and dead
	// letters: a server may echo a whole request back.
	maxErrText = 512
)

// Reasons of the gateway's own, next to app's decode reasons. They are
// metric label values: they never change once released.
const (
	// reasonPartlyRejected: a stretch of points in which InfluxDB rejected
	// some, not narrowed down within maxSplitRequests requests. InfluxDB may
	// have stored the good ones among them (a partial write).
	reasonPartlyRejected = "partly_rejected"
	// reasonRetained: a retained message the broker sent because the
	// gateway subscribed. It is the device's last reading again, not a new
	// one (without "ts" it would become a new point on every reconnect).
	reasonRetained = "retained"
)

// Store is what the pipeline needs of the spool (*spool.Spool). Tests put
// an in-memory one in its place to stage faults a real disk cannot be made
// to show on demand (a write that never returns).
type Store interface {
	Append(records [][]byte) error
	Read(ctx context.Context, maxRecords, maxBytes int) (spool.Batch, error)
	Rewind()
	Commit(end spool.Position) error
	Stats() spool.Stats
	Close() error
}

// PointWriter is what delivery needs of InfluxDB (*influx.Writer): one
// request per Write, and a *influx.WriteError saying what the server
// answered when it did not take the body.
type PointWriter interface {
	Write(ctx context.Context, body []byte) error
	Close()
}

// DeadSink keeps what will never be accepted (*deadletter.File).
type DeadSink interface {
	// Add keeps a rejected message. topic and payload are valid only
	// during the call (they may view the session's read buffer).
	Add(at time.Time, topic, reason string, cause error, payload []byte) error
	Close() error
}

// Gateway is one running pipeline.
type Gateway struct {
	opt    Options
	log    *slog.Logger
	mapper *sensor.Mapper
	spool  Store
	writer PointWriter
	dead   DeadSink
	m      *metrics
	reg    *prometheus.Registry

	inbox     chan pending
	sendMu    sync.RWMutex // held for reading while a handler sends to inbox
	accepting atomic.Bool
	stopping  chan struct{}
	committed chan struct{} // signalled after each commit, wakes a full spool

	source    MessageSource
	markOnce  sync.Once
	http      *httpapi.Server
	connected []atomic.Bool

	// Failure classes for /readyz (never the servers' own words: they may
	// echo credentials); nil once the operation succeeds again.
	writeErr  atomic.Pointer[string] // last write failure
	appendErr atomic.Pointer[string] // last spool failure
	deadErr   atomic.Pointer[string] // last dead-letter write failure
	degraded  int64

	// now is the wall clock the writer compares spool timestamps with;
	// waits use monotonic time, so a clock step cannot stretch them.
	now func() time.Time
	// Progress of the appender and the writer, for the watchdog and
	// /readyz; an operation running longer than stallLimit is reported.
	appendBeat, writeBeat heartbeat
	stallLimit            time.Duration

	appended chan struct{} // closed when the appender has finished

	fleet      *fleet.Watch
	devKey     deviceKey
	ownDropped prometheus.Counter
	details    map[string]httpapi.Detail
	recentDead deadRing
	routes     []route

	body       []byte // writer loop only: the request body, reused
	lastReject error  // writer loop only: the rejection a split is narrowing down
	onWritten  func(lines [][]byte, at time.Time)
}

// OnWritten registers f to be called with every group of lines InfluxDB
// accepted (the demo measures latency with it). Call before Run; f must
// not keep the slices.
func (g *Gateway) OnWritten(f func(lines [][]byte, at time.Time)) { g.onWritten = f }

// Options are the gateway's parts and settings. app/cmd/iotgw builds them
// from the configuration (opening the spool, the dead-letter file and the
// InfluxDB writer); tests pass in-memory parts.
type Options struct {
	Log *slog.Logger // nil: slog.Default()
	// Mapper decodes a message into points.
	Mapper *sensor.Mapper
	// TopicPattern names the {site} and {device} levels of a topic, for
	// the fleet watch.
	TopicPattern string
	// Spool, Writer and DeadLetters are owned by the gateway from New on:
	// Run closes them.
	Spool       Store
	Writer      PointWriter
	DeadLetters DeadSink
	// MQTT configures the message source; the gateway sets the fields that
	// follow from its own state (ReceiveMaximum, ExpectSession,
	// SessionLost). Connect starts it; nil: mqtt.Start.
	MQTT    mqtt.Config
	Connect Connect
	// Now is the wall clock spool timestamps are compared with; nil:
	// time.Now.
	Now func() time.Time

	// Delivery.
	BatchSize        int           // messages per request
	FlushInterval    time.Duration // the most a small batch waits for company
	MaxRetryInterval time.Duration
	// Secret is scrubbed from server errors before they are logged or
	// dead-lettered (a server that echoes requests would return it).
	Secret string

	// Health and state.
	DegradedBytes int64  // /readyz is red above this many spooled bytes
	StateDir      string // holds the broker-session marker
	HTTPAddr      string // "": no listener
	TLSCertFile   string
	TLSKeyFile    string
	Fleet         fleet.Options
	SweepInterval time.Duration
}

// MessageSource is a running set of broker connections (*mqtt.Source).
type MessageSource interface{ Close() }

// Connect starts a message source that calls h for every message and state
// when a connection goes up or down.
type Connect func(ctx context.Context, cfg mqtt.Config, h mqtt.Handler, state mqtt.StateFunc, log *slog.Logger) (MessageSource, error)

func connectMQTT(ctx context.Context, cfg mqtt.Config, h mqtt.Handler, state mqtt.StateFunc, log *slog.Logger) (MessageSource, error) {
	return mqtt.Start(ctx, cfg, h, state, log)
}

// New prepares every stage over o's parts; Run starts them.
func New(o Options) (*Gateway, error) {
	if o.Mapper == nil || o.Spool == nil || o.Writer == nil || o.DeadLetters == nil {
		return nil, errors.New("gateway: Mapper, Spool, Writer and DeadLetters are required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Connect == nil {
		o.Connect = connectMQTT
	}
	reg := prometheus.NewRegistry()
	g := &Gateway{
		opt: o, log: o.Log, mapper: o.Mapper, spool: o.Spool, writer: o.Writer, dead: o.DeadLetters, reg: reg,
		now: o.Now,
		// Longer than any healthy fsync, short enough to name a wedged
		// disk before an operator starts guessing.
		stallLimit: 10 * time.Second,
		inbox:      make(chan pending, inboxSize),
		stopping:   make(chan struct{}),
		committed:  make(chan struct{}, 1),
		connected:  make([]atomic.Bool, max(o.MQTT.Connections, 1)),
		appended:   make(chan struct{}),
		degraded:   o.DegradedBytes,
	}
	g.m = newMetrics(reg, func() spool.Stats { return g.spool.Stats() })
	g.fleet = fleet.New(o.Fleet)
	g.devKey = newDeviceKey(o.TopicPattern)
	g.ownDropped = registerFleetMetrics(reg, g.fleet)
	registerTopicCacheMetrics(reg, g.mapper.Topics())
	g.details = map[string]httpapi.Detail{"fleet": g.fleetDetail}
	if st := o.Spool.Stats(); st.CorruptRecords > 0 {
		g.log.Warn("spool: damaged records skipped or cut off at start", "records", st.CorruptRecords, "bytes", st.CorruptBytes)
	}
	return g, nil
}

// Registry is the gateway's metrics registry (the demo reads it).
func (g *Gateway) Registry() *prometheus.Registry { return g.reg }

// HeldBytes is the memory the fleet watch and the topic cache hold: bounded
// by their own settings (fleet.max_devices, the cache's budget), growing
// with the fleet, and free of pointers, so the collector has nothing of
// it to scan. The daemon's memory limit is raised by it (see
// cmd/iotgw's followFleet), so that a large fleet does not leave the
// collector less room and make it run more often per message.
func (g *Gateway) HeldBytes() int64 {
	return int64(g.fleet.Bytes() + g.mapper.Topics().Bytes())
}

// HTTPAddr is the bound metrics/health address, "" when disabled.
func (g *Gateway) HTTPAddr() string {
	if g.http == nil {
		return ""
	}
	return g.http.Addr()
}

// Run starts every stage and blocks until ctx is cancelled, then shuts
// down in bounded time: stop taking messages, spool and acknowledge what
// is in hand, disconnect, write out what the database takes within
// drainTimeout. Only failures to start are returned.
func (g *Gateway) Run(ctx context.Context) error {
	if g.opt.HTTPAddr != "" {
		mux := httpapi.HandlerWith(g.reg, g.checks(), g.details)
		for _, r := range g.routes {
			mux.Handle(r.pattern, r.h)
		}
		srv, err := httpapi.ListenTLS(g.opt.HTTPAddr, mux, g.opt.TLSCertFile, g.opt.TLSKeyFile)
		if err != nil {
			g.closeState()
			return fmt.Errorf("http.addr: %w", err)
		}
		g.http = srv
		g.log.Info("http listening", "addr", srv.Addr())
	}
	writeCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	draining := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		g.writeLoop(writeCtx, draining)
	}()
	go g.appendLoop()
	g.accepting.Store(true)
	mc := g.opt.MQTT
	// The broker may have one spool group unacknowledged across all
	// connections: the appender fsyncs what arrived during the last fsync,
	// so a larger window would only wait in the inbox.
	mc.ReceiveMaximum = max(maxGroup/max(mc.Connections, 1), 1)
	mc.TopicCache = g.mapper.Topics()
	mc.ExpectSession = g.hadSession()
	mc.SessionLost = func(int) { g.m.sessionsLost.Inc() }
	src, err := g.opt.Connect(ctx, mc, g.handle, g.onState, g.log)
	if err != nil {
		g.stopAppender()
		<-g.appended
		stopWriter()
		<-writerDone
		g.closeState()
		g.closeHTTP()
		return err
	}
	g.source = src
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	go g.watchdog(ctx)
	go g.sweepLoop(ctx)

	<-ctx.Done()
	g.log.Info("shutting down")
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	g.stopAppender()
	<-g.appended // everything handed over is spooled and acknowledged
	src.Close()
	close(draining)
	select {
	case <-writerDone:
	case <-time.After(drainTimeout):
		g.log.Warn("shutdown: database did not take everything in time; the rest stays spooled",
			"records", g.spool.Stats().Records)
		stopWriter()
		<-writerDone
	}
	g.closeState()
	g.closeHTTP()
	return nil
}

func (g *Gateway) closeHTTP() {
	if g.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = g.http.Shutdown(sctx)
		cancel()
	}
}

func (g *Gateway) closeState() {
	if err := g.spool.Close(); err != nil {
		g.log.Error("spool close", "err", err)
	}
	g.dead.Close()
	g.writer.Close()
}

// sessionMarker, in the state directory, holds the client id this
// gateway's broker session was established under. A replacement that takes
// a slot over (same client id, same state directory) therefore expects the
// broker to have kept the slot's session, and says so when it has not.
const sessionMarker = "mqtt-client-id"

// hadSession reports whether a gateway with this client id and state
// directory has had a broker session before.
func (g *Gateway) hadSession() bool {
	b, err := os.ReadFile(filepath.Join(g.opt.StateDir, sessionMarker))
	return err == nil && strings.TrimSpace(string(b)) == g.opt.MQTT.ClientID
}

// markSession records that the broker holds a session for the client id.
func (g *Gateway) markSession() {
	g.markOnce.Do(func() {
		if g.hadSession() {
			return
		}
		if err := os.WriteFile(filepath.Join(g.opt.StateDir, sessionMarker), []byte(g.opt.MQTT.ClientID+"\n"), 0o600); err != nil {
			g.log.Warn("cannot record the broker session in the state directory", "err", err)
		}
	})
}
