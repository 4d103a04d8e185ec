package broker

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// The first topic levels of the three trees: readings devices publish,
// commands gateways send to devices, and the devices' replies.
const (
	sensorsRoot  = "sensors"
	commandsRoot = "commands"
	repliesRoot  = "replies"
)

// accessHook authenticates clients against bcrypt hashes and enforces the
// ACL described in the package README:
//   - devices publish only under sensors/<site>/<device>/ and
//     replies/<site>/<device>/, and subscribe only under
//     commands/<site>/<device>/;
//   - gateways subscribe to sensors/... and replies/... (also as
//     $share/<group>/...) and publish anywhere except sensors/...,
//     replies/... and $-topics;
//   - anonymous clients, when allowed, may do anything.
type accessHook struct {
	mqtt.HookBase
	users     map[string]User
	gateways  map[string]bool
	anonymous bool
	log       *slog.Logger
	clients   *mqtt.Clients // set by Start; used to keep client ids bound to one user

	throttle *throttle
	// dummyHash is compared against for unknown users, at the cost of the
	// configured ones, so that refusing them takes as long.
	dummyHash []byte
	// approved hands OnConnect's verdict to OnConnectAuthenticate.
	approved sync.Map // *mqtt.Client → struct{}
	stats    accessStats
	// bare leaves out the per-message hooks (retain, PUBACK repair), for
	// benchmarks that measure what the checks cost.
	bare bool

	mu sync.Mutex
	// verified caches sha256(password) of each user's last successful login,
	// so reconnect storms do not cost one bcrypt comparison (~50 ms) each.
	verified map[string][sha256.Size]byte
}

// accessStats counts what the access rules refused or changed.
type accessStats struct {
	refused, badPassword, throttled, retainStripped atomic.Int64
}

// AccessStats is a snapshot of accessStats.
type AccessStats struct {
	Refused        int64 // CONNECTs refused, for any reason
	BadPassword    int64 // of which unknown user or wrong password
	Throttled      int64 // of which refused unchecked: locked out or no check slot
	RetainStripped int64 // device publishes and Wills whose retain flag was removed
}

// setDummyHash makes the hash unknown users are checked against, at the
// highest cost among the configured users.
func (h *accessHook) setDummyHash() error {
	cost := bcrypt.MinCost
	for _, u := range h.users {
		if c, err := bcrypt.Cost([]byte(u.PasswordHash)); err == nil && c > cost {
			cost = c
		}
	}
	var b [16]byte
	hash, err := bcrypt.GenerateFromPassword(b[:], cost)
	if err != nil {
		return err
	}
	h.dummyHash = hash
	return nil
}

func newAccessHook(users []User, gatewayUsers []string, anonymous bool, log *slog.Logger) (*accessHook, error) {
	h := &accessHook{
		users:     make(map[string]User, len(users)),
		gateways:  make(map[string]bool, len(gatewayUsers)),
		anonymous: anonymous,
		log:       log,
		verified:  map[string][sha256.Size]byte{},
		throttle:  newThrottle(ThrottleOptions{}),
	}
	names := make(map[string]bool, len(users))
	for _, u := range users {
		names[u.Username] = true
	}
	for i, g := range gatewayUsers {
		if !names[g] {
			return nil, optErr(fmt.Sprintf("GatewayUsers[%d]", i), fmt.Sprintf("%q is not in Users", g))
		}
		h.gateways[g] = true
	}
	for i, u := range users {
		name := fmt.Sprintf("Users[%d] (%q)", i, u.Username)
		if err := validUsername(u.Username); err != nil {
			return nil, optErr(name, "Username: "+err.Error())
		}
		if _, dup := h.users[u.Username]; dup {
			return nil, optErr(name, "duplicate username")
		}
		if u.PasswordHash == CertificateOnly {
			// no password login; the client certificate is the credential
		} else if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return nil, optErr(name, "PasswordHash: not a bcrypt hash: "+err.Error())
		}
		if h.gateways[u.Username] {
			if u.Site != "" || u.Device != "" {
				return nil, optErr(name, "a gateway user (in GatewayUsers) must have empty Site and Device")
			}
		} else {
			if err := validLevel(u.Site); err != nil {
				return nil, optErr(name, "Site: "+err.Error())
			}
			if err := validLevel(u.Device); err != nil {
				return nil, optErr(name, "Device: "+err.Error())
			}
		}
		h.users[u.Username] = u
	}
	return h, nil
}

// validUsername rejects names that the users file could not represent.
func validUsername(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case strings.ContainsAny(s, ":\n\r\x00"):
		return fmt.Errorf("%q contains ':', a newline or NUL", s)
	}
	return nil
}

// validLevel checks that s can be one topic level of sensors/<site>/<device>/.
func validLevel(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case strings.ContainsAny(s, "/+#:\x00"):
		return fmt.Errorf("%q contains one of / + # : NUL", s)
	}
	return nil
}

func (h *accessHook) ID() string { return "iotgw-access" }

func (h *accessHook) Provides(b byte) bool {
	if h.bare && (b == mqtt.OnPublish || b == mqtt.OnPacketEncode) {
		return false
	}
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnPublish,
		mqtt.OnPublishDropped,
		mqtt.OnPacketEncode,
	}, []byte{b})
}

// refusal is why a CONNECT is refused: the MQTT 5 reason and the MQTT
// 3.1.1 return code a client of each version sees, and the log line.
type refusal struct {
	v5  packets.Code
	v3  byte
	why string
}

var (
	refuseCredentials = refusal{packets.ErrBadUsernameOrPassword, 0x04, "bad user name or password"}
	refuseNotAllowed  = refusal{packets.ErrNotAuthorized, 0x05, "not authorized"}
	refuseClientID    = refusal{packets.ErrClientIdentifierNotValid, 0x02, "client id not allowed"}
	refuseThrottled   = refusal{packets.ErrConnectionRateExceeded, 0x03, "too many failed logins"}
	refuseBusy        = refusal{packets.ErrServerBusy, 0x03, "too many logins being checked"}
)

// OnConnect authenticates the client and applies the CONNECT rules (client
// id, Will) before mochi establishes a session. It runs here rather than
// in OnConnectAuthenticate so that each refusal gets its own CONNACK
// reason; OnConnectAuthenticate only confirms what OnConnect approved.
func (h *accessHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if r, detail, ok := h.admit(cl, pk); !ok {
		h.stats.refused.Add(1)
		h.log.Warn("connect refused: "+r.why, "detail", detail, "user", string(cl.Properties.Username),
			"client", cl.ID, "remote", cl.Net.Remote)
		h.sendRefusal(cl, r)
		return r.v5
	}
	h.approved.Store(cl, struct{}{})
	return nil
}

func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.approved.LoadAndDelete(cl)
	return ok
}

func (h *accessHook) sendRefusal(cl *mqtt.Client, r refusal) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: r.v3}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = r.v5.Code
		ack.Properties.ReasonString = r.v5.Reason
	}
	_ = cl.WritePacket(ack)
}

// admit decides a CONNECT: who the client is (certificate, password or
// anonymous), whether it may use its client id, and whether its Will is
// one it could publish.
func (h *accessHook) admit(cl *mqtt.Client, pk packets.Packet) (refusal, string, bool) {
	username := string(pk.Connect.Username)
	certUser, hasCert := peerIdentity(cl.Net.Conn)
	switch {
	case hasCert:
		if username != "" && username != certUser {
			return refuseNotAllowed, "user name differs from the client certificate's " + certUser, false
		}
		if _, ok := h.users[certUser]; !ok {
			return refuseNotAllowed, "client certificate names an unknown user " + certUser, false
		}
		username = certUser
		cl.Properties.Username = []byte(certUser)
	case username == "":
		if !h.anonymous {
			return refuseCredentials, "anonymous clients are not allowed", false
		}
		return refusal{}, "", true
	default:
		if r, detail, ok := h.authenticate(cl, username, pk.Connect.Password); !ok {
			return r, detail, false
		}
	}
	if r, detail, ok := h.clientIDAllowed(cl, pk, username); !ok {
		return r, detail, false
	}
	return h.willAllowed(cl, username)
}

// authenticate checks a password, throttled per source address and user
// name. An unknown user costs a bcrypt comparison like a known one, so
// timing does not tell which names exist.
func (h *accessHook) authenticate(cl *mqtt.Client, username string, password []byte) (refusal, string, bool) {
	addr := remoteHost(cl.Net.Remote)
	if locked, left := h.throttle.lockedOut(addr, username); locked {
		h.stats.throttled.Add(1)
		return refuseThrottled, fmt.Sprintf("locked out for %s more", left.Round(time.Millisecond)), false
	}
	u, known := h.users[username]
	if known && h.cachedLogin(u, password) {
		return refusal{}, "", true
	}
	hash := h.dummyHash
	if known && u.PasswordHash != CertificateOnly {
		hash = []byte(u.PasswordHash)
	}
	match, ran := h.throttle.check(func() bool {
		return bcrypt.CompareHashAndPassword(hash, password) == nil
	})
	if !ran {
		h.stats.throttled.Add(1)
		return refuseBusy, "no password check slot within the queue timeout", false
	}
	if !known || u.PasswordHash == CertificateOnly || !match {
		h.stats.badPassword.Add(1)
		lock := h.throttle.fail(addr, username)
		detail := "unknown user or wrong password"
		if lock > 0 {
			detail += fmt.Sprintf("; locked out for %s", lock)
		}
		return refuseCredentials, detail, false
	}
	h.throttle.succeed(username)
	h.rememberLogin(u, password)
	return refusal{}, "", true
}

// clientIDAllowed binds sessions to identities. A device's client id is
// its user name (as AWS IoT Core binds it to the thing name), or empty for
// a session that ends with the connection; so a device has at most one
// persistent session and can squat no one else's id. Gateway ids may be
// anything but a device's user name.
func (h *accessHook) clientIDAllowed(cl *mqtt.Client, pk packets.Packet, username string) (refusal, string, bool) {
	if h.isDevice(username) {
		persistent := !pk.Connect.Clean
		if cl.Properties.ProtocolVersion == 5 {
			persistent = cl.Properties.Props.SessionExpiryInterval > 0
		}
		switch {
		case pk.Connect.ClientIdentifier == username:
		case pk.Connect.ClientIdentifier == "" && !persistent:
		default:
			return refuseClientID, "a device's client id must be its user name (or empty with a clean session)", false
		}
	} else if h.isDevice(cl.ID) {
		return refuseClientID, "client id is a device's user name", false
	}
	// A client id names a session; letting another user take it over would
	// hand them the session's queued messages and knock its owner off.
	if h.clients != nil {
		if existing, ok := h.clients.Get(cl.ID); ok && string(existing.Properties.Username) != username {
			return refuseClientID, "client id belongs to another user", false
		}
	}
	return refusal{}, "", true
}

// willAllowed applies the publish ACL to the Will: otherwise a device could
// publish a forged reading for another device just by dropping its
// connection. A device's Will loses its retain flag, as its publishes do.
func (h *accessHook) willAllowed(cl *mqtt.Client, username string) (refusal, string, bool) {
	w := &cl.Properties.Will
	if w.Flag == 0 {
		return refusal{}, "", true
	}
	if !h.allowed(username, w.TopicName, true) {
		return refuseNotAllowed, fmt.Sprintf("Will topic %q is outside what this user may publish", w.TopicName), false
	}
	if w.Retain && h.isDevice(username) {
		w.Retain = false
		h.stats.retainStripped.Add(1)
		h.log.Warn("retain flag removed from a device's Will", "user", username, "client", cl.ID, "topic", w.TopicName)
	}
	return refusal{}, "", true
}

func (h *accessHook) isDevice(username string) bool {
	_, ok := h.users[username]
	return ok && !h.gateways[username]
}

// OnPublish removes the retain flag from devices' readings: a retained
// reading is delivered again to every new subscription, and one without a
// device timestamp would become a new point each time.
func (h *accessHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain && h.isDevice(string(cl.Properties.Username)) {
		pk.FixedHeader.Retain = false
		h.stats.retainStripped.Add(1)
		h.log.Warn("retain flag removed from a device's publish", "user", string(cl.Properties.Username),
			"client", cl.ID, "topic", pk.TopicName, "bytes", len(pk.Payload))
	}
	return pk, nil
}

// OnPacketEncode corrects mochi's PUBACK to MQTT 5 clients: it carries the
// granted-QoS code 0x01 where MQTT 5 (3.4.2.1) allows only 0x00 for
// success, and strict clients drop the connection on it.
func (h *accessHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Puback && pk.ReasonCode == packets.CodeGrantedQos1.Code &&
		cl.Properties.ProtocolVersion == 5 {
		pk.ReasonCode = packets.CodeSuccess.Code
	}
	return pk
}

func (h *accessHook) cachedLogin(u User, password []byte) bool {
	sum := sha256.Sum256(password)
	h.mu.Lock()
	cached, ok := h.verified[u.Username]
	h.mu.Unlock()
	return ok && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1
}

func (h *accessHook) rememberLogin(u User, password []byte) {
	sum := sha256.Sum256(password)
	h.mu.Lock()
	h.verified[u.Username] = sum
	h.mu.Unlock()
}

// peerIdentity returns the common name of the verified client certificate
// on a TLS connection, if the client presented one.
func peerIdentity(c net.Conn) (string, bool) {
	tc := tlsConn(c)
	if tc == nil {
		return "", false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return "", false
	}
	cn := st.PeerCertificates[0].Subject.CommonName
	return cn, cn != ""
}

// tlsConn finds the *tls.Conn under connection wrappers that expose what
// they wrap with NetConn (as *tls.Conn itself does).
func tlsConn(c net.Conn) *tls.Conn {
	for range 8 {
		switch v := c.(type) {
		case *tls.Conn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// OnACLCheck is called with a topic name on publish (write) and with a
// topic filter on subscribe and a topic name on delivery (read).
func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	username := string(cl.Properties.Username)
	allowed := h.allowed(username, topic, write)
	if !allowed {
		action := "subscribe"
		if write {
			action = "publish"
		}
		h.log.Warn("refused "+action, "user", username, "client", cl.ID, "topic", topic)
	}
	return allowed
}

func (h *accessHook) allowed(username, topic string, write bool) bool {
	if username == "" {
		return h.anonymous
	}
	u, ok := h.users[username]
	if !ok {
		return false
	}
	if h.gateways[username] {
		if write {
			return !under(topic, sensorsRoot) && !under(topic, repliesRoot) && !strings.HasPrefix(topic, "$")
		}
		f := stripShare(topic)
		return under(f, sensorsRoot) || under(f, repliesRoot)
	}
	tail := "/" + u.Site + "/" + u.Device
	if write {
		return under(topic, sensorsRoot+tail) || under(topic, repliesRoot+tail)
	}
	return under(topic, commandsRoot+tail)
}

// under reports whether a topic name or filter lies in the tree rooted at
// root (root itself included). Filters starting with a wildcard ("#",
// "+/...") match topics outside it too and are not under it.
func under(topic, root string) bool {
	return topic == root || strings.HasPrefix(topic, root+"/")
}

// stripShare turns "$share/<group>/<filter>" into "<filter>"; anything else,
// including a share with an empty group, is returned unchanged.
func stripShare(filter string) string {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return filter
	}
	group, f, ok := strings.Cut(rest, "/")
	if !ok || group == "" {
		return filter
	}
	return f
}

func (h *accessHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.log.Warn("message dropped: client write buffer full (MaxInflight)", "client", cl.ID,
		"user", string(cl.Properties.Username), "topic", pk.TopicName, "qos", pk.FixedHeader.Qos)
}
