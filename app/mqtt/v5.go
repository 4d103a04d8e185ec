package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// MQTT 5 for the subscriber session. Control packets (CONNECT, CONNACK,
// SUBSCRIBE, SUBACK, DISCONNECT) go through paho.golang's packets codec;
// PUBLISH is parsed in the read buffer like in 3.1.1, with its properties
// kept as raw bytes and walked only when the handler asks for one
// (BenchmarkPublishParse: paho.golang's Publish.Unpack allocates the topic,
// the payload and the properties for every message).

// Protocol versions as CONNECT carries them.
const (
	V311 byte = 4
	V5   byte = 5
)

// Message is what the session hands to the handler: the domain message,
// and for MQTT 5 the PUBLISH's properties. Both point into the read buffer
// and are valid only until the handler returns. The domain message's own
// Props (Message.Message.Props) views the same properties, for the mapper;
// it is nil for MQTT 3.1.1.
type Message struct {
	sensor.Message
	Props Properties
}

// Properties are the raw properties of an MQTT 5 PUBLISH (empty for 3.1.1).
type Properties struct {
	raw []byte
}

// ContentType returns the Content Type property (a MIME type by
// convention), "" when absent.
func (p Properties) ContentType() string {
	var out string
	p.each(func(id byte, v []byte) bool {
		if id == propContentType {
			out = string(v)
			return false
		}
		return true
	})
	return out
}

// User returns the value of the first user property named key.
func (p Properties) User(key string) (string, bool) {
	var out string
	found := false
	p.EachUser(func(k, v []byte) bool {
		if string(k) == key {
			out, found = string(v), true
			return false
		}
		return true
	})
	return out, found
}

// UserProperty returns the value of the first user property named key and
// how many carry that key, without copying (sensor.Props): the value is
// valid only during the handler call.
func (p *Properties) UserProperty(key string) (value []byte, n int) {
	p.EachUser(func(k, v []byte) bool {
		if string(k) == key {
			if n == 0 {
				value = v
			}
			n++
		}
		return true
	})
	return value, n
}

// EachUser calls f for every user property in order (a key may repeat)
// until f returns false. The slices are valid only during the call.
func (p Properties) EachUser(f func(key, value []byte) bool) {
	p.each(func(id byte, v []byte) bool {
		if id != propUser {
			return true
		}
		kl := int(v[0])<<8 | int(v[1])
		return f(v[2:2+kl], v[4+kl:])
	})
}

// Property identifiers (MQTT 5 §2.2.2.2) that can appear in a PUBLISH.
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x03
	propResponseTopic   = 0x08
	propCorrelationData = 0x09
	propSubscriptionID  = 0x0B
	propTopicAlias      = 0x23
	propUser            = 0x26
)

// each walks the properties, already validated by checkProps, handing f
// the value of each (for strings and binary data without the length, for a
// user property the whole pair).
func (p Properties) each(f func(id byte, v []byte) bool) {
	b := p.raw
	for len(b) > 0 {
		id := b[0]
		n, skip := propLen(id, b[1:])
		v := b[1+skip : 1+n]
		if !f(id, v) {
			return
		}
		b = b[1+n:]
	}
}

// propLen returns the length of the property whose value starts b (-1 if
// it does not fit or the id is not one a PUBLISH carries) and how many of
// those bytes are a length prefix.
func propLen(id byte, b []byte) (n, prefix int) {
	switch id {
	case propPayloadFormat:
		n = 1
	case propTopicAlias:
		n = 2
	case propMessageExpiry:
		n = 4
	case propContentType, propResponseTopic, propCorrelationData:
		if len(b) < 2 {
			return -1, 0
		}
		n, prefix = 2+(int(b[0])<<8|int(b[1])), 2
	case propUser:
		if len(b) < 2 {
			return -1, 0
		}
		kl := int(b[0])<<8 | int(b[1])
		if len(b) < 4+kl {
			return -1, 0
		}
		n = 4 + kl + (int(b[2+kl])<<8 | int(b[3+kl]))
	case propSubscriptionID:
		n = 0
		for n < 4 && n < len(b) {
			n++
			if b[n-1]&0x80 == 0 {
				break
			}
		}
		if n == 0 || b[n-1]&0x80 != 0 {
			return -1, 0
		}
	default:
		return -1, 0
	}
	if n > len(b) {
		return -1, 0
	}
	return n, prefix
}

// checkProps validates a PUBLISH's properties so that Properties can walk
// them without checks, and reports a Topic Alias, which this session
// never allows (it advertises a Topic Alias Maximum of 0).
func checkProps(b []byte) error {
	for len(b) > 0 {
		id := b[0]
		n, _ := propLen(id, b[1:])
		if n < 0 {
			return fmt.Errorf("mqtt: malformed PUBLISH property 0x%02X", id)
		}
		if id == propTopicAlias {
			return errors.New("mqtt: PUBLISH with a topic alias, which was not allowed")
		}
		b = b[1+n:]
	}
	return nil
}

// uvarint decodes a variable byte integer from the front of b.
func uvarint(b []byte) (v, n int, err error) {
	mul := 1
	for n < 4 {
		if n >= len(b) {
			return 0, 0, errors.New("mqtt: truncated variable byte integer")
		}
		d := b[n]
		n++
		v += int(d&0x7f) * mul
		if d&0x80 == 0 {
			return v, n, nil
		}
		mul <<= 7
	}
	return 0, 0, errors.New("mqtt: malformed variable byte integer")
}

// publishBody is a PUBLISH's variable header and payload, parsed in place.
type publishBody struct {
	topic   []byte
	id      uint16
	props   []byte
	payload []byte
}

// parsePublish splits a PUBLISH body (everything after the fixed header).
func parsePublish(body []byte, qos, version byte) (publishBody, error) {
	var p publishBody
	if len(body) < 2 {
		return p, errors.New("mqtt: malformed PUBLISH")
	}
	tl := int(body[0])<<8 | int(body[1])
	rest := body[2:]
	if tl > len(rest) {
		return p, errors.New("mqtt: malformed PUBLISH topic")
	}
	p.topic, rest = rest[:tl], rest[tl:]
	if qos > 0 {
		if len(rest) < 2 {
			return p, errors.New("mqtt: malformed PUBLISH packet id")
		}
		p.id, rest = uint16(rest[0])<<8|uint16(rest[1]), rest[2:]
	}
	if version == V5 {
		n, k, err := uvarint(rest)
		if err != nil || k+n > len(rest) {
			return p, errors.New("mqtt: malformed PUBLISH properties")
		}
		p.props, rest = rest[k:k+n], rest[k+n:]
		if err := checkProps(p.props); err != nil {
			return p, err
		}
	}
	// Capacity cut to the payload: it points into the read buffer, and an
	// append by the handler must not write over the packets after it.
	p.payload = rest[:len(rest):len(rest)]
	return p, nil
}

// DisconnectError is a DISCONNECT the broker sent (MQTT 5) or a CONNACK
// that refused the connection with a reason code.
type DisconnectError struct {
	Code    byte
	Reason  string // the broker's reason string, if it gave one
	Connack bool   // refused at CONNACK rather than disconnected later
	// ServerReference is where the broker says to go instead (0x9C, 0x9D).
	ServerReference string
}

func (e *DisconnectError) Error() string {
	what := "disconnected by the broker"
	if e.Connack {
		what = "connection refused"
	}
	s := fmt.Sprintf("mqtt: %s: %s (0x%02X)", what, ReasonName(e.Code), e.Code)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.ServerReference != "" {
		s += "; server reference " + e.ServerReference
	}
	return s
}

// ReasonName is the specification's name of an MQTT 5 reason code in
// lower case with underscores, as a metric label takes it.
func ReasonName(code byte) string {
	if s, ok := reasonNames[code]; ok {
		return s
	}
	return fmt.Sprintf("code_0x%02x", code)
}

// reasonNames are the reason codes a broker sends in CONNACK, SUBACK and
// DISCONNECT (MQTT 5 §2.4).
var reasonNames = map[byte]string{
	0x00: "success", 0x01: "granted_qos_1", 0x02: "granted_qos_2", 0x04: "disconnect_with_will",
	0x80: "unspecified_error", 0x81: "malformed_packet", 0x82: "protocol_error",
	0x83: "implementation_specific_error", 0x84: "unsupported_protocol_version",
	0x85: "client_identifier_not_valid", 0x86: "bad_user_name_or_password", 0x87: "not_authorized",
	0x88: "server_unavailable", 0x89: "server_busy", 0x8A: "banned", 0x8B: "server_shutting_down",
	0x8C: "bad_authentication_method", 0x8D: "keep_alive_timeout", 0x8E: "session_taken_over",
	0x8F: "topic_filter_invalid", 0x90: "topic_name_invalid", 0x91: "packet_identifier_in_use",
	0x93: "receive_maximum_exceeded", 0x94: "topic_alias_invalid", 0x95: "packet_too_large",
	0x96: "message_rate_too_high", 0x97: "quota_exceeded", 0x98: "administrative_action",
	0x99: "payload_format_invalid", 0x9A: "retain_not_supported", 0x9B: "qos_not_supported",
	0x9C: "use_another_server", 0x9D: "server_moved", 0x9E: "shared_subscriptions_not_supported",
	0x9F: "connection_rate_exceeded", 0xA0: "maximum_connect_time",
	0xA1: "subscription_identifiers_not_supported", 0xA2: "wildcard_subscriptions_not_supported",
}

// backoffFloor is the least a reconnect waits after the broker ended or
// refused the session with code. Overload codes wait longer than a lost
// connection: reconnecting at once makes the overload worse.
func backoffFloor(code byte) time.Duration {
	switch code {
	case packets.DisconnectServerBusy, packets.DisconnectQuotaExceeded, packets.ConnackServerUnavailable,
		packets.DisconnectMessageRateTooHigh, packets.DisconnectConnectionRateExceeded:
		return busyBackoff
	}
	return 0
}

// busyBackoff is the least wait after the broker reported overload.
const busyBackoff = 5 * time.Second

// connectV5 builds an MQTT 5 CONNECT: a session that outlives the
// connection by SessionExpiry, the broker's window set to ReceiveMaximum,
// and no packet larger than the gateway keeps.
func (c *client) connectV5(user, pass string, keepAlive uint16) *packets.Connect {
	expiry := uint32(min(nonZero(c.cfg.SessionExpiry, DefaultSessionExpiry)/time.Second, 0xFFFFFFFF))
	if c.cfg.SessionExpiry < 0 {
		expiry = 0xFFFFFFFF // never expires
	}
	rm := uint16(min(max(c.cfg.ReceiveMaximum, 1), 65535))
	if c.cfg.ReceiveMaximum == 0 {
		rm = 65535
	}
	mps := uint32(c.maxPacket())
	problem := byte(1)
	cp := &packets.Connect{
		ProtocolName: "MQTT", ProtocolVersion: V5, CleanStart: false, KeepAlive: keepAlive, ClientID: c.id,
		Properties: &packets.Properties{
			SessionExpiryInterval: &expiry,
			ReceiveMaximum:        &rm,
			MaximumPacketSize:     &mps,
			RequestProblemInfo:    &problem,
		},
	}
	if user != "" {
		cp.UsernameFlag, cp.Username = true, user
	}
	// MQTT 5 allows a password without a user name.
	if pass != "" {
		cp.PasswordFlag, cp.Password = true, []byte(pass)
	}
	return cp
}

// maxPacket is the Maximum Packet Size the session advertises: the largest
// payload the gateway accepts plus room for the longest topic (64 KiB) and
// for properties (64 KiB). A message just over mapping.max_payload still
// arrives and is dead-lettered as too large; one beyond this the broker
// discards without sending (MQTT 5 §3.1.2.11.4).
func (c *client) maxPacket() int {
	return min(nonZeroInt(c.cfg.MaxPayload, sensor.DefaultMaxPayload)+64<<10+maxProps+16, 268435455)
}

// maxProps bounds the properties of one PUBLISH.
const maxProps = 64 << 10

// DefaultSessionExpiry is how long the broker keeps an MQTT 5 session (its
// subscriptions and queued messages) after the gateway went away, when
// Config.SessionExpiry is 0.
const DefaultSessionExpiry = 24 * time.Hour

// readV5 reads an MQTT 5 control packet's whole body and unpacks it with
// paho.golang's codec.
func readV5(conn *bufferedConn, pk packets.Packet, typ byte, n int) error {
	if n > 64<<10 {
		return fmt.Errorf("mqtt: %s of %d bytes", packetName(typ), n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn.r, body); err != nil {
		return err
	}
	return pk.Unpack(bytes.NewBuffer(body))
}
