package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// waitLong bounds waits for things that must happen; they normally take
// milliseconds, the margin is for a loaded machine.
const waitLong = 20 * time.Second

// ---- helpers: logs, state, deliveries ----

// syncBuffer collects the log output of the session's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

type stateEvent struct {
	up  bool
	err error
}

// stateLog records what the Source reports through its StateFunc.
type stateLog struct {
	mu sync.Mutex
	ev []stateEvent
}

func (s *stateLog) record(_ int, up bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ev = append(s.ev, stateEvent{up, err})
}

func (s *stateLog) events() []stateEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stateEvent(nil), s.ev...)
}

func (s *stateLog) count(up bool) int {
	n := 0
	for _, e := range s.events() {
		if e.up == up {
			n++
		}
	}
	return n
}

func (s *stateLog) waitUp(t *testing.T, n int) {
	t.Helper()
	eventually(t, waitLong, fmt.Sprintf("%d subscribed connection(s)", n), func() bool { return s.count(true) >= n })
}

type delivery struct {
	msg    Message
	format sensor.Format
	ack    Ack
}

// collector is a Handler that records every delivery. ackIf decides whether
// the handler acknowledges at once (nil: always); the Ack is kept either way
// so that a test can acknowledge later. onMsg, if set, runs inside the
// handler, on the read loop.
type collector struct {
	ackIf func(sensor.Message) bool
	onMsg func(sensor.Message)

	mu  sync.Mutex
	got []delivery
}

func (c *collector) handle(msg Message, f sensor.Format, ack Ack) {
	// msg.Payload points into the session's read buffer and is valid only
	// during this call: a handler that keeps it must copy it.
	msg.Payload = bytes.Clone(msg.Payload)
	msg.Props = Properties{raw: bytes.Clone(msg.Props.raw)}
	if msg.Message.Props != nil {
		msg.Message.Props = &msg.Props
	}
	c.mu.Lock()
	c.got = append(c.got, delivery{msg, f, ack})
	c.mu.Unlock()
	if c.onMsg != nil {
		c.onMsg(msg.Message)
	}
	if c.ackIf == nil || c.ackIf(msg.Message) {
		ack.Ack()
	}
}

func (c *collector) deliveries() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.got...)
}

// waitPayload waits for a delivery with the given payload and returns all
// deliveries so far.
func (c *collector) waitPayload(t *testing.T, payload string) []delivery {
	t.Helper()
	var ds []delivery
	eventually(t, waitLong, "message "+payload, func() bool {
		ds = c.deliveries()
		for _, d := range ds {
			if string(d.msg.Payload) == payload {
				return true
			}
		}
		return false
	})
	return ds
}

func (c *collector) waitCount(t *testing.T, n int) []delivery {
	t.Helper()
	var ds []delivery
	eventually(t, waitLong, fmt.Sprintf("%d messages", n), func() bool {
		ds = c.deliveries()
		return len(ds) >= n
	})
	return ds
}

func payloads(ds []delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.msg.Payload)
	}
	return out
}

func startSource(t *testing.T, cfg Config, h Handler, st *stateLog, log *slog.Logger) *Source {
	t.Helper()
	if log == nil {
		log, _ = testLogger()
	}
	var sf StateFunc
	if st != nil {
		sf = st.record
	}
	src, err := Start(context.Background(), cfg, h, sf, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	return src
}

// publisher is a paho client publishing to a real broker.
func publisher(t *testing.T, url string) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("pub").
		SetAutoReconnect(false).SetConnectTimeout(waitLong))
	if tok := c.Connect(); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t *testing.T, c paho.Client, topic string, qos byte, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, qos, false, payload); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
		t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

// ---- tap: a relay in front of a real broker that records the packets ----

// wirePacket is one MQTT packet seen by the tap.
type wirePacket struct {
	conn       int  // relayed connection, in accept order
	fromBroker bool // direction
	typ        byte // packet type (packets.Puback, ...)
	id         uint16
}

// tap relays TCP connections to a real broker and records every packet in
// both directions, in causal order: a packet is recorded before it is
// passed on.
type tap struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	pkts  []wirePacket
	pairs [][2]net.Conn
	ended map[int]bool // connections the broker closed
}

func startTap(t *testing.T, target string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, target: target, ended: map[int]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			tp.mu.Lock()
			idx := len(tp.pairs)
			tp.pairs = append(tp.pairs, [2]net.Conn{c, b})
			tp.mu.Unlock()
			var pair sync.WaitGroup
			pair.Add(2)
			wg.Add(3)
			go func() { defer wg.Done(); defer pair.Done(); tp.relay(idx, false, c, b) }()
			go func() { defer wg.Done(); defer pair.Done(); tp.relay(idx, true, b, c) }()
			go func() { defer wg.Done(); pair.Wait(); c.Close(); b.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tp.dropAll()
		wg.Wait()
	})
	return tp
}

func (tp *tap) URL() string { return "tcp://" + tp.ln.Addr().String() }

// relay copies packets from src to dst, recording each; at the end of src
// it half-closes dst so that what was sent still arrives.
func (tp *tap) relay(idx int, fromBroker bool, src, dst net.Conn) {
	r := bufio.NewReader(src)
	for {
		raw, err := readRawPacket(r)
		if err != nil {
			if fromBroker && err == io.EOF {
				tp.mu.Lock()
				tp.ended[idx] = true
				tp.mu.Unlock()
			}
			break
		}
		p := wirePacket{conn: idx, fromBroker: fromBroker, typ: raw.typ >> 4}
		switch p.typ {
		case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
			if len(raw.body) >= 2 {
				p.id = uint16(raw.body[0])<<8 | uint16(raw.body[1])
			}
		}
		tp.mu.Lock()
		tp.pkts = append(tp.pkts, p)
		tp.mu.Unlock()
		if _, err := dst.Write(raw.bytes); err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// waitBrokerDone waits until the broker has closed connection conn. After
// a DISCONNECT this means the broker has read everything sent before it.
// A test opens the next session only then: mosquitto reads one packet per
// socket per turn of its event loop, and a new connection taking over the
// session can be handled first, dropping what the old one had still unread.
func (tp *tap) waitBrokerDone(t *testing.T, conn int) {
	t.Helper()
	eventually(t, waitLong, fmt.Sprintf("the broker to finish with connection %d", conn), func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return tp.ended[conn]
	})
}

// dropAll cuts every relayed connection, like a network failure.
func (tp *tap) dropAll() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, p := range tp.pairs {
		p[0].Close()
		p[1].Close()
	}
}

func (tp *tap) packets() []wirePacket {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]wirePacket(nil), tp.pkts...)
}

// sent returns the packets of type typ the client sent on connection conn.
func (tp *tap) sent(conn int, typ byte) []wirePacket {
	var out []wirePacket
	for _, p := range tp.packets() {
		if p.conn == conn && !p.fromBroker && p.typ == typ {
			out = append(out, p)
		}
	}
	return out
}

func (tp *tap) sentIDs(conn int, typ byte) map[uint16]int {
	out := map[uint16]int{}
	for _, p := range tp.sent(conn, typ) {
		out[p.id]++
	}
	return out
}

type rawPacket struct {
	typ   byte
	body  []byte
	bytes []byte // the whole packet as it came
}

// readRawPacket reads one packet without interpreting it.
func readRawPacket(r *bufio.Reader) (rawPacket, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return rawPacket{}, err
	}
	hdr := []byte{typ}
	n, mul := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return rawPacket{}, fmt.Errorf("bad remaining length")
		}
		d, err := r.ReadByte()
		if err != nil {
			return rawPacket{}, err
		}
		hdr = append(hdr, d)
		n += int(d&0x7f) * mul
		if d&0x80 == 0 {
			break
		}
		mul <<= 7
	}
	all := make([]byte, len(hdr)+n)
	copy(all, hdr)
	if _, err := io.ReadFull(r, all[len(hdr):]); err != nil {
		return rawPacket{}, err
	}
	return rawPacket{typ: typ, body: all[len(hdr):], bytes: all}, nil
}

// ---- scripted peer: for broker misbehaviour a real broker will not produce ----

type peer struct {
	ln    net.Listener
	conns chan net.Conn
}

func startPeer(t *testing.T) *peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{ln: ln, conns: make(chan net.Conn, 64)}
	var mu sync.Mutex
	var all []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			select {
			case p.conns <- c:
			default: // a reconnect storm beyond what the test looks at
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range all {
			c.Close()
		}
	})
	return p
}

func (p *peer) URL() string { return "tcp://" + p.ln.Addr().String() }

func (p *peer) accept(t *testing.T, within time.Duration) net.Conn {
	t.Helper()
	select {
	case c := <-p.conns:
		return c
	case <-time.After(within):
		t.Fatalf("no connection within %s", within)
		return nil
	}
}

func readPacket(t *testing.T, c net.Conn) packets.ControlPacket {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	defer c.SetReadDeadline(time.Time{}) //nolint:errcheck // best effort
	pk, err := packets.ReadPacket(c)
	if err != nil {
		t.Fatalf("peer read: %v", err)
	}
	return pk
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("peer write: %v", err)
	}
}

// handshake plays the broker's part up to SUBACK and returns the CONNECT.
func handshake(t *testing.T, c net.Conn) *packets.ConnectPacket {
	t.Helper()
	cp, ok := readPacket(t, c).(*packets.ConnectPacket)
	if !ok {
		t.Fatal("first packet is not CONNECT")
	}
	write(t, c, []byte{packets.Connack << 4, 2, 0, packets.Accepted})
	sp, ok := readPacket(t, c).(*packets.SubscribePacket)
	if !ok {
		t.Fatal("second packet is not SUBSCRIBE")
	}
	suback := []byte{packets.Suback << 4, byte(2 + len(sp.Qoss)), byte(sp.MessageID >> 8), byte(sp.MessageID)}
	write(t, c, append(suback, sp.Qoss...))
	return cp
}

// waitClosed reads from c until the client closes it.
func waitClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("client did not close the connection within %s", within)
	}
}

// ---- tests ----

// bothVersions runs a session test with MQTT 3.1.1 and with MQTT 5.
func bothVersions(t *testing.T, f func(t *testing.T, version byte)) {
	for _, v := range []byte{V311, V5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { f(t, v) })
	}
}

// QoS 1 against mosquitto: every message is delivered once, with its topic,
// payload and format; messages left unacknowledged come back when the
// session is opened again with the same client id, acknowledged ones do not.
func TestQoS1DeliveryAndRedelivery(t *testing.T) { bothVersions(t, testQoS1DeliveryAndRedelivery) }

func testQoS1DeliveryAndRedelivery(t *testing.T, version byte) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	tp := startTap(t, mq.Addr())
	pub := publisher(t, mq.URL())
	cfg := Config{Protocol: version, URL: tp.URL(), ClientID: "gw-qos1", QoS: 1, Topics: []string{"sensors/#"}, LineTopics: []string{"lp/#"}}

	type sent struct {
		topic, payload string
		format         sensor.Format
		ack            bool
	}
	var msgs []sent
	for i := 0; i < 10; i++ {
		m := sent{fmt.Sprintf("sensors/site/dev%d/temp", i), fmt.Sprintf(`{"v":%d}`, i), sensor.FormatJSON, i%2 == 0}
		if i%3 == 1 {
			m.topic, m.payload, m.format = fmt.Sprintf("lp/dev%d", i), fmt.Sprintf("m v=%d", i), sensor.FormatLine
		}
		msgs = append(msgs, m)
	}
	unacked := map[string]bool{}
	for _, m := range msgs {
		if !m.ack {
			unacked[m.payload] = true
		}
	}

	first := &collector{ackIf: func(m sensor.Message) bool { return !unacked[string(m.Payload)] }}
	st := &stateLog{}
	src := startSource(t, cfg, first.handle, st, nil)
	st.waitUp(t, 1)
	before := time.Now()
	for _, m := range msgs {
		publish(t, pub, m.topic, 1, []byte(m.payload))
	}
	// mosquitto delivers in publish order: once the barrier is in, every
	// earlier message, and any duplicate of one, is in too.
	publish(t, pub, "sensors/barrier/x/y", 1, []byte("barrier-1"))
	got := first.waitPayload(t, "barrier-1")
	if len(got) != len(msgs)+1 {
		t.Fatalf("first session: got %d deliveries %q, want %d", len(got), payloads(got), len(msgs)+1)
	}
	for i, m := range msgs {
		d := got[i]
		if d.msg.Topic != m.topic || string(d.msg.Payload) != m.payload || d.format != m.format {
			t.Errorf("delivery %d = %s %q format %v, want %s %q format %v",
				i, d.msg.Topic, d.msg.Payload, d.format, m.topic, m.payload, m.format)
		}
		if d.msg.Received.Before(before) || d.msg.Received.After(time.Now()) {
			t.Errorf("delivery %d: Received %v not set at delivery", i, d.msg.Received)
		}
		if d.ack.conn == nil || d.ack.kind != packets.Puback {
			t.Errorf("delivery %d: Ack %+v is not a PUBACK", i, d.ack)
		}
	}
	src.Close()
	if src.Connected() {
		t.Fatal("Connected after Close")
	}
	tp.waitBrokerDone(t, 0)

	second := &collector{}
	st2 := &stateLog{}
	startSource(t, cfg, second.handle, st2, nil)
	st2.waitUp(t, 1)
	publish(t, pub, "sensors/barrier/x/y", 1, []byte("barrier-2"))
	got = second.waitPayload(t, "barrier-2")
	var want []string
	for _, m := range msgs {
		if !m.ack {
			want = append(want, m.payload)
		}
	}
	want = append(want, "barrier-2")
	if g := payloads(got); strings.Join(g, "|") != strings.Join(want, "|") {
		t.Fatalf("after reconnect: got %q, want the unacknowledged ones then the barrier %q", g, want)
	}
	for i, d := range got[:len(got)-1] {
		if d.ack.conn == nil || d.ack.conn == first.deliveries()[0].ack.conn {
			t.Errorf("redelivery %d carries no Ack for the new connection", i)
		}
	}
}

// QoS 2 against mosquitto: Ack answers with PUBREC, PUBREL is answered with
// PUBCOMP, and a completed message is not delivered again.
func TestQoS2Flow(t *testing.T) { bothVersions(t, testQoS2Flow) }

func testQoS2Flow(t *testing.T, version byte) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	tp := startTap(t, mq.Addr())
	pub := publisher(t, mq.URL())
	cfg := Config{Protocol: version, URL: tp.URL(), ClientID: "gw-qos2", QoS: 2, Topics: []string{"sensors/#"}}
	const n = 6
	hold := map[string]bool{"q2-1": true, "q2-4": true} // not acknowledged in the first session

	first := &collector{ackIf: func(m sensor.Message) bool { return !hold[string(m.Payload)] }}
	st := &stateLog{}
	src := startSource(t, cfg, first.handle, st, nil)
	st.waitUp(t, 1)
	for i := 0; i < n; i++ {
		publish(t, pub, "sensors/s/d/m", 2, []byte(fmt.Sprintf("q2-%d", i)))
	}
	publish(t, pub, "sensors/s/d/m", 2, []byte("barrier-1"))
	got := first.waitPayload(t, "barrier-1")
	if len(got) != n+1 {
		t.Fatalf("first session: %q, want each of %d messages once", payloads(got), n+1)
	}
	acked := map[uint16]bool{}
	for i, d := range got {
		if want := fmt.Sprintf("q2-%d", i); i < n && string(d.msg.Payload) != want {
			t.Errorf("delivery %d = %q, want %q", i, d.msg.Payload, want)
		}
		if d.ack.kind != packets.Pubrec {
			t.Errorf("delivery %d: Ack kind %d, want PUBREC", i, d.ack.kind)
		}
		if !hold[string(d.msg.Payload)] {
			acked[d.ack.id] = true
		}
	}
	eventually(t, waitLong, "PUBCOMP for every acknowledged message", func() bool {
		return len(tp.sentIDs(0, packets.Pubcomp)) == len(acked)
	})
	checkQoS2Wire(t, tp, 0, acked)
	src.Close()
	tp.waitBrokerDone(t, 0)

	// The held messages come back (QoS 2 is not complete without PUBREC);
	// the acknowledged ones do not.
	second := &collector{}
	st2 := &stateLog{}
	src = startSource(t, cfg, second.handle, st2, nil)
	st2.waitUp(t, 1)
	publish(t, pub, "sensors/s/d/m", 2, []byte("barrier-2"))
	got = second.waitPayload(t, "barrier-2")
	if g := strings.Join(payloads(got), "|"); g != "q2-1|q2-4|barrier-2" {
		t.Fatalf("second session: %s, want q2-1|q2-4|barrier-2", g)
	}
	acked = map[uint16]bool{}
	for _, d := range got {
		acked[d.ack.id] = true
	}
	eventually(t, waitLong, "PUBCOMP for every message of the second session", func() bool {
		return len(tp.sentIDs(1, packets.Pubcomp)) == len(acked)
	})
	checkQoS2Wire(t, tp, 1, acked)
	src.Close()
	tp.waitBrokerDone(t, 1)

	// Every flow completed: nothing is redelivered or released again.
	third := &collector{}
	st3 := &stateLog{}
	startSource(t, cfg, third.handle, st3, nil)
	st3.waitUp(t, 1)
	publish(t, pub, "sensors/s/d/m", 2, []byte("barrier-3"))
	got = third.waitPayload(t, "barrier-3")
	if g := strings.Join(payloads(got), "|"); g != "barrier-3" {
		t.Fatalf("third session: %s, want only barrier-3", g)
	}
	eventually(t, waitLong, "PUBCOMP for barrier-3", func() bool { return len(tp.sent(2, packets.Pubcomp)) == 1 })
	if comps := tp.sentIDs(2, packets.Pubcomp); comps[got[0].ack.id] != 1 || len(comps) != 1 {
		t.Fatalf("third session completed %v, want only barrier-3's id %d", comps, got[0].ack.id)
	}
}

// checkQoS2Wire checks what the client sent on connection conn: exactly one
// PUBREC and one PUBCOMP per acknowledged id, PUBCOMP only after the
// broker's PUBREL, and no PUBACK.
func checkQoS2Wire(t *testing.T, tp *tap, conn int, acked map[uint16]bool) {
	t.Helper()
	recs, comps := tp.sentIDs(conn, packets.Pubrec), tp.sentIDs(conn, packets.Pubcomp)
	for id := range acked {
		if recs[id] != 1 || comps[id] != 1 {
			t.Errorf("conn %d id %d: %d PUBREC and %d PUBCOMP sent, want 1 each", conn, id, recs[id], comps[id])
		}
	}
	if len(recs) != len(acked) || len(comps) != len(acked) {
		t.Errorf("conn %d: PUBREC %v PUBCOMP %v, want exactly the acknowledged ids %v", conn, recs, comps, acked)
	}
	if pa := tp.sent(conn, packets.Puback); len(pa) != 0 {
		t.Errorf("conn %d: %d PUBACK sent in a QoS 2 session", conn, len(pa))
	}
	released := map[uint16]bool{}
	for _, p := range tp.packets() {
		if p.conn != conn {
			continue
		}
		switch {
		case p.fromBroker && p.typ == packets.Pubrel:
			released[p.id] = true
		case !p.fromBroker && p.typ == packets.Pubcomp && !released[p.id]:
			t.Errorf("conn %d: PUBCOMP %d sent before the broker released it", conn, p.id)
		}
	}
}

// A broker that refuses the connection is never reported up, and the log
// says why; valid credentials on the same broker connect.
func TestConnectRefused(t *testing.T) { bothVersions(t, testConnectRefused) }

func testConnectRefused(t *testing.T, version byte) {
	hash, err := bcrypt.GenerateFromPassword([]byte("gw-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	b := startTestBroker(t, broker.Options{
		Users:        []broker.User{{Username: "gateway", PasswordHash: string(hash)}},
		GatewayUsers: []string{"gateway"},
	})
	url := "tcp://" + b.Addr("plain")

	// iotgw broker refuses bad credentials with 3.1.1 code 0x04 and
	// MQTT 5 reason code 0x86.
	refusal := "connection refused: bad user name or password"
	if version == V5 {
		refusal = "connection refused: bad_user_name_or_password (0x86)"
	}
	tests := []struct {
		name, user, pass string
		url              string // "" = the broker's plain URL
		refused          bool
	}{
		{"wrong password", "gateway", "not-the-password", "", true},
		{"unknown user", "intruder", "gw-secret", "", true},
		{"anonymous", "", "", "", true},
		{"password without user name", "", "gw-secret", "", true},
		{"valid credentials", "gateway", "gw-secret", "", false},
		// Credentials in the URL win over the configured ones.
		{"valid credentials in the URL", "intruder", "nope", "tcp://gateway:gw-secret@" + b.Addr("plain"), false},
		{"wrong password in the URL", "gateway", "gw-secret", "tcp://gateway:nope@" + b.Addr("plain"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := testLogger()
			st := &stateLog{}
			u := url
			if tt.url != "" {
				u = tt.url
			}
			cfg := Config{Protocol: version, URL: u, ClientID: "gw-auth", Username: tt.user, Password: tt.pass, QoS: 1,
				Topics: []string{"sensors/#"}, MaxReconnectInterval: 200 * time.Millisecond}
			src := startSource(t, cfg, (&collector{}).handle, st, log)
			if !tt.refused {
				st.waitUp(t, 1)
				if !src.Connected() {
					t.Fatal("subscribed but Connected is false")
				}
				if strings.Contains(buf.String(), "refused") {
					t.Fatalf("valid credentials logged a refusal:\n%s", buf)
				}
				return
			}
			// Refused, and retried: the reason is logged on every attempt.
			eventually(t, waitLong, "two refused attempts in the log", func() bool {
				return strings.Count(buf.String(), refusal) >= 2
			})
			if ev := st.events(); len(ev) != 0 {
				t.Fatalf("state reported %v for a refused connection", ev)
			}
			if src.Connected() {
				t.Fatal("Connected for a refused connection")
			}
			if !strings.Contains(buf.String(), "mqtt connect failed") {
				t.Fatalf("log does not say the connect failed:\n%s", buf)
			}
			if strings.Contains(buf.String(), ":nope@") || strings.Contains(buf.String(), "gw-secret") {
				t.Fatalf("a password reached the log:\n%s", buf)
			}
		})
	}
}

// A broker that stops answering (the connection stays open, PINGREQ gets
// no PINGRESP) is given up on after a keep-alive interval without a packet,
// and the client connects again.
func TestKeepAliveSilentBroker(t *testing.T) {
	const keepAlive = time.Second
	p := startPeer(t)
	log, buf := testLogger()
	st := &stateLog{}
	startSource(t, Config{URL: p.URL(), ClientID: "gw-ka", QoS: 1, Topics: []string{"sensors/#"}, KeepAlive: keepAlive},
		(&collector{}).handle, st, log)

	c1 := p.accept(t, waitLong)
	cp := handshake(t, c1)
	subscribed := time.Now()
	if cp.Keepalive != 1 || cp.CleanSession || cp.ClientIdentifier != "gw-ka" {
		t.Fatalf("CONNECT keepalive %d clean %v id %q", cp.Keepalive, cp.CleanSession, cp.ClientIdentifier)
	}
	// Silent from here: read whatever comes, answer nothing.
	var pings atomic.Int32
	closed := make(chan time.Time, 1)
	go func() {
		for {
			pk, err := packets.ReadPacket(c1)
			if err != nil {
				closed <- time.Now()
				return
			}
			if _, ok := pk.(*packets.PingreqPacket); ok {
				pings.Add(1)
			}
		}
	}()
	c2 := p.accept(t, 2*keepAlive+5*time.Second)
	if cp2, ok := readPacket(t, c2).(*packets.ConnectPacket); !ok || cp2.ClientIdentifier != "gw-ka" {
		t.Fatal("the reconnect does not start with CONNECT")
	}
	var closedAt time.Time
	select {
	case closedAt = <-closed:
	case <-time.After(waitLong):
		t.Fatal("the silent connection was never closed")
	}
	if d := closedAt.Sub(subscribed); d < keepAlive {
		t.Fatalf("gave up after %s, less than one keep-alive interval", d)
	}
	if pings.Load() < 1 {
		t.Fatal("no PINGREQ before giving up")
	}
	if !strings.Contains(buf.String(), "silent for a keep-alive interval") {
		t.Fatalf("log does not say why:\n%s", buf)
	}
	if ev := st.events(); len(ev) < 2 || !ev[0].up || ev[1].up || ev[1].err == nil {
		t.Fatalf("state events %v, want up then down with an error", ev)
	}
}

// A handler that holds the read loop for longer than two keep-alive
// intervals (the spool refusing appends) is not a dead broker.
func TestBlockingHandlerKeepsConnection(t *testing.T) {
	bothVersions(t, testBlockingHandlerKeepsConnection)
}

func testBlockingHandlerKeepsConnection(t *testing.T, version byte) {
	const keepAlive = time.Second
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	pub := publisher(t, mq.URL())
	release := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	c := &collector{onMsg: func(m sensor.Message) {
		if string(m.Payload) == "block" {
			once.Do(func() { close(entered) })
			<-release
		}
	}}
	log, buf := testLogger()
	st := &stateLog{}
	src := startSource(t, Config{Protocol: version, URL: mq.URL(), ClientID: "gw-block", QoS: 1, Topics: []string{"sensors/#"}, KeepAlive: keepAlive},
		c.handle, st, log)
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo) // runs before src.Close, which waits for the handler
	st.waitUp(t, 1)
	publish(t, pub, "sensors/s/d/m", 1, []byte("block"))
	select {
	case <-entered:
	case <-time.After(waitLong):
		t.Fatal("handler not called")
	}
	// A time span is what is under test: hold the read loop for three
	// intervals, then let go.
	time.Sleep(3 * keepAlive)
	letGo()
	publish(t, pub, "sensors/s/d/m", 1, []byte("after"))
	got := c.waitPayload(t, "after")
	if g := strings.Join(payloads(got), "|"); g != "block|after" {
		t.Fatalf("deliveries %s, want block|after", g)
	}
	if ev := st.events(); len(ev) != 1 || !ev[0].up {
		t.Fatalf("state events %v, want a single up: the connection must not have been dropped", ev)
	}
	if !src.Connected() {
		t.Fatal("not connected")
	}
	if strings.Contains(buf.String(), "silent") || strings.Contains(buf.String(), "connection lost") {
		t.Fatalf("the session was dropped:\n%s", buf)
	}
}

// PUBLISH packets larger than the read buffer: beyond MaxPayload the
// handler sees exactly MaxPayload+1 bytes (the start of the payload), so
// the pipeline rejects it as too large; the connection stays in step and
// the next message arrives intact. Below MaxPayload they arrive whole.
func TestLargePublish(t *testing.T) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	pub := publisher(t, mq.URL())
	longTopic := "sensors/" + strings.Repeat("t", 700) + "/d/m"
	tests := []struct {
		name       string
		qos        byte
		maxPayload int
		topic      string
		size       int
		wantLen    int
	}{
		{"over MaxPayload, QoS 1", 1, 1000, "sensors/s/d/m", 200 << 10, 1001},
		{"over MaxPayload, QoS 0", 0, 1000, "sensors/s/d/m", 200 << 10, 1001},
		{"over MaxPayload, long topic", 1, 1000, longTopic, 200 << 10, 1001},
		{"over default MaxPayload", 1, 0, "sensors/s/d/m", 300 << 10, sensor.DefaultMaxPayload + 1},
		{"one byte over MaxPayload", 1, 100 << 10, "sensors/s/d/m", 100<<10 + 1, 100<<10 + 1},
		{"exactly MaxPayload", 1, 100 << 10, "sensors/s/d/m", 100 << 10, 100 << 10},
		{"between read buffer and MaxPayload", 1, 1 << 20, "sensors/s/d/m", 200 << 10, 200 << 10},
	}
	for k, tt := range slices.Concat(tests, tests) {
		// Each case with MQTT 3.1.1, then with MQTT 5 (properties between
		// the packet id and the payload).
		version, i := V311, k
		if k >= len(tests) {
			version, i = V5, k-len(tests)
		}
		t.Run(fmt.Sprintf("%s/v%d", tt.name, version), func(t *testing.T) {
			big := make([]byte, tt.size)
			for j := range big {
				big[j] = byte(j*7 + j>>8)
			}
			c := &collector{}
			st := &stateLog{}
			startSource(t, Config{URL: mq.URL(), ClientID: fmt.Sprintf("gw-large-%d-%d", i, version), QoS: tt.qos,
				Topics: []string{"sensors/#"}, MaxPayload: tt.maxPayload, Protocol: version}, c.handle, st, nil)
			st.waitUp(t, 1)
			publish(t, pub, tt.topic, tt.qos, big)
			publish(t, pub, "sensors/s/d/next", tt.qos, []byte(`{"next":true}`))
			if version == V5 {
				// The broker discards a packet above the Maximum Packet
				// Size the session advertised (MQTT 5 §3.1.2.11.4): only
				// the next message arrives, on the same connection.
				cl := client{cfg: Config{MaxPayload: tt.maxPayload}}
				if tt.size+len(tt.topic)+16 > cl.maxPacket() {
					got := c.waitPayload(t, `{"next":true}`)
					if len(got) != 1 {
						t.Fatalf("%d deliveries, want only the next message", len(got))
					}
					if ev := st.events(); len(ev) != 1 {
						t.Errorf("state events %v: the connection was dropped", ev)
					}
					return
				}
			}
			got := c.waitCount(t, 2)
			if len(got) != 2 {
				t.Fatalf("%d deliveries, want 2", len(got))
			}
			if got[0].msg.Topic != tt.topic {
				t.Errorf("large message topic %.40q..., want %.40q...", got[0].msg.Topic, tt.topic)
			}
			if len(got[0].msg.Payload) != tt.wantLen || !bytes.Equal(got[0].msg.Payload, big[:tt.wantLen]) {
				t.Errorf("large message: %d bytes (prefix intact: %v), want the first %d bytes",
					len(got[0].msg.Payload), bytes.HasPrefix(big, got[0].msg.Payload), tt.wantLen)
			}
			if got[1].msg.Topic != "sensors/s/d/next" || string(got[1].msg.Payload) != `{"next":true}` {
				t.Errorf("next message %s %q: the stream is out of step", got[1].msg.Topic, got[1].msg.Payload)
			}
			if ev := st.events(); len(ev) != 1 {
				t.Errorf("state events %v: the connection was dropped", ev)
			}
		})
	}
}

// Malformed packets from the broker end the session without a panic, and
// the client connects again.
func TestMalformedFromBroker(t *testing.T) {
	bigMissingID := append([]byte{packets.Publish<<4 | 1<<1, 0x81, 0x80, 0x04, 0xff, 0xff}, bytes.Repeat([]byte("a"), 65535)...)
	tests := []struct {
		name    string
		send    []byte
		wantErr string
	}{
		{"remaining length of five bytes", []byte{packets.Publish << 4, 0xff, 0xff, 0xff, 0xff, 0x7f}, "malformed remaining length"},
		{"topic longer than the packet", []byte{packets.Publish << 4, 4, 0x00, 0x10, 'a', 'b'}, "malformed PUBLISH topic"},
		{"empty PUBLISH", []byte{packets.Publish << 4, 0}, "malformed PUBLISH"},
		{"QoS 1 without packet id", []byte{packets.Publish<<4 | 1<<1, 3, 0, 1, 'a'}, "malformed PUBLISH packet id"},
		{"larger than the read buffer, no packet id", bigMissingID, "malformed PUBLISH packet id"},
		{"QoS 3", []byte{packets.Publish<<4 | 3<<1, 5, 0, 1, 'a', 0, 1}, "QoS 3"},
		{"PUBREL without packet id", []byte{packets.Pubrel<<4 | 2, 0}, "malformed PUBREL"},
		{"CONNECT from the broker", []byte{packets.Connect << 4, 0}, "unexpected CONNECT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPeer(t)
			var calls atomic.Int32
			st := &stateLog{}
			startSource(t, Config{URL: p.URL(), ClientID: "gw-bad", QoS: 1, Topics: []string{"sensors/#"}},
				func(Message, sensor.Format, Ack) { calls.Add(1) }, st, nil)
			c1 := p.accept(t, waitLong)
			handshake(t, c1)
			st.waitUp(t, 1)
			write(t, c1, tt.send)
			waitClosed(t, c1, waitLong)
			c2 := p.accept(t, waitLong)
			if _, ok := readPacket(t, c2).(*packets.ConnectPacket); !ok {
				t.Fatal("the reconnect does not start with CONNECT")
			}
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times for a malformed packet", n)
			}
			ev := st.events()
			if len(ev) < 2 || ev[1].up || ev[1].err == nil || !strings.Contains(ev[1].err.Error(), tt.wantErr) {
				t.Fatalf("state events %v, want down with %q", ev, tt.wantErr)
			}
		})
	}
}

// Close while connected: acknowledgements given before Close reach the
// broker ahead of DISCONNECT, Close returns promptly, Connected is false
// after, and only the unacknowledged messages come back on the next start.
func TestCloseFlushesAcks(t *testing.T) { bothVersions(t, testCloseFlushesAcks) }

func testCloseFlushesAcks(t *testing.T, version byte) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	tp := startTap(t, mq.Addr())
	pub := publisher(t, mq.URL())
	cfg := Config{Protocol: version, URL: tp.URL(), ClientID: "gw-close", QoS: 1, Topics: []string{"sensors/#"}}

	first := &collector{ackIf: func(sensor.Message) bool { return false }} // acknowledged below, from the test
	st := &stateLog{}
	src := startSource(t, cfg, first.handle, st, nil)
	st.waitUp(t, 1)
	for i := 0; i < 6; i++ {
		publish(t, pub, "sensors/s/d/m", 1, []byte(fmt.Sprintf("c-%d", i)))
	}
	got := first.waitCount(t, 6)
	if !src.Connected() {
		t.Fatal("not connected before Close")
	}
	ackedIDs := map[uint16]bool{}
	for _, d := range got[:3] {
		d.ack.Ack()
		ackedIDs[d.ack.id] = true
	}
	start := time.Now()
	src.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %s", d)
	}
	if src.Connected() {
		t.Fatal("Connected after Close")
	}
	if ev := st.events(); len(ev) != 2 || ev[1].up {
		t.Fatalf("state events %v, want up then down", ev)
	}
	tp.waitBrokerDone(t, 0)
	if n := len(tp.sent(0, packets.Disconnect)); n != 1 {
		t.Fatalf("%d DISCONNECT sent", n)
	}
	var order []byte
	for _, p := range tp.packets() {
		if p.conn == 0 && !p.fromBroker && (p.typ == packets.Puback || p.typ == packets.Disconnect) {
			order = append(order, p.typ)
		}
	}
	if want := []byte{packets.Puback, packets.Puback, packets.Puback, packets.Disconnect}; !bytes.Equal(order, want) {
		t.Fatalf("client sent packet types %v, want three PUBACKs then DISCONNECT %v", order, want)
	}
	ids := tp.sentIDs(0, packets.Puback)
	for id := range ackedIDs {
		if ids[id] != 1 {
			t.Fatalf("PUBACK ids %v, want each of %v once", ids, ackedIDs)
		}
	}

	second := &collector{}
	st2 := &stateLog{}
	startSource(t, cfg, second.handle, st2, nil)
	st2.waitUp(t, 1)
	publish(t, pub, "sensors/s/d/m", 1, []byte("barrier"))
	got = second.waitPayload(t, "barrier")
	if g := strings.Join(payloads(got), "|"); g != "c-3|c-4|c-5|barrier" {
		t.Fatalf("after restart: %s, want c-3|c-4|c-5|barrier", g)
	}
}

// An Ack called after its connection is gone is dropped: it must not go
// out on the next connection, where the broker redelivers the message
// under the same packet id.
func TestStaleAckDropped(t *testing.T) { bothVersions(t, testStaleAckDropped) }

func testStaleAckDropped(t *testing.T, version byte) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	tp := startTap(t, mq.Addr())
	pub := publisher(t, mq.URL())
	c := &collector{ackIf: func(sensor.Message) bool { return false }}
	st := &stateLog{}
	src := startSource(t, Config{Protocol: version, URL: tp.URL(), ClientID: "gw-stale", QoS: 1, Topics: []string{"sensors/#"}}, c.handle, st, nil)
	st.waitUp(t, 1)
	publish(t, pub, "sensors/s/d/m", 1, []byte("m"))
	old := c.waitCount(t, 1)[0]

	tp.dropAll()    // the connection fails before the message is acknowledged
	st.waitUp(t, 2) // reconnected; mosquitto redelivers the message
	got := c.waitCount(t, 2)
	redelivered := got[1]
	if string(redelivered.msg.Payload) != "m" || redelivered.ack.id != old.ack.id {
		t.Fatalf("redelivered %q id %d, want %q id %d", redelivered.msg.Payload, redelivered.ack.id, "m", old.ack.id)
	}
	old.ack.Ack()         // stale: must go nowhere
	redelivered.ack.Ack() // the one that counts
	src.Close()
	eventually(t, waitLong, "DISCONNECT on the second connection", func() bool { return len(tp.sent(1, packets.Disconnect)) == 1 })
	if n := len(tp.sent(0, packets.Puback)); n != 0 {
		t.Fatalf("%d PUBACK on the dropped connection", n)
	}
	if ids := tp.sentIDs(1, packets.Puback); len(ids) != 1 || ids[old.ack.id] != 1 {
		t.Fatalf("PUBACKs on the second connection %v, want one for id %d", ids, old.ack.id)
	}
}

// A broker that refuses every subscription leaves the gateway receiving
// nothing: that is not "up". The session ends with the reason and is
// tried again.
func TestEverySubscriptionRefused(t *testing.T) {
	p := startPeer(t)
	st := &stateLog{}
	log, logs := testLogger()
	startSource(t, Config{URL: p.URL(), ClientID: "gw-acl", QoS: 1, Topics: []string{"sensors/#", "more/#"}},
		func(Message, sensor.Format, Ack) {}, st, log)
	for attempt := 1; attempt <= 2; attempt++ {
		c := p.accept(t, waitLong)
		if _, ok := readPacket(t, c).(*packets.ConnectPacket); !ok {
			t.Fatal("first packet is not CONNECT")
		}
		write(t, c, []byte{packets.Connack << 4, 2, 0, packets.Accepted})
		sp, ok := readPacket(t, c).(*packets.SubscribePacket)
		if !ok {
			t.Fatal("second packet is not SUBSCRIBE")
		}
		write(t, c, []byte{packets.Suback << 4, 4, byte(sp.MessageID >> 8), byte(sp.MessageID), 0x80, 0x80})
		waitClosed(t, c, waitLong)
	}
	if n := st.count(true); n != 0 {
		t.Fatalf("reported up %d times with every subscription refused", n)
	}
	if !strings.Contains(logs.String(), "refused every subscription") {
		t.Fatalf("log does not give the reason:\n%s", logs)
	}
}

// A CONNACK longer than MQTT 3.1.1's two bytes is read whole: the next
// packet is still parsed from its first byte.
func TestLongConnackKeepsStep(t *testing.T) {
	p := startPeer(t)
	st := &stateLog{}
	c := &collector{}
	startSource(t, Config{URL: p.URL(), ClientID: "gw-long", QoS: 0, Topics: []string{"sensors/#"}}, c.handle, st, nil)
	conn := p.accept(t, waitLong)
	if _, ok := readPacket(t, conn).(*packets.ConnectPacket); !ok {
		t.Fatal("first packet is not CONNECT")
	}
	write(t, conn, []byte{packets.Connack << 4, 4, 0, packets.Accepted, 0xaa, 0xbb})
	sp, ok := readPacket(t, conn).(*packets.SubscribePacket)
	if !ok {
		t.Fatal("second packet is not SUBSCRIBE")
	}
	write(t, conn, []byte{packets.Suback << 4, 3, byte(sp.MessageID >> 8), byte(sp.MessageID), 0})
	st.waitUp(t, 1)
	write(t, conn, []byte{packets.Publish << 4, 7, 0, 3, 's', '/', 'x', 'h', 'i'})
	if d := c.waitCount(t, 1); d[0].msg.Topic != "s/x" || string(d[0].msg.Payload) != "hi" {
		t.Fatalf("got %+v", d[0])
	}
}

// Close half-closes: the broker reads the acknowledgements and the
// DISCONNECT, then the end of the stream, and the client waits for the
// broker to close its side rather than resetting the connection.
func TestCloseHalfCloses(t *testing.T) {
	p := startPeer(t)
	st := &stateLog{}
	c := &collector{ackIf: func(sensor.Message) bool { return false }}
	src := startSource(t, Config{URL: p.URL(), ClientID: "gw-fin", QoS: 1, Topics: []string{"sensors/#"}}, c.handle, st, nil)
	conn := p.accept(t, waitLong)
	handshake(t, conn)
	st.waitUp(t, 1)
	write(t, conn, []byte{packets.Publish<<4 | 1<<1, 9, 0, 3, 's', '/', 'x', 0, 7, 'h', 'i'})
	d := c.waitCount(t, 1)
	d[0].ack.Ack()
	closed := make(chan struct{})
	go func() { src.Close(); close(closed) }()
	r := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(waitLong))
	var got []byte
	for {
		pk, err := readRawPacket(r)
		if err != nil {
			if err != io.EOF {
				t.Fatalf("broker side: %v after %x (want a clean end of stream)", err, got)
			}
			break
		}
		got = append(got, pk.typ>>4)
	}
	if !bytes.Equal(got, []byte{packets.Puback, packets.Disconnect}) {
		t.Fatalf("broker read packet types %v, want PUBACK then DISCONNECT", got)
	}
	select {
	case <-closed:
		t.Fatal("Close returned before the broker closed its side")
	default:
	}
	// A message sent after the DISCONNECT is passed over, not acknowledged.
	write(t, conn, []byte{packets.Publish<<4 | 1<<1, 9, 0, 3, 's', '/', 'x', 0, 8, 'l', 'a'})
	conn.Close()
	select {
	case <-closed:
	case <-time.After(waitLong):
		t.Fatal("Close did not return after the broker closed")
	}
}

// Two gateways started with the same client id take the session from each
// other (the broker ends the older connection). Against real mosquitto: a
// session that ended soon after it was established does not reset the
// backoff, so over 3 s the two connect a bounded number of times (not
// ~20 times a second), and the takeover is warned about once per client.
func TestSameClientIDBacksOff(t *testing.T) { bothVersions(t, testSameClientIDBacksOff) }

func testSameClientIDBacksOff(t *testing.T, version byte) {
	m := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	cfg := Config{Protocol: version, URL: m.URL(), ClientID: "iotgw", QoS: 1, Topics: []string{"sensors/#"}, MaxReconnectInterval: 30 * time.Second}
	h := (&collector{}).handle
	logA, bufA := testLogger()
	logB, bufB := testLogger()
	startSource(t, cfg, h, nil, logA)
	startSource(t, cfg, h, nil, logB)
	time.Sleep(3 * time.Second) // the window the connects are counted over
	logs := bufA.String() + bufB.String()
	connects := strings.Count(logs, `msg="mqtt connected"`)
	takeovers := strings.Count(logs, "may be taking it over")
	t.Logf("%d connects, %d takeover warnings in 3 s", connects, takeovers)
	if connects >= 15 {
		t.Fatalf("%d connects in 3 s with a shared client id", connects)
	}
	if takeovers < 1 || takeovers > 2 {
		t.Fatalf("%d takeover warnings, want one per client at most:\n%s", takeovers, logs)
	}
}
