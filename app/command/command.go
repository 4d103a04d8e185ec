// Package command sends commands to devices and follows each one through
// its lifecycle: sent (handed to the broker), delivered (the broker's
// PUBACK), answered (the device replied with a result), failed (refused by
// the broker, or the device replied with an error) or expired (no reply in
// time). Every transition is appended to a file in the state directory,
// which is replayed at start, so `iotgw command status` still answers after
// a restart.
//
// The protocol (README.md): a command is published QoS 1 to
// commands/<site>/<device>/<name>, its payload a JSON object with id, name,
// args, reply_to and expires. Over MQTT 5 it also carries the Response
// Topic (= reply_to), Correlation Data (= id) and a Message Expiry. The
// device answers on reply_to, replies/<site>/<device>/<gateway>/<id>, with {"id", "ok",
// "result" | "error"}.
package command

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// State is where a command is in its lifecycle.
type State string

// States. Answered, Failed and Expired are final.
const (
	Sent      State = "sent"
	Delivered State = "delivered"
	Answered  State = "answered"
	Failed    State = "failed"
	Expired   State = "expired"
)

// Final reports whether nothing more happens to a command in state s.
func (s State) Final() bool { return s == Answered || s == Failed || s == Expired }

// Topic roots. The broker's access rules (app/broker) hold devices to them.
const (
	CommandsRoot = "commands"
	RepliesRoot  = "replies"
)

// Defaults of Options.
const (
	DefaultExpiry      = time.Minute
	DefaultMaxArgBytes = 256
	DefaultHistory     = 10_000
	// maxArgs bounds the arguments of one command.
	maxArgs = 16
	// maxReply bounds the result a device may send back that is kept.
	maxReply = 4 << 10
	// maxNameLen bounds command and argument names.
	maxNameLen = 64
)

// Command is one command and what has happened to it.
type Command struct {
	ID        string          `json:"id"`
	Device    string          `json:"device"`            // <site>/<device>
	Gateway   string          `json:"gateway,omitempty"` // the reply topic's gateway level
	Name      string          `json:"name"`
	Args      json.RawMessage `json:"args,omitempty"` // a JSON object
	State     State           `json:"state"`
	Created   time.Time       `json:"created"`
	Delivered time.Time       `json:"delivered,omitzero"`
	Finished  time.Time       `json:"finished,omitzero"` // answered, failed or expired
	Expires   time.Time       `json:"expires"`
	Result    json.RawMessage `json:"result,omitempty"` // the device's result, when answered
	Error     string          `json:"error,omitempty"`  // why it failed
	// LatencyMS is created → answered (the round trip) in milliseconds.
	LatencyMS float64 `json:"latency_ms,omitempty"`
}

// ReplyTopic is where the device answers this command:
// replies/<site>/<device>/<gateway>/<id>, so that each of several gateways
// sees only the replies to its own commands (replies/<site>/<device>/<id>
// when no gateway is named).
func (c *Command) ReplyTopic() string {
	if c.Gateway == "" {
		return RepliesRoot + "/" + c.Device + "/" + c.ID
	}
	return RepliesRoot + "/" + c.Device + "/" + c.Gateway + "/" + c.ID
}

// ReplyFilter is what a gateway subscribes to for the replies to its own
// commands.
func ReplyFilter(gateway string) string {
	if !validGatewayLevel(gateway) {
		return RepliesRoot + "/#"
	}
	return RepliesRoot + "/+/+/" + gateway + "/+"
}

// validGatewayLevel reports whether id can be one topic level.
func validGatewayLevel(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/+#\x00") && len(id) <= maxNameLen
}

// Topic is where the command is published.
func (c *Command) Topic() string { return CommandsRoot + "/" + c.Device + "/" + c.Name }

// Payload is what the device receives.
type Payload struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"`
	Args    json.RawMessage `json:"args"`
	ReplyTo string          `json:"reply_to"`
	Expires int64           `json:"expires"` // unix milliseconds
}

// Reply is what a device sends back.
type Reply struct {
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Request asks for a command to be sent.
type Request struct {
	Device string                     `json:"device"`
	Name   string                     `json:"name"`
	Args   map[string]json.RawMessage `json:"args,omitempty"`
	// Expiry overrides Options.Expiry; 0 keeps it.
	Expiry time.Duration `json:"-"`
}

// Properties are the MQTT 5 properties of a command publish; a 3.1.1
// publisher ignores them (the payload carries the same).
type Properties struct {
	ResponseTopic   string
	CorrelationData []byte
	Expiry          time.Duration
}

// Publisher publishes a command QoS 1 and returns once the broker has
// acknowledged it (nil) or refused it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, p Properties) error
}

// Error is a request or reply refused. Reason is a metric label value.
type Error struct {
	Reason string // unknown_device, bad_device, bad_name, bad_arg, too_large, not_found, unmatched, bad_reply, wrong_device, late, not_connected
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Reasons for Error.
const (
	ReasonUnknownDevice = "unknown_device"
	ReasonBadDevice     = "bad_device"
	ReasonBadName       = "bad_name"
	ReasonBadArg        = "bad_arg"
	ReasonTooLarge      = "too_large"
	ReasonUnmatched     = "unmatched"
	ReasonBadReply      = "bad_reply"
	ReasonWrongDevice   = "wrong_device"
	ReasonLate          = "late"
	ReasonNotConnected  = "not_connected"
)

// Options configure a Manager.
type Options struct {
	Dir         string        // state directory: commands.jsonl
	History     int           // commands kept (memory and file); 0: DefaultHistory
	MaxArgBytes int           // per argument value, as JSON; 0: DefaultMaxArgBytes
	Expiry      time.Duration // reply awaited this long; 0: DefaultExpiry
	// Gateway names this gateway in reply topics (ReplyTopic), so that
	// gateways sharing a broker each see their own replies only. "" or a
	// value that cannot be a topic level: replies/<site>/<device>/<id>.
	Gateway string
	// Known reports whether a device has been seen; nil accepts any.
	Known func(device string) bool
	// OnChange sees every transition (the gateway writes it to InfluxDB).
	OnChange func(Command)
	Registry prometheus.Registerer // nil: not registered
	Log      *slog.Logger
	Now      func() time.Time
}

// Manager sends commands and records their lifecycle. Safe for concurrent
// use.
type Manager struct {
	o   Options
	log *slog.Logger
	j   *journal

	mu      sync.Mutex
	byID    map[string]*Command
	order   []string // ids, oldest first
	changed chan struct{}
	pub     Publisher

	transitions *prometheus.CounterVec
	errs        *prometheus.CounterVec
	latency     prometheus.Histogram
}

// Open replays the journal in o.Dir and returns the Manager.
func Open(o Options) (*Manager, error) {
	if o.History <= 0 {
		o.History = DefaultHistory
	}
	if o.MaxArgBytes <= 0 {
		o.MaxArgBytes = DefaultMaxArgBytes
	}
	if o.Expiry <= 0 {
		o.Expiry = DefaultExpiry
	}
	if !validGatewayLevel(o.Gateway) {
		o.Gateway = ""
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := &Manager{o: o, log: o.Log, byID: map[string]*Command{}, changed: make(chan struct{}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_commands_total",
			Help: "Command lifecycle transitions, by state reached."}, []string{"state"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_command_errors_total",
			Help: "Command requests and replies refused, by reason."}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_command_round_trip_seconds",
			Help: "Command sent → device reply.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
	}
	if o.Registry != nil {
		if err := o.Registry.Register(m.transitions); err != nil {
			return nil, err
		}
		o.Registry.MustRegister(m.errs, m.latency)
	}
	j, replayed, err := openJournal(o.Dir, o.History)
	if err != nil {
		return nil, err
	}
	m.j = j
	for _, c := range replayed {
		cc := c
		m.byID[c.ID] = &cc
		m.order = append(m.order, c.ID)
	}
	return m, nil
}

// SetPublisher sets the connection commands go out on.
func (m *Manager) SetPublisher(p Publisher) {
	m.mu.Lock()
	m.pub = p
	m.mu.Unlock()
}

// Close closes the journal.
func (m *Manager) Close() error { return m.j.close() }

func (m *Manager) fail(reason, format string, args ...any) *Error {
	m.errs.WithLabelValues(reason).Inc()
	return &Error{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// validLevel: one topic level of letters, digits, '-', '_', '.'.
func validLevel(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Send validates r, publishes the command and returns it once the broker
// has acknowledged it (state delivered) or refused it (failed). A request
// that is refused before anything is published returns an *Error.
func (m *Manager) Send(ctx context.Context, r Request) (Command, error) {
	site, dev, ok := strings.Cut(r.Device, "/")
	if !ok || !validLevel(site) || !validLevel(dev) {
		return Command{}, m.fail(ReasonBadDevice, "device %q is not <site>/<device> (letters, digits, - _ .)", cutText(r.Device))
	}
	if !validLevel(r.Name) {
		return Command{}, m.fail(ReasonBadName, "command name %q is not 1-%d letters, digits, - _ .", cutText(r.Name), maxNameLen)
	}
	if len(r.Args) > maxArgs {
		return Command{}, m.fail(ReasonTooLarge, "%d arguments; at most %d", len(r.Args), maxArgs)
	}
	keys := make([]string, 0, len(r.Args))
	for k, v := range r.Args {
		if !validLevel(k) {
			return Command{}, m.fail(ReasonBadArg, "argument name %q is not 1-%d letters, digits, - _ .", cutText(k), maxNameLen)
		}
		if len(v) > m.o.MaxArgBytes {
			return Command{}, m.fail(ReasonTooLarge, "argument %s is %d bytes; at most %d", k, len(v), m.o.MaxArgBytes)
		}
		if !json.Valid(v) {
			return Command{}, m.fail(ReasonBadArg, "argument %s is not a JSON value", k)
		}
		keys = append(keys, k)
	}
	if m.o.Known != nil && !m.o.Known(r.Device) {
		return Command{}, m.fail(ReasonUnknownDevice, "device %s has not been heard from", r.Device)
	}
	slices.Sort(keys)
	var args bytes.Buffer
	args.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			args.WriteByte(',')
		}
		args.WriteString(strconv.Quote(k))
		args.WriteByte(':')
		if err := json.Compact(&args, r.Args[k]); err != nil {
			return Command{}, m.fail(ReasonBadArg, "argument %s: %v", k, err)
		}
	}
	args.WriteByte('}')

	expiry := m.o.Expiry
	if r.Expiry > 0 {
		expiry = r.Expiry
	}
	now := m.o.Now().UTC()
	c := Command{ID: newID(), Device: r.Device, Gateway: m.o.Gateway, Name: r.Name, Args: args.Bytes(), State: Sent,
		Created: now, Expires: now.Add(expiry)}
	payload, _ := json.Marshal(Payload{ID: c.ID, Name: c.Name, Args: c.Args, ReplyTo: c.ReplyTopic(), Expires: c.Expires.UnixMilli()})

	m.mu.Lock()
	pub := m.pub
	m.mu.Unlock()
	if pub == nil {
		return Command{}, m.fail(ReasonNotConnected, "no command connection to the broker")
	}
	m.record(c)
	// A client that goes away must not turn a command already on its way
	// into a failure: the publish runs to its PUBACK (bounded by the
	// publisher).
	err := pub.Publish(context.WithoutCancel(ctx), c.Topic(), payload, Properties{ResponseTopic: c.ReplyTopic(), CorrelationData: []byte(c.ID), Expiry: expiry})
	final, _ := m.update(c.ID, func(c *Command) bool {
		if c.State != Sent {
			return false // the reply came before the PUBACK was seen, and marked it delivered
		}
		if err != nil {
			c.State, c.Finished, c.Error = Failed, m.o.Now().UTC(), "publish: "+cutText(err.Error())
		} else {
			c.State, c.Delivered = Delivered, m.o.Now().UTC()
		}
		return true
	})
	return final, nil
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// cutText bounds text from outside that goes into errors and records.
func cutText(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// record stores a new command.
func (m *Manager) record(c Command) {
	m.mu.Lock()
	cc := c
	m.byID[c.ID] = &cc
	m.order = append(m.order, c.ID)
	if over := len(m.order) - m.o.History; over > 0 {
		for _, id := range m.order[:over] {
			delete(m.byID, id)
		}
		m.order = append(m.order[:0:0], m.order[over:]...)
	}
	m.persist(cc)
	m.mu.Unlock()
	m.notify(cc)
}

// update applies f to command id under the lock; when f reports a change
// it is persisted and announced. It returns the command as it is after.
func (m *Manager) update(id string, f func(*Command) bool) (Command, bool) {
	m.mu.Lock()
	c, ok := m.byID[id]
	if !ok {
		m.mu.Unlock()
		return Command{}, false
	}
	changed := f(c)
	out := *c
	if changed {
		m.persist(out)
	}
	m.mu.Unlock()
	if changed {
		m.notify(out)
	}
	return out, true
}

// persist appends c to the journal; m.mu is held. A failed write is logged
// and counted: the command still goes out, its record is in memory.
func (m *Manager) persist(c Command) {
	if err := m.j.append(c, m.snapshotLocked); err != nil {
		m.errs.WithLabelValues("journal").Inc()
		m.log.Error("command journal write failed", "id", c.ID, "err", err)
	}
}

func (m *Manager) snapshotLocked() []Command {
	out := make([]Command, 0, len(m.order))
	for _, id := range m.order {
		out = append(out, *m.byID[id])
	}
	return out
}

// notify counts a transition, tells OnChange and wakes waiters.
func (m *Manager) notify(c Command) {
	m.transitions.WithLabelValues(string(c.State)).Inc()
	if c.State == Answered {
		m.latency.Observe(c.LatencyMS / 1000)
	}
	if m.o.OnChange != nil {
		m.o.OnChange(c)
	}
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// HandleReply takes a message from replies/<site>/<device>/[<gateway>/]<id>.
// correlation is the MQTT 5 Correlation Data (nil over 3.1.1). The id is
// taken from the correlation data, else the payload, else the topic.
func (m *Manager) HandleReply(topic string, correlation, payload []byte) error {
	rest, ok := strings.CutPrefix(topic, RepliesRoot+"/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) < 2 {
		return m.fail(ReasonBadReply, "reply topic %q is not replies/<site>/<device>/<id>", cutText(topic))
	}
	device := parts[0] + "/" + parts[1]
	var r Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		return m.fail(ReasonBadReply, "reply on %s is not a JSON object: %v", cutText(topic), err)
	}
	id := string(correlation)
	if id == "" {
		id = r.ID
	}
	if id == "" && len(parts) >= 3 {
		id = parts[len(parts)-1]
	}
	if id == "" {
		return m.fail(ReasonBadReply, "reply on %s names no command (no correlation data, no id)", cutText(topic))
	}
	if n := len(r.Result); n > maxReply {
		r.Result = nil
		r.OK, r.Error = false, fmt.Sprintf("result of %d bytes dropped (over %d)", n, maxReply)
	}
	var wrong, late bool
	// A reply proves delivery: when it overtakes the PUBACK, delivered is
	// recorded first, so every answered command went through it.
	m.update(id, func(c *Command) bool {
		if c.Device != device || c.State != Sent {
			return false
		}
		c.State, c.Delivered = Delivered, m.o.Now().UTC()
		return true
	})
	_, found := m.update(id, func(c *Command) bool {
		if c.Device != device {
			wrong = true
			return false
		}
		if c.State.Final() {
			late = true
			return false
		}
		now := m.o.Now().UTC()
		c.Finished = now
		c.LatencyMS = float64(now.Sub(c.Created).Microseconds()) / 1000
		if r.OK {
			c.State, c.Result = Answered, r.Result
		} else {
			c.State, c.Error = Failed, "device: "+cutText(r.Error)
			if r.Error == "" {
				c.Error = "device: refused"
			}
		}
		return true
	})
	switch {
	case !found:
		return m.fail(ReasonUnmatched, "reply on %s for command %q, which was not sent (or is no longer kept)", cutText(topic), cutText(id))
	case wrong:
		return m.fail(ReasonWrongDevice, "reply from %s for command %s, which went to another device", device, cutText(id))
	case late:
		return m.fail(ReasonLate, "reply for command %s after it was final", cutText(id))
	}
	return nil
}

// Sweep expires the commands whose reply is overdue at now.
func (m *Manager) Sweep(now time.Time) {
	m.mu.Lock()
	var due []string
	for _, id := range m.order {
		c := m.byID[id]
		if !c.State.Final() && now.After(c.Expires) {
			due = append(due, id)
		}
	}
	m.mu.Unlock()
	for _, id := range due {
		m.update(id, func(c *Command) bool {
			if c.State.Final() || !now.After(c.Expires) {
				return false
			}
			c.State, c.Finished, c.Error = Expired, now.UTC(), "no reply before "+c.Expires.Format(time.RFC3339)
			return true
		})
	}
}

// Get returns command id.
func (m *Manager) Get(id string) (Command, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.byID[id]
	if !ok {
		return Command{}, false
	}
	return *c, true
}

// List returns up to limit commands, newest first; device filters when
// not empty.
func (m *Manager) List(device string, limit int) []Command {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Command
	for i := len(m.order) - 1; i >= 0 && len(out) < limit; i-- {
		c := m.byID[m.order[i]]
		if device == "" || c.Device == device {
			out = append(out, *c)
		}
	}
	return out
}

// Wait blocks until command id is final or ctx ends, and returns it as it
// is then.
func (m *Manager) Wait(ctx context.Context, id string) (Command, error) {
	for {
		m.mu.Lock()
		c, ok := m.byID[id]
		var cc Command
		if ok {
			cc = *c
		}
		ch := m.changed
		m.mu.Unlock()
		if !ok {
			return Command{}, &Error{Reason: "not_found", Msg: "no command " + cutText(id)}
		}
		if cc.State.Final() {
			return cc, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cc, nil
		}
	}
}

// Changed returns a channel closed at the next transition.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Run expires overdue commands every second until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.Sweep(now)
		}
	}
}

// ErrReason is the Reason of err when it is an *Error, else "".
func ErrReason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
