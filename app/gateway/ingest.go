// Ingest: a message from the broker is decoded (handle, on the
// connection's read loop), spooled in fsynced groups and only then
// acknowledged, in arrival order (appendLoop, the one goroutine that owns
// the inbox and the spool's append side).

package gateway

import (
	"errors"
	"sync"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/backoff"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// ackPayloadFormatInvalid is the MQTT 5 PUBACK reason code for a message
// the gateway dead-letters.
const ackPayloadFormatInvalid = 0x99

// pending is one message on its way to the appender. A message that is
// not spooled (dead-lettered, retained) has no data: it is passed along
// only to be acknowledged in arrival order, after the messages before it.
type pending struct {
	data   []byte // from lineBufs, given back once spooled; nil: nothing to spool
	points int
	ack    mqtt.Ack
	own    bool // a point of the gateway's own (Record): no message to acknowledge
}

// lineBufs recycles the buffers messages are decoded into: the spool
// copies them, so each can be reused as soon as its group is appended, and
// decoding makes no garbage per message. A free list rather than a
// sync.Pool, which loses its buffers at every collection, and under the
// memory limit collections come often (docs/history.md).
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

// handle runs on the connection's read loop: decode, then hand over
// (msg.Payload is not kept: the mapper copies what it needs). Every message
// goes through the inbox, spooled or not, so that acknowledgements leave in
// the order the messages arrived, as MQTT requires (3.1.1 §4.6): a bad
// message must not be acknowledged ahead of good ones still waiting for
// their fsync.
func (g *Gateway) handle(m mqtt.Message, f sensor.Format, ack mqtt.Ack) {
	msg := m.Message
	if f == sensor.FormatLine {
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
		reason := sensor.ReasonBadField
		var de *sensor.DecodeError
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
	bo := backoff.Backoff{Initial: 50 * time.Millisecond, Max: 5 * time.Second}
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
		case <-time.After(bo.Next()):
		case <-g.stopping:
			// One last try below; after that the broker keeps them.
			g.appendBeat.begin()
			err := g.spool.Append(records)
			g.appendBeat.end()
			return err == nil
		}
	}
}
