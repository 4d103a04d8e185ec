package broker

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// Byte budgets for the QoS 1/2 messages a persistent session holds while its
// client is offline (max_offline_bytes, max_offline_bytes_gateway).
const (
	// DefaultMaxOfflineBytes is a device session's budget. Devices only
	// receive commands, which are few and small: 1 MiB holds about 1,000
	// small commands, or 15 of the largest packet.
	DefaultMaxOfflineBytes = 1 << 20
	// DefaultMaxOfflineBytesGateway is a gateway session's budget: 64 MiB is
	// max_queued (65535) messages charged 1 KiB each (storedMessageCost and
	// up to 160 bytes of topic and payload), so a backlog of readings still
	// ends at max_queued, as before, and the budget acts on large payloads
	// (it holds about 1,000 of 64 KiB).
	DefaultMaxOfflineBytesGateway = 64 << 20

	// storedMessageCost is charged per stored message on top of its payload:
	// mochi keeps each one as a packets.Packet value (800 bytes in v2.7.9)
	// in the client's inflight map, and this hook keeps a queue entry.
	storedMessageCost = int64(unsafe.Sizeof(packets.Packet{})) + 64
)

// detachMin is the payload size from which a published message's strings are
// copied out of the buffer it was read into (detachStrings).
const detachMin = 1 << 10

// detachStrings copies pk's strings out of the buffer mochi read the packet
// into. mochi decodes strings without copying (packets.decodeString), and
// the copy of the message it keeps per recipient (Packet.Copy) copies the
// payload but shares the strings, so every stored copy of a large message
// kept the whole packet it came in alive as well: twice the payload per
// message, which the byte budgets would not see.
func detachStrings(pk *packets.Packet) {
	pk.TopicName = strings.Clone(pk.TopicName)
	p := &pk.Properties
	p.ContentType = strings.Clone(p.ContentType)
	p.ResponseTopic = strings.Clone(p.ResponseTopic)
	if len(p.User) > 0 {
		user := make([]packets.UserProperty, len(p.User))
		for i, u := range p.User {
			user[i] = packets.UserProperty{Key: strings.Clone(u.Key), Val: strings.Clone(u.Val)}
		}
		p.User = user
	}
}

// qosDropper removes a stored QoS 1/2 message from the persistent store
// (the bbolt hook's OnQosDropped).
type qosDropper interface {
	OnQosDropped(cl *mqtt.Client, pk packets.Packet)
}

// offlineHook keeps the bytes of the QoS 1/2 messages stored for an offline
// persistent session within its budget (max_offline_bytes for devices,
// max_offline_bytes_gateway for gateway and anonymous users). mochi bounds
// them only in count (max_queued), so a session could hold max_queued x
// max_packet_size, 4 GiB, in memory.
//
// When a message stored for an offline session takes it over its budget, the
// oldest messages are dropped from the session (and from the store) until it
// fits: after a long outage the reconnecting client gets the latest
// messages, which for readings and commands are the ones that matter most.
// Each dropped message is counted (LimitStats.OfflineDropped) and logged at
// most once per 10 s. A connected client is not affected.
//
// mochi offers no hook before it stores a message, so the hook acts right
// after: mochi stores it in the session's inflight map and calls OnQosPublish,
// where the hook charges it and drops older ones. The account of a session
// is built from its inflight map when the first message arrives after the
// client went away (or after a restart), so it covers what was still
// unacknowledged at the disconnect; it ends when the client reconnects.
type offlineHook struct {
	mqtt.HookBase
	lim           *limiter
	deviceBudget  int64
	gatewayBudget int64
	isDevice      func(username string) bool
	info          *system.Info
	store         qosDropper // nil without data_dir

	mu       sync.Mutex
	sessions map[string]*offlineSession // by client id
}

// offlineSession is the account of one offline client.
type offlineSession struct {
	cl     *mqtt.Client // the offline client object this account is for
	budget int64

	mu    sync.Mutex
	bytes int64          // charged for the entries in queue
	queue []storedRecord // oldest first, from head
	head  int
}

// storedRecord identifies one stored message: packet ids are reused, so its
// creation time and size tell a record whose message is gone from a newer
// one with the same id.
type storedRecord struct {
	id      uint16
	created int64
	size    int64
}

func newOfflineHook(lim *limiter, o *Options, isDevice func(string) bool, info *system.Info) *offlineHook {
	return &offlineHook{
		lim:           lim,
		deviceBudget:  int64(o.MaxOfflineBytes),
		gatewayBudget: int64(o.MaxOfflineBytesGateway),
		isDevice:      isDevice,
		info:          info,
		sessions:      map[string]*offlineSession{},
	}
}

func (h *offlineHook) ID() string { return "iotgw-offline" }

func (h *offlineHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnQosPublish, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

// storedCost is what one stored message is charged.
func storedCost(pk packets.Packet) int64 {
	return int64(len(pk.Payload)) + int64(len(pk.TopicName)) + storedMessageCost
}

func record(pk packets.Packet) storedRecord {
	return storedRecord{id: pk.PacketID, created: pk.Created, size: storedCost(pk)}
}

// OnQosPublish is called by mochi after it stored pk in cl's session (and
// when it resends stored messages to a connected client, which is ignored).
func (h *offlineHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !cl.Closed() || cl.IsTakenOver() {
		return
	}
	s, seeded := h.session(cl)
	s.mu.Lock()
	if !seeded { // a new account already holds pk
		s.queue = append(s.queue, record(pk))
		s.bytes += record(pk).size
	}
	dropped := s.evict(cl)
	held := s.bytes
	s.mu.Unlock()
	for _, d := range dropped {
		if h.store != nil {
			h.store.OnQosDropped(cl, d)
		}
		atomic.AddInt64(&h.info.Inflight, -1)
		h.lim.offlineDropped.Add(uint64(len(d.Payload)))
		h.lim.hit(limOfflineBytes, "client", cl.ID, "user", string(cl.Properties.Username),
			"budget", s.budget, "held", held)
	}
}

// session returns cl's account, making it from cl's inflight map when there
// is none yet (seeded true: it includes every message stored so far).
func (h *offlineHook) session(cl *mqtt.Client) (*offlineSession, bool) {
	h.mu.Lock()
	if s := h.sessions[cl.ID]; s != nil && s.cl == cl {
		h.mu.Unlock()
		return s, false
	}
	budget := h.gatewayBudget
	if h.isDevice(string(cl.Properties.Username)) {
		budget = h.deviceBudget
	}
	s := &offlineSession{cl: cl, budget: budget}
	s.mu.Lock() // others wait on it until the account is complete
	h.sessions[cl.ID] = s
	h.mu.Unlock()
	defer s.mu.Unlock()
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish {
			s.queue = append(s.queue, record(pk))
			s.bytes += record(pk).size
		}
	}
	// Oldest first. Creation times are in seconds; within one second packet
	// ids are handed out in increasing order.
	slices.SortFunc(s.queue, func(a, b storedRecord) int {
		if a.created != b.created {
			return int(a.created - b.created)
		}
		return int(a.id) - int(b.id)
	})
	return s, true
}

// evict drops the oldest messages from the session while it is over budget,
// always keeping the newest, and returns what it removed. Records whose
// message is gone (expired, or resent and acknowledged before the account
// was made) are uncharged on the way. Called with s.mu held.
func (s *offlineSession) evict(cl *mqtt.Client) []packets.Packet {
	var dropped []packets.Packet
	for s.head < len(s.queue)-1 {
		r := s.queue[s.head]
		pk, ok := cl.State.Inflight.Get(r.id)
		live := ok && pk.FixedHeader.Type == packets.Publish && record(pk) == r
		if live && s.bytes <= s.budget {
			break
		}
		s.queue[s.head] = storedRecord{}
		s.head++
		s.bytes -= r.size
		if live && cl.State.Inflight.Delete(r.id) {
			dropped = append(dropped, pk)
		}
	}
	// Reuse the queue's space once most of it is behind head.
	if s.head > 1024 && s.head > len(s.queue)/2 {
		s.queue = slices.Delete(s.queue, 0, s.head)
		s.head = 0
	}
	return dropped
}

// forget ends the account kept for id if it is cl's: a newer client object
// with that id may already be offline again.
func (h *offlineHook) forget(id string, cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[id]; s != nil && s.cl == cl {
		delete(h.sessions, id)
	}
}

// OnSessionEstablished: the client is back; it takes over the stored
// messages and acknowledges them as they are resent.
func (h *offlineHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[cl.ID]; s != nil && s.cl != cl {
		delete(h.sessions, cl.ID)
	}
}

// OnDisconnect: a session that ends with its connection stores nothing.
func (h *offlineHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire {
		h.forget(cl.ID, cl)
	}
}

func (h *offlineHook) OnClientExpired(cl *mqtt.Client) { h.forget(cl.ID, cl) }
