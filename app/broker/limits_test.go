package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// waitClosed reads (and discards) until the broker closes the connection;
// it fails the test if that has not happened within the bound.
func waitClosed(t testing.TB, c net.Conn, within time.Duration, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("%s: still open after %s", what, within)
	}
}

// refused dials and checks the broker closes the socket at once (it may be
// reset before the dial returns).
func refused(t testing.TB, addr string, dc dialConf, what string) {
	t.Helper()
	c, err := tryDialRaw(addr, dc)
	if err != nil {
		return
	}
	defer c.Close()
	waitClosed(t, c, waitFor, what)
}

// stillOpen checks the broker has not closed c: a read times out.
func stillOpen(t testing.TB, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [1]byte
	if _, err := c.Read(b[:]); !isTimeout(err) {
		t.Fatalf("%s: closed or got data (%v), want it open", what, err)
	}
	_ = c.SetReadDeadline(time.Time{})
}

// tlsListener adds a TLS listener with a generated CA to o and returns the
// client configuration that trusts it.
func tlsListener(t testing.TB, o *Options) *tls.Config {
	t.Helper()
	g, err := EnsureCertificates(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ServerTLSConfig(g.CertFile, g.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	o.Listeners = append(o.Listeners, Listener{ID: "tls", Addr: "127.0.0.1:0", TLS: sc})
	caPEM, err := os.ReadFile(g.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

func totalAlloc() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// waitStats polls the broker's counters until ok holds; the counters are
// what the test waits on, not time.
func waitStats(t testing.TB, b *Broker, what string, ok func(LimitStats) bool) LimitStats {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		s := b.LimitStats()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A CONNECT declaring the largest length MQTT can encode is refused at its
// header: the broker closes the socket and never allocates the body, over
// plain TCP and TLS.
func TestHugeConnectRefusedAtHeader(t *testing.T) {
	o := plainOptions(t)
	o.ConnectTimeout = 2 * time.Second // so that without the size check the test ends on the allocation
	clientTLS := tlsListener(t, &o)
	b := startBroker(t, o)

	const perListener = 4
	header := []byte{0x10, 0xff, 0xff, 0xff, 0x7f} // CONNECT, 268,435,455 bytes
	before := totalAlloc()
	var conns []net.Conn
	for _, dc := range []dialConf{{}, {tls: clientTLS}} {
		addr := b.Addr("plain")
		if dc.tls != nil {
			addr = b.Addr("tls")
		}
		for range perListener {
			c := dialRaw(t, addr, dc)
			c.send(header)
			conns = append(conns, c.conn)
		}
	}
	for i, c := range conns {
		waitClosed(t, c, waitFor, fmt.Sprintf("connection %d", i))
	}
	if grown := totalAlloc() - before; grown > 16<<20 {
		t.Fatalf("broker allocated %d MiB for %d refused CONNECT headers", grown>>20, len(conns))
	}
	waitStats(t, b, "packets too large", func(s LimitStats) bool { return s.PacketsTooLarge == uint64(len(conns)) })
}

// After a valid CONNECT, a PUBLISH one byte over max_packet_size is refused
// at its header, and one of exactly max_packet_size is accepted.
func TestOversizedPublishRefusedAtHeader(t *testing.T) {
	o := plainOptions(t)
	o.MaxPacketSize = 4096
	b := startBroker(t, o)
	topic := "sensors/plant-a/dev1/big"

	c := dialRaw(t, b.Addr("plain"), dialConf{})
	c.login("dev1", "dev1", "dev1-secret")
	// Fixed header 0x32 + 2 length bytes, topic, packet id: the payload
	// that makes the packet exactly MaxPacketSize.
	payload := bytes.Repeat([]byte("x"), o.MaxPacketSize-3-(2+len(topic))-2)
	pub := publishPacket(topic, payload, 1, 7)
	if len(pub) != o.MaxPacketSize {
		t.Fatalf("test packet is %d bytes, want %d", len(pub), o.MaxPacketSize)
	}
	c.send(pub)
	if typ, body := c.next(); typ != 0x40 || !bytes.Equal(body, []byte{0, 7}) {
		t.Fatalf("want PUBACK 7 for a packet of exactly max_packet_size, got %#x %x", typ, body)
	}

	// The header alone: the body is never sent.
	body := o.MaxPacketSize - 2
	over := append([]byte{0x32}, remainingLength(body)...)
	if len(over)+body != o.MaxPacketSize+1 {
		t.Fatalf("test header declares %d bytes, want %d", len(over)+body, o.MaxPacketSize+1)
	}
	c.send(over)
	waitClosed(t, c.conn, waitFor, "connection after oversized PUBLISH header")
	waitStats(t, b, "packet too large counted", func(s LimitStats) bool { return s.PacketsTooLarge == 1 })
}

// MQTT 5 clients are told the limit in CONNACK (Maximum Packet Size).
func TestConnackAdvertisesMaxPacketSize(t *testing.T) {
	o := plainOptions(t)
	o.MaxPacketSize = 5000
	b := startBroker(t, o)
	c := dialRaw(t, b.Addr("plain"), dialConf{})
	var v bytes.Buffer
	mqttString(&v, "MQTT")
	v.Write([]byte{5, 0xc2, 0, 30, 0}) // MQTT 5, user+password+clean, keepalive, no properties
	mqttString(&v, "dev1")
	mqttString(&v, "dev1")
	mqttString(&v, "dev1-secret")
	c.send(packet(0x10, v.Bytes()))
	typ, body := c.next()
	if typ != 0x20 || len(body) < 3 || body[1] != 0 {
		t.Fatalf("CONNACK: type %#x body %x", typ, body)
	}
	// Properties: a one-byte length here, then id/value pairs; 0x27 is
	// Maximum Packet Size, a four-byte integer.
	props := body[3:]
	i := bytes.IndexByte(props, 0x27)
	if i < 0 || i+5 > len(props) || binary.BigEndian.Uint32(props[i+1:]) != uint32(o.MaxPacketSize) {
		t.Fatalf("CONNACK properties %x carry no Maximum Packet Size %d", props, o.MaxPacketSize)
	}
}

// Sockets that send nothing, that stop in the middle of CONNECT, or that
// never start TLS are closed after connect_timeout; a client that connected
// in time is not.
func TestConnectTimeout(t *testing.T) {
	o := plainOptions(t)
	o.ConnectTimeout = 300 * time.Millisecond
	clientTLS := tlsListener(t, &o)
	b := startBroker(t, o)

	good := mustConnect(t, clientConf{url: "tcp://" + b.Addr("plain"), user: "dev1", pass: "dev1-secret"})
	silent := dialRaw(t, b.Addr("plain"), dialConf{})
	partial := dialRaw(t, b.Addr("plain"), dialConf{})
	partial.send(connectPacket("dev2", "dev2", "dev2-secret", 30)[:12])
	noHello := dialRaw(t, b.Addr("tls"), dialConf{})
	afterHandshake := dialRaw(t, b.Addr("tls"), dialConf{tls: clientTLS})

	waitClosed(t, silent.conn, waitFor, "plain socket that sent nothing")
	waitClosed(t, partial.conn, waitFor, "plain socket with half a CONNECT")
	waitClosed(t, noHello.conn, waitFor, "TLS socket without ClientHello")
	waitClosed(t, afterHandshake.conn, waitFor, "TLS socket without CONNECT")
	waitStats(t, b, "connect timeouts counted", func(s LimitStats) bool { return s.ConnectTimeouts == 4 })

	// The client that connected in time outlived the four.
	wait(t, good.Publish("sensors/plant-a/dev1/t", 1, false, "1"))
	if !good.IsConnectionOpen() {
		t.Fatal("client connected in time was disconnected")
	}
}

// max_connections and max_connections_per_address: the connection over a
// cap is closed before anything is read, the others keep working, and the
// per-address cap counts each source address separately.
func TestConnectionCaps(t *testing.T) {
	o := plainOptions(t)
	o.MaxConnections = 7
	o.MaxConnectionsPerAddress = 2
	o.ConnectTimeout = time.Minute // only the caps close sockets here
	b := startBroker(t, o)
	addr := b.Addr("plain")

	held := map[string][]*rawClient{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		for range 2 {
			held[ip] = append(held[ip], dialRaw(t, addr, dialConf{local: ip}))
		}
	}
	waitStats(t, b, "six connections open", func(s LimitStats) bool { return s.Connections == 6 })

	// A third from an address at its cap is closed; a new address gets the
	// last slot, and the one after it is closed.
	refused(t, addr, dialConf{local: "127.0.0.2"}, "third connection from 127.0.0.2")
	held["127.0.0.5"] = []*rawClient{dialRaw(t, addr, dialConf{local: "127.0.0.5"})}
	waitStats(t, b, "seven connections open", func(s LimitStats) bool { return s.Connections == 7 })
	refused(t, addr, dialConf{local: "127.0.0.6"}, "eighth connection")
	s := b.LimitStats()
	if s.RefusedPerAddress != 1 || s.RefusedTotal != 1 {
		t.Fatalf("stats %+v, want one refusal per cap", s)
	}

	// The held connections still work: one logs in and gets a CONNACK.
	for ip, cs := range held {
		for i, c := range cs {
			stillOpen(t, c.conn, fmt.Sprintf("held connection %d from %s", i, ip))
		}
	}
	held["127.0.0.2"][0].login("dev1", "dev1", "dev1-secret")

	// A freed slot is usable again, by a client from that address.
	held["127.0.0.3"][0].conn.Close()
	waitStats(t, b, "slot freed", func(s LimitStats) bool { return s.Connections == 6 })
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: waitFor}
	cl, err := connectVia(t, "tcp://"+addr, dialer, "dev2", "dev2-secret")
	if err != nil {
		t.Fatalf("connect from 127.0.0.3 after a slot was freed: %v", err)
	}
	wait(t, cl.Publish("sensors/plant-a/dev2/t", 1, false, "1"))
}

// Running out of file descriptors makes accept fail; the listener keeps
// going and accepts the waiting connection once descriptors are free again
// (mochi's own listener stops for good on the first accept error).
func TestAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	b := startBroker(t, plainOptions(t))
	addr := b.Addr("plain")
	dialRaw(t, addr, dialConf{}).login("", "dev1", "dev1-secret")

	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	restore := func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved) }
	defer restore()
	// Take every descriptor but one (the limit caps descriptor numbers, so
	// holes are filled first): the client's socket takes it and the
	// broker's accept gets EMFILE; the kernel has completed the handshake.
	low := saved
	low.Cur = uint64(procFDs(os.Getpid()) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	fill[len(fill)-1].Close()
	fill = fill[:len(fill)-1]
	waiting, err := tryDialRaw(addr, dialConf{})
	if err != nil {
		restore()
		t.Fatalf("dial with one descriptor left: %v", err)
	}
	defer waiting.Close()
	waitStats(t, b, "accept error counted", func(s LimitStats) bool { return s.AcceptErrors > 0 })
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	restore()

	c := newRawClient(t, waiting, 0)
	c.login("", "dev1", "dev1-secret")
}

// A subscriber that stops reading holds mochi's client lock inside a
// blocked write; devices publishing to it must still get their PUBACK and
// PINGRESP, and the stalled subscriber is disconnected after write_timeout.
func TestStalledSubscriberDoesNotBlockPublishers(t *testing.T) {
	o := plainOptions(t)
	o.WriteTimeout = 500 * time.Millisecond
	o.MaxQueuedBytes = 1 << 30 // only the write timeout acts here
	b := startBroker(t, o)
	addr := b.Addr("plain")

	sub := dialRaw(t, addr, dialConf{rcvBuf: 4096})
	sub.login("stalled", "gateway", "gw-secret")
	sub.send(subscribePacket("sensors/#", 1, 1))
	if typ, _ := sub.next(); typ != 0x90 {
		t.Fatalf("want SUBACK, got %#x", typ)
	}
	// sub reads nothing from here on.

	pinger := dialRaw(t, addr, dialConf{})
	pinger.login("dev2", "dev2", "dev2-secret")

	dev := dialRaw(t, addr, dialConf{})
	dev.login("dev1", "dev1", "dev1-secret")
	payload := bytes.Repeat([]byte("p"), 60<<10)
	var maxAck, maxPing time.Duration
	for i := range 300 {
		id := uint16(i + 1)
		start := time.Now()
		dev.send(publishPacket("sensors/plant-a/dev1/blob", payload, 1, id))
		if typ, body := dev.next(); typ != 0x40 || binary.BigEndian.Uint16(body) != id {
			t.Fatalf("publish %d: want PUBACK, got %#x %x", i, typ, body)
		}
		maxAck = max(maxAck, time.Since(start))

		// dev2 also publishes to the stalled subscriber, then pings.
		start = time.Now()
		pinger.send(publishPacket("sensors/plant-a/dev2/t", []byte("1"), 1, id))
		pinger.send([]byte{0xc0, 0})
		for {
			typ, _ := pinger.next()
			if typ == 0xd0 {
				break
			}
		}
		maxPing = max(maxPing, time.Since(start))
	}
	t.Logf("longest PUBACK wait %s, longest PINGRESP wait %s (write_timeout %s)", maxAck, maxPing, o.WriteTimeout)
	// A blocked write ends within write_timeout; the margin is for a
	// loaded machine, far below the forever of a subscriber that never reads.
	if bound := o.WriteTimeout + 4*time.Second; maxAck > bound || maxPing > bound {
		t.Fatalf("PUBACK waited %s, PINGRESP %s: more than write_timeout %s allows", maxAck, maxPing, o.WriteTimeout)
	}
	waitClosed(t, sub.conn, waitFor, "stalled subscriber")
	waitStats(t, b, "write timeout counted", func(s LimitStats) bool { return s.WriteTimeouts == 1 })
}

// Large messages to a subscriber that does not read: what is queued for it
// stays within max_queued_bytes, it is disconnected when more would be, and
// the bytes not queued are counted.
func TestQueuedBytesBounded(t *testing.T) {
	// Direct, and shared as the gateway subscribes.
	for _, filter := range []string{"sensors/#", "$share/gw/sensors/#"} {
		t.Run(filter, func(t *testing.T) { testQueuedBytesBounded(t, filter) })
	}
}

func testQueuedBytesBounded(t *testing.T, filter string) {
	o := plainOptions(t)
	o.MaxQueuedBytes = 1 << 20
	o.WriteTimeout = time.Minute // only the byte budget acts here
	b := startBroker(t, o)
	addr := b.Addr("plain")

	sub := dialRaw(t, addr, dialConf{rcvBuf: 4096})
	sub.login("stalled", "gateway", "gw-secret")
	// A large message before the subscription: its topic's (empty)
	// recipient list must not outlive the SUBSCRIBE.
	dev := dialRaw(t, addr, dialConf{})
	dev.login("dev1", "dev1", "dev1-secret")
	payload := bytes.Repeat([]byte("q"), 60<<10)
	dev.send(publishPacket("sensors/plant-a/dev1/blob", payload, 1, 1000))
	if typ, _ := dev.next(); typ != 0x40 {
		t.Fatalf("first publish: want PUBACK, got %#x", typ)
	}
	sub.send(subscribePacket(filter, 0, 1))
	if typ, _ := sub.next(); typ != 0x90 {
		t.Fatalf("want SUBACK, got %#x", typ)
	}

	before := liveHeap()
	const n = 400
	for i := range n {
		dev.send(publishPacket("sensors/plant-a/dev1/blob", payload, 1, uint16(i+1)))
		if typ, _ := dev.next(); typ != 0x40 {
			t.Fatalf("publish %d: want PUBACK, got %#x", i, typ)
		}
	}
	grown := int64(liveHeap()) - int64(before)
	t.Logf("heap grew %d KiB after %d MiB published to a stalled subscriber", grown>>10, n*len(payload)>>20)
	if grown > 8<<20 {
		t.Fatalf("heap grew %d MiB with max_queued_bytes %d MiB", grown>>20, o.MaxQueuedBytes>>20)
	}
	waitClosed(t, sub.conn, waitFor, "subscriber over max_queued_bytes")
	s := b.LimitStats()
	if s.QueuedBytesClosed != 1 || s.QueuedBytesDropped < uint64(len(payload)) {
		t.Fatalf("stats %+v, want one close and dropped bytes counted", s)
	}
	// What was queued when it was closed, plus the message that went over.
	if s.QueuedBytesDropped > uint64(o.MaxQueuedBytes+len(payload)) {
		t.Fatalf("%d bytes were queued for the subscriber, budget %d", s.QueuedBytesDropped, o.MaxQueuedBytes)
	}
}

// A subscriber that reads gets every large message: what is written is
// credited back, so the account does not creep up to the budget.
func TestQueuedBytesCreditedWhenWritten(t *testing.T) {
	for _, filter := range []string{"sensors/#", "$share/gw/sensors/#"} {
		t.Run(filter, func(t *testing.T) { testQueuedBytesCredited(t, filter) })
	}
}

func testQueuedBytesCredited(t *testing.T, filter string) {
	o := plainOptions(t)
	o.MaxQueuedBytes = 1 << 20
	b := startBroker(t, o)
	addr := b.Addr("plain")

	sub := dialRaw(t, addr, dialConf{})
	sub.login("reader", "gateway", "gw-secret")
	sub.send(subscribePacket(filter, 1, 1))
	if typ, _ := sub.next(); typ != 0x90 {
		t.Fatalf("want SUBACK, got %#x", typ)
	}
	dev := dialRaw(t, addr, dialConf{})
	dev.login("dev1", "dev1", "dev1-secret")
	payload := bytes.Repeat([]byte("r"), 60<<10)
	const n = 400 // 23 MiB in all, 23 times the budget
	for i := range n {
		dev.send(publishPacket("sensors/plant-a/dev1/blob", payload, 1, uint16(i+1)))
		if typ, _ := dev.next(); typ != 0x40 {
			t.Fatalf("publish %d: want PUBACK, got %#x", i, typ)
		}
		typ, body := sub.next()
		if typ&0xf0 != 0x30 || !bytes.HasSuffix(body, payload) {
			t.Fatalf("message %d: type %#x, %d bytes", i, typ, len(body))
		}
		sub.send([]byte{0x40, 2, body[len(body)-len(payload)-2], body[len(body)-len(payload)-1]}) // PUBACK
	}
	if s := b.LimitStats(); s.QueuedBytesClosed != 0 {
		t.Fatalf("a subscriber that reads was closed: %+v", s)
	}
}

func TestHeaderScannerSplitAnywhere(t *testing.T) {
	stream := append(append(connectPacket("c", "u", "p", 30), publishPacket("a/b", bytes.Repeat([]byte("z"), 300), 1, 1)...), 0xc0, 0)
	for split := 0; split <= len(stream); split++ {
		var s headerScanner
		for _, part := range [][]byte{stream[:split], stream[split:]} {
			if _, err := s.feed(part, 1000); err != nil {
				t.Fatalf("split %d: %v", split, err)
			}
		}
		if s.packets != 3 {
			t.Fatalf("split %d: %d packets, want 3", split, s.packets)
		}
	}
	// Refused when the length is complete, at the packet's first byte.
	var s headerScanner
	ok := publishPacket("a", []byte("1"), 0, 0)
	cut, err := s.feed(append(ok, 0x30, 0xe9, 0x07), 1000) // 1001 + 3 bytes
	if err == nil || cut != len(ok) {
		t.Fatalf("cut %d err %v, want %d and an error", cut, err, len(ok))
	}
	s = headerScanner{}
	if _, err := s.feed([]byte{0x30, 0xff, 0xff, 0xff, 0xff}, maxMaxPacketSize); !errors.Is(err, errMalformedSize) {
		t.Fatalf("5-byte length: %v", err)
	}
}

func FuzzHeaderScanner(f *testing.F) {
	f.Add(connectPacket("c", "u", "p", 30), 3)
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f}, 1)
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		var whole, parts headerScanner
		_, errW := whole.feed(b, 1<<16)
		if split < 0 || split > len(b) {
			split = len(b)
		}
		_, err1 := parts.feed(b[:split], 1<<16)
		var err2 error
		if err1 == nil {
			_, err2 = parts.feed(b[split:], 1<<16)
		}
		if (errW == nil) != (err1 == nil && err2 == nil) || (errW == nil && whole != parts) {
			t.Fatalf("split at %d changed the result: %v / %v %v", split, errW, err1, err2)
		}
	})
}

func TestLimitsConfigErrorsNameTheKey(t *testing.T) {
	const base = "users_file = \"/u\"\ntls.generate_ca = true\n"
	for _, tt := range []struct{ text, key string }{
		{"max_packet_size = 10\n", "max_packet_size"},
		{"connect_timeout = \"0s\"\n", "connect_timeout"},
		{"max_connections = 0\n", "max_connections"},
		{"max_connections_per_address = -1\n", "max_connections_per_address"},
		{"write_timeout = \"-1s\"\n", "write_timeout"},
		{"max_queued_bytes = 100\n", "max_queued_bytes"},
	} {
		_, err := ParseConfig(base + tt.text)
		if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
			t.Errorf("%q: %v, want an error naming %s", tt.text, err, tt.key)
		}
	}
	o := plainOptions(t)
	o.MaxConnectionsPerAddress = -1
	if _, err := New(o); err == nil || !strings.Contains(err.Error(), "MaxConnectionsPerAddress") {
		t.Errorf("New: %v, want an error naming MaxConnectionsPerAddress", err)
	}
	// A per-address cap above the total is harmless: the total applies.
	if _, err := ParseConfig(base + "max_connections = 10\n"); err != nil {
		t.Errorf("max_connections below the default per-address cap: %v", err)
	}
}

// connectVia connects with paho through dialer (to pick the source address).
func connectVia(t testing.TB, url string, dialer *net.Dialer, user, pass string) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetUsername(user).SetPassword(pass).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(waitFor).SetDialer(dialer)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(waitFor) {
		return nil, fmt.Errorf("connect to %s timed out", url)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl, nil
}

func TestSampleConfigStatesLimitDefaults(t *testing.T) {
	c, err := ParseConfig(SampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	if c.LimitsConfig != defaultLimitsConfig() {
		t.Fatalf("sample limits %+v, want the defaults %+v", c.LimitsConfig, defaultLimitsConfig())
	}
	for _, key := range limitKeys[:limAccept] {
		if !strings.Contains(SampleConfig, "\n"+key+" = ") {
			t.Errorf("sample.toml does not set %s", key)
		}
	}
}
