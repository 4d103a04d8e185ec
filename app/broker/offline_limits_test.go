package broker

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// These tests attack the bounds on what a client costs while it is away
// (max_offline_bytes) or silent (max_keepalive), over real sockets.

const offlinePayloadSize = 60 << 10

// offlinePayload is a large reading whose first bytes carry its number.
func offlinePayload(i int) []byte {
	p := bytes.Repeat([]byte("o"), offlinePayloadSize)
	copy(p, fmt.Sprintf("%06d", i))
	return p
}

// persistentSubscriber logs in with a persistent session, subscribes to
// filter at QoS 1 and leaves, so that what is published next is stored for
// it. It returns once the broker has the session offline.
func persistentSubscriber(t *testing.T, b *Broker, user, pass, id, filter string) {
	t.Helper()
	c := dialRaw(t, b.Addr("plain"), dialConf{})
	if code := c.connect(connectParams(user, pass, id, false), packets.Properties{}); code != 0 {
		t.Fatalf("%s CONNACK %#x", id, code)
	}
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: 1}}})
	if sa := c.mustRead(packets.Suback); len(sa.ReasonCodes) != 1 || sa.ReasonCodes[0] != 1 {
		t.Fatalf("%s SUBACK %v", id, sa.ReasonCodes)
	}
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	waitClosed(t, c.conn, 5*time.Second, id+" after DISCONNECT")
	offlineClient(t, b, id)
}

// offlineClient waits until the broker holds id's session with no
// connection, and returns it.
func offlineClient(t *testing.T, b *Broker, id string) *mqtt.Client {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		if cl, ok := b.srv.Clients.Get(id); ok && cl.Closed() {
			return cl
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s not offline", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitStored waits until id's offline session holds want messages: mochi
// acknowledges a publish before it delivers it, so the PUBACK does not
// tell that it is stored.
func waitStored(t *testing.T, b *Broker, id string, want int) {
	t.Helper()
	cl := offlineClient(t, b, id)
	deadline := time.Now().Add(waitFor)
	for cl.State.Inflight.Len() != want {
		if time.Now().After(deadline) {
			t.Fatalf("session %s holds %d messages, want %d", id, cl.State.Inflight.Len(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// publishAcked publishes n large QoS 1 messages, numbered from 0, and waits
// for each PUBACK.
func publishAcked(t *testing.T, c *rawClient, topic string, n int) {
	t.Helper()
	for i := range n {
		c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: uint16(i + 1), TopicName: topic, Payload: offlinePayload(i)})
		c.mustRead(packets.Puback)
	}
}

// reconnectAndCount resumes id's session and returns the numbers of the
// messages the broker resends. mochi resends stored messages before it
// reads the connection, so a PINGRESP marks the end of them.
func reconnectAndCount(t *testing.T, b *Broker, user, pass, id string) map[int]bool {
	t.Helper()
	c := dialRaw(t, b.Addr("plain"), dialConf{})
	cp := connectParams(user, pass, id, false)
	cp.UsernameFlag, cp.PasswordFlag, cp.Keepalive = true, true, 30
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp})
	if ack := c.mustRead(packets.Connack); ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("%s CONNACK %#x, session present %v", id, ack.ReasonCode, ack.SessionPresent)
	}
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	got := map[int]bool{}
	for {
		pk, err := c.read()
		if err != nil {
			t.Fatalf("%s after %d messages: %v", id, len(got), err)
		}
		switch pk.FixedHeader.Type {
		case packets.Pingresp:
			return got
		case packets.Publish:
			var i int
			if len(pk.Payload) != offlinePayloadSize {
				t.Fatalf("%s: resent message of %d bytes", id, len(pk.Payload))
			}
			if _, err := fmt.Sscanf(string(pk.Payload[:6]), "%d", &i); err != nil {
				t.Fatal(err)
			}
			got[i] = true
		}
	}
}

// checkNewestKept checks got is exactly the newest messages of n.
func checkNewestKept(t *testing.T, got map[int]bool, n, want int) {
	t.Helper()
	if len(got) != want {
		t.Fatalf("%d messages resent, want the %d the session kept", len(got), want)
	}
	for i := n - want; i < n; i++ {
		if !got[i] {
			t.Fatalf("message %d of %d missing: the newest must be kept, got %v", i, n, got)
		}
	}
}

// A gateway's persistent session is offline while a device publishes 18 MiB
// of large QoS 1 messages: the broker's heap grows by about the budget, not
// by what was published; the oldest are dropped and counted, and the
// gateway gets the newest when it comes back.
func TestOfflineSessionBytesBounded(t *testing.T) {
	o := plainOptions(t)
	o.MaxOfflineBytesGateway = 2 << 20
	b := startBroker(t, o)
	persistentSubscriber(t, b, "gateway", "gw-secret", "gw-1", "sensors/#")
	dev := dialRaw(t, b.Addr("plain"), dialConf{})
	dev.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{})

	before := liveHeap()
	const n = 300
	publishAcked(t, dev, "sensors/plant-a/dev1/blob", n)
	perMessage := offlinePayloadSize + len("sensors/plant-a/dev1/blob") + int(storedMessageCost)
	kept := o.MaxOfflineBytesGateway / perMessage // 32
	waitStats(t, b, "oldest dropped", func(s LimitStats) bool { return s.OfflineDropped >= uint64(n-kept) })
	grown := int64(liveHeap()) - int64(before)
	t.Logf("heap grew %d KiB after %d MiB published for an offline session, budget %d MiB",
		grown>>10, n*offlinePayloadSize>>20, o.MaxOfflineBytesGateway>>20)
	if slack := int64(1 << 20); grown > int64(o.MaxOfflineBytesGateway)+slack {
		t.Fatalf("heap grew %d MiB with max_offline_bytes_gateway %d MiB", grown>>20, o.MaxOfflineBytesGateway>>20)
	}

	waitStored(t, b, "gw-1", kept)
	s := b.LimitStats()
	if s.OfflineDropped != uint64(n-kept) || s.OfflineDroppedSize != uint64((n-kept)*offlinePayloadSize) {
		t.Fatalf("stats %+v, want %d messages dropped and counted", s, n-kept)
	}
	if got := atomic.LoadInt64(&b.srv.Info.Inflight); got != int64(kept) {
		t.Errorf("$SYS inflight count %d, want %d", got, kept)
	}
	checkNewestKept(t, reconnectAndCount(t, b, "gateway", "gw-secret", "gw-1"), n, kept)
}

// What is dropped leaves the store too: after a restart the session comes
// back with the budget's worth, not everything that was published.
func TestOfflineBudgetKeptAcrossRestart(t *testing.T) {
	o := plainOptions(t)
	o.DataDir = t.TempDir()
	o.MaxOfflineBytesGateway = 1 << 20
	b1 := startBroker(t, o)
	persistentSubscriber(t, b1, "gateway", "gw-secret", "gw-1", "sensors/#")
	dev := dialRaw(t, b1.Addr("plain"), dialConf{})
	dev.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{})
	const n = 60
	publishAcked(t, dev, "sensors/plant-a/dev1/blob", n)
	kept := o.MaxOfflineBytesGateway / (offlinePayloadSize + len("sensors/plant-a/dev1/blob") + int(storedMessageCost))
	waitStored(t, b1, "gw-1", kept)
	waitStats(t, b1, "oldest dropped", func(s LimitStats) bool { return s.OfflineDropped == uint64(n-kept) })
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}

	b2 := startBroker(t, o)
	checkNewestKept(t, reconnectAndCount(t, b2, "gateway", "gw-secret", "gw-1"), n, kept)
}

// Devices get the smaller budget; the gateway's session, offline at the same
// time, keeps everything within its own.
func TestOfflineBudgetPerRole(t *testing.T) {
	o := plainOptions(t)
	o.MaxOfflineBytes = 256 << 10
	o.MaxOfflineBytesGateway = 8 << 20
	b := startBroker(t, o)
	persistentSubscriber(t, b, "dev1", "dev1-secret", "dev1", "commands/plant-a/dev1/#")
	persistentSubscriber(t, b, "gateway", "gw-secret", "gw-1", "sensors/#")

	gw := dialRaw(t, b.Addr("plain"), dialConf{})
	gw.connect(connectParams("gateway", "gw-secret", "gw-cmd", true), packets.Properties{})
	const n = 40
	publishAcked(t, gw, "commands/plant-a/dev1/set", n)
	dev2 := dialRaw(t, b.Addr("plain"), dialConf{})
	dev2.connect(connectParams("dev2", "dev2-secret", "", true), packets.Properties{})
	publishAcked(t, dev2, "sensors/plant-a/dev2/blob", n)

	perMessage := offlinePayloadSize + len("commands/plant-a/dev1/set") + int(storedMessageCost)
	waitStored(t, b, "dev1", o.MaxOfflineBytes/perMessage)
	waitStored(t, b, "gw-1", n) // all of them, within its budget
	checkNewestKept(t, reconnectAndCount(t, b, "dev1", "dev1-secret", "dev1"), n, o.MaxOfflineBytes/perMessage)
}

// A connected subscriber is not limited by the offline budget: a gateway
// that has not acknowledged yet keeps all its messages in flight.
func TestOnlineSessionNotCutByOfflineBudget(t *testing.T) {
	o := plainOptions(t)
	o.MaxOfflineBytesGateway = 1 << 20
	b := startBroker(t, o)
	gw := dialRaw(t, b.Addr("plain"), dialConf{})
	gw.connect(connectParams("gateway", "gw-secret", "gw-1", false), packets.Properties{})
	gw.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "sensors/#", Qos: 1}}})
	gw.mustRead(packets.Suback)
	dev := dialRaw(t, b.Addr("plain"), dialConf{})
	dev.connect(connectParams("dev1", "dev1-secret", "", true), packets.Properties{})
	const n = 50 // 3 MiB unacknowledged, 3 times the offline budget
	publishAcked(t, dev, "sensors/plant-a/dev1/blob", n)
	for i := range n {
		if pk := gw.mustRead(packets.Publish); !bytes.Equal(pk.Payload, offlinePayload(i)) {
			t.Fatalf("message %d: got another", i)
		}
	}
	cl, _ := b.srv.Clients.Get("gw-1")
	if got := cl.State.Inflight.Len(); got != n {
		t.Fatalf("%d in flight, want %d", got, n)
	}
	if s := b.LimitStats(); s.OfflineDropped != 0 {
		t.Fatalf("stats %+v: a connected client lost messages", s)
	}
}

// rawConnect sends a CONNECT with exactly the given keep-alive (rawClient's
// connect replaces 0) and returns the CONNACK.
func rawConnect(t *testing.T, c *rawClient, user, pass string, keepalive uint16) packets.Packet {
	t.Helper()
	cp := connectParams(user, pass, "", true)
	cp.UsernameFlag, cp.PasswordFlag, cp.Keepalive = true, true, keepalive
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp})
	ack := c.mustRead(packets.Connack)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	return ack
}

// A client that asks for keep-alive 0 (or more than max_keepalive) and then
// stays silent is closed after 1.5 x max_keepalive; MQTT 5 clients are told
// the value in CONNACK. One that keeps talking stays.
func TestKeepaliveZeroBounded(t *testing.T) {
	o := plainOptions(t)
	o.MaxKeepalive = time.Second
	b := startBroker(t, o)
	addr := b.Addr("plain")

	start := time.Now()
	silent := dialRaw(t, addr, dialConf{})
	rawConnect(t, silent, "dev1", "dev1-secret", 0)
	long := dialRaw(t, addr, dialConf{})
	rawConnect(t, long, "dev2", "dev2-secret", 3600)
	talker := dialRaw(t, addr, dialConf{})
	rawConnect(t, talker, "dev2", "dev2-secret", 0)

	v5 := dialRaw(t, addr, dialConf{version: 5})
	for _, ka := range []uint16{0, 600} {
		ack := rawConnect(t, v5, "dev1", "dev1-secret", ka)
		if !ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 1 {
			t.Errorf("MQTT 5 keep-alive %d: CONNACK Server Keep Alive %v %d, want 1",
				ka, ack.Properties.ServerKeepAliveFlag, ack.Properties.ServerKeepAlive)
		}
		v5.conn.Close()
		v5 = dialRaw(t, addr, dialConf{version: 5})
	}
	if ack := rawConnect(t, v5, "dev1", "dev1-secret", 1); ack.Properties.ServerKeepAliveFlag {
		t.Errorf("keep-alive within max_keepalive: CONNACK overrides it with %d", ack.Properties.ServerKeepAlive)
	}

	// The talker sends a PINGREQ every 200 ms, for longer than the silent
	// ones are allowed.
	talked := make(chan error, 1)
	go func() {
		var resp [2]byte
		for time.Since(start) < 2500*time.Millisecond {
			_ = talker.conn.SetDeadline(time.Now().Add(waitFor))
			if _, err := talker.conn.Write([]byte{0xc0, 0}); err != nil {
				talked <- err
				return
			}
			if _, err := io.ReadFull(talker.conn, resp[:]); err != nil || resp[0] != 0xd0 {
				talked <- fmt.Errorf("PINGRESP %x: %v", resp, err)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		talked <- nil
	}()
	waitClosed(t, silent.conn, waitFor, "keep-alive 0, silent")
	// mochi's deadline is keep-alive + keep-alive/2 in whole seconds: 1 s here.
	if held := time.Since(start); held < 900*time.Millisecond {
		t.Errorf("silent client closed after %s, before max_keepalive", held)
	}
	waitClosed(t, long.conn, waitFor, "keep-alive 3600, silent")
	if err := <-talked; err != nil {
		t.Fatalf("client that keeps talking: %v", err)
	}
	waitStats(t, b, "keep-alive closes counted", func(s LimitStats) bool { return s.KeepaliveTimeouts >= 2 })
}

func TestOfflineAndKeepaliveConfigErrorsNameTheKey(t *testing.T) {
	const base = "users_file = \"/u\"\ntls.generate_ca = true\n"
	for _, tt := range []struct{ text, key string }{
		{"max_offline_bytes = 1000\n", "max_offline_bytes"},
		{"max_offline_bytes_gateway = 1000\n", "max_offline_bytes_gateway"},
		{"max_keepalive = \"0s\"\n", "max_keepalive"},
		{"max_keepalive = \"1500ms\"\n", "max_keepalive"},
		{"max_keepalive = \"100000s\"\n", "max_keepalive"},
	} {
		_, err := ParseConfig(base + tt.text)
		if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
			t.Errorf("%q: %v, want an error naming %s", tt.text, err, tt.key)
		}
	}
	o := plainOptions(t)
	o.MaxOfflineBytesGateway = 100
	if _, err := New(o); err == nil || !strings.Contains(err.Error(), "MaxOfflineBytesGateway") {
		t.Errorf("New: %v, want an error naming MaxOfflineBytesGateway", err)
	}
	c, err := ParseConfig(base + "max_offline_bytes = 2097152\nmax_keepalive = \"60s\"\n")
	if err != nil {
		t.Fatal(err)
	}
	var opts Options
	c.LimitsConfig.apply(&opts)
	if opts.MaxOfflineBytes != 2<<20 || opts.MaxKeepalive != time.Minute || opts.MaxOfflineBytesGateway != DefaultMaxOfflineBytesGateway {
		t.Errorf("applied %d %s %d", opts.MaxOfflineBytes, opts.MaxKeepalive, opts.MaxOfflineBytesGateway)
	}
}
