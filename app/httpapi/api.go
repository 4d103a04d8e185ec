package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/fleet"
)

//go:embed page
var pageFS embed.FS

// API is the command API and the live page's data, behind a bearer token.
type API struct {
	Token    string
	Commands *command.Manager
	Fleet    *fleet.Watch
	// DeadLetters returns the latest dead letters, newest first.
	DeadLetters func(limit int) any
	Registry    *prometheus.Registry
	// Interval between live updates; 0: one second.
	Interval time.Duration

	unauthorized prometheus.Counter
	badRequests  *prometheus.CounterVec

	// The live device lists, shared by the page's streams: a list is one
	// pass over the whole fleet under its lock.
	devMu    sync.Mutex
	devCache map[string]cachedList
	streams  atomic.Int32
}

// maxStreams bounds the live streams open at once: each gathers the
// metrics every Interval.
const maxStreams = 32

type cachedList struct {
	at   time.Time
	list []fleet.Device
}

// liveDevices returns the page's device list for search q, computed at
// most once per Interval (every 10 Intervals past 100,000 devices) for all
// the streams together.
func (a *API) liveDevices(q string, devices int) []fleet.Device {
	refresh := a.Interval
	if devices > 100_000 {
		refresh *= 10
	}
	a.devMu.Lock()
	defer a.devMu.Unlock()
	if c, ok := a.devCache[q]; ok && time.Since(c.at) < refresh-refresh/10 {
		return c.list
	}
	if a.devCache == nil || len(a.devCache) > 64 {
		a.devCache = map[string]cachedList{}
	}
	l := a.Fleet.List(q, listedLive)
	a.devCache[q] = cachedList{at: time.Now(), list: l}
	return l
}

// Limits of the API.
const (
	maxBody    = 16 << 10
	maxWait    = 5 * time.Minute
	maxList    = 500
	listedLive = 20
)

// Routes returns the API's routes, for mounting on the gateway's mux: the
// page at /, its data under /api/.
func (a *API) Routes() map[string]http.Handler {
	if a.Interval <= 0 {
		a.Interval = time.Second
	}
	a.unauthorized = prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_api_unauthorized_total",
		Help: "API requests refused for a missing or wrong bearer token."})
	a.badRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_api_bad_requests_total",
		Help: "API requests refused as malformed, by reason."}, []string{"reason"})
	if a.Registry != nil {
		a.Registry.MustRegister(a.unauthorized, a.badRequests)
	}
	return map[string]http.Handler{
		"GET /{$}":               http.HandlerFunc(a.page),
		"GET /api/status":        a.auth(a.status),
		"GET /api/events":        a.auth(a.events),
		"GET /api/devices":       a.auth(a.devices),
		"GET /api/deadletters":   a.auth(a.deadLetters),
		"POST /api/commands":     a.auth(a.send),
		"GET /api/commands":      a.auth(a.listCommands),
		"GET /api/commands/{id}": a.auth(a.getCommand),
	}
}

func (a *API) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(a.Token)) != 1 {
			a.unauthorized.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="iotgw"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "missing or wrong bearer token", Reason: "unauthorized"})
			return
		}
		h(w, r)
	})
}

type apiError struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *API) bad(w http.ResponseWriter, code int, reason, format string, args ...any) {
	a.badRequests.WithLabelValues(reason).Inc()
	writeJSON(w, code, apiError{Error: fmt.Sprintf(format, args...), Reason: reason})
}

func (a *API) page(w http.ResponseWriter, _ *http.Request) {
	b, _ := pageFS.ReadFile("page/index.html")
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Everything the page needs is in it; nothing may be loaded from
	// elsewhere.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(b)
}

// limitParam reads ?limit=, bounded.
func limitParam(r *http.Request, def int) int {
	n, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || n <= 0 {
		return def
	}
	return min(n, maxList)
}

// waitParam reads a wait duration (?wait=10s or the body's), bounded.
func waitParam(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("wait %q is not a duration like 10s", s)
	}
	return min(d, maxWait), nil
}

func (a *API) devices(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Fleet.List(r.URL.Query().Get("q"), limitParam(r, 100)))
}

func (a *API) deadLetters(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.DeadLetters(limitParam(r, 50)))
}

// sendRequest is the body of POST /api/commands.
type sendRequest struct {
	Device string                     `json:"device"`
	Name   string                     `json:"name"`
	Args   map[string]json.RawMessage `json:"args"`
	Wait   string                     `json:"wait"`   // e.g. "10s": answer once final or after this long
	Expiry string                     `json:"expiry"` // overrides commands.expiry
}

func (a *API) send(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		a.bad(w, http.StatusRequestEntityTooLarge, "too_large", "request body over %d bytes", maxBody)
		return
	}
	var req sendRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		a.bad(w, http.StatusBadRequest, "bad_json", "request body: %v", err)
		return
	}
	wait, err := waitParam(req.Wait)
	if err != nil {
		a.bad(w, http.StatusBadRequest, "bad_wait", "%v", err)
		return
	}
	var expiry time.Duration
	if req.Expiry != "" {
		if expiry, err = time.ParseDuration(req.Expiry); err != nil || expiry < time.Second || expiry > 24*time.Hour {
			a.bad(w, http.StatusBadRequest, "bad_expiry", "expiry %q is not a duration between 1s and 24h", req.Expiry)
			return
		}
	}
	c, err := a.Commands.Send(r.Context(), command.Request{Device: req.Device, Name: req.Name, Args: req.Args, Expiry: expiry})
	if err != nil {
		code := http.StatusBadRequest
		switch command.ErrReason(err) {
		case command.ReasonUnknownDevice:
			code = http.StatusNotFound
		case command.ReasonTooLarge:
			code = http.StatusRequestEntityTooLarge
		case command.ReasonNotConnected:
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, apiError{Error: err.Error(), Reason: command.ErrReason(err)})
		return
	}
	if wait > 0 && !c.State.Final() {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		c, _ = a.Commands.Wait(ctx, c.ID)
		cancel()
	}
	writeJSON(w, http.StatusCreated, c)
}

func (a *API) listCommands(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Commands.List(r.URL.Query().Get("device"), limitParam(r, 100)))
}

func (a *API) getCommand(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wait, err := waitParam(r.URL.Query().Get("wait"))
	if err != nil {
		a.bad(w, http.StatusBadRequest, "bad_wait", "%v", err)
		return
	}
	c, ok := a.Commands.Get(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no command " + strconv.Quote(cutID(id)), Reason: "not_found"})
		return
	}
	if wait > 0 && !c.State.Final() {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		c, _ = a.Commands.Wait(ctx, id)
		cancel()
	}
	writeJSON(w, http.StatusOK, c)
}

func cutID(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Status is the live page's picture of the gateway at one moment.
type Status struct {
	Time     time.Time `json:"time"`
	Received float64   `json:"received"` // messages, since start
	Written  float64   `json:"written"`  // points InfluxDB accepted
	// Rates over the last interval, per second.
	ReceivedRate float64 `json:"received_rate"`
	WrittenRate  float64 `json:"written_rate"`
	// WriteLatencyMS is the mean write request over the last interval
	// (the previous mean while no write happened).
	WriteLatencyMS float64           `json:"write_latency_ms"`
	Spool          spoolStatus       `json:"spool"`
	DeadLetters    float64           `json:"dead_letters"`
	Devices        fleet.Stats       `json:"devices"`
	DeviceList     []fleet.Device    `json:"device_list"`
	Recent         any               `json:"recent_dead_letters"`
	Commands       []command.Command `json:"commands"`
	Connected      bool              `json:"connected"`
}

type spoolStatus struct {
	Entries      float64 `json:"entries"`
	Bytes        float64 `json:"bytes"`
	OldestAgeSec float64 `json:"oldest_age_s"`
}

// sampler turns counters into rates between two snapshots.
type sampler struct {
	at                   time.Time
	received, written    float64
	writeSum, writeCount float64
	latency              float64
}

func sum(mf *dto.MetricFamily) (v, hsum, hcount float64) {
	for _, m := range mf.GetMetric() {
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			hsum += m.Histogram.GetSampleSum()
			hcount += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, hsum, hcount
}

func (a *API) snapshot(s *sampler, q string) Status {
	now := time.Now()
	st := Status{Time: now.UTC()}
	var writeSum, writeCount float64
	connected := true
	if a.Registry != nil {
		mfs, _ := a.Registry.Gather()
		for _, mf := range mfs {
			v, hs, hc := sum(mf)
			switch mf.GetName() {
			case "iotgw_messages_received_total":
				st.Received = v
			case "iotgw_points_written_total":
				st.Written = v
			case "iotgw_spool_entries":
				st.Spool.Entries = v
			case "iotgw_spool_bytes":
				st.Spool.Bytes = v
			case "iotgw_spool_oldest_age_seconds":
				st.Spool.OldestAgeSec = v
			case "iotgw_dead_letters_total":
				st.DeadLetters = v
			case "iotgw_write_duration_seconds":
				writeSum, writeCount = hs, hc
			case "iotgw_mqtt_connected":
				for _, m := range mf.GetMetric() {
					if m.GetGauge().GetValue() != 1 {
						connected = false
					}
				}
			}
		}
	}
	st.Connected = connected
	if !s.at.IsZero() {
		dt := now.Sub(s.at).Seconds()
		if dt > 0 {
			st.ReceivedRate = max(0, (st.Received-s.received)/dt)
			st.WrittenRate = max(0, (st.Written-s.written)/dt)
		}
		if n := writeCount - s.writeCount; n > 0 {
			s.latency = (writeSum - s.writeSum) / n * 1000
		}
	}
	st.WriteLatencyMS = s.latency
	s.at, s.received, s.written, s.writeSum, s.writeCount = now, st.Received, st.Written, writeSum, writeCount
	st.Devices = a.Fleet.Stats()
	st.DeviceList = a.liveDevices(q, st.Devices.Devices)
	st.Recent = a.DeadLetters(10)
	st.Commands = a.Commands.List("", listedLive)
	return st
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	var s sampler
	writeJSON(w, http.StatusOK, a.snapshot(&s, r.URL.Query().Get("q")))
}

// events streams a Status every Interval, and at once when a command
// changes, as server-sent events ("status" events, JSON data).
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		a.bad(w, http.StatusInternalServerError, "no_stream", "streaming unsupported")
		return
	}
	if a.streams.Add(1) > maxStreams {
		a.streams.Add(-1)
		a.bad(w, http.StatusServiceUnavailable, "too_many_streams", "%d live streams are open already", maxStreams)
		return
	}
	defer a.streams.Add(-1)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	q := r.URL.Query().Get("q")
	var s sampler
	t := time.NewTicker(a.Interval)
	defer t.Stop()
	rc := http.NewResponseController(w)
	for {
		b, _ := json.Marshal(a.snapshot(&s, q))
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", b); err != nil {
			return
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		case <-a.Commands.Changed():
		}
	}
}
