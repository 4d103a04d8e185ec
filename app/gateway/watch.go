package gateway

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// deviceKey finds the device a topic belongs to: the {site} and {device}
// levels of the topic pattern, joined as "<site>/<device>". The fleet watch
// and commands name devices so.
type deviceKey struct {
	site, device int // level indexes; -1 when the pattern has none
}

func newDeviceKey(pattern string) deviceKey {
	k := deviceKey{site: -1, device: -1}
	for i, p := range strings.Split(pattern, "/") {
		switch p {
		case "{site}":
			k.site = i
		case "{device}":
			k.device = i
		}
	}
	return k
}

// of returns the device of topic, "" when it names none. When {site} and
// {device} are adjacent levels (the default pattern) the result is a slice
// of topic, so the hot path does not allocate.
func (k deviceKey) of(topic string) string {
	if k.device < 0 {
		return ""
	}
	var start, end [16]int
	n := 0
	s := 0
	for i := 0; i <= len(topic) && n < len(start); i++ {
		if i == len(topic) || topic[i] == '/' {
			start[n], end[n] = s, i
			n++
			s = i + 1
		}
	}
	if k.device >= n || k.site >= n {
		return ""
	}
	dev := topic[start[k.device]:end[k.device]]
	if dev == "" {
		return ""
	}
	if k.site < 0 {
		return dev
	}
	site := topic[start[k.site]:end[k.site]]
	if site == "" {
		return ""
	}
	if k.site+1 == k.device {
		return topic[start[k.site]:end[k.device]]
	}
	return site + "/" + dev
}

// recentDeadLetters is how many dead letters the page shows.
const recentDeadLetters = 50

// DeadLetter is a recent rejected message, for the page.
type DeadLetter struct {
	Time    time.Time `json:"time"`
	Topic   string    `json:"topic,omitempty"`
	Reason  string    `json:"reason"`
	Error   string    `json:"error"`
	Excerpt string    `json:"excerpt"` // the first bytes of the payload, as text
	Size    int       `json:"size"`
}

// deadRing keeps the latest dead letters in memory.
type deadRing struct {
	mu   sync.Mutex
	buf  [recentDeadLetters]DeadLetter
	next int
	n    int
}

// excerptBytes bounds the payload shown on the page.
const excerptBytes = 200

func (r *deadRing) add(at time.Time, topic, reason string, cause error, payload []byte) {
	// The topic is copied: the name a message carries views the topic
	// cache's memory, which a kept string would hold on to.
	e := DeadLetter{Time: at.UTC(), Topic: strings.Clone(topic), Reason: reason, Size: len(payload)}
	if cause != nil {
		e.Error = cause.Error()
		if len(e.Error) > 300 {
			e.Error = e.Error[:300] + "..."
		}
	}
	ex := payload[:min(len(payload), excerptBytes)]
	e.Excerpt = strings.ToValidUTF8(string(ex), "\uFFFD")
	r.mu.Lock()
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
	r.mu.Unlock()
}

// latest returns up to limit dead letters, newest first.
func (r *deadRing) latest(limit int) []DeadLetter {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]DeadLetter, 0, min(limit, r.n))
	for i := 1; i <= r.n && len(out) < limit; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out
}

// DeadLetters returns the latest dead letters, newest first.
func (g *Gateway) DeadLetters(limit int) []DeadLetter { return g.recentDead.latest(limit) }

// Fleet is the watch of the devices the gateway hears from.
func (g *Gateway) Fleet() *fleet.Watch { return g.fleet }

// Handle mounts h on the gateway's HTTP server (pattern as for
// http.ServeMux). Call before Run.
func (g *Gateway) Handle(pattern string, h http.Handler) {
	g.routes = append(g.routes, route{pattern, h})
}

type route struct {
	pattern string
	h       http.Handler
}

// Record spools one line-protocol point of the gateway's own (the command
// lifecycle) so it reaches InfluxDB with the readings. It never waits: when
// the gateway is not running or its inbox is full (the spool is full and
// holding the broker back), the point is dropped, counted in
// iotgw_own_points_dropped_total, and false returned; the caller keeps its
// own record.
func (g *Gateway) Record(line []byte) bool {
	g.sendMu.RLock()
	defer g.sendMu.RUnlock()
	if !g.accepting.Load() {
		g.ownDropped.Inc()
		return false
	}
	b := append(lineBufs.get(), line...)
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	select {
	case g.inbox <- pending{data: b, points: 1, own: true}:
		return true
	default:
		lineBufs.put([]pending{{data: b}})
		g.ownDropped.Inc()
		return false
	}
}

// Detail adds information to /readyz's detail (never failing readiness).
// Call before Run.
func (g *Gateway) Detail(name string, f func() any) { g.details[name] = f }

// seen tells the fleet watch about a message from topic.
func (g *Gateway) seen(topic string, at time.Time, rejected bool) {
	id := g.devKey.of(topic)
	if id == "" {
		return
	}
	if rejected {
		g.fleet.Rejected(id, at)
	} else {
		g.fleet.Seen(id, at)
	}
}

// sweepLoop flags silent devices every fleet.sweep_interval.
func (g *Gateway) sweepLoop(ctx context.Context) {
	t := time.NewTicker(g.opt.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			g.fleet.Sweep(now)
		}
	}
}

// fleetDetail is the fleet's line in /readyz: information, never a
// reason to be unready (a silent device is the device's problem).
func (g *Gateway) fleetDetail() any {
	st := g.fleet.Stats()
	d := map[string]any{"devices": st.Devices, "silent": st.Silent, "untracked_messages": st.Untracked}
	if st.Silent > 0 {
		var ids []string
		for _, dv := range g.fleet.List("", 10) {
			if dv.Silent {
				ids = append(ids, dv.ID)
			}
		}
		d["silent_devices"] = ids
	}
	return d
}

// registerTopicCacheMetrics shows how well the topic cache holds the
// fleet: a hit costs nothing per topic; a miss builds the topic's line
// prefix again (docs/benchmarks.md).
func registerTopicCacheMetrics(reg *prometheus.Registry, c *sensor.TopicCache) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_topic_cache_bytes", Help: "Memory the topic cache holds."},
			func() float64 { return float64(c.Stats().Bytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_topic_cache_hits_total", Help: "Topic lookups found in the cache."},
			func() float64 { return float64(c.Stats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_topic_cache_misses_total", Help: "Topic lookups not found in the cache."},
			func() float64 { return float64(c.Stats().Misses) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_topic_cache_frozen_shards",
			Help: "Shards of 16 that hold a stable share of a fleet larger than the cache and let the rest pass."},
			func() float64 { return float64(c.Stats().FrozenShards) }),
	)
}

func registerFleetMetrics(reg *prometheus.Registry, w *fleet.Watch) prometheus.Counter {
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_own_points_dropped_total",
		Help: "Points of the gateway's own (command lifecycle) not spooled: the gateway was stopping or its inbox full."})
	reg.MustRegister(dropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_devices_silent",
			Help: "Devices silent for longer than fleet.silent_factor times their usual interval."},
			func() float64 { return float64(w.Stats().Silent) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_devices_tracked", Help: "Devices the fleet watch tracks."},
			func() float64 { return float64(w.Stats().Devices) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_devices_untracked_messages_total",
			Help: "Messages from devices beyond fleet.max_devices (not tracked)."},
			func() float64 { return float64(w.Stats().Untracked) }),
	)
	return dropped
}
