package broker

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// sensorsRoot is the first topic level all readings live under.
const sensorsRoot = "sensors"

// accessHook authenticates clients against bcrypt hashes and enforces the
// ACL described in the package README:
//   - devices publish only under sensors/<site>/<device>/ and subscribe to nothing;
//   - gateways subscribe to sensors/... (also as $share/<group>/sensors/...)
//     and publish anywhere except sensors/... and $-topics;
//   - anonymous clients, when allowed, may do anything.
type accessHook struct {
	mqtt.HookBase
	users     map[string]User
	gateways  map[string]bool
	anonymous bool
	log       *slog.Logger
	clients   *mqtt.Clients // set by Start; used to keep client ids bound to one user

	mu sync.Mutex
	// verified caches sha256(password) of each user's last successful login,
	// so reconnect storms do not cost one bcrypt comparison (~50 ms) each.
	verified map[string][sha256.Size]byte
}

func newAccessHook(users []User, gatewayUsers []string, anonymous bool, log *slog.Logger) (*accessHook, error) {
	h := &accessHook{
		users:     make(map[string]User, len(users)),
		gateways:  make(map[string]bool, len(gatewayUsers)),
		anonymous: anonymous,
		log:       log,
		verified:  map[string][sha256.Size]byte{},
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
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
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
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnPublishDropped,
	}, []byte{b})
}

func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	username := string(pk.Connect.Username)
	if username == "" {
		if !h.anonymous {
			h.log.Warn("connect refused: anonymous clients not allowed", "client", cl.ID, "remote", cl.Net.Remote)
		}
		return h.anonymous
	}
	u, ok := h.users[username]
	if !ok {
		h.log.Warn("connect refused: unknown user", "user", username, "client", cl.ID, "remote", cl.Net.Remote)
		return false
	}
	if !h.checkPassword(u, pk.Connect.Password) {
		h.log.Warn("connect refused: wrong password", "user", username, "client", cl.ID, "remote", cl.Net.Remote)
		return false
	}
	// A client id names a session; letting another user take it over would
	// hand them the session's queued messages and knock its owner off.
	if h.clients != nil {
		if existing, ok := h.clients.Get(cl.ID); ok && string(existing.Properties.Username) != username {
			h.log.Warn("connect refused: client id belongs to another user", "user", username, "client", cl.ID,
				"owner", string(existing.Properties.Username), "remote", cl.Net.Remote)
			return false
		}
	}
	return true
}

func (h *accessHook) checkPassword(u User, password []byte) bool {
	sum := sha256.Sum256(password)
	h.mu.Lock()
	cached, ok := h.verified[u.Username]
	h.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return true
	}
	if bcrypt.CompareHashAndPassword([]byte(u.PasswordHash), password) != nil {
		return false
	}
	h.mu.Lock()
	h.verified[u.Username] = sum
	h.mu.Unlock()
	return true
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
			return !underSensors(topic) && !strings.HasPrefix(topic, "$")
		}
		return underSensors(stripShare(topic))
	}
	if !write {
		return false
	}
	own := sensorsRoot + "/" + u.Site + "/" + u.Device
	return topic == own || strings.HasPrefix(topic, own+"/")
}

// underSensors reports whether a topic name or filter lies in the sensors/
// tree. Filters starting with a wildcard ("#", "+/...") match topics outside
// it too and are not under it.
func underSensors(topic string) bool {
	return topic == sensorsRoot || strings.HasPrefix(topic, sensorsRoot+"/")
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
