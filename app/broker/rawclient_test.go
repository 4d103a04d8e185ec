package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawClient speaks MQTT over a plain socket with mochi's packet codec, for
// what paho will not send (forged Wills, a second CONNECT, MQTT 5 user
// properties) and for reading exactly what the broker answers.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte
}

func dialRaw(t testing.TB, addr string, version byte) *rawClient {
	t.Helper()
	return dialRawFrom(t, "", addr, version)
}

// dialRawFrom dials from a given local address (127.0.0.x), so tests can
// act as several hosts.
func dialRawFrom(t testing.TB, local, addr string, version byte) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: waitFor}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c), version: version}
}

func (c *rawClient) send(pk packets.Packet) {
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
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next packet from the broker, io.EOF once it closed the
// connection.
func (c *rawClient) read() (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(waitFor))
	hb, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packets.Packet{}, err
	}
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
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: cp, Properties: props})
	return c.mustRead(packets.Connack).ReasonCode
}

// waitClosed waits for the broker to close the connection, skipping any
// packets it still sends.
func (c *rawClient) waitClosed() error {
	for {
		_, err := c.read()
		var ne net.Error
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			return nil
		case errors.As(err, &ne) && ne.Timeout():
			return err
		case err != nil:
			return nil // reset by peer
		}
	}
}
