package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Connection-level limits: what one peer may cost the broker before and after
// it authenticates. See the "Limits" section of the package README for what a
// client sees when it hits each one.
const (
	// DefaultMaxPacketSize fits the gateway's largest accepted payload
	// (mapping.max_payload, 64 KiB) plus a topic and MQTT 5 properties.
	DefaultMaxPacketSize           = 64<<10 + 4<<10
	DefaultConnectTimeout          = 10 * time.Second
	DefaultMaxConnections          = 20000
	DefaultMaxConnectionsPerAddr   = 1000
	DefaultWriteTimeout            = 10 * time.Second
	DefaultMaxQueuedBytes          = 16 << 20
	DefaultMaxKeepalive            = 300 * time.Second
	maxMaxKeepalive                = 65535 * time.Second // the largest MQTT can encode
	minMaxPacketSize               = 128
	maxMaxPacketSize               = 268435455 + 5 // the largest packet MQTT can encode
	idleResetAfter                 = time.Second
	uncharged                      = 8 // 1/uncharged of max_queued_bytes is left to uncharged messages
	limitLogInterval               = 10 * time.Second
	acceptRetryMin, acceptRetryMax = 5 * time.Millisecond, time.Second
)

// Errors a limited connection ends with; mochi logs them as the reason.
var (
	errPacketTooLarge = errors.New("packet larger than max_packet_size")
	errMalformedSize  = errors.New("malformed remaining length")
	errSlowConsumer   = errors.New("queued bytes over max_queued_bytes")
)

// LimitStats counts how often each connection-level limit was hit since
// Start, and the connections open now.
type LimitStats struct {
	Connections        int64  // open sockets, authenticated or not
	RefusedTotal       uint64 // accepts closed by max_connections
	RefusedPerAddress  uint64 // accepts closed by max_connections_per_address
	ConnectTimeouts    uint64 // sockets closed by connect_timeout before a complete CONNECT
	PacketsTooLarge    uint64 // connections closed by max_packet_size (or a malformed length)
	WriteTimeouts      uint64 // connections closed by write_timeout (a client not reading)
	QueuedBytesClosed  uint64 // connections closed by max_queued_bytes
	AcceptErrors       uint64 // accept failures (e.g. out of file descriptors), retried
	QueuedBytesDropped uint64 // payload bytes queued or arriving for clients closed by max_queued_bytes, estimated
	OfflineDropped     uint64 // stored messages dropped from offline sessions by max_offline_bytes(_gateway)
	OfflineDroppedSize uint64 // their payload bytes
	KeepaliveTimeouts  uint64 // connections closed after 1.5 x max_keepalive of silence, having asked for keep-alive 0 or more
}

// limitKind names one limit; its string is the config key logged when hit.
type limitKind int

const (
	limMaxConnections limitKind = iota
	limPerAddress
	limConnectTimeout
	limPacketSize
	limWriteTimeout
	limQueuedBytes
	limOfflineBytes
	limKeepalive
	limAccept
	numLimits
)

var limitKeys = [numLimits]string{
	"max_connections", "max_connections_per_address", "connect_timeout",
	"max_packet_size", "write_timeout", "max_queued_bytes", "max_offline_bytes",
	"max_keepalive", "accept",
}

// limiter holds the limits of one broker and the state they need: open
// connections in total and per source address, and a counter and a
// rate-limited log line per limit.
type limiter struct {
	maxPacket      int
	connectTimeout time.Duration
	maxConns       int64
	maxPerAddr     int
	writeTimeout   time.Duration
	maxQueued      int64 // charged bytes allowed per client
	chargeMin      int   // smaller payloads are not charged
	maxKeepalive   uint16
	log            *slog.Logger

	conns       atomic.Int64
	mu          sync.Mutex
	perAddr     map[string]int
	hits        [numLimits]atomic.Uint64
	lastLog     [numLimits]atomic.Int64 // unix nanos of the last log line
	logged      [numLimits]atomic.Uint64
	droppedByte atomic.Uint64

	offlineDropped atomic.Uint64 // payload bytes dropped by max_offline_bytes
}

func newLimiter(o *Options, log *slog.Logger) *limiter {
	return &limiter{
		maxPacket:      o.MaxPacketSize,
		connectTimeout: o.ConnectTimeout,
		maxConns:       int64(o.MaxConnections),
		maxPerAddr:     o.MaxConnectionsPerAddress,
		writeTimeout:   o.WriteTimeout,
		maxQueued:      int64(o.MaxQueuedBytes) - int64(o.MaxQueuedBytes/uncharged),
		chargeMin:      o.MaxQueuedBytes / (uncharged * max(o.MaxInflight, 1)),
		maxKeepalive:   uint16(o.MaxKeepalive / time.Second),
		log:            log,
		perAddr:        map[string]int{},
	}
}

// hit counts one event of kind and logs it, at most once per
// limitLogInterval per kind, with the number of events since the last line.
// attrs must never carry payload bytes.
func (l *limiter) hit(kind limitKind, attrs ...any) {
	total := l.hits[kind].Add(1)
	now := time.Now().UnixNano()
	last := l.lastLog[kind].Load()
	if now-last < int64(limitLogInterval) || !l.lastLog[kind].CompareAndSwap(last, now) {
		return
	}
	since := total - l.logged[kind].Swap(total)
	args := append([]any{"limit", limitKeys[kind], "events", since, "total", total}, attrs...)
	l.log.Warn("connection limit hit", args...)
}

func (l *limiter) stats() LimitStats {
	return LimitStats{
		Connections:        l.conns.Load(),
		RefusedTotal:       l.hits[limMaxConnections].Load(),
		RefusedPerAddress:  l.hits[limPerAddress].Load(),
		ConnectTimeouts:    l.hits[limConnectTimeout].Load(),
		PacketsTooLarge:    l.hits[limPacketSize].Load(),
		WriteTimeouts:      l.hits[limWriteTimeout].Load(),
		QueuedBytesClosed:  l.hits[limQueuedBytes].Load(),
		AcceptErrors:       l.hits[limAccept].Load(),
		QueuedBytesDropped: l.droppedByte.Load(),
		OfflineDropped:     l.hits[limOfflineBytes].Load(),
		OfflineDroppedSize: l.offlineDropped.Load(),
		KeepaliveTimeouts:  l.hits[limKeepalive].Load(),
	}
}

// admit reserves a connection slot for a socket from addr, or reports which
// cap refused it.
func (l *limiter) admit(addr string) (limitKind, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.perAddr[addr] >= l.maxPerAddr:
		return limPerAddress, false
	case l.conns.Load() >= l.maxConns:
		return limMaxConnections, false
	}
	l.perAddr[addr]++
	l.conns.Add(1)
	return 0, true
}

func (l *limiter) release(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.perAddr[addr] - 1; n > 0 {
		l.perAddr[addr] = n
	} else {
		delete(l.perAddr, addr)
	}
	l.conns.Add(-1)
}

// addrKey is the source address a connection counts against: its IP.
func addrKey(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// limitedListener is a mochi listener that accepts TCP itself so that every
// socket is capped and deadlined before any byte is read, and hands mochi a
// limitConn. It replaces listeners.TCP, which has neither caps nor a
// deadline before CONNECT and stops accepting for good on the first accept
// error (such as running out of file descriptors).
type limitedListener struct {
	id   string
	addr string
	tls  *tls.Config
	lim  *limiter
	ln   net.Listener
	log  *slog.Logger
	end  atomic.Bool

	mu    sync.Mutex
	conns map[*limitConn]struct{} // open, so Close can end those mochi does not know yet
}

func newLimitedListener(l Listener, lim *limiter) *limitedListener {
	return &limitedListener{id: l.ID, addr: l.Addr, tls: l.TLS, lim: lim, conns: map[*limitConn]struct{}{}}
}

func (l *limitedListener) ID() string       { return l.id }
func (l *limitedListener) Address() string  { return l.ln.Addr().String() }
func (l *limitedListener) Protocol() string { return "tcp" }

func (l *limitedListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

func (l *limitedListener) Serve(establish listeners.EstablishFn) {
	backoff := acceptRetryMin
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and similar: keep serving the
			// connections that exist and try again shortly.
			l.lim.hit(limAccept, "listener", l.id, "error", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, acceptRetryMax)
			continue
		}
		backoff = acceptRetryMin
		if l.end.Load() {
			conn.Close()
			return
		}
		go l.handle(conn, establish)
	}
}

func (l *limitedListener) handle(conn net.Conn, establish listeners.EstablishFn) {
	key := addrKey(conn.RemoteAddr())
	if kind, ok := l.lim.admit(key); !ok {
		// Counted before the close, so that whoever sees the socket
		// refused also finds it in the numbers.
		l.lim.hit(kind, "listener", l.id, "remote", key)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // nothing was read; free the socket at once
		}
		conn.Close()
		return
	}
	// One absolute deadline for the TLS handshake and the whole CONNECT;
	// mochi sets its keepalive deadline once CONNECT has been read.
	_ = conn.SetDeadline(time.Now().Add(l.lim.connectTimeout))
	lc := &limitConn{Conn: conn, raw: conn, lim: l.lim, addr: key, listener: l.id}
	if l.tls != nil {
		lc.Conn = tls.Server(conn, l.tls)
	}
	l.mu.Lock()
	if l.end.Load() {
		l.mu.Unlock()
		lc.Close()
		return
	}
	l.conns[lc] = struct{}{}
	l.mu.Unlock()
	err := establish(l.id, lc)
	if err != nil {
		l.log.Debug("client connection ended", "listener", l.id, "remote", conn.RemoteAddr().String(), "error", err)
	}
	lc.Close()
	l.mu.Lock()
	delete(l.conns, lc)
	l.mu.Unlock()
}

func (l *limitedListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.end.CompareAndSwap(false, true) {
		closeClients(l.id)
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
	// Sockets still before or in CONNECT are not mochi clients yet.
	for lc := range l.conns {
		lc.kill()
	}
}

// limitConn is the net.Conn mochi reads and writes. It enforces, as bytes
// stream through:
//   - max_packet_size, from each fixed header's remaining length, before
//     mochi reads (and allocates for) the packet's body;
//   - connect_timeout, by keeping the deadline set at accept until the first
//     packet has been read in full (mochi's own deadline calls are ignored
//     until then);
//   - write_timeout, a deadline on every write; a write that does not finish
//     in time closes the connection, which releases the client lock mochi
//     holds across the write;
//   - max_keepalive, by counting the read deadline mochi sets from the
//     keep-alive limitsHook imposed.
//
// It also carries the client's queued-bytes account (see limitsHook).
type limitConn struct {
	net.Conn          // what mochi talks to: raw, or a tls.Conn over it
	raw      net.Conn // the TCP socket
	lim      *limiter
	addr     string
	listener string

	// Read side: used only by the goroutine reading the client.
	scan    headerScanner
	readErr error

	connected     atomic.Bool  // the first packet has been read in full
	keepaliveCap  atomic.Bool  // the client's keep-alive is max_keepalive, not its own
	writeDeadline atomic.Int64 // unix nanos of the armed write deadline
	writing       atomic.Int32
	lastWrite     atomic.Int64 // unix nanos when the last write started
	queued        atomic.Int64 // payload bytes queued for the client, estimated
	killed        atomic.Bool
	closeOnce     sync.Once
}

func (c *limitConn) Read(p []byte) (int, error) {
	if c.readErr != nil {
		return 0, c.readErr
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		cut, serr := c.scan.feed(p[:n], c.lim.maxPacket)
		if c.scan.packets > 0 && !c.connected.Load() {
			c.connected.Store(true)
		}
		if serr != nil {
			c.readErr = serr
			c.lim.hit(limPacketSize, "listener", c.listener, "remote", c.addr, "declared", c.scan.declared)
			c.kill()
			if cut > 0 {
				return cut, nil
			}
			return 0, serr
		}
	}
	if err != nil && isTimeout(err) {
		switch {
		case !c.connected.Load():
			c.lim.hit(limConnectTimeout, "listener", c.listener, "remote", c.addr)
		case c.keepaliveCap.Load():
			c.lim.hit(limKeepalive, "listener", c.listener, "remote", c.addr)
		}
	}
	return n, err
}

func (c *limitConn) Write(p []byte) (int, error) {
	c.writing.Add(1)
	now := time.Now()
	// Re-arming the deadline costs a timer update; doing it only once half
	// of it is used keeps a blocked write between write_timeout/2 and
	// write_timeout.
	if d := c.writeDeadline.Load(); d-now.UnixNano() < int64(c.lim.writeTimeout/2) {
		dl := now.Add(c.lim.writeTimeout)
		_ = c.Conn.SetWriteDeadline(dl)
		c.writeDeadline.Store(dl.UnixNano())
	}
	n, err := c.Conn.Write(p)
	c.lastWrite.Store(now.UnixNano()) // with writing, enough to tell idle
	c.writing.Add(-1)
	if err != nil && isTimeout(err) && !c.killed.Load() {
		c.lim.hit(limWriteTimeout, "listener", c.listener, "remote", c.addr)
		c.kill()
	}
	return n, err
}

// SetDeadline is mochi's keepalive deadline; it applies to reads only (writes
// have write_timeout), and not before CONNECT (connect_timeout applies).
func (c *limitConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *limitConn) SetReadDeadline(t time.Time) error {
	if !c.connected.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *limitConn) SetWriteDeadline(time.Time) error { return nil }

// NetConn returns what the limits wrap (a *tls.Conn on TLS listeners), as
// tls.Conn.NetConn does, so hooks can reach the client's certificate.
func (c *limitConn) NetConn() net.Conn { return c.Conn }

// kill closes the socket itself: a TLS close_notify would wait on a peer
// that does not read.
func (c *limitConn) kill() {
	c.killed.Store(true)
	_ = c.raw.Close()
}

func (c *limitConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.killed.Load() {
			err = c.raw.Close()
		} else {
			err = c.Conn.Close()
		}
		c.lim.release(c.addr)
	})
	return err
}

// idle reports whether nothing is being written to the client and nothing
// was for idleResetAfter: mochi writes queued packets back to back, so its
// queue for the client is then empty.
func (c *limitConn) idle(now int64) bool {
	return c.writing.Load() == 0 && now-c.lastWrite.Load() > int64(idleResetAfter)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// headerScanner follows MQTT packet boundaries in a byte stream: it parses
// each fixed header (type byte, 1-4 byte remaining length) and skips bodies
// without looking at them.
type headerScanner struct {
	state    byte // scanType, scanLength or scanBody
	length   int  // remaining length decoded so far
	lenBytes int
	body     int // body bytes still to skip
	packets  int // packets seen in full
	declared int // the size of the packet refused
}

const (
	scanType = iota
	scanLength
	scanBody
)

// feed scans b, the next bytes of the stream. On a packet larger than max it
// returns the offset in b where that packet starts (0 when it started in an
// earlier call), so the packets before it can still be delivered.
func (s *headerScanner) feed(b []byte, max int) (int, error) {
	start := 0
	for i := 0; i < len(b); {
		switch s.state {
		case scanBody:
			k := min(len(b)-i, s.body)
			i += k
			s.body -= k
			if s.body == 0 {
				s.state = scanType
				s.packets++
			}
		case scanType:
			start = i
			s.state, s.length, s.lenBytes = scanLength, 0, 0
			i++
		case scanLength:
			v := b[i]
			i++
			s.length |= int(v&0x7f) << (7 * s.lenBytes)
			s.lenBytes++
			if v&0x80 != 0 {
				if s.lenBytes == 4 {
					s.declared = -1
					return start, errMalformedSize
				}
				continue
			}
			if size := 1 + s.lenBytes + s.length; size > max {
				s.declared = size
				return start, fmt.Errorf("%w: %d bytes, limit %d", errPacketTooLarge, size, max)
			}
			if s.length == 0 {
				s.state = scanType
				s.packets++
			} else {
				s.state, s.body = scanBody, s.length
			}
		}
	}
	return 0, nil
}

// limitsHook keeps the per-client account of queued payload bytes that
// max_queued_bytes bounds. mochi has no per-recipient hook before it queues
// a message, so the hook charges each recipient when the message is
// published (OnPublish for direct subscriptions, OnSelectSubscribers for
// shared ones) and credits it when the message is written or dropped. A
// client whose account would exceed the budget is disconnected before the
// message is queued: its QoS 1/2 messages stay in its session (bounded by
// max_queued) and are sent when it reconnects; QoS 0 messages are lost.
//
// Charging costs a lookup of the message's recipients per publish, so
// payloads below chargeMin are not charged: mochi queues at most
// max_inflight messages per client, so together they hold at most
// max_queued_bytes/uncharged, and charged ones are allowed the rest.
//
// The account is an estimate (the subscriber set can change between the
// hook and mochi's delivery, and retained or resent messages are written
// without being charged). It is reset whenever the client's connection has
// been idle, so an error cannot accumulate.
type limitsHook struct {
	mqtt.HookBase
	lim     *limiter
	topics  *mqtt.TopicsIndex
	clients *mqtt.Clients

	// Direct recipients by topic, so a charged message costs a map lookup
	// rather than a second topic-tree walk. Any change to subscriptions
	// empties it; gen keeps a lookup that raced with a change out.
	cmu   sync.RWMutex
	gen   uint64
	cache map[string][]recipient
}

type recipient struct {
	id      string
	noLocal bool
}

// maxCachedTopics bounds the recipient cache; publishing to ever new topics
// only empties it more often.
const maxCachedTopics = 4096

func (h *limitsHook) ID() string { return "iotgw-limits" }

func (h *limitsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPublish, mqtt.OnSelectSubscribers, mqtt.OnPacketSent, mqtt.OnPublishDropped, mqtt.OnPacketEncode,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnDisconnect, mqtt.OnSessionEstablished, mqtt.OnClientExpired:
		return true
	}
	return false
}

// OnConnect bounds the client's keep-alive by max_keepalive. Keep-alive 0
// would leave a silent connection open for good, holding a slot: mochi sets
// no read deadline for it. mochi reads cl.State.Keepalive for the deadline
// once OnConnect has run and, with ServerKeepalive set, tells MQTT 5 clients
// the value in CONNACK (Server Keep Alive). MQTT 3.1.1 has no way to tell a
// client; a server may close a client it finds inactive (3.1.1 section
// 3.1.2.10), so such a client must send something, a reading or a PINGREQ,
// at least every 1.5 x max_keepalive.
func (h *limitsHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	limit := h.lim.maxKeepalive
	if ka := cl.State.Keepalive; ka != 0 && ka <= limit {
		return nil
	}
	cl.State.Keepalive = limit
	cl.State.ServerKeepalive = true
	if c, ok := cl.Net.Conn.(*limitConn); ok {
		c.keepaliveCap.Store(true)
	}
	return nil
}

func (h *limitsHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if len(pk.Payload) >= detachMin {
		detachStrings(&pk)
	}
	if len(pk.Payload) < h.lim.chargeMin {
		return pk, nil
	}
	size := int64(len(pk.Payload))
	for _, r := range h.recipients(pk.TopicName) {
		if r.noLocal && pk.Origin == r.id {
			continue
		}
		if cl, ok := h.clients.Get(r.id); ok {
			h.charge(cl, size)
		}
	}
	return pk, nil
}

// recipients returns the clients with a direct (not shared) subscription
// matching topic.
func (h *limitsHook) recipients(topic string) []recipient {
	h.cmu.RLock()
	r, ok := h.cache[topic]
	gen := h.gen
	h.cmu.RUnlock()
	if ok {
		return r
	}
	subs := h.topics.Subscribers(topic)
	r = make([]recipient, 0, len(subs.Subscriptions))
	for id, sub := range subs.Subscriptions {
		r = append(r, recipient{id: id, noLocal: sub.NoLocal})
	}
	h.cmu.Lock()
	if h.gen == gen {
		if h.cache == nil || len(h.cache) >= maxCachedTopics {
			h.cache = map[string][]recipient{}
		}
		h.cache[topic] = r
	}
	h.cmu.Unlock()
	return r
}

func (h *limitsHook) subscriptionsChanged() {
	h.cmu.Lock()
	h.gen++
	h.cache = nil
	h.cmu.Unlock()
}

func (h *limitsHook) OnSubscribed(*mqtt.Client, packets.Packet, []byte) { h.subscriptionsChanged() }
func (h *limitsHook) OnUnsubscribed(*mqtt.Client, packets.Packet)       { h.subscriptionsChanged() }
func (h *limitsHook) OnClientExpired(*mqtt.Client)                      { h.subscriptionsChanged() }

// OnSessionEstablished: a clean session taking over an id drops the old
// subscriptions.
func (h *limitsHook) OnSessionEstablished(*mqtt.Client, packets.Packet) { h.subscriptionsChanged() }

// OnDisconnect: a clean session's subscriptions end with it.
func (h *limitsHook) OnDisconnect(_ *mqtt.Client, _ error, expire bool) {
	if expire {
		h.subscriptionsChanged()
	}
}

// OnSelectSubscribers picks the shared-subscription members the way mochi
// would, so the chosen ones can be charged.
func (h *limitsHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if len(pk.Payload) < h.lim.chargeMin {
		return subs
	}
	if len(subs.SharedSelected) == 0 {
		subs.SelectShared()
	}
	size := int64(len(pk.Payload))
	for id := range subs.SharedSelected {
		if _, direct := subs.Subscriptions[id]; direct {
			continue // charged in OnPublish; mochi sends it once
		}
		if cl, ok := h.clients.Get(id); ok {
			h.charge(cl, size)
		}
	}
	return subs
}

func (h *limitsHook) charge(cl *mqtt.Client, size int64) {
	c, ok := cl.Net.Conn.(*limitConn)
	if !ok || cl.Closed() {
		return
	}
	if c.queued.Load() > 0 && c.idle(time.Now().UnixNano()) {
		c.queued.Store(0)
	}
	if c.queued.Add(size) <= h.lim.maxQueued {
		return
	}
	queued := c.queued.Add(-size)
	if c.killed.Load() {
		return
	}
	h.lim.droppedByte.Add(uint64(queued + size))
	h.lim.hit(limQueuedBytes, "listener", c.listener, "remote", c.addr, "client", cl.ID, "queued", queued)
	c.kill()
	cl.Stop(errSlowConsumer)
}

// OnPacketEncode tells MQTT 5 clients max_packet_size in CONNACK, which mochi
// does not, so clients that honour it fail a large publish themselves
// instead of being disconnected.
func (h *limitsHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.MaximumPacketSize = uint32(h.lim.maxPacket)
	}
	return pk
}

func (h *limitsHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.credit(cl, len(pk.Payload))
	}
}

func (h *limitsHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.credit(cl, len(pk.Payload))
}

func (h *limitsHook) credit(cl *mqtt.Client, size int) {
	if size < h.lim.chargeMin || size == 0 {
		return
	}
	c, ok := cl.Net.Conn.(*limitConn)
	if !ok {
		return
	}
	if c.queued.Add(-int64(size)) < 0 {
		c.queued.Store(0) // a message that was never charged (retained, resent)
	}
}

// checkLimits fills zero limit options with their defaults and checks them.
func (o *Options) checkLimits() error {
	o.limitDefaults()
	return o.validateLimits()
}

// validateLimits checks the limit options, naming the field.
func (o *Options) validateLimits() error {
	switch {
	case o.MaxPacketSize < minMaxPacketSize || o.MaxPacketSize > maxMaxPacketSize:
		return fmt.Errorf("option MaxPacketSize: must be between %d and %d, got %d", minMaxPacketSize, maxMaxPacketSize, o.MaxPacketSize)
	case o.ConnectTimeout <= 0:
		return fmt.Errorf("option ConnectTimeout: must be positive, got %s", o.ConnectTimeout)
	case o.MaxConnections < 1:
		return fmt.Errorf("option MaxConnections: must be at least 1, got %d", o.MaxConnections)
	case o.MaxConnectionsPerAddress < 1:
		return fmt.Errorf("option MaxConnectionsPerAddress: must be at least 1, got %d", o.MaxConnectionsPerAddress)
	case o.WriteTimeout <= 0:
		return fmt.Errorf("option WriteTimeout: must be positive, got %s", o.WriteTimeout)
	case o.MaxQueuedBytes < o.MaxPacketSize:
		return fmt.Errorf("option MaxQueuedBytes: must be at least MaxPacketSize (%d), got %d", o.MaxPacketSize, o.MaxQueuedBytes)
	case o.MaxOfflineBytes < o.MaxPacketSize:
		return fmt.Errorf("option MaxOfflineBytes: must be at least MaxPacketSize (%d), got %d", o.MaxPacketSize, o.MaxOfflineBytes)
	case o.MaxOfflineBytesGateway < o.MaxPacketSize:
		return fmt.Errorf("option MaxOfflineBytesGateway: must be at least MaxPacketSize (%d), got %d", o.MaxPacketSize, o.MaxOfflineBytesGateway)
	case o.MaxKeepalive < time.Second || o.MaxKeepalive > maxMaxKeepalive || o.MaxKeepalive%time.Second != 0:
		return fmt.Errorf("option MaxKeepalive: must be whole seconds between 1s and %s, got %s", maxMaxKeepalive, o.MaxKeepalive)
	}
	return nil
}

// limitDefaults fills zero limit options with their defaults.
func (o *Options) limitDefaults() {
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.MaxConnectionsPerAddress == 0 {
		o.MaxConnectionsPerAddress = min(DefaultMaxConnectionsPerAddr, o.MaxConnections)
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.MaxQueuedBytes == 0 {
		o.MaxQueuedBytes = max(DefaultMaxQueuedBytes, o.MaxPacketSize)
	}
	if o.MaxOfflineBytes == 0 {
		o.MaxOfflineBytes = max(DefaultMaxOfflineBytes, o.MaxPacketSize)
	}
	if o.MaxOfflineBytesGateway == 0 {
		o.MaxOfflineBytesGateway = max(DefaultMaxOfflineBytesGateway, o.MaxPacketSize)
	}
	if o.MaxKeepalive == 0 {
		o.MaxKeepalive = DefaultMaxKeepalive
	}
}

// LimitStats returns the connection-limit counters (zero before Start).
func (b *Broker) LimitStats() LimitStats {
	b.mu.Lock()
	lim := b.limits
	b.mu.Unlock()
	if lim == nil {
		return LimitStats{}
	}
	return lim.stats()
}

// listener returns the mochi listener for l: limited, unless the limits are
// switched off (benchmarks compare the two).
func (b *Broker) listener(l Listener) listeners.Listener {
	if b.opts.noLimits {
		return listeners.NewTCP(listeners.Config{ID: l.ID, Address: l.Addr, TLSConfig: l.TLS})
	}
	return newLimitedListener(l, b.limits)
}

// addLimits configures srv for the limits: mochi's own packet-size check
// (it too refuses before allocating), the queued-bytes and keep-alive hook
// and the offline sessions' byte budgets. It returns the offline hook (nil
// without limits), which needs the store once there is one.
func (b *Broker) addLimits(srv *mqtt.Server) (*offlineHook, error) {
	b.limits = newLimiter(&b.opts, b.log)
	if b.opts.noLimits {
		return nil, nil
	}
	srv.Options.Capabilities.MaximumPacketSize = uint32(b.opts.MaxPacketSize)
	if err := srv.AddHook(&limitsHook{lim: b.limits, topics: srv.Topics, clients: srv.Clients}, nil); err != nil {
		return nil, err
	}
	off := newOfflineHook(b.limits, &b.opts, b.access.isDevice, srv.Info)
	return off, srv.AddHook(off, nil)
}

// LimitsConfig holds the broker.toml keys of the connection-level limits.
// It is embedded in Config, so the keys sit at the top level of the file.
type LimitsConfig struct {
	MaxPacketSize            int           `toml:"max_packet_size"`
	ConnectTimeout           time.Duration `toml:"connect_timeout"`
	MaxConnections           int           `toml:"max_connections"`
	MaxConnectionsPerAddress int           `toml:"max_connections_per_address"`
	WriteTimeout             time.Duration `toml:"write_timeout"`
	MaxQueuedBytes           int           `toml:"max_queued_bytes"`
	MaxOfflineBytes          int           `toml:"max_offline_bytes"`
	MaxOfflineBytesGateway   int           `toml:"max_offline_bytes_gateway"`
	MaxKeepalive             time.Duration `toml:"max_keepalive"`
}

func defaultLimitsConfig() LimitsConfig {
	return LimitsConfig{
		MaxPacketSize:            DefaultMaxPacketSize,
		ConnectTimeout:           DefaultConnectTimeout,
		MaxConnections:           DefaultMaxConnections,
		MaxConnectionsPerAddress: DefaultMaxConnectionsPerAddr,
		WriteTimeout:             DefaultWriteTimeout,
		MaxQueuedBytes:           DefaultMaxQueuedBytes,
		MaxOfflineBytes:          DefaultMaxOfflineBytes,
		MaxOfflineBytesGateway:   DefaultMaxOfflineBytesGateway,
		MaxKeepalive:             DefaultMaxKeepalive,
	}
}

func (c LimitsConfig) validate() error {
	switch {
	case c.MaxPacketSize < minMaxPacketSize || c.MaxPacketSize > maxMaxPacketSize:
		return keyErr("max_packet_size", "must be between %d and %d, got %d", minMaxPacketSize, maxMaxPacketSize, c.MaxPacketSize)
	case c.ConnectTimeout <= 0:
		return keyErr("connect_timeout", "must be positive, got %s", c.ConnectTimeout)
	case c.MaxConnections < 1:
		return keyErr("max_connections", "must be at least 1, got %d", c.MaxConnections)
	case c.MaxConnectionsPerAddress < 1:
		return keyErr("max_connections_per_address", "must be at least 1, got %d", c.MaxConnectionsPerAddress)
	case c.WriteTimeout <= 0:
		return keyErr("write_timeout", "must be positive, got %s", c.WriteTimeout)
	case c.MaxQueuedBytes < c.MaxPacketSize:
		return keyErr("max_queued_bytes", "must be at least max_packet_size (%d), got %d", c.MaxPacketSize, c.MaxQueuedBytes)
	case c.MaxOfflineBytes < c.MaxPacketSize:
		return keyErr("max_offline_bytes", "must be at least max_packet_size (%d), got %d", c.MaxPacketSize, c.MaxOfflineBytes)
	case c.MaxOfflineBytesGateway < c.MaxPacketSize:
		return keyErr("max_offline_bytes_gateway", "must be at least max_packet_size (%d), got %d", c.MaxPacketSize, c.MaxOfflineBytesGateway)
	case c.MaxKeepalive < time.Second || c.MaxKeepalive > maxMaxKeepalive || c.MaxKeepalive%time.Second != 0:
		return keyErr("max_keepalive", "must be whole seconds between 1s and %s, got %s", maxMaxKeepalive, c.MaxKeepalive)
	}
	return nil
}

func (c LimitsConfig) apply(o *Options) {
	o.MaxPacketSize = c.MaxPacketSize
	o.ConnectTimeout = c.ConnectTimeout
	o.MaxConnections = c.MaxConnections
	o.MaxConnectionsPerAddress = c.MaxConnectionsPerAddress
	o.WriteTimeout = c.WriteTimeout
	o.MaxQueuedBytes = c.MaxQueuedBytes
	o.MaxOfflineBytes = c.MaxOfflineBytes
	o.MaxOfflineBytesGateway = c.MaxOfflineBytesGateway
	o.MaxKeepalive = c.MaxKeepalive
}
