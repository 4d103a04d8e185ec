package broker

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawClient speaks MQTT over a socket by hand, for what paho will not do:
// attack the broker byte by byte (send, next), send packets paho refuses
// (forged Wills, a second CONNECT, MQTT 5 user properties: sendPacket,
// encoded with mochi's codec), and read exactly what the broker answers.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte // of the packets sendPacket and read encode and decode
}

type dialConf struct {
	local   string // source IP, e.g. 127.0.0.2, to act as several hosts; "" lets the kernel choose
	rcvBuf  int    // SO_RCVBUF before connecting; 0 keeps the default
	tls     *tls.Config
	version byte // MQTT protocol level for sendPacket and read; 0 is 3.1.1 (4)
}

func dialRaw(t testing.TB, addr string, dc dialConf) *rawClient {
	t.Helper()
	c, err := tryDialRaw(addr, dc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return newRawClient(t, c, dc.version)
}

// newRawClient speaks over an already dialled connection.
func newRawClient(t testing.TB, c net.Conn, version byte) *rawClient {
	if version == 0 {
		version = 4
	}
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c), version: version}
}

func tryDialRaw(addr string, dc dialConf) (net.Conn, error) {
	d := net.Dialer{Timeout: waitFor}
	if dc.local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(dc.local)}
	}
	if dc.rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, dc.rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if dc.tls != nil {
		tc := tls.Client(c, dc.tls)
		_ = tc.SetDeadline(time.Now().Add(waitFor))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		_ = tc.SetDeadline(time.Time{})
		return tc, nil
	}
	return c, nil
}

// send writes p as it is.
func (c *rawClient) send(p []byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitFor))
	if _, err := c.conn.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next reads one packet, failing the test after waitFor.
func (c *rawClient) next() (byte, []byte) {
	c.t.Helper()
	typ, body, err := c.tryNext(waitFor)
	if err != nil {
		c.t.Fatalf("read packet: %v", err)
	}
	return typ, body
}

// tryNext reads one packet's first byte and body, io.EOF once the broker
// closed the connection.
func (c *rawClient) tryNext(within time.Duration) (byte, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(within))
	typ, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		d, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mul
		mul *= 128
		if d&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return typ, body, nil
}

// login sends CONNECT (clean session) and checks the CONNACK accepts it.
// Devices log in with their user name or an empty id.
func (c *rawClient) login(id, user, pass string) {
	c.t.Helper()
	c.send(connectPacket(id, user, pass, 0))
	typ, body := c.next()
	if typ != 0x20 || len(body) != 2 || body[1] != 0 {
		c.t.Fatalf("CONNACK: type %#x body %x", typ, body)
	}
}

// sendPacket encodes pk at the client's protocol level and sends it.
func (c *rawClient) sendPacket(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		pk.Connect.ProtocolName = []byte("MQTT")
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("rawClient cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(buf.Bytes())
}

// read returns the next packet from the broker decoded, io.EOF once it
// closed the connection.
func (c *rawClient) read() (packets.Packet, error) {
	hb, body, err := c.tryNext(waitFor)
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = len(body)
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: c.version}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Pingresp:
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	return pk, err
}

func (c *rawClient) mustRead(want byte) packets.Packet {
	c.t.Helper()
	pk, err := c.read()
	if err != nil {
		c.t.Fatalf("waiting for packet type %d: %v", want, err)
	}
	if pk.FixedHeader.Type != want {
		c.t.Fatalf("got packet type %d, want %d", pk.FixedHeader.Type, want)
	}
	return pk
}

// connect sends a CONNECT and returns the CONNACK's reason code.
func (c *rawClient) connect(cp packets.ConnectParams, props packets.Properties) byte {
	c.t.Helper()
	if len(cp.Username) > 0 {
		cp.UsernameFlag = true
	}
	if len(cp.Password) > 0 {
		cp.PasswordFlag = true
	}
	if cp.Keepalive == 0 {
		cp.Keepalive = 30
	}
	c.sendPacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp, Properties: props})
	return c.mustRead(packets.Connack).ReasonCode
}

// The packets send writes, built byte by byte (MQTT 3.1.1).

func mqttString(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
}

func remainingLength(n int) []byte {
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

func packet(typ byte, body []byte) []byte {
	return append(append([]byte{typ}, remainingLength(len(body))...), body...)
}

func connectPacket(id, user, pass string, keepalive uint16) []byte {
	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(4)    // 3.1.1
	b.WriteByte(0xc2) // username, password, clean session
	_ = binary.Write(&b, binary.BigEndian, keepalive)
	mqttString(&b, id)
	mqttString(&b, user)
	mqttString(&b, pass)
	return packet(0x10, b.Bytes())
}

func publishPacket(topic string, payload []byte, qos byte, id uint16) []byte {
	var b bytes.Buffer
	mqttString(&b, topic)
	if qos > 0 {
		_ = binary.Write(&b, binary.BigEndian, id)
	}
	b.Write(payload)
	return packet(0x30|qos<<1, b.Bytes())
}

func subscribePacket(filter string, qos byte, id uint16) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.BigEndian, id)
	mqttString(&b, filter)
	b.WriteByte(qos)
	return packet(0x82, b.Bytes())
}
