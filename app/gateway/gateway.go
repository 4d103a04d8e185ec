// Package gateway runs the pipeline: MQTT messages are decoded, appended to
// the durable spool in fsynced groups and only then acknowledged; one writer
// drains the spool into InfluxDB in large batches and advances it only after
// a 2xx. Bad input goes to the dead-letter file and is counted; it never
// holds up the good readings next to it.
package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iot-gateway/iot-gateway/app"
	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/deadletter"
	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/influx"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
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

// ackPayloadFormatInvalid is the MQTT 5 PUBACK reason code for a message
// the gateway dead-letters.
const ackPayloadFormatInvalid = 0x99

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

// pending is one message on its way to the appender. A message that is
// not spooled (dead-lettered, retained) has no data: it is passed along
// only to be acknowledged in arrival order, after the messages before it.
type pending struct {
	data   []byte // from lineBufs, given back once spooled; nil: nothing to spool
	points int
	ack    mqtt.Ack
	own    bool // a point of the gateway's own (Record): no message to acknowledge
}

// store is what the pipeline needs of the spool (*spool.Spool). Tests put
// an in-memory one in its place to stage faults a real disk cannot be made
// to show on demand (a write that never returns).
type store interface {
	Append(records [][]byte) error
	Read(ctx context.Context, maxRecords, maxBytes int) (spool.Batch, error)
	Rewind()
	Commit(end spool.Position) error
	Stats() spool.Stats
	Close() error
}

// heartbeat tells the watchdog whether a loop makes progress. A loop is
// alive while it waits for work and while an operation it began recently
// is running; an operation that does not return (a write to a wedged disk
// holding the spool's lock) makes it stale. Monotonic time, so a clock
// step cannot fake either.
type heartbeat struct{ busySince atomic.Int64 } // monoNow at begin; 0 while idle

var monoEpoch = time.Now()

// monoNow is monotonic nanoseconds since start, never 0.
func monoNow() int64 { return int64(time.Since(monoEpoch)) + 1 }

func (h *heartbeat) begin() { h.busySince.Store(monoNow()) }
func (h *heartbeat) end()   { h.busySince.Store(0) }

// stuck is how long the current operation has been running; 0 when idle.
func (h *heartbeat) stuck() time.Duration {
	s := h.busySince.Load()
	if s == 0 {
		return 0
	}
	return time.Duration(monoNow() - s)
}

// lineBufs recycles the buffers messages are decoded into: the spool
// copies them, so each can be reused as soon as its group is appended.
// One fresh buffer per message was most of the gateway's garbage. (A
// sync.Pool lost its buffers at every collection, which under the memory
// limit come often.)
var lineBufs bufStack

// bufStack is a bounded free list of buffers.
type bufStack struct {
	mu   sync.Mutex
	free [][]byte
}

const (
	// maxFreeBufs bounds the buffers kept: about what one broker window
	// and a group commit hold in flight.
	maxFreeBufs = 2048
	// maxPooledBuf keeps buffers grown by an unusually large message out:
	// pooled, they would carry small lines and pin the memory.
	maxPooledBuf = 4 << 10
)

func (p *bufStack) get() []byte {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return b
	}
	p.mu.Unlock()
	return make([]byte, 0, 256)
}

// put gives back the buffers of a spooled group, under one lock.
func (p *bufStack) put(group []pending) {
	p.mu.Lock()
	for _, g := range group {
		if g.data != nil && cap(g.data) <= maxPooledBuf && len(p.free) < maxFreeBufs {
			p.free = append(p.free, g.data[:0])
		}
	}
	p.mu.Unlock()
}

// Gateway is one running pipeline.
type Gateway struct {
	cfg    config.Config
	log    *slog.Logger
	mapper *app.Mapper
	spool  store
	writer *influx.Writer
	dead   *deadletter.File
	m      *metrics
	reg    *prometheus.Registry

	inbox     chan pending
	sendMu    sync.RWMutex // held for reading while a handler sends to inbox
	accepting atomic.Bool
	stopping  chan struct{}
	committed chan struct{} // signalled after each commit, wakes a full spool

	source    *mqtt.Source
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

// New opens the state (spool, dead letters) and prepares every stage; Run
// starts them. cfg must have been validated.
func New(cfg config.Config, log *slog.Logger) (*Gateway, error) {
	if log == nil {
		log = slog.Default()
	}
	mapper, err := app.NewMapper(cfg.MapperConfig())
	if err != nil {
		return nil, fmt.Errorf("mapping: %w", err)
	}
	if err := os.MkdirAll(cfg.Spool.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool.dir: %w", err)
	}
	sp, err := spool.Open(spool.Options{
		Dir:          cfg.Spool.Dir,
		SegmentBytes: cfg.Spool.SegmentBytes,
		MaxBytes:     cfg.Spool.MaxBytes,
		Policy:       spool.Policy(cfg.Spool.Policy),
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	dead, err := deadletter.Open(cfg.Spool.Dir, cfg.DeadLetter.MaxBytes)
	if err != nil {
		sp.Close()
		return nil, err
	}
	w, err := influx.New(influx.Config{URL: cfg.Influx.URL, Token: cfg.Influx.Token, Org: cfg.Influx.Org,
		Bucket: cfg.Influx.Bucket, Timeout: cfg.Influx.Timeout.Duration, Gzip: cfg.Influx.Gzip.Enabled(cfg.Influx.URL)})
	if err != nil {
		sp.Close()
		dead.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	g := &Gateway{
		cfg: cfg, log: log, mapper: mapper, spool: sp, writer: w, dead: dead, reg: reg,
		now: time.Now,
		// Longer than any healthy fsync, short enough to name a wedged
		// disk before an operator starts guessing.
		stallLimit: 10 * time.Second,
		inbox:      make(chan pending, inboxSize),
		stopping:   make(chan struct{}),
		committed:  make(chan struct{}, 1),
		connected:  make([]atomic.Bool, cfg.MQTT.Connections),
		appended:   make(chan struct{}),
		degraded:   cfg.Spool.DegradedBytes,
	}
	g.m = newMetrics(reg, func() spool.Stats { return g.spool.Stats() })
	g.fleet = fleet.New(fleet.Options{MaxDevices: cfg.Fleet.MaxDevices, SilentFactor: cfg.Fleet.SilentFactor,
		MinSilence: cfg.Fleet.MinSilence.Duration})
	g.devKey = newDeviceKey(cfg.Mapping.TopicPattern)
	g.ownDropped = registerFleetMetrics(reg, g.fleet)
	g.details = map[string]httpapi.Detail{"fleet": g.fleetDetail}
	if g.degraded == 0 {
		g.degraded = cfg.Spool.MaxBytes / 10 * 8
	}
	if st := sp.Stats(); st.CorruptRecords > 0 {
		log.Warn("spool: damaged records skipped or cut off at start", "records", st.CorruptRecords, "bytes", st.CorruptBytes)
	}
	return g, nil
}

// Registry is the gateway's metrics registry (the demo reads it).
func (g *Gateway) Registry() *prometheus.Registry { return g.reg }

// HTTPAddr is the bound metrics/health address, "" when disabled.
func (g *Gateway) HTTPAddr() string {
	if g.http == nil {
		return ""
	}
	return g.http.Addr()
}

// Ready returns nil when the broker is connected, the last write did not
// fail, and the spool is healthy; otherwise what is wrong.
func (g *Gateway) Ready() error {
	var errs []error
	for _, c := range g.checks() {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (g *Gateway) checks() map[string]httpapi.Check {
	return map[string]httpapi.Check{
		"mqtt": func() error {
			for i := range g.connected {
				if !g.connected[i].Load() {
					return fmt.Errorf("mqtt connection %d is down", i+1)
				}
			}
			return nil
		},
		"influx": func() error {
			if p := g.writeErr.Load(); p != nil {
				return fmt.Errorf("last write failed: %s", *p)
			}
			return nil
		},
		"deadletter": func() error {
			if p := g.deadErr.Load(); p != nil {
				return fmt.Errorf("dead-letter writes failing: %s", *p)
			}
			return nil
		},
		"spool": func() error {
			if loop := g.stalled(g.stallLimit); loop != "" {
				return fmt.Errorf("spool not making progress: the %s's operation has run for over %s", loop, g.stallLimit)
			}
			if p := g.appendErr.Load(); p != nil {
				return fmt.Errorf("spool append failing: spool: %s", *p)
			}
			if st := g.spool.Stats(); st.Bytes > g.degraded {
				return fmt.Errorf("degraded: %d bytes waiting (threshold %d)", st.Bytes, g.degraded)
			}
			return nil
		},
	}
}

// Run starts every stage and blocks until ctx is cancelled, then shuts
// down in bounded time: stop taking messages, spool and acknowledge what
// is in hand, disconnect, write out what the database takes within
// drainTimeout. Only failures to start are returned.
func (g *Gateway) Run(ctx context.Context) error {
	if g.cfg.HTTP.Addr != "" {
		mux := httpapi.HandlerWith(g.reg, g.checks(), g.details)
		for _, r := range g.routes {
			mux.Handle(r.pattern, r.h)
		}
		srv, err := httpapi.ListenTLS(g.cfg.HTTP.Addr, mux, g.cfg.Commands.TLSCertFile, g.cfg.Commands.TLSKeyFile)
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
	mc := g.cfg.MQTT
	src, err := mqtt.Start(ctx, mqtt.Config{
		URL: mc.URL, ClientID: mc.ClientID, Username: mc.Username, Password: mc.Password,
		QoS: byte(mc.QoS), Topics: mc.Topics, LineTopics: mc.LineTopics, Connections: mc.Connections,
		TopicCache: g.mapper.Topics(), MaxPayload: g.cfg.Mapping.MaxPayload,
		KeepAlive: mc.KeepAlive.Duration, ConnectTimeout: mc.ConnectTimeout.Duration,
		MaxReconnectInterval: mc.MaxReconnectInterval.Duration,
		CAFile:               mc.CAFile, CertFile: mc.CertFile, KeyFile: mc.KeyFile, InsecureSkipVerify: mc.InsecureSkipVerify,
		Protocol: protocol(mc.Protocol), SessionExpiry: mc.SessionExpiry.Duration,
		// The broker may have one spool group unacknowledged across all
		// connections: the appender fsyncs what arrived during the last
		// fsync, so a larger window would only wait in the inbox.
		ReceiveMaximum: max(maxGroup/max(mc.Connections, 1), 1),
		ExpectSession:  g.hadSession(),
		SessionLost:    func(int) { g.m.sessionsLost.Inc() },
	}, g.handle, g.onState, g.log)
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
	b, err := os.ReadFile(filepath.Join(g.cfg.Spool.Dir, sessionMarker))
	return err == nil && strings.TrimSpace(string(b)) == g.cfg.MQTT.ClientID
}

// markSession records that the broker holds a session for the client id.
func (g *Gateway) markSession() {
	g.markOnce.Do(func() {
		if g.hadSession() {
			return
		}
		if err := os.WriteFile(filepath.Join(g.cfg.Spool.Dir, sessionMarker), []byte(g.cfg.MQTT.ClientID+"\n"), 0o600); err != nil {
			g.log.Warn("cannot record the broker session in the state directory", "err", err)
		}
	})
}

func protocol(p config.Protocol) byte {
	if p == config.MQTT311 {
		return mqtt.V311
	}
	return mqtt.V5
}

func (g *Gateway) onState(conn int, up bool, err error) {
	if conn < len(g.connected) {
		g.connected[conn].Store(up)
	}
	if up {
		g.markSession()
	}
	if de := (*mqtt.DisconnectError)(nil); !up && errors.As(err, &de) && !de.Connack {
		g.m.disconnects.WithLabelValues(mqtt.ReasonName(de.Code)).Inc()
	}
	v := 0.0
	if up {
		v = 1
	}
	g.m.connected.WithLabelValues(strconv.Itoa(conn + 1)).Set(v)
}

// handle runs on the connection's read loop: decode, then hand over
// (msg.Payload is not kept: the mapper copies what it needs). Every message
// goes through the inbox, spooled or not, so that acknowledgements leave in
// the order the messages arrived, as MQTT requires (3.1.1 §4.6): a bad
// message must not be acknowledged ahead of good ones still waiting for
// their fsync.
func (g *Gateway) handle(m mqtt.Message, f app.Format, ack mqtt.Ack) {
	msg := m.Message
	if f == app.FormatLine {
		g.m.receivedLine.Inc()
	} else {
		g.m.receivedJSON.Inc()
	}
	if ack.Retained() {
		g.m.ignored.WithLabelValues(reasonRetained).Inc()
		g.log.Debug("retained message ignored", "topic", msg.Topic)
		g.enqueue(pending{ack: ack})
		return
	}
	data, n, err := g.mapper.Append(lineBufs.get(), msg, f)
	if err != nil {
		lineBufs.put([]pending{{data: data}})
		reason := app.ReasonBadField
		var de *app.DecodeError
		if errors.As(err, &de) {
			reason = de.Reason
		}
		g.m.rejected.WithLabelValues(reason).Inc()
		g.seen(msg.Topic, msg.Received, true)
		g.deadLetter(msg.Received, msg.Topic, reason, err, msg.Payload)
		g.log.Debug("message rejected", "topic", msg.Topic, "reason", reason, "err", err)
		// Acknowledged like a spooled one: nothing would ever make it
		// valid, so the broker must not resend it. MQTT 5 says why.
		g.enqueue(pending{ack: ack.WithReason(ackPayloadFormatInvalid)})
		return
	}
	g.seen(msg.Topic, msg.Received, false)
	g.enqueue(pending{data: data, points: n, ack: ack})
}

// enqueue hands p to the appender. While shutting down p is dropped
// unacknowledged, so the broker delivers it again.
func (g *Gateway) enqueue(p pending) {
	g.sendMu.RLock()
	defer g.sendMu.RUnlock()
	if !g.accepting.Load() {
		return
	}
	select {
	case g.inbox <- p:
	case <-g.stopping:
	}
}

// deadLetter records a rejected message or point; a record that cannot be
// written is counted and shown in /readyz, never dropped in silence.
func (g *Gateway) deadLetter(at time.Time, topic, reason string, cause error, payload []byte) {
	g.recentDead.add(at, topic, reason, cause, payload)
	if derr := g.dead.Add(at, topic, reason, cause, payload); derr != nil {
		g.m.deadErrors.Inc()
		class := "io"
		if g.deadErr.Swap(&class) == nil {
			g.log.Error("dead-letter write failing; rejected messages are counted but not kept", "err", derr)
		}
		return
	}
	if g.deadErr.Swap(nil) != nil {
		g.log.Info("dead-letter writes succeed again")
	}
}

func (g *Gateway) stopAppender() {
	g.accepting.Store(false)
	select {
	case <-g.stopping:
		return
	default:
	}
	close(g.stopping)
	g.sendMu.Lock()
	close(g.inbox)
	g.sendMu.Unlock()
}

// appendLoop group-commits: whatever arrived while the previous fsync ran
// goes into the next one, so fsyncs stay few and the broker's small
// in-flight window keeps moving.
func (g *Gateway) appendLoop() {
	defer close(g.appended)
	group := make([]pending, 0, maxGroup)
	records := make([][]byte, 0, maxGroup)
	for first := range g.inbox {
		group = append(group[:0], first)
		// Take what is already waiting without a select per message: this
		// goroutine is the only receiver, so len() items cannot vanish.
		for n := min(len(g.inbox), maxGroup-1); n > 0; n-- {
			p, ok := <-g.inbox
			if !ok {
				break
			}
			group = append(group, p)
		}
		records = records[:0]
		points := 0
		for _, p := range group {
			if p.data != nil {
				records = append(records, p.data)
			}
			points += p.points
		}
		if len(records) > 0 && !g.appendWithRetry(records) {
			continue // shutting down with a full spool: not acknowledged, the broker keeps them
		}
		acked := 0
		for _, p := range group {
			if !p.own {
				p.ack.Ack()
				acked++
			}
		}
		lineBufs.put(group)
		g.m.acked.Add(float64(acked))
		g.m.pointsSpooled.Add(float64(points))
	}
}

// appendWithRetry appends until it succeeds. A full spool (block policy)
// or a failing disk holds the group unacknowledged, which stops the broker
// sending more; nothing is lost. It gives up only when shutting down.
func (g *Gateway) appendWithRetry(records [][]byte) bool {
	backoff := 50 * time.Millisecond
	for {
		start := time.Now()
		g.appendBeat.begin()
		err := g.spool.Append(records)
		g.appendBeat.end()
		if err == nil {
			g.m.fsync.Observe(time.Since(start).Seconds())
			g.appendErr.Store(nil)
			return true
		}
		kind := "io"
		if errors.Is(err, spool.ErrFull) {
			kind = "full"
		}
		g.m.appendErrors.WithLabelValues(kind).Inc()
		if g.appendErr.Swap(&kind) == nil {
			g.log.Error("spool append failing; holding messages unacknowledged", "err", err)
		}
		if kind == "full" {
			select {
			case <-g.committed:
			case <-time.After(time.Second):
			case <-g.stopping:
				return false
			}
			continue
		}
		select {
		case <-time.After(backoff):
		case <-g.stopping:
			// One last try below; after that the broker keeps them.
			g.appendBeat.begin()
			err := g.spool.Append(records)
			g.appendBeat.end()
			return err == nil
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// writeLoop drains the spool into InfluxDB. On draining it stops once the
// spool is empty; on ctx cancel at once.
func (g *Gateway) writeLoop(ctx context.Context, draining <-chan struct{}) {
	batchSize := g.cfg.Influx.BatchSize
	linger := g.cfg.Influx.FlushInterval.Duration
	var lines [][]byte // reused: the lines of the batch in hand
	// When the writer first saw the small batch at the head of the spool
	// (monotonic; zero once a batch is committed). The age read back from
	// disk is wall-clock time: after the clock steps back it is negative
	// and would keep the batch waiting for as long as the step.
	var lingerFrom time.Time
	// idleCtx also ends when draining begins, so a Read waiting on an idle
	// spool notices it; once draining, Reads use ctx itself.
	idleCtx, cancelIdle := context.WithCancel(ctx)
	defer cancelIdle()
	go func() {
		select {
		case <-draining:
			cancelIdle()
		case <-idleCtx.Done():
		}
	}()
	for {
		isDraining := false
		select {
		case <-draining:
			isDraining = true
			if g.spool.Stats().Records == 0 {
				return
			}
		default:
		}
		readCtx := idleCtx
		if isDraining {
			readCtx = ctx
		}
		// A Read of an empty spool waits for appends (idle); one with
		// records waiting is disk work the watchdog must see finish.
		waiting := g.spool.Stats().Records > 0
		if waiting {
			g.writeBeat.begin()
		}
		batch, err := g.spool.Read(readCtx, batchSize, batchMaxBytes)
		g.writeBeat.end()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return
			}
			if readCtx.Err() != nil {
				continue // draining began
			}
			g.log.Error("spool read", "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
			continue
		}
		// A small batch waits up to flush_interval for company: fewer,
		// larger writes cost InfluxDB far less than many small ones.
		if len(batch.Records) < batchSize && !isDraining {
			if lingerFrom.IsZero() {
				lingerFrom = time.Now()
			}
			if wait := lingerWait(linger, g.now().Sub(batch.Oldest), time.Since(lingerFrom)); wait > 0 {
				g.spool.Rewind()
				select {
				case <-time.After(wait):
				case <-draining:
				case <-ctx.Done():
					return
				}
				continue
			}
		}
		// The batch is written and committed even if drop-oldest discards
		// its records from disk while the database is away: it is in
		// memory, so they are not lost, and the spool counts a discarded
		// record as dropped only once Rewind gives it up (see spool's
		// dropFor). So nothing counted as dropped is ever written, and
		// nothing is re-read because of a drop.
		lines = splitLines(lines[:0], batch.Records)
		if err := g.deliver(ctx, lines); err != nil {
			// ctx ended; the batch stays spooled, and what drop-oldest
			// discarded of it is counted now. (If a rejected batch was
			// being split, halves already written are counted too if they
			// were discarded: the spool commits whole batches only.)
			g.spool.Rewind()
			return
		}
		g.writeBeat.begin()
		err = g.spool.Commit(batch.End)
		g.writeBeat.end()
		if err != nil {
			g.log.Error("spool commit", "err", err)
		}
		lingerFrom = time.Time{}
		if age := g.now().Sub(batch.Oldest); age >= 0 {
			g.m.spoolWait.Observe(age.Seconds())
		}
		select {
		case g.committed <- struct{}{}:
		default:
		}
	}
}

// lingerWait is how much longer a small batch waits: until its oldest
// record is linger old, by the wall clock (age, from the spool), but never
// longer than linger after the writer first saw it (seen, monotonic),
// whatever the wall clock did meanwhile.
func lingerWait(linger, age, seen time.Duration) time.Duration {
	wait := linger - seen
	if age >= 0 {
		wait = min(wait, linger-age)
	}
	return max(wait, 0)
}

// splitLines flattens records (each one or more complete lines) to lines,
// appending to lines.
func splitLines(lines, records [][]byte) [][]byte {
	for _, r := range records {
		for len(r) > 0 {
			i := bytes.IndexByte(r, '\n')
			if i < 0 {
				lines = append(lines, r)
				break
			}
			lines = append(lines, r[:i+1])
			r = r[i+1:]
		}
	}
	return lines
}

// deliver writes lines, retrying transient failures forever. A batch the
// database rejects is split in halves until the bad points are found; they
// go to the dead-letter file and the rest is written. What the database
// says it dropped ("partial write: ... dropped=N") prunes the split: a
// part that holds only bad points is dead-lettered without more requests,
// and the second half's count follows from its parent's and the first
// half's. The split is bounded by maxSplitRequests; what is unresolved
// then is dead-lettered whole.
func (g *Gateway) deliver(ctx context.Context, lines [][]byte) error {
	budget := maxSplitRequests
	_, err := g.deliverPart(ctx, lines, -1, &budget)
	return err
}

// deliverPart writes lines and returns how many of them the database
// rejected, -1 when its answers did not say. bad > 0 means an earlier
// answer already showed lines to hold exactly bad rejected points, so the
// request is not sent again; 0 (known good) and -1 (unknown) send it.
func (g *Gateway) deliverPart(ctx context.Context, lines [][]byte, bad int, budget *int) (int, error) {
	tooLarge := false
	if bad <= 0 {
		err := g.send(ctx, lines)
		*budget--
		var we *influx.WriteError
		if err == nil {
			return 0, nil
		}
		if !errors.As(err, &we) {
			return -1, err
		}
		if tooLarge = we.TooLarge(); tooLarge {
			if len(lines) == 1 {
				g.rejectLines(lines, app.ReasonTooLarge, err)
				return 1, nil
			}
			bad = -1
		} else {
			bad = dropped(we)
			if len(lines) == 1 || bad == len(lines) {
				g.rejectLines(lines, app.ReasonRejected, err)
				return len(lines), nil
			}
			g.lastReject = err
		}
	} else if bad >= len(lines) {
		g.rejectLines(lines, app.ReasonRejected, g.lastReject)
		return len(lines), nil
	}
	// Too large is not the points' fault: those halves are always written.
	if !tooLarge && *budget <= 0 {
		g.rejectLines(lines, reasonPartlyRejected, fmt.Errorf(
			"%w (not narrowed down within %d requests; InfluxDB may have stored the good points among these)",
			g.lastReject, maxSplitRequests))
		return bad, nil
	}
	half := len(lines) / 2
	left, err := g.deliverPart(ctx, lines[:half], -1, budget)
	if err != nil {
		return -1, err
	}
	right := -1
	if bad >= 0 && left >= 0 && bad >= left {
		right = bad - left
	}
	got, err := g.deliverPart(ctx, lines[half:], right, budget)
	if err != nil {
		return -1, err
	}
	if bad < 0 && left >= 0 && got >= 0 {
		bad = left + got
	}
	return bad, nil
}

// send writes lines as one request, retrying transient failures.
func (g *Gateway) send(ctx context.Context, lines [][]byte) error {
	// The body buffer is reused: it is needed only until the write below
	// returns, and the lines point into the spool's batch, not into it, so
	// even the halves of a split can build their bodies in it.
	body := g.body[:0]
	for _, l := range lines {
		body = append(body, l...)
	}
	g.body = body
	err := g.writeWithRetry(ctx, body, len(lines))
	if err != nil {
		// After a refusal or a timeout the HTTP transport may still be
		// reading the old body: never write into it again.
		g.body = nil
	}
	if err == nil && g.onWritten != nil {
		g.onWritten(lines, time.Now())
	}
	return err
}

// dropped is how many points a rejection says the server dropped, -1
// when it does not say. InfluxDB (1.8 and 2) answers a field type conflict
// with "partial write: ... dropped=N"; lines it cannot parse are not
// counted in N, so an answer that mentions a parse error says nothing.
func dropped(we *influx.WriteError) int {
	msg := we.Message
	if !strings.Contains(msg, "partial write") || strings.Contains(msg, "unable to parse") {
		return -1
	}
	i := strings.LastIndex(msg, "dropped=")
	if i < 0 {
		return -1
	}
	digits := msg[i+len("dropped="):]
	if j := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
		digits = digits[:j]
	}
	d, err := strconv.Atoi(digits)
	if err != nil {
		return -1
	}
	return d
}

// rejectLines dead-letters points the database will not take.
func (g *Gateway) rejectLines(lines [][]byte, reason string, cause error) {
	cause = errors.New(g.scrub(cause.Error()))
	now := time.Now()
	for _, l := range lines {
		g.m.rejected.WithLabelValues(reason).Inc()
		g.deadLetter(now, "", reason, cause, bytes.TrimSuffix(l, []byte("\n")))
	}
	g.log.Warn("points rejected by InfluxDB", "points", len(lines), "reason", reason, "err", cause)
}

// scrub makes a server's error text fit for logs and dead letters: the
// token never appears (a server that echoes requests would return it), and
// the text is cut to maxErrText.
func (g *Gateway) scrub(s string) string {
	if tok := g.cfg.Influx.Token; tok != "" {
		s = strings.ReplaceAll(s, tok, "[token]")
	}
	if len(s) > maxErrText {
		s = s[:maxErrText] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// writeWithRetry returns nil, ctx's error, or a *influx.WriteError the
// database will never accept as it is (rejected or too large).
func (g *Gateway) writeWithRetry(ctx context.Context, body []byte, points int) error {
	backoff := 100 * time.Millisecond
	maxBackoff := g.cfg.Influx.MaxRetryInterval.Duration
	for {
		start := time.Now()
		err := g.writer.Write(ctx, body)
		g.m.writeLatency.Observe(time.Since(start).Seconds())
		if err == nil {
			g.m.batches.WithLabelValues("ok").Inc()
			g.m.points.Add(float64(points))
			if g.writeErr.Swap(nil) != nil {
				g.log.Info("influx writes succeed again")
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var we *influx.WriteError
		if errors.As(err, &we) && we.Rejected() {
			g.m.batches.WithLabelValues("rejected").Inc()
			return err
		}
		if errors.As(err, &we) && we.TooLarge() {
			g.m.batches.WithLabelValues("too_large").Inc()
			return err
		}
		g.m.batches.WithLabelValues("retry").Inc()
		class := "network"
		if we != nil && we.Status != 0 {
			class = strconv.Itoa(we.Status)
		}
		g.m.writeErrors.WithLabelValues(class).Inc()
		if g.writeErr.Swap(&class) == nil {
			g.log.Error("influx write failing; readings stay spooled and are retried", "err", g.scrub(err.Error()))
		}
		// Full jitter over an exponential backoff, but never sooner than
		// the server asked for.
		wait := backoff/2 + rand.N(backoff/2+1)
		if we != nil && we.RetryAfter > wait {
			wait = we.RetryAfter
		}
		backoff = min(backoff*2, maxBackoff)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stalled names a loop whose current operation has run longer than limit
// (the appender in an Append, the writer reading or committing the spool),
// "" when both are waiting for work or progressing.
func (g *Gateway) stalled(limit time.Duration) string {
	if g.appendBeat.stuck() > limit {
		return "appender"
	}
	// A Read that began with records waiting may have skipped damaged
	// ones and be waiting for appends now: it is stuck only while records
	// still wait. (Stats does not wait for a write in progress.)
	if g.writeBeat.stuck() > limit && g.spool.Stats().Records > 0 {
		return "writer"
	}
	return ""
}

// watchdog pings systemd's watchdog while the appender and the writer make
// progress, so a gateway wedged on its disk (a write that never returns)
// is restarted instead of reported healthy. Without systemd it does
// nothing.
func (g *Gateway) watchdog(ctx context.Context) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	// An operation stuck for half the interval stops the pings; systemd
	// restarts the service an interval after the last one.
	limit := interval / 2
	t := time.NewTicker(interval / 3)
	defer t.Stop()
	quiet := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if loop := g.stalled(limit); loop != "" {
			if !quiet {
				g.log.Error("watchdog: the spool is not making progress; no longer telling systemd all is well",
					"loop", loop, "limit", limit)
				quiet = true
			}
			continue
		}
		if quiet {
			g.log.Info("watchdog: the spool makes progress again")
			quiet = false
		}
		_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	}
}
