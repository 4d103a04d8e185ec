package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	packets5 "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iot-gateway/iot-gateway/app/internal/backoff"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// Why a session of our own rather than paho's client: the gateway only
// subscribes, and at tens of thousands of messages per second paho's client
// cost more than everything else in the gateway together. Every message
// crossed three goroutines over channels (reader, router, writer), was
// copied into a fresh packet, topic string and payload, and was put into and
// taken out of an inbound store keyed by fmt.Sprintf, although a
// subscriber with a persistent session needs no client-side store: the
// broker redelivers whatever was not acknowledged. Here the read loop
// parses each PUBLISH in the read buffer and calls the handler directly;
// control packets use paho's packet codec. Publishing (the simulator) still
// uses paho's client.

const (
	firstRetry = 50 * time.Millisecond
	// stableAfter is how long a session must have lasted for the next
	// reconnect to start again from firstRetry. A session that ends sooner
	// (another client with the same id taking it over, a broker that
	// accepts and then drops it) keeps backing off: two gateways sharing a
	// client id would otherwise take the session from each other many
	// times a second, each time redelivering what was in flight.
	stableAfter = 10 * time.Second
	// shortLogEvery bounds the warnings about sessions that ended soon
	// after they were established; the ones between are logged at debug.
	shortLogEvery = time.Minute
	// writeTimeout bounds one flush to the broker; a broker that stops
	// reading ends the session.
	writeTimeout = 10 * time.Second
)

// Ack acknowledges one message to the broker. The zero Ack (a QoS 0
// message) does nothing.
type Ack struct {
	conn     *bufferedConn
	id       uint16
	kind     byte // packets.Puback for QoS 1, packets.Pubrec for QoS 2
	retained bool
	v5       bool
	reason   byte
}

// WithReason returns the Ack with an MQTT 5 reason code (e.g. 0x99,
// payload format invalid, for a message the gateway dead-letters): the
// broker still takes the message as delivered, and a broker that logs
// reason codes says why. On an MQTT 3.1.1 session it changes nothing.
func (a Ack) WithReason(code byte) Ack {
	if a.v5 {
		a.reason = code
	}
	return a
}

// Retained reports the PUBLISH's RETAIN flag. In MQTT 3.1.1 a broker sets
// it only on a message it sends from its retained store because of a new
// subscription (§3.3.1.3), never when it forwards a publication live: the
// message is the topic's last value again, not a new one.
func (a Ack) Retained() bool { return a.retained }

// Ack sends the acknowledgement on the connection the message arrived on.
// If that connection is gone, the broker redelivers the message on the next
// one, where it comes with a new Ack: an acknowledgement must never go to a
// later connection, where the same packet id may name another message.
// Safe to call from any goroutine; call it once.
func (a Ack) Ack() {
	switch {
	case a.conn == nil:
	case a.reason != 0:
		_, _ = a.conn.Write([]byte{a.kind << 4, 3, byte(a.id >> 8), byte(a.id), a.reason})
	default:
		// Without a reason code an MQTT 5 PUBACK means success (§3.4.2.1).
		_, _ = a.conn.Write([]byte{a.kind << 4, 2, byte(a.id >> 8), byte(a.id)})
	}
}

// client is one broker connection, reconnected for as long as the Source
// is open.
type client struct {
	idx     int
	id      string
	version byte // V311 or V5
	url     *url.URL
	cfg     Config
	tc      *tls.Config
	filters []string
	qos     []byte
	lines   []string // filters whose payloads are line protocol
	h       Handler
	state   StateFunc
	log     *slog.Logger

	up   atomic.Bool
	upAt time.Time // when the session was last subscribed; run's goroutine only
	// expectSession: the broker should have a session for this id; run's
	// goroutine only.
	expectSession bool
	reads         atomic.Uint64 // packets read and handler returns, for the keep-alive check
	inCall        atomic.Bool   // the read loop is inside the handler

	mu     sync.Mutex
	conn   *bufferedConn // the current connection; nil between sessions
	ended  chan struct{} // closed when the current session has ended
	closed bool

	// read loop only
	scratch []byte
	props   Properties // the current PUBLISH's, for sensor.Message.Props
	// topics is shared by the Source's connections (and, in the gateway,
	// with the mapper).
	topics *sensor.TopicCache
}

// run holds a session open, reconnecting after a drop: first after 50 ms,
// then backing off to MaxReconnectInterval, with jitter. (paho's
// auto-reconnect waited a fixed second first, long enough for a busy broker
// to overflow this session's queue: mosquitto keeps 1000 messages per
// client by default.) The backoff starts over only after a session that
// lasted stableAfter. The waits are app/internal/backoff's: each between
// half and all of the current step.
func (c *client) run(ctx context.Context, closed <-chan struct{}) {
	bo := backoff.Backoff{Initial: firstRetry, Max: nonZero(c.cfg.MaxReconnectInterval, 30*time.Second), StableAfter: stableAfter}
	var shortLogged time.Time
	short := 0 // sessions ended soon after they were established, since the last warning
	for {
		err := c.session()
		var de *DisconnectError
		var floor time.Duration
		if errors.As(err, &de) {
			floor = backoffFloor(de.Code)
			if de.Code == packets5.DisconnectServerShuttingDown {
				// A restart, most likely: try again soon, then back off.
				bo.Reset()
			}
		}
		up := c.up.Swap(false)
		var lasted time.Duration
		if up {
			lasted = time.Since(c.upAt)
			bo.Healthy(lasted)
		}
		wait := bo.NextAtLeast(floor)
		if up {
			if c.state != nil {
				c.state(c.idx, false, err)
			}
			switch {
			case c.isClosed():
			case de != nil && de.Code == packets5.DisconnectServerShuttingDown:
				c.log.Warn("mqtt broker shutting down; reconnecting", "client_id", c.id,
					"reason_code", fmt.Sprintf("0x%02X", de.Code), "err", err, "retry_in", wait)
			case de != nil && de.Code != packets5.DisconnectSessionTakenOver:
				c.log.Warn("mqtt broker ended the session", "client_id", c.id,
					"reason_code", fmt.Sprintf("0x%02X", de.Code), "err", err, "retry_in", wait)
			case de != nil && lasted >= stableAfter:
				// Once, after a long session: a replacement taking over
				// this slot (the intended failover), or a second process
				// started with the same id. Repeated short sessions are
				// the default case below.
				c.log.Warn("mqtt session taken over by another connection with the same client id", "client_id", c.id,
					"reason_code", fmt.Sprintf("0x%02X", de.Code), "lasted", lasted.Round(time.Millisecond), "retry_in", wait)
			case lasted >= stableAfter:
				c.log.Warn("mqtt connection lost", "client_id", c.id, "err", err, "retry_in", wait)
			default:
				short++
				if shortLogged.IsZero() || time.Since(shortLogged) >= shortLogEvery {
					c.log.Warn("mqtt session ended soon after it was established; another client with the same client id may be taking it over",
						"client_id", c.id, "lasted", lasted.Round(time.Millisecond), "times", short, "err", err, "retry_in", wait)
					shortLogged, short = time.Now(), 0
				} else {
					c.log.Debug("mqtt connection lost", "client_id", c.id, "lasted", lasted, "err", err, "retry_in", wait)
				}
			}
		} else if !c.isClosed() {
			if de != nil {
				c.log.Warn("mqtt connect failed", "broker", c.url.Redacted(), "client_id", c.id, "retry_in", wait,
					"reason_code", fmt.Sprintf("0x%02X", de.Code), "err", err)
			} else {
				c.log.Warn("mqtt connect failed", "broker", c.url.Redacted(), "client_id", c.id, "retry_in", wait, "err", err)
			}
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		case <-closed:
			return
		}
	}
}

func (c *client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// session connects, subscribes and reads until the connection ends.
func (c *client) session() error {
	timeout := nonZero(c.cfg.ConnectTimeout, 10*time.Second)
	conn, err := dial(c.url, c.tc, timeout)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return net.ErrClosed
	}
	ended := make(chan struct{})
	c.conn, c.ended = conn, ended
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.conn = nil
		c.mu.Unlock()
		conn.Close()
		close(ended)
	}()

	// CONNECT carries whole seconds; tick at what the broker is told.
	keepAlive := max(nonZero(c.cfg.KeepAlive, 30*time.Second).Round(time.Second), time.Second)
	var err2 error
	if c.version == V5 {
		keepAlive, err2 = c.connect5(conn, keepAlive, timeout)
	} else {
		err2 = c.connect(conn, keepAlive, timeout)
	}
	if err2 != nil {
		return err2
	}
	if err := c.subscribe(conn); err != nil {
		return err
	}
	// A broker that never answers the subscription would leave the
	// session connected but not up, forever: give it the connect timeout.
	subTimer := time.AfterFunc(timeout, func() {
		if !c.up.Load() {
			c.log.Warn("mqtt SUBACK not received in time; reconnecting", "client_id", c.id, "timeout", timeout)
			_ = conn.Conn.Close()
		}
	})
	defer subTimer.Stop()
	stop := make(chan struct{})
	defer close(stop)
	if keepAlive > 0 { // an MQTT 5 broker may turn keep-alive off
		go c.keepAlive(conn, keepAlive, stop)
	}
	return c.readLoop(conn)
}

// subscribe sends one SUBSCRIBE with every filter.
func (c *client) subscribe(conn *bufferedConn) error {
	if c.version != V5 {
		sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
		sub.MessageID = 1
		sub.Topics, sub.Qoss = c.filters, c.qos
		return sub.Write(conn)
	}
	sub := &packets5.Subscribe{PacketID: 1, Properties: &packets5.Properties{}}
	for i, f := range c.filters {
		sub.Subscriptions = append(sub.Subscriptions, packets5.SubOptions{Topic: f, QoS: c.qos[i]})
	}
	_, err := sub.WriteTo(conn)
	return err
}

// connect5 sends an MQTT 5 CONNECT and waits for CONNACK; it returns the
// keep-alive to use (the broker may set its own).
func (c *client) connect5(conn *bufferedConn, keepAlive, timeout time.Duration) (time.Duration, error) {
	user, pass := c.credentials()
	cp := c.connectV5(user, pass, uint16(min(keepAlive/time.Second, 65535)))
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	if _, err := cp.WriteTo(conn); err != nil {
		return 0, err
	}
	typ, n, err := readHeader(conn.r)
	if err != nil {
		return 0, fmt.Errorf("waiting for CONNACK: %w", err)
	}
	if typ>>4 != packets.Connack {
		return 0, fmt.Errorf("mqtt: expected CONNACK, the broker sent %s", packetName(typ))
	}
	ack := &packets5.Connack{Properties: &packets5.Properties{}}
	if err := readV5(conn, ack, typ, n); err != nil {
		return 0, fmt.Errorf("mqtt: bad CONNACK: %w", err)
	}
	if ack.ReasonCode >= 0x80 {
		return 0, &DisconnectError{Code: ack.ReasonCode, Reason: ack.Properties.ReasonString, Connack: true,
			ServerReference: ack.Properties.ServerReference}
	}
	_ = conn.SetReadDeadline(time.Time{})
	if ka := ack.Properties.ServerKeepAlive; ka != nil {
		// The broker's keep-alive overrides ours (§3.2.2.3.14); 0 turns it
		// off, where a silent broker is still found by the next write.
		keepAlive = time.Duration(*ka) * time.Second
	}
	attrs := []any{"broker", c.url.Redacted(), "client_id", c.id, "protocol", "5", "session_present", ack.SessionPresent}
	if e := ack.Properties.SessionExpiryInterval; e != nil {
		attrs = append(attrs, "session_expiry_by_broker", time.Duration(*e)*time.Second)
	}
	if rm := ack.Properties.ReceiveMaximum; rm != nil {
		attrs = append(attrs, "broker_receive_maximum", *rm)
	}
	c.log.Info("mqtt connected", attrs...)
	c.sessionPresent(ack.SessionPresent)
	if a := ack.Properties.SharedSubAvailable; a != nil && *a == 0 && c.shared() {
		c.log.Error("mqtt broker does not support shared subscriptions; the $share filters will be refused", "client_id", c.id)
	}
	return keepAlive, nil
}

func (c *client) shared() bool {
	for _, f := range c.filters {
		if strings.HasPrefix(f, "$share/") {
			return true
		}
	}
	return false
}

// credentials are the configured user name and password; those in the
// URL win, as they did with paho's client.
func (c *client) credentials() (user, pass string) {
	user, pass = c.cfg.Username, c.cfg.Password
	if u := c.url.User; u != nil {
		user = u.Username()
		pass, _ = u.Password()
	}
	return user, pass
}

// connect sends CONNECT (MQTT 3.1.1, persistent session) and waits for
// CONNACK.
func (c *client) connect(conn *bufferedConn, keepAlive, timeout time.Duration) error {
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	// A persistent session: the broker queues QoS 1/2 messages while the
	// gateway is away and redelivers unacknowledged ones.
	cp.CleanSession = false
	cp.Keepalive = uint16(min(keepAlive/time.Second, 65535))
	cp.ClientIdentifier = c.id
	user, pass := c.credentials()
	// MQTT 3.1.1 allows a password only together with a user name.
	if user != "" {
		cp.UsernameFlag, cp.Username = true, user
		if pass != "" {
			cp.PasswordFlag, cp.Password = true, []byte(pass)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	if err := cp.Write(conn); err != nil {
		return err
	}
	typ, n, err := readHeader(conn.r)
	if err != nil {
		return fmt.Errorf("waiting for CONNACK: %w", err)
	}
	if typ>>4 != packets.Connack {
		return fmt.Errorf("mqtt: expected CONNACK, the broker sent %s", packetName(typ))
	}
	pk, err := readControl(conn.r, packets.Connack, n)
	if err != nil {
		return fmt.Errorf("mqtt: bad CONNACK: %w", err)
	}
	ack := pk.(*packets.ConnackPacket)
	if ack.ReturnCode != packets.Accepted {
		if e, ok := packets.ConnErrors[ack.ReturnCode]; ok {
			return fmt.Errorf("mqtt: connection refused: %w", e)
		}
		return fmt.Errorf("mqtt: connection refused with code %d", ack.ReturnCode)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c.log.Info("mqtt connected", "broker", c.url.Redacted(), "client_id", c.id, "session_present", ack.SessionPresent)
	c.sessionPresent(ack.SessionPresent)
	return nil
}

// sessionPresent notes what CONNACK said about the session. Once this
// client id had a session (an earlier connection, or Config.ExpectSession),
// a broker without one has dropped what it held for the gateway: its
// session expired, was removed, or the broker lost its state.
func (c *client) sessionPresent(present bool) {
	if c.expectSession && !present {
		c.log.Warn("mqtt broker had no session for this client id: what it queued for the gateway while it was away is gone (session expired or removed, or the broker lost its state)",
			"client_id", c.id)
		if c.cfg.SessionLost != nil {
			c.cfg.SessionLost(c.idx)
		}
	}
	c.expectSession = true
}

// readLoop reads packets until the connection fails.
func (c *client) readLoop(conn *bufferedConn) error {
	for {
		typ, n, err := readHeader(conn.r)
		if err != nil {
			return err
		}
		c.reads.Add(1)
		switch typ >> 4 {
		case packets.Publish:
			err = c.publish(conn, typ, n)
		case packets.Suback:
			err = c.suback(conn, n)
		case packets.Pubrel:
			// QoS 2: the broker released a message we acknowledged with
			// PUBREC; complete it.
			var b []byte
			if b, err = conn.r.Peek(n); err == nil && n >= 2 {
				_, err = conn.Write([]byte{packets.Pubcomp << 4, 2, b[0], b[1]})
				_, _ = conn.r.Discard(n)
			} else if err == nil {
				err = errors.New("mqtt: malformed PUBREL")
			}
		case packets.Pingresp:
			_, err = conn.r.Discard(n)
		case packets.Disconnect:
			err = c.serverDisconnect(conn, typ, n)
		default:
			err = fmt.Errorf("mqtt: unexpected %s packet from the broker", packetName(typ))
		}
		if err != nil {
			return err
		}
	}
}

// serverDisconnect reads the DISCONNECT an MQTT 5 broker sends before it
// closes the connection, and ends the session with its reason.
func (c *client) serverDisconnect(conn *bufferedConn, typ byte, n int) error {
	if c.version != V5 {
		return fmt.Errorf("mqtt: unexpected %s packet from the broker", packetName(typ))
	}
	d := &packets5.Disconnect{Properties: &packets5.Properties{}}
	if n > 0 {
		if err := readV5(conn, d, typ, n); err != nil {
			return fmt.Errorf("mqtt: bad DISCONNECT: %w", err)
		}
	}
	return &DisconnectError{Code: d.ReasonCode, Reason: d.Properties.ReasonString, ServerReference: d.Properties.ServerReference}
}

func (c *client) suback(conn *bufferedConn, n int) error {
	var codes []byte
	var reason string
	if c.version == V5 {
		pk := &packets5.Suback{Properties: &packets5.Properties{}}
		if err := readV5(conn, pk, packets.Suback<<4, n); err != nil {
			return fmt.Errorf("mqtt: bad SUBACK: %w", err)
		}
		codes, reason = pk.Reasons, pk.Properties.ReasonString
	} else {
		pk, err := readControl(conn.r, packets.Suback, n)
		if err != nil {
			return fmt.Errorf("mqtt: bad SUBACK: %w", err)
		}
		codes = pk.(*packets.SubackPacket).ReturnCodes
	}
	granted := 0
	for i, code := range codes {
		if code >= 0x80 && i < len(c.filters) {
			attrs := []any{"client_id", c.id, "topic", c.filters[i], "code", fmt.Sprintf("0x%02X", code)}
			if c.version == V5 {
				attrs = append(attrs, "reason", ReasonName(code))
				if reason != "" {
					attrs = append(attrs, "reason_string", reason)
				}
			}
			c.log.Error("mqtt subscription refused", attrs...)
		} else if code < 0x80 {
			granted++
			if i < len(c.qos) && code < c.qos[i] {
				// Below QoS 1 nothing is acknowledged or redelivered.
				c.log.Warn("mqtt subscription granted a lower QoS than asked", "client_id", c.id,
					"topic", c.filters[i], "asked", c.qos[i], "granted", code)
			}
		}
	}
	if granted == 0 {
		// Connected but receiving nothing is not up: end the session and
		// try again with backoff (the broker's ACL may be fixed meanwhile).
		return errors.New("mqtt: the broker refused every subscription")
	}
	c.up.Store(true)
	c.upAt = time.Now()
	if c.state != nil {
		c.state(c.idx, true, nil)
	}
	return nil
}

// publish parses a PUBLISH in the read buffer (or, when larger than the
// buffer, in a reused scratch buffer) and hands it to the handler, which
// must not keep the payload after it returns.
func (c *client) publish(conn *bufferedConn, typ byte, n int) error {
	qos := typ >> 1 & 3
	if qos == 3 {
		return errors.New("mqtt: PUBLISH with QoS 3")
	}
	var body []byte
	var err error
	if n <= conn.r.Size() {
		if body, err = conn.r.Peek(n); err != nil {
			return err
		}
		defer conn.r.Discard(n) //nolint:errcheck // peeked, so it cannot fail
	} else if body, err = c.readLarge(conn.r, qos, n); err != nil {
		return err
	}
	p, err := parsePublish(body, qos, c.version)
	if err != nil {
		return err
	}
	ack := Ack{retained: typ&1 != 0, v5: c.version == V5}
	if qos > 0 {
		ack.conn, ack.id, ack.kind = conn, p.id, packets.Puback
		if qos == 2 {
			ack.kind = packets.Pubrec
		}
	}
	t := c.topic(p.topic)
	msg := Message{Message: sensor.Message{Topic: t.Name, Payload: p.payload, Received: time.Now(), Cached: t}, Props: Properties{raw: p.props}}
	if c.version == V5 {
		// A pointer to the client's own copy fits the interface without an
		// allocation per message; the next message overwrites it, as it
		// does the read buffer the properties point into.
		c.props = msg.Props
		msg.Message.Props = &c.props
	}
	c.inCall.Store(true)
	c.h(msg, t.Format, ack)
	c.props = Properties{}
	// Packets that arrived while the handler held the read loop are read
	// only after it returns. Count the return as progress, before clearing
	// inCall: keepAlive loads inCall first, so it sees either the call or
	// the count moved, never a loop that looks idle but was just busy.
	c.reads.Add(1)
	c.inCall.Store(false)
	return nil
}

// readLarge reads a packet bigger than the read buffer. Beyond the largest
// payload the gateway accepts, the rest is discarded: the handler sees a
// payload one byte over the limit and rejects it as too large, and the
// connection stays in step.
func (c *client) readLarge(r *bufio.Reader, qos byte, n int) ([]byte, error) {
	// The limit counts this packet's own topic and packet id, so what is
	// kept of the payload is exactly one byte over the largest accepted.
	tl, err := r.Peek(2)
	if err != nil {
		return nil, err
	}
	hdr := 2 + (int(tl[0])<<8 | int(tl[1]))
	if qos > 0 {
		hdr += 2
	}
	if c.version == V5 {
		// The properties are kept whole: they sit between the packet id
		// and the payload. (The broker keeps them below the advertised
		// Maximum Packet Size.)
		if hdr+4 > r.Size() {
			return nil, errors.New("mqtt: PUBLISH topic longer than the read buffer")
		}
		b, err := r.Peek(min(hdr+4, n))
		if err != nil {
			return nil, err
		}
		pl, k, err := uvarint(b[min(hdr, len(b)):])
		if err != nil {
			return nil, errors.New("mqtt: malformed PUBLISH properties")
		}
		if pl > maxProps {
			// Beyond what the advertised Maximum Packet Size leaves for
			// them: a broken stream, not a reason to allocate it.
			return nil, fmt.Errorf("mqtt: PUBLISH properties of %d bytes", pl)
		}
		hdr += k + pl
	}
	limit := hdr + nonZeroInt(c.cfg.MaxPayload, sensor.DefaultMaxPayload) + 1
	keep := min(n, limit)
	if cap(c.scratch) < keep {
		c.scratch = make([]byte, keep)
	}
	b := c.scratch[:keep]
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	if _, err := r.Discard(n - keep); err != nil {
		return nil, err
	}
	if keep > 1<<20 {
		// Let it go after this message: one huge message must not pin
		// its buffer for the life of the connection.
		defer func() { c.scratch = nil }()
	}
	return b, nil
}

// topic returns the name and payload format of a topic from the shared
// topic cache, so a message from a topic heard from recently allocates
// nothing, and one the cache declines (a fleet larger than it) neither.
func (c *client) topic(b []byte) sensor.Topic {
	if t, ok := c.topics.Lookup(b); ok && t.Format != "" {
		return t
	}
	return c.topics.AddOrPass(b, routeFormat(c.lines, unsafe.String(unsafe.SliceData(b), len(b))))
}

// keepAlive looks at the connection every half interval. It sends PINGREQ
// when a half interval passed without a packet from the broker, and at
// least once an interval (what MQTT asks of a client), and it ends the
// session after two quiet half intervals in a row: a whole interval
// without any packet although a PINGREQ went out at least half an
// interval before. A dead broker is thus noticed between one and 1.5
// intervals after its last packet. A handler that holds the read loop
// (the spool refusing appends) is not a dead broker.
func (c *client) keepAlive(conn *bufferedConn, every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	last, quietTicks, ticks := c.reads.Load(), 0, 0
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ticks++
		busy := c.inCall.Load() // before reads: see publish
		now := c.reads.Load()
		if now == last && !busy {
			quietTicks++
		} else {
			quietTicks = 0
		}
		last = now
		if quietTicks >= 2 {
			c.log.Warn("mqtt broker silent for a keep-alive interval; reconnecting", "client_id", c.id, "keepalive", every)
			_ = conn.Conn.Close() // the read loop fails and the session ends
			return
		}
		if quietTicks == 0 && ticks%2 != 0 {
			continue
		}
		if _, err := conn.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
			_ = conn.Conn.Close() // the read loop ends with the session
			return
		}
	}
}

// disconnect says goodbye politely and closes the connection, flushing
// acknowledgements still waiting to be written.
func (c *client) disconnect() {
	c.mu.Lock()
	c.closed = true
	conn, ended := c.conn, c.ended
	c.mu.Unlock()
	if conn == nil {
		return
	}
	_, _ = conn.Write([]byte{packets.Disconnect << 4, 0})
	if conn.closeWrite() == nil {
		// The broker closes its side on DISCONNECT; the read loop ends at
		// that EOF, passing over (not acknowledging) what the broker sent
		// meanwhile. Closing first would reset the connection, and the
		// acknowledgements just sent could be lost.
		select {
		case <-ended:
		case <-time.After(2 * time.Second):
		}
	}
	conn.Close()
}

// readControl reads a whole control packet's body and decodes it with
// paho's codec: reading exactly n bytes keeps the stream in step whatever
// the packet carries beyond what the codec reads.
func readControl(r *bufio.Reader, typ byte, n int) (packets.ControlPacket, error) {
	// CONNACK is 2 bytes and a SUBACK one per filter: a length beyond this
	// is a broken stream, not a reason to allocate what it claims.
	if n > 64<<10 {
		return nil, fmt.Errorf("mqtt: %s of %d bytes", packets.PacketNames[typ], n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	pk, err := packets.NewControlPacketWithHeader(packets.FixedHeader{MessageType: typ, RemainingLength: n})
	if err != nil {
		return nil, err
	}
	if err := pk.Unpack(bytes.NewReader(body)); err != nil {
		return nil, err
	}
	return pk, nil
}

// readHeader reads a fixed header: the type-and-flags byte and the
// remaining length.
func readHeader(r *bufio.Reader) (byte, int, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		d, err := r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		n += int(d&0x7f) * mul
		if d&0x80 == 0 {
			return typ, n, nil
		}
		mul <<= 7
	}
	return 0, 0, errors.New("mqtt: malformed remaining length")
}

func packetName(typ byte) string {
	if s, ok := packets.PacketNames[typ>>4]; ok {
		return s
	}
	return fmt.Sprintf("type %d", typ>>4)
}

func nonZeroInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
