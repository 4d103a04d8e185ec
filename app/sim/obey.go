package sim

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Commands the simulated devices obey (the gateway's command protocol,
// README.md "Commands").
const (
	// CommandSetInterval: args {"seconds": N}; the device publishes at most
	// once every N seconds (0 restores the fleet's pace).
	CommandSetInterval = "set_interval"
	// CommandSetRelay: args {"on": true|false}; switches the device's relay,
	// which its power readings then report as "relay".
	CommandSetRelay = "set_relay"
	// CommandReportState: no args; the reply's result is the device's state.
	CommandReportState = "report_state"
)

// maxInterval bounds set_interval so a typo cannot silence a device for a
// year.
const maxInterval = 24 * time.Hour

// Controls are the commandable state of a fleet's devices, shared by the
// goroutine that runs the fleet and the one that answers commands. Pass the
// same Controls in Options and to a Responder.
type Controls struct {
	mu   sync.Mutex
	devs map[string]*control // "<site>/<device>"
}

// NewControls returns Controls with no devices; a Fleet built with them
// registers its own.
func NewControls() *Controls { return &Controls{devs: map[string]*control{}} }

// control is one device's commandable state.
type control struct {
	interval atomic.Int64  // nanoseconds; 0: the fleet's pace
	relay    atomic.Int32  // 0 never switched, 1 off, 2 on
	battery  atomic.Uint64 // float64 bits of the last reading
	last     atomic.Int64  // monotonic nanoseconds of the last reading
	commands atomic.Uint64 // obeyed
}

var simEpoch = time.Now()

func (c *Controls) register(id string) *control {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.devs[id]; ok {
		return d
	}
	d := &control{}
	c.devs[id] = d
	return d
}

// due reports whether a device with an interval set may publish now.
func (ctl *control) due() bool {
	iv := ctl.interval.Load()
	if iv == 0 {
		return true
	}
	last := ctl.last.Load()
	return last == 0 || int64(time.Since(simEpoch))-last >= iv
}

func (ctl *control) published(battery float64) {
	ctl.last.Store(int64(time.Since(simEpoch)) + 1)
	ctl.battery.Store(math.Float64bits(battery))
}

// State is what report_state answers.
type State struct {
	IntervalSeconds float64 `json:"interval_s"` // 0: the fleet's pace
	Relay           *bool   `json:"relay,omitempty"`
	Battery         float64 `json:"battery"`
	Commands        uint64  `json:"commands"`
}

func (ctl *control) state() State {
	s := State{IntervalSeconds: time.Duration(ctl.interval.Load()).Seconds(), Commands: ctl.commands.Load(),
		Battery: math.Round(math.Float64frombits(ctl.battery.Load())*10) / 10}
	if r := ctl.relay.Load(); r != 0 {
		on := r == 2
		s.Relay = &on
	}
	return s
}

// Apply carries out command name on device ("<site>/<device>") and returns
// the device's state after it.
func (c *Controls) Apply(device, name string, args map[string]json.RawMessage) (State, error) {
	c.mu.Lock()
	ctl, ok := c.devs[device]
	c.mu.Unlock()
	if !ok {
		return State{}, fmt.Errorf("no device %s in this fleet", device)
	}
	switch name {
	case CommandSetInterval:
		var secs float64
		if err := json.Unmarshal(args["seconds"], &secs); err != nil {
			// The 3.1.1 command line sends numbers it could not tell from
			// strings as strings; accept "30".
			var s string
			if json.Unmarshal(args["seconds"], &s) != nil {
				return State{}, fmt.Errorf("set_interval needs seconds, a number")
			}
			if secs, err = strconv.ParseFloat(s, 64); err != nil {
				return State{}, fmt.Errorf("set_interval: seconds %q is not a number", s)
			}
		}
		if !(secs >= 0) || time.Duration(secs*float64(time.Second)) > maxInterval {
			return State{}, fmt.Errorf("set_interval: seconds %v is not between 0 and %v", secs, maxInterval.Seconds())
		}
		ctl.interval.Store(int64(secs * float64(time.Second)))
	case CommandSetRelay:
		var on bool
		if err := json.Unmarshal(args["on"], &on); err != nil {
			var s string
			if json.Unmarshal(args["on"], &s) != nil || (s != "true" && s != "false") {
				return State{}, fmt.Errorf("set_relay needs on, true or false")
			}
			on = s == "true"
		}
		v := int32(1)
		if on {
			v = 2
		}
		ctl.relay.Store(v)
	case CommandReportState:
	default:
		return State{}, fmt.Errorf("unknown command %q (known: %s, %s, %s)", name, CommandSetInterval, CommandSetRelay, CommandReportState)
	}
	ctl.commands.Add(1)
	return ctl.state(), nil
}

// commandPayload is the part of the gateway's command payload a device
// needs.
type commandPayload struct {
	ID      string                     `json:"id"`
	Args    map[string]json.RawMessage `json:"args"`
	ReplyTo string                     `json:"reply_to"`
	Expires int64                      `json:"expires"`
}

type replyPayload struct {
	ID     string `json:"id"`
	OK     bool   `json:"ok"`
	Result *State `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Responder answers commands for simulated devices over MQTT 3.1.1, using
// the payload convention (id and reply_to in the command, id in the
// reply).
type Responder struct {
	c        mqtt.Client
	controls *Controls
	log      *slog.Logger
	answered atomic.Int64
}

// NewResponder connects and subscribes to filters: commands/+/+/+ to answer
// for every device of a fleet over one connection, or
// commands/<site>/<device>/+ for one device connected as itself (what iotgw
// broker's access rules allow a device).
func NewResponder(cfg PahoConfig, controls *Controls, filters []string, log *slog.Logger) (*Responder, error) {
	if log == nil {
		log = slog.Default()
	}
	if len(filters) == 0 {
		filters = []string{"commands/+/+/+"}
	}
	r := &Responder{controls: controls, log: log}
	pub, err := NewPahoPublisher(cfg)
	if err != nil {
		return nil, err
	}
	r.c = pub.c
	subs := map[string]byte{}
	for _, f := range filters {
		subs[f] = 1
	}
	t := r.c.SubscribeMultiple(subs, func(_ mqtt.Client, m mqtt.Message) { r.handle(m.Topic(), m.Payload()) })
	if !t.WaitTimeout(10 * time.Second) {
		r.c.Disconnect(0)
		return nil, fmt.Errorf("sim: subscribe %v: timed out", filters)
	}
	if err := t.Error(); err != nil {
		r.c.Disconnect(0)
		return nil, fmt.Errorf("sim: subscribe %v: %w", filters, err)
	}
	if st, ok := t.(*mqtt.SubscribeToken); ok {
		for f, q := range st.Result() {
			if q >= 0x80 {
				r.c.Disconnect(0)
				return nil, fmt.Errorf("sim: the broker refused the subscription to %s", f)
			}
		}
	}
	return r, nil
}

// Answered is how many commands were answered.
func (r *Responder) Answered() int64 { return r.answered.Load() }

func (r *Responder) handle(topic string, payload []byte) {
	parts := strings.Split(topic, "/")
	if len(parts) != 4 {
		return
	}
	device, name := parts[1]+"/"+parts[2], parts[3]
	var p commandPayload
	if err := json.Unmarshal(payload, &p); err != nil || p.ID == "" {
		r.log.Warn("sim: command without an id ignored", "topic", topic)
		return
	}
	if p.Expires > 0 && time.Now().UnixMilli() > p.Expires {
		r.log.Info("sim: command arrived after it expired; not obeyed", "id", p.ID)
		return
	}
	// A device answers only under its own replies/ (the broker enforces
	// it too); a reply_to elsewhere falls back to the convention's topic.
	replyTo := p.ReplyTo
	if !strings.HasPrefix(replyTo, "replies/"+device+"/") {
		replyTo = "replies/" + device + "/" + p.ID
	}
	st, err := r.controls.Apply(device, name, p.Args)
	rep := replyPayload{ID: p.ID, OK: err == nil}
	if err != nil {
		rep.Error = err.Error()
	} else {
		rep.Result = &st
	}
	b, _ := json.Marshal(rep)
	t := r.c.Publish(replyTo, 1, false, b)
	go func() {
		if t.WaitTimeout(10*time.Second) && t.Error() == nil {
			r.answered.Add(1)
			return
		}
		r.log.Warn("sim: reply not acknowledged", "id", p.ID, "err", t.Error())
	}()
}

// PublishReading publishes a reading on the responder's connection (a
// device connected as itself has only this one) and waits for the PUBACK.
func (r *Responder) PublishReading(topic string, payload []byte) error {
	t := r.c.Publish(topic, 1, false, payload)
	if !t.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("sim: publish %s: timed out", topic)
	}
	return t.Error()
}

// Close disconnects.
func (r *Responder) Close() { r.c.Disconnect(250) }
