package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	packets5 "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// ---- an MQTT 5 publisher on a raw connection (paho.golang's codec) ----

type pub5 struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	id   uint16
}

func dialPub5(t *testing.T, addr, clientID string) *pub5 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &pub5{t: t, conn: c, r: bufio.NewReader(c)}
	cp := &packets5.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, CleanStart: true, KeepAlive: 60,
		ClientID: clientID, Properties: &packets5.Properties{}}
	if _, err := cp.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	ack, ok := p.read().Content.(*packets5.Connack)
	if !ok || ack.ReasonCode != 0 {
		t.Fatalf("publisher CONNACK %+v", ack)
	}
	return p
}

func (p *pub5) read() *packets5.ControlPacket {
	p.t.Helper()
	_ = p.conn.SetReadDeadline(time.Now().Add(waitLong))
	pk, err := packets5.ReadPacket(p.r)
	if err != nil {
		p.t.Fatalf("publisher read: %v", err)
	}
	return pk
}

// publish sends a QoS 1 PUBLISH with properties and waits for its PUBACK.
func (p *pub5) publish(topic, payload string, props *packets5.Properties) {
	p.t.Helper()
	if props == nil {
		props = &packets5.Properties{}
	}
	p.id++
	pk := &packets5.Publish{Topic: topic, Payload: []byte(payload), QoS: 1, PacketID: p.id, Properties: props}
	if _, err := pk.WriteTo(p.conn); err != nil {
		p.t.Fatal(err)
	}
	if ack, ok := p.read().Content.(*packets5.Puback); !ok || ack.ReasonCode >= 0x80 {
		p.t.Fatalf("publish %s: PUBACK %+v", topic, ack)
	}
}

// brokers5 are the brokers the session is tested against: mosquitto 2 and
// iotgw broker (mochi-mqtt), each with anonymous access.
func brokers5(t *testing.T) map[string]string {
	t.Helper()
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 100})
	b := startTestBroker(t, broker.Options{AllowAnonymous: true})
	return map[string]string{"mosquitto": mq.Addr(), "iotgw broker": b.Addr("plain")}
}

// startTestBroker starts an iotgw broker with o on a plain loopback
// listener ("plain", a free port), logging nowhere, closed at the end.
func startTestBroker(t *testing.T, o broker.Options) *broker.Broker {
	t.Helper()
	o.Listeners = []broker.Listener{{ID: "plain", Addr: "127.0.0.1:0"}}
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// Both protocol versions against both brokers: every message arrives once
// with topic, payload and format; with MQTT 5 the user properties and the
// content type reach the handler; what was not acknowledged comes back on
// the next session with the same client id (the session outlived the
// connection), what was acknowledged does not.
func TestSessionBothVersions(t *testing.T) {
	addrs := brokers5(t)
	for _, bname := range []string{"mosquitto", "iotgw broker"} {
		for _, version := range []byte{V311, V5} {
			t.Run(fmt.Sprintf("%s/v%d", bname, version), func(t *testing.T) {
				addr := addrs[bname]
				id := fmt.Sprintf("gw-both-%d-%d", len(bname), version)
				cfg := Config{URL: "tcp://" + addr, ClientID: id, QoS: 1, Protocol: version,
					Topics: []string{"sensors/#"}, LineTopics: []string{"lp/#"}, SessionExpiry: time.Hour}
				pub := dialPub5(t, addr, "pub-"+id)
				// barrier-1 is held too: once it is in, every earlier ack
				// has been written.
				hold := map[string]bool{"m-1": true, "m-3": true, "barrier-1": true}
				first := &collector{ackIf: func(m sensor.Message) bool { return !hold[string(m.Payload)] }}
				st := &stateLog{}
				src := startSource(t, cfg, first.handle, st, nil)
				st.waitUp(t, 1)
				for i := 0; i < 5; i++ {
					topic := fmt.Sprintf("sensors/s/d%d/m", i)
					if i == 2 {
						topic = "lp/d2"
					}
					pub.publish(topic, fmt.Sprintf("m-%d", i), &packets5.Properties{ContentType: "application/json",
						User: []packets5.User{{Key: "ts", Value: fmt.Sprint(1764150000000 + i)}, {Key: "fw", Value: "1.2"}}})
				}
				pub.publish("sensors/barrier/x/y", "barrier-1", nil)
				got := first.waitPayload(t, "barrier-1")
				if g := strings.Join(payloads(got), "|"); g != "m-0|m-1|m-2|m-3|m-4|barrier-1" {
					t.Fatalf("first session: %s", g)
				}
				for i, d := range got[:5] {
					if f := d.format; (i == 2) != (f == sensor.FormatLine) {
						t.Errorf("delivery %d: format %v", i, f)
					}
					ts, ok := d.msg.Props.User("ts")
					ct := d.msg.Props.ContentType()
					if version == V5 {
						if !ok || ts != fmt.Sprint(1764150000000+i) || ct != "application/json" {
							t.Errorf("delivery %d: user property ts = %q %v, content type %q", i, ts, ok, ct)
						}
						if fw, _ := d.msg.Props.User("fw"); fw != "1.2" {
							t.Errorf("delivery %d: second user property %q", i, fw)
						}
					} else if ok || ct != "" {
						t.Errorf("delivery %d: MQTT 3.1.1 message with properties", i)
					}
				}
				src.Close()

				second := &collector{}
				st2 := &stateLog{}
				startSource(t, cfg, second.handle, st2, nil)
				st2.waitUp(t, 1)
				pub.publish("sensors/barrier/x/y", "barrier-2", nil)
				got = second.waitPayload(t, "barrier-2")
				g := payloads(got)
				// mochi redelivers in no particular order.
				slices.Sort(g[:len(g)-1])
				if strings.Join(g, "|") != "barrier-1|m-1|m-3|barrier-2" {
					t.Fatalf("second session: %s, want the unacknowledged barrier-1, m-1, m-3, then barrier-2", g)
				}
			})
		}
	}
}

// Two gateways on one shared subscription, against both brokers and both
// versions: each message goes to exactly one of them.
func TestSharedSubscriptionSplits(t *testing.T) {
	addrs := brokers5(t)
	for _, bname := range []string{"mosquitto", "iotgw broker"} {
		for _, version := range []byte{V311, V5} {
			t.Run(fmt.Sprintf("%s/v%d", bname, version), func(t *testing.T) {
				addr := addrs[bname]
				var cs [2]*collector
				log, logs := testLogger()
				defer func() {
					if t.Failed() {
						t.Log(logs)
					}
				}()
				for i := range cs {
					cs[i] = &collector{}
					st := &stateLog{}
					startSource(t, Config{URL: "tcp://" + addr, ClientID: fmt.Sprintf("gw-share-%d-%d-%d", len(bname), version, i),
						QoS: 1, Protocol: version, Topics: []string{fmt.Sprintf("$share/split-%d-%d/sensors/#", len(bname), version)}}, cs[i].handle, st, log)
					st.waitUp(t, 1)
				}
				pub := dialPub5(t, addr, fmt.Sprintf("pub-share-%d-%d", len(bname), version))
				const n = 200
				for i := 0; i < n; i++ {
					pub.publish("sensors/s/d/m", fmt.Sprintf("s-%d", i), nil)
				}
				seen := map[string]int{}
				deadline := time.Now().Add(waitLong)
				for len(cs[0].deliveries())+len(cs[1].deliveries()) < n {
					if time.Now().After(deadline) {
						t.Fatalf("delivered %d + %d of %d", len(cs[0].deliveries()), len(cs[1].deliveries()), n)
					}
					time.Sleep(5 * time.Millisecond)
				}
				for _, c := range cs {
					for _, d := range c.deliveries() {
						seen[string(d.msg.Payload)]++
					}
				}
				for i := 0; i < n; i++ {
					if k := seen[fmt.Sprintf("s-%d", i)]; k != 1 {
						t.Errorf("s-%d delivered %d times", i, k)
					}
				}
				a, b := len(cs[0].deliveries()), len(cs[1].deliveries())
				if a == 0 || b == 0 {
					t.Fatalf("split %d/%d: one member got nothing", a, b)
				}
				t.Logf("split %d/%d", a, b)
			})
		}
	}
}

// A member of a shared subscription that went away with its session kept
// still gets its turn of the group's messages: both brokers queue them for
// it (the other member does not get them) until it comes back with the
// same client id, which is why a gateway's slot is its client id. With
// MQTT 5 the session expiry ends that: once the dead member's session has
// expired, the live member gets every message. Measured against both
// brokers.
// deadExpiry is the away member's session expiry: long enough for its
// first absence (100 publishes and a probe) on a loaded machine, since a
// session that expires then takes its share with it.
const deadExpiry = 6 * time.Second

func TestSharedDeadMemberShare(t *testing.T) {
	addrs := brokers5(t)
	for _, bname := range []string{"mosquitto", "iotgw broker"} {
		t.Run(bname, func(t *testing.T) {
			addr := addrs[bname]
			group := fmt.Sprintf("$share/dead-%d/sensors/#", len(bname))
			live := &collector{}
			st := &stateLog{}
			startSource(t, Config{URL: "tcp://" + addr, ClientID: fmt.Sprintf("gw-live-%d", len(bname)), QoS: 1, Protocol: V5,
				Topics: []string{group}}, live.handle, st, nil)
			deadCfg := Config{URL: "tcp://" + addr, ClientID: fmt.Sprintf("gw-dead-%d", len(bname)), QoS: 1, Protocol: V5,
				Topics: []string{group}, SessionExpiry: deadExpiry}
			dead := &collector{}
			st2 := &stateLog{}
			src := startSource(t, deadCfg, dead.handle, st2, nil)
			st.waitUp(t, 1)
			st2.waitUp(t, 1)
			src.Close()
			away := time.Now()
			pub := dialPub5(t, addr, fmt.Sprintf("pub-dead-%d", len(bname)))
			const n = 100
			for i := 0; i < n; i++ {
				pub.publish("sensors/s/d/m", fmt.Sprintf("a-%d", i), nil)
			}
			// The live member's deliveries end with a probe published after
			// the others (mochi picks a member at random: send several);
			// what it lacks was queued for the dead one.
			probe := func(tag string) {
				t.Helper()
				for i := 0; i < 10; i++ {
					pub.publish("sensors/s/d/m", fmt.Sprintf("%s-%d", tag, i), nil)
				}
				eventually(t, waitLong, "a probe at the live member", func() bool {
					for _, d := range live.deliveries() {
						if strings.HasPrefix(string(d.msg.Payload), tag+"-") {
							return true
						}
					}
					return false
				})
			}
			probe("probe")
			liveGot := len(live.deliveries())
			t.Logf("%s: live member got %d of %d while the other was away", bname, liveGot, n+10)
			if liveGot >= n {
				t.Fatalf("live member got %d of %d: the dead member's share was not held for it", liveGot, n+10)
			}
			// The dead member comes back in time (same client id): its
			// share arrives.
			back := &collector{}
			st3 := &stateLog{}
			src = startSource(t, deadCfg, back.handle, st3, nil)
			st3.waitUp(t, 1)
			if gone := time.Since(away); gone >= deadExpiry {
				t.Fatalf("the member came back after %v, past its session expiry of %v: the machine is too slow for this test", gone, deadExpiry)
			}
			eventually(t, waitLong, "every message at one member", func() bool {
				return len(live.deliveries())+len(back.deliveries()) >= n+10
			})
			seen := map[string]int{}
			for _, ds := range [][]delivery{live.deliveries(), back.deliveries()} {
				for _, d := range ds {
					seen[string(d.msg.Payload)]++
				}
			}
			for i := 0; i < n; i++ {
				if seen[fmt.Sprintf("a-%d", i)] != 1 {
					t.Errorf("a-%d delivered %d times", i, seen[fmt.Sprintf("a-%d", i)])
				}
			}
			// Away for longer than its session expiry: the broker drops the
			// session, and with it the member's turn.
			src.Close()
			time.Sleep(deadExpiry + 2*time.Second) // the expiry under test, and the broker's check of it
			before := len(live.deliveries())
			for i := 0; i < 20; i++ {
				pub.publish("sensors/s/d/m", fmt.Sprintf("b-%d", i), nil)
			}
			probe("last")
			after := len(live.deliveries()) - before
			t.Logf("%s: after the session expired, the live member got %d of 30", bname, after)
			if after < 21 {
				t.Fatalf("after the dead member's session expired the live member got %d of 30", after)
			}
		})
	}
}

// readConnect5 reads an MQTT 5 CONNECT on the scripted peer.
func readConnect5(t *testing.T, c net.Conn) *packets5.Connect {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	pk, err := packets5.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	cp, ok := pk.Content.(*packets5.Connect)
	if !ok {
		t.Fatalf("first packet %s, want CONNECT", pk.PacketType())
	}
	return cp
}

func writeV5(t *testing.T, c net.Conn, pk interface {
	WriteTo(io.Writer) (int64, error)
}) {
	t.Helper()
	if _, err := pk.WriteTo(c); err != nil {
		t.Fatal(err)
	}
}

// handshake5 plays an MQTT 5 broker up to SUBACK, granting or refusing
// each filter with codes.
func handshake5(t *testing.T, c net.Conn, connack *packets5.Connack, codes []byte) (*packets5.Connect, *packets5.Subscribe) {
	t.Helper()
	cp := readConnect5(t, c)
	writeV5(t, c, connack)
	pk, err := packets5.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	sub, ok := pk.Content.(*packets5.Subscribe)
	if !ok {
		t.Fatalf("second packet %s, want SUBSCRIBE", pk.PacketType())
	}
	if codes == nil {
		for _, s := range sub.Subscriptions {
			codes = append(codes, s.QoS)
		}
	}
	writeV5(t, c, &packets5.Suback{PacketID: sub.PacketID, Reasons: codes,
		Properties: &packets5.Properties{ReasonString: "acl says no"}})
	return cp, sub
}

// The MQTT 5 CONNECT asks for a persistent session bounded by the session
// expiry, a Receive Maximum, a Maximum Packet Size from MaxPayload; the
// broker's keep-alive wins; a refused filter is logged with its reason
// while the granted one keeps the session up; properties reach the handler
// and an Ack with a reason code carries it.
func TestV5ConnectAndSuback(t *testing.T) {
	p := startPeer(t)
	log, logs := testLogger()
	st := &stateLog{}
	c := &collector{ackIf: func(sensor.Message) bool { return false }}
	startSource(t, Config{URL: p.URL(), ClientID: "gw-v5", Username: "gw", Password: "pw", QoS: 1, Protocol: V5,
		Topics: []string{"sensors/#", "$share/g/other/#"}, SessionExpiry: 90 * time.Minute, ReceiveMaximum: 4096,
		MaxPayload: 1000, KeepAlive: 30 * time.Second}, c.handle, st, log)
	conn := p.accept(t, waitLong)
	ka := uint16(1)
	cp, sub := handshake5(t, conn, &packets5.Connack{Properties: &packets5.Properties{ServerKeepAlive: &ka}},
		[]byte{1, packets5.SubackNotauthorized})
	switch {
	case cp.ProtocolVersion != 5 || cp.CleanStart || cp.ClientID != "gw-v5" || cp.Username != "gw" || string(cp.Password) != "pw":
		t.Fatalf("CONNECT %s", cp)
	case cp.Properties.SessionExpiryInterval == nil || *cp.Properties.SessionExpiryInterval != 5400:
		t.Fatalf("session expiry %v, want 5400 s", cp.Properties.SessionExpiryInterval)
	case cp.Properties.ReceiveMaximum == nil || *cp.Properties.ReceiveMaximum != 4096:
		t.Fatalf("receive maximum %v, want 4096", cp.Properties.ReceiveMaximum)
	case cp.Properties.MaximumPacketSize == nil || *cp.Properties.MaximumPacketSize < 1000+128<<10 || *cp.Properties.MaximumPacketSize > 1000+129<<10:
		t.Fatalf("maximum packet size %v, want max payload plus the header room", cp.Properties.MaximumPacketSize)
	case len(sub.Subscriptions) != 2 || sub.Subscriptions[1].Topic != "$share/g/other/#" || sub.Subscriptions[0].QoS != 1:
		t.Fatalf("SUBSCRIBE %s", sub)
	}
	st.waitUp(t, 1)
	if l := logs.String(); !strings.Contains(l, `msg="mqtt subscription refused"`) || !strings.Contains(l, "reason=not_authorized") ||
		!strings.Contains(l, `reason_string="acl says no"`) || !strings.Contains(l, `topic=$share/g/other/#`) {
		t.Fatalf("the refusal is not logged with its reason:\n%s", l)
	}

	props := &packets5.Properties{ContentType: "text/plain", User: []packets5.User{{Key: "ts", Value: "1764150000123"},
		{Key: "fw", Value: "1"}, {Key: "fw", Value: "2"}}}
	fmtByte := byte(1)
	props.PayloadFormat = &fmtByte
	writeV5(t, conn, &packets5.Publish{Topic: "sensors/s/d/m", QoS: 1, PacketID: 7, Payload: []byte("hello"), Properties: props})
	d := c.waitCount(t, 1)[0]
	if string(d.msg.Payload) != "hello" || d.msg.Topic != "sensors/s/d/m" || d.msg.Props.ContentType() != "text/plain" {
		t.Fatalf("delivery %+v", d)
	}
	if ts, ok := d.msg.Props.User("ts"); !ok || ts != "1764150000123" {
		t.Fatalf("user property ts = %q, %v", ts, ok)
	}
	// The mapper's view of the same properties.
	if d.msg.Message.Props == nil {
		t.Fatal("an MQTT 5 message without sensor.Message.Props")
	}
	if v, n := d.msg.Message.Props.UserProperty("ts"); n != 1 || string(v) != "1764150000123" {
		t.Fatalf("UserProperty(ts) = %q, %d", v, n)
	}
	if v, n := d.msg.Message.Props.UserProperty("fw"); n != 2 || string(v) != "1" {
		t.Fatalf("UserProperty(fw) = %q, %d, want the first of 2", v, n)
	}
	if _, n := d.msg.Message.Props.UserProperty("none"); n != 0 {
		t.Fatalf("UserProperty(none) found %d", n)
	}
	d.ack.WithReason(0x99).Ack()
	_ = conn.SetReadDeadline(time.Now().Add(waitLong))
	r := bufio.NewReader(conn)
	sawPing := false
	for {
		raw, err := readRawPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		if raw.typ>>4 == packets.Pingreq {
			sawPing = true
			continue
		}
		if !bytes.Equal(raw.bytes, []byte{packets.Puback << 4, 3, 0, 7, 0x99}) {
			t.Fatalf("client sent %x, want a PUBACK for id 7 with reason 0x99", raw.bytes)
		}
		break
	}
	// The broker's keep-alive of 1 s replaced the configured 30 s.
	start := time.Now()
	for !sawPing && time.Since(start) < 3*time.Second {
		raw, err := readRawPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		sawPing = raw.typ>>4 == packets.Pingreq
	}
	if !sawPing {
		t.Fatal("no PINGREQ within 3 s: the broker's keep-alive was not used")
	}
}

// Server DISCONNECT reason codes end the session with one log line naming
// the reason, and the next connect waits as the reason asks: quota
// exceeded waits at least busyBackoff, server shutting down reconnects
// soon, session taken over is named as such.
func TestV5ServerDisconnect(t *testing.T) {
	p := startPeer(t)
	log, logs := testLogger()
	st := &stateLog{}
	startSource(t, Config{URL: p.URL(), ClientID: "gw-disc", QoS: 1, Protocol: V5, Topics: []string{"sensors/#"},
		MaxReconnectInterval: time.Second}, (&collector{}).handle, st, log)

	ups := 0
	disconnect := func(code byte, reason string) time.Time {
		c := p.accept(t, waitLong)
		handshake5(t, c, &packets5.Connack{Properties: &packets5.Properties{}}, nil)
		ups++
		st.waitUp(t, ups)
		writeV5(t, c, &packets5.Disconnect{ReasonCode: code, Properties: &packets5.Properties{ReasonString: reason}})
		sent := time.Now()
		waitClosed(t, c, waitLong)
		return sent
	}
	disconnect(packets5.DisconnectServerShuttingDown, "restart")
	sent := disconnect(packets5.DisconnectQuotaExceeded, "too many sessions")
	c := p.accept(t, 2*busyBackoff+waitLong)
	if gap := time.Since(sent); gap < busyBackoff {
		t.Fatalf("reconnected %s after quota exceeded, want at least %s", gap, busyBackoff)
	}
	handshake5(t, c, &packets5.Connack{Properties: &packets5.Properties{}}, nil)
	writeV5(t, c, &packets5.Disconnect{ReasonCode: packets5.DisconnectSessionTakenOver, Properties: &packets5.Properties{}})
	waitClosed(t, c, waitLong)
	p.accept(t, waitLong)

	l := logs.String()
	for _, want := range []string{
		`msg="mqtt broker shutting down; reconnecting" client_id=gw-disc reason_code=0x8B`,
		`server_shutting_down (0x8B): restart`,
		`msg="mqtt broker ended the session" client_id=gw-disc reason_code=0x97`,
		`quota_exceeded (0x97): too many sessions`,
		`another client with the same client id may be taking it over`,
		`session_taken_over (0x8E)`,
	} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	ev := st.events()
	if len(ev) < 6 {
		t.Fatalf("state events %v", ev)
	}
	if e, ok := ev[3].err.(*DisconnectError); !ok || e.Code != packets5.DisconnectQuotaExceeded {
		t.Fatalf("down event %v, want a DisconnectError with quota exceeded", ev[3].err)
	}
	if t.Failed() {
		t.Log(l)
	}
}

// A CONNACK refusing with a reason code is reported with its name.
func TestV5ConnackRefused(t *testing.T) {
	p := startPeer(t)
	log, logs := testLogger()
	startSource(t, Config{URL: p.URL(), ClientID: "gw-refused5", QoS: 1, Protocol: V5, Topics: []string{"sensors/#"}},
		(&collector{}).handle, nil, log)
	c := p.accept(t, waitLong)
	readConnect5(t, c)
	writeV5(t, c, &packets5.Connack{ReasonCode: packets5.ConnackNotAuthorized, Properties: &packets5.Properties{}})
	p.accept(t, waitLong)
	if l := logs.String(); !strings.Contains(l, "connection refused: not_authorized (0x87)") || !strings.Contains(l, "reason_code=0x87") {
		t.Fatalf("log:\n%s", l)
	}
}

// Malformed MQTT 5 PUBLISH properties end the session without calling the
// handler.
func TestV5MalformedProperties(t *testing.T) {
	tests := []struct {
		name    string
		props   []byte
		wantErr string
	}{
		{"length beyond packet", []byte{0x10}, "malformed PUBLISH properties"},
		{"unknown property", []byte{2, 0x7f, 0}, "malformed PUBLISH property 0x7F"},
		{"user property cut", []byte{5, 0x26, 0, 9, 'k', 'k'}, "malformed PUBLISH property 0x26"},
		{"topic alias", []byte{3, 0x23, 0, 1}, "topic alias"},
		{"properties beyond the packet size advertised", nil, "PUBLISH properties of 131072 bytes"},
	}
	// Properties claiming more than the advertised room, in a packet
	// larger than the read buffer: refused before anything is allocated.
	huge := append([]byte{0, 3, 's', '/', 'x', 0x80, 0x80, 0x08}, bytes.Repeat([]byte{0}, 70<<10)...)
	bigProps := append([]byte{packets.Publish << 4}, encodeLen(len(huge))...)
	bigProps = append(bigProps, huge...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPeer(t)
			var calls atomic.Int32
			st := &stateLog{}
			startSource(t, Config{URL: p.URL(), ClientID: "gw-bad5", QoS: 0, Protocol: V5, Topics: []string{"sensors/#"}},
				func(Message, sensor.Format, Ack) { calls.Add(1) }, st, nil)
			c := p.accept(t, waitLong)
			handshake5(t, c, &packets5.Connack{Properties: &packets5.Properties{}}, nil)
			st.waitUp(t, 1)
			if tt.props == nil {
				write(t, c, bigProps)
			} else {
				body := append([]byte{0, 3, 's', '/', 'x'}, tt.props...)
				write(t, c, append([]byte{packets.Publish << 4, byte(len(body))}, body...))
			}
			waitClosed(t, c, waitLong)
			p.accept(t, waitLong)
			ev := st.events()
			if len(ev) < 2 || ev[1].err == nil || !strings.Contains(ev[1].err.Error(), tt.wantErr) {
				t.Fatalf("state events %v, want down with %q", ev, tt.wantErr)
			}
			if calls.Load() != 0 {
				t.Fatal("handler called")
			}
		})
	}
}

// FuzzPublishV5 feeds arbitrary PUBLISH bodies to the parser and walks
// what it accepts: nothing may panic.
func FuzzPublishV5(f *testing.F) {
	f.Add([]byte{0, 3, 's', '/', 'x', 0, 7, 5, 0x26, 0, 1, 'k', 0, 0, 'p'}, byte(1))
	f.Add([]byte{0, 1, 't', 3, 0x03, 0, 0}, byte(0))
	f.Fuzz(func(t *testing.T, body []byte, qos byte) {
		p, err := parsePublish(body, qos%3, V5)
		if err != nil {
			return
		}
		props := Properties{raw: p.props}
		_ = props.ContentType()
		props.EachUser(func(k, v []byte) bool { return true })
	})
}

// The PUBLISH hot path: parsing in place against paho.golang's decoder.
// paho.golang allocates the topic, the payload and the properties of every
// message; the in-place parse allocates nothing.
func BenchmarkPublishParse(b *testing.B) {
	ts := "1764150000123"
	pk := &packets5.Publish{Topic: "sensors/site-01/dev-0003/environment", QoS: 1, PacketID: 42,
		Payload:    []byte(`{"ts":1764150000123,"temperature":21.37,"humidity":48.2}`),
		Properties: &packets5.Properties{User: []packets5.User{{Key: "ts", Value: ts}}}}
	var buf bytes.Buffer
	if _, err := pk.WriteTo(&buf); err != nil {
		b.Fatal(err)
	}
	raw := buf.Bytes()
	body := raw[2:] // a one-byte remaining length: the packet is < 128 bytes
	b.Run("in-place", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := parsePublish(body, 1, V5)
			if err != nil || len(p.payload) == 0 {
				b.Fatal(err)
			}
			n := 0
			(Properties{raw: p.props}).EachUser(func(k, v []byte) bool {
				if string(k) == "ts" {
					n = len(v)
				}
				return true
			})
			if n != len(ts) {
				b.Fatal("no ts")
			}
		}
	})
	b.Run("paho.golang", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p := &packets5.Publish{QoS: 1, Properties: &packets5.Properties{}}
			if err := p.Unpack(bytes.NewBuffer(body)); err != nil || len(p.Payload) == 0 {
				b.Fatal(err)
			}
			if len(p.Properties.User) != 1 {
				b.Fatal("no ts")
			}
		}
	})
}

// What real brokers send when they end an MQTT 5 session: iotgw broker
// (mochi-mqtt) ends a session another connection with the same client id
// took over with DISCONNECT 0x8E, and its shutdown with 0x8B; mosquitto
// 2.0 closes the connection in both cases without a DISCONNECT (the
// session then ends as a lost connection, and a takeover is recognised by
// its short life, as with 3.1.1). Both are logged once.
func TestV5ReasonsFromBrokers(t *testing.T) {
	for _, bname := range []string{"mosquitto", "iotgw broker"} {
		t.Run(bname, func(t *testing.T) {
			var addr string
			var stop func()
			if bname == "mosquitto" {
				mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
				addr, stop = mq.Addr(), mq.Stop
			} else {
				b := startTestBroker(t, broker.Options{AllowAnonymous: true})
				addr, stop = b.Addr("plain"), func() { b.Close() }
			}
			cfg := Config{URL: "tcp://" + addr, ClientID: "gw-reasons", QoS: 1, Protocol: V5, Topics: []string{"sensors/#"},
				MaxReconnectInterval: time.Hour}
			logA, bufA := testLogger()
			stA := &stateLog{}
			srcA := startSource(t, cfg, (&collector{}).handle, stA, logA)
			stA.waitUp(t, 1)
			stB := &stateLog{}
			srcB := startSource(t, cfg, (&collector{}).handle, stB, nil)
			stB.waitUp(t, 1)
			eventually(t, waitLong, "the first session to end", func() bool { return stA.count(false) >= 1 })
			ev := stA.events()
			var de *DisconnectError
			gotCode := errors.As(ev[1].err, &de)
			t.Logf("%s, session taken over: %v", bname, ev[1].err)
			if bname == "iotgw broker" && (!gotCode || de.Code != packets5.DisconnectSessionTakenOver) {
				t.Fatalf("takeover ended the session with %v, want DISCONNECT 0x8E", ev[1].err)
			}
			if !strings.Contains(bufA.String(), "may be taking it over") {
				t.Fatalf("the takeover is not logged:\n%s", bufA)
			}
			srcA.Close()
			srcB.Close()

			logC, bufC := testLogger()
			stC := &stateLog{}
			startSource(t, Config{URL: "tcp://" + addr, ClientID: "gw-reasons-2", QoS: 1, Protocol: V5,
				Topics: []string{"sensors/#"}}, (&collector{}).handle, stC, logC)
			stC.waitUp(t, 1)
			stop()
			eventually(t, waitLong, "the session to end with the broker", func() bool { return stC.count(false) >= 1 })
			t.Logf("%s, shutdown: %v", bname, stC.events()[1].err)
			if bname == "iotgw broker" && !strings.Contains(bufC.String(), `msg="mqtt broker shutting down; reconnecting" client_id=gw-reasons-2 reason_code=0x8B`) {
				t.Fatalf("shutdown not logged with 0x8B:\n%s", bufC)
			}
		})
	}
}

// A broker that answers without a session once this client id had one has
// dropped what it queued: logged and reported, on a reconnect and, with
// ExpectSession (the gateway ran with this id before), on the first
// connect; never for a session the broker keeps.
func TestSessionLost(t *testing.T) {
	for _, tt := range []struct {
		name    string
		expect  bool
		present [2]bool
		want    int32
	}{
		{"first start", false, [2]bool{false, true}, 0},
		{"dropped between connections", false, [2]bool{false, false}, 1},
		{"expected at start", true, [2]bool{false, true}, 1},
		{"kept", true, [2]bool{true, true}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startPeer(t)
			log, logs := testLogger()
			var lost atomic.Int32
			st := &stateLog{}
			startSource(t, Config{URL: p.URL(), ClientID: "gw-lost", QoS: 1, Protocol: V5, Topics: []string{"sensors/#"},
				ExpectSession: tt.expect, SessionLost: func(int) { lost.Add(1) }}, (&collector{}).handle, st, log)
			for i, present := range tt.present {
				c := p.accept(t, waitLong)
				handshake5(t, c, &packets5.Connack{SessionPresent: present, Properties: &packets5.Properties{}}, nil)
				st.waitUp(t, i+1)
				c.Close()
			}
			if n := lost.Load(); n != tt.want {
				t.Fatalf("SessionLost called %d times, want %d:\n%s", n, tt.want, logs)
			}
			if got := strings.Count(logs.String(), "had no session for this client id"); got != int(tt.want) {
				t.Fatalf("%d warnings, want %d", got, tt.want)
			}
		})
	}
}

// A broker keep-alive of 0 turns the pings off (MQTT 5 §3.2.2.3.14): the
// session comes up and delivers without a PINGREQ.
func TestV5ServerKeepAliveOff(t *testing.T) {
	p := startPeer(t)
	st := &stateLog{}
	c := &collector{}
	startSource(t, Config{URL: p.URL(), ClientID: "gw-ka0", QoS: 0, Protocol: V5, Topics: []string{"sensors/#"},
		KeepAlive: time.Second}, c.handle, st, nil)
	conn := p.accept(t, waitLong)
	off := uint16(0)
	handshake5(t, conn, &packets5.Connack{Properties: &packets5.Properties{ServerKeepAlive: &off}}, nil)
	st.waitUp(t, 1)
	writeV5(t, conn, &packets5.Publish{Topic: "sensors/s/d/m", Payload: []byte("x"), Properties: &packets5.Properties{}})
	c.waitCount(t, 1)
	// Two of the configured intervals without a PINGREQ (the time is
	// what is under test).
	_ = conn.SetReadDeadline(time.Now().Add(2500 * time.Millisecond))
	var b [1]byte
	if n, err := conn.Read(b[:]); n > 0 {
		t.Fatalf("client sent packet type %d with keep-alive off", b[0]>>4)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("connection ended: %v", err)
	}
}

// encodeLen is an MQTT variable byte integer.
func encodeLen(n int) []byte {
	var out []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			return out
		}
	}
}
