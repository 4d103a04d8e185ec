package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Limits of the broker's log, so that hostile clients can neither read
// secrets in it nor fill the disk with it.
const (
	// logBurst lines with the same message at WARN or above are written per
	// logWindow; the rest are counted and reported with the next line.
	logBurst  = 20
	logWindow = 10 * time.Second
	// maxLogKeys bounds the messages the rate limiter tracks; messages are
	// constant strings in practice, the bound is against surprises.
	maxLogKeys = 1024
	// maxAttrLen cuts any string attribute (an error text can quote input).
	maxAttrLen = 200
)

// safeHandler wraps the handler the broker logs to. mochi logs whole
// packets (a second CONNECT with its password, a refused publish with its
// payload) and one WARN per client error; safeHandler replaces packets by
// their type, topic and size, cuts long strings, demotes mochi's low
// keep-alive warning to DEBUG, and rate-limits repeated warnings.
type safeHandler struct {
	next    slog.Handler
	limiter *logLimiter
}

func newSafeHandler(next slog.Handler) *safeHandler {
	return &safeHandler{next: next, limiter: &logLimiter{now: time.Now, seen: map[string]*logBucket{}}}
}

func (h *safeHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *safeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == mqtt.ErrMinimumKeepalive.Error() {
		if !h.next.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	var suppressed int
	if r.Level >= slog.LevelWarn {
		var ok bool
		if ok, suppressed = h.limiter.allow(r.Message); !ok {
			return nil
		}
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(safeAttr(a))
		return true
	})
	if suppressed > 0 {
		out.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, out)
}

func (h *safeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		safe[i] = safeAttr(a)
	}
	return &safeHandler{next: h.next.WithAttrs(safe), limiter: h.limiter}
}

func (h *safeHandler) WithGroup(name string) slog.Handler {
	return &safeHandler{next: h.next.WithGroup(name), limiter: h.limiter}
}

// safeAttr replaces what could carry credentials or payload bytes.
func safeAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, cut(v.String()))
	case slog.KindGroup:
		g := v.Group()
		safe := make([]any, len(g))
		for i, ga := range g {
			safe[i] = safeAttr(ga)
		}
		return slog.Group(a.Key, safe...)
	case slog.KindAny:
	default:
		return a
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, packetSummary(x))
	case *packets.Packet:
		return slog.String(a.Key, packetSummary(*x))
	case mqtt.Will:
		return slog.String(a.Key, fmt.Sprintf("will topic=%q bytes=%d", cut(x.TopicName), len(x.Payload)))
	case []byte:
		return slog.String(a.Key, fmt.Sprintf("<%d bytes>", len(x)))
	case error:
		return slog.String(a.Key, cut(x.Error()))
	case fmt.Stringer:
		return slog.String(a.Key, cut(x.String()))
	default:
		return slog.String(a.Key, fmt.Sprintf("<%T>", x))
	}
}

// packetSummary names a packet without its payload, password or
// properties.
func packetSummary(pk packets.Packet) string {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = "packet"
	}
	s := fmt.Sprintf("%s id=%d", name, pk.PacketID)
	if pk.TopicName != "" {
		s += fmt.Sprintf(" topic=%q", cut(pk.TopicName))
	}
	if len(pk.Payload) > 0 {
		s += fmt.Sprintf(" bytes=%d", len(pk.Payload))
	}
	return s
}

func cut(s string) string {
	if len(s) <= maxAttrLen {
		return s
	}
	return s[:maxAttrLen] + fmt.Sprintf("…(%d bytes)", len(s))
}

type logBucket struct {
	start      time.Time
	n          int
	suppressed int
}

// logLimiter allows logBurst lines per message per logWindow.
type logLimiter struct {
	now  func() time.Time
	mu   sync.Mutex
	seen map[string]*logBucket
}

// allow reports whether a line with this message may be written now, and
// how many were suppressed since the last one written.
func (l *logLimiter) allow(msg string) (bool, int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.seen[msg]
	if b == nil {
		if len(l.seen) >= maxLogKeys {
			for k, old := range l.seen {
				if now.Sub(old.start) > logWindow {
					delete(l.seen, k)
				}
			}
		}
		if len(l.seen) >= maxLogKeys {
			return false, 0
		}
		b = &logBucket{start: now}
		l.seen[msg] = b
	}
	if now.Sub(b.start) > logWindow {
		b.start, b.n = now, 0
	}
	if b.n >= logBurst {
		b.suppressed++
		return false, 0
	}
	b.n++
	s := b.suppressed
	b.suppressed = 0
	return true, s
}
