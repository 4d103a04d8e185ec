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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iot-gateway/iot-gateway/app"
	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/deadletter"
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
)

type pending struct {
	data   []byte // from lineBufs, given back once spooled
	points int
	ack    mqtt.Ack
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
		if cap(g.data) <= maxPooledBuf && len(p.free) < maxFreeBufs {
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
	spool  *spool.Spool
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
	http      *httpapi.Server
	connected []atomic.Bool

	writeErr  atomic.Pointer[string] // last write failure, nil once a write succeeds
	appendErr atomic.Pointer[string] // last spool failure, nil once an append succeeds
	degraded  int64

	appended chan struct{} // closed when the appender has finished

	body      []byte // writer loop only: the request body, reused
	onWritten func(lines [][]byte, at time.Time)
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
		m:         newMetrics(reg, sp),
		inbox:     make(chan pending, inboxSize),
		stopping:  make(chan struct{}),
		committed: make(chan struct{}, 1),
		connected: make([]atomic.Bool, cfg.MQTT.Connections),
		appended:  make(chan struct{}),
		degraded:  cfg.Spool.DegradedBytes,
	}
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
		"spool": func() error {
			if p := g.appendErr.Load(); p != nil {
				return fmt.Errorf("spool append failing: %s", *p)
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
		srv, err := httpapi.Listen(g.cfg.HTTP.Addr, httpapi.Handler(g.reg, g.checks()))
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
		MaxPayload: g.cfg.Mapping.MaxPayload,
		KeepAlive:  mc.KeepAlive.Duration, ConnectTimeout: mc.ConnectTimeout.Duration,
		MaxReconnectInterval: mc.MaxReconnectInterval.Duration,
		CAFile:               mc.CAFile, CertFile: mc.CertFile, KeyFile: mc.KeyFile, InsecureSkipVerify: mc.InsecureSkipVerify,
	}, g.handle, g.onState, g.log)
	if err != nil {
		g.stopAppender()
		<-g.appended
		stopWriter()
		<-writerDone
		g.closeState()
		return err
	}
	g.source = src
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	go g.watchdog(ctx)

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
	if g.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = g.http.Shutdown(sctx)
		cancel()
	}
	return nil
}

func (g *Gateway) closeState() {
	if err := g.spool.Close(); err != nil {
		g.log.Error("spool close", "err", err)
	}
	g.dead.Close()
	g.writer.Close()
}

func (g *Gateway) onState(conn int, up bool, err error) {
	if conn < len(g.connected) {
		g.connected[conn].Store(up)
	}
	v := 0.0
	if up {
		v = 1
	}
	g.m.connected.WithLabelValues(strconv.Itoa(conn + 1)).Set(v)
}

// handle runs on the connection's read loop: decode, then hand over
// (msg.Payload is not kept: the mapper copies what it needs).
func (g *Gateway) handle(msg app.Message, f app.Format, ack mqtt.Ack) {
	if f == app.FormatLine {
		g.m.receivedLine.Inc()
	} else {
		g.m.receivedJSON.Inc()
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
		if derr := g.dead.Add(msg.Received, msg.Topic, reason, err, msg.Payload); derr != nil {
			g.log.Error("dead-letter write failed", "err", derr)
		}
		g.log.Debug("message rejected", "topic", msg.Topic, "reason", reason, "err", err)
		ack.Ack() // nothing would ever make it valid; the broker must not resend it
		g.m.acked.Inc()
		return
	}
	g.sendMu.RLock()
	defer g.sendMu.RUnlock()
	if !g.accepting.Load() {
		return // shutting down: not acknowledged, so the broker delivers it again
	}
	select {
	case g.inbox <- pending{data: data, points: n, ack: ack}:
	case <-g.stopping:
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
			records = append(records, p.data)
			points += p.points
		}
		if !g.appendWithRetry(records) {
			continue // shutting down with a full spool: not acknowledged, the broker keeps them
		}
		for _, p := range group {
			p.ack.Ack()
		}
		lineBufs.put(group)
		g.m.acked.Add(float64(len(group)))
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
		err := g.spool.Append(records)
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
		msg := err.Error()
		if g.appendErr.Swap(&msg) == nil {
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
			if g.spool.Append(records) == nil {
				return true
			}
			return false
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
		batch, err := g.spool.Read(readCtx, batchSize, batchMaxBytes)
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
		if age := time.Since(batch.Oldest); len(batch.Records) < batchSize && age < linger && !isDraining {
			g.spool.Rewind()
			select {
			case <-time.After(linger - age):
			case <-draining:
			case <-ctx.Done():
				return
			}
			continue
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
		if err := g.spool.Commit(batch.End); err != nil {
			g.log.Error("spool commit", "err", err)
		}
		g.m.spoolWait.Observe(time.Since(batch.Oldest).Seconds())
		select {
		case g.committed <- struct{}{}:
		default:
		}
	}
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
// go to the dead-letter file and the rest is written.
func (g *Gateway) deliver(ctx context.Context, lines [][]byte) error {
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
	var we *influx.WriteError
	if err == nil || !errors.As(err, &we) {
		return err
	}
	if len(lines) == 1 {
		reason := app.ReasonRejected
		if we.TooLarge() {
			reason = app.ReasonTooLarge
		}
		g.m.rejected.WithLabelValues(reason).Inc()
		if derr := g.dead.Add(time.Now(), "", reason, err, bytes.TrimSuffix(lines[0], []byte("\n"))); derr != nil {
			g.log.Error("dead-letter write failed", "err", derr)
		}
		g.log.Warn("point rejected by InfluxDB", "err", err)
		return nil
	}
	half := len(lines) / 2
	if err := g.deliver(ctx, lines[:half]); err != nil {
		return err
	}
	return g.deliver(ctx, lines[half:])
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
		msg := err.Error()
		if g.writeErr.Swap(&msg) == nil {
			g.log.Error("influx write failing; readings stay spooled and are retried", "err", err)
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

// watchdog pings systemd's watchdog while the spool answers, so a gateway
// wedged on its state is restarted. Without systemd it does nothing.
func (g *Gateway) watchdog(ctx context.Context) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	t := time.NewTicker(interval / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = g.spool.Stats()
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}
