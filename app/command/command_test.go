package command

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// recorder is a Publisher that keeps what it was given; err, when set,
// is the broker's refusal.
type recorder struct {
	mu   sync.Mutex
	sent []Payload
	err  error
}

func (r *recorder) Publish(_ context.Context, topic string, payload []byte, p Properties) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	var pl Payload
	if err := json.Unmarshal(payload, &pl); err != nil {
		return err
	}
	if topic != "commands/s1/d1/"+pl.Name || p.ResponseTopic != pl.ReplyTo || string(p.CorrelationData) != pl.ID {
		return errors.New("properties and payload disagree")
	}
	r.sent = append(r.sent, pl)
	return nil
}

func open(t *testing.T, dir string, now *time.Time) (*Manager, *recorder, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := Open(Options{Dir: dir, History: 4, Known: func(d string) bool { return d == "s1/d1" }, Registry: reg,
		Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	r := &recorder{}
	m.SetPublisher(r)
	return m, r, reg
}

func TestLifecycle(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	m, r, reg := open(t, dir, &now)
	c, err := m.Send(context.Background(), Request{Device: "s1/d1", Name: "set_interval", Args: map[string]json.RawMessage{"seconds": json.RawMessage(` 30 `)}})
	if err != nil {
		t.Fatal(err)
	}
	if c.State != Delivered || string(c.Args) != `{"seconds":30}` || len(r.sent) != 1 || r.sent[0].ReplyTo != "replies/s1/d1/"+c.ID {
		t.Fatalf("after send: %+v, published %+v", c, r.sent)
	}
	now = now.Add(40 * time.Millisecond)
	if err := m.HandleReply("replies/s1/d1/"+c.ID, nil, []byte(`{"id":"`+c.ID+`","ok":true,"result":{"interval_s":30}}`)); err != nil {
		t.Fatal(err)
	}
	got, _ := m.Get(c.ID)
	if got.State != Answered || got.LatencyMS != 40 || string(got.Result) != `{"interval_s":30}` {
		t.Fatalf("after reply: %+v", got)
	}
	// A second reply for a final command is late; correlation data wins
	// over the payload's id.
	err = m.HandleReply("replies/s1/d1/x", []byte(c.ID), []byte(`{"id":"other","ok":true}`))
	if ErrReason(err) != ReasonLate {
		t.Fatalf("second reply: %v, want late", err)
	}

	// Expiry.
	c2, _ := m.Send(context.Background(), Request{Device: "s1/d1", Name: "report_state"})
	m.Sweep(now.Add(DefaultExpiry - time.Second))
	if g, _ := m.Get(c2.ID); g.State != Delivered {
		t.Fatalf("before expiry: %s", g.State)
	}
	m.Sweep(now.Add(DefaultExpiry + time.Second))
	if g, _ := m.Get(c2.ID); g.State != Expired {
		t.Fatalf("after expiry: %s", g.State)
	}
	// A refused publish fails the command.
	r.err = errors.New("PUBACK reason 0x87")
	c3, _ := m.Send(context.Background(), Request{Device: "s1/d1", Name: "report_state"})
	if c3.State != Failed || !strings.Contains(c3.Error, "0x87") {
		t.Fatalf("refused publish: %+v", c3)
	}
	if v := testutil.ToFloat64(m.transitions.WithLabelValues("answered")); v != 1 {
		t.Errorf("answered transitions = %v", v)
	}
	_ = reg

	// Replayed after a restart, as they were.
	m.Close()
	m2, _, _ := open(t, dir, &now)
	for _, want := range []struct {
		id string
		s  State
	}{{c.ID, Answered}, {c2.ID, Expired}, {c3.ID, Failed}} {
		if g, ok := m2.Get(want.id); !ok || g.State != want.s {
			t.Errorf("replayed %s: %+v, want %s", want.id, g, want.s)
		}
	}
}

func TestRefused(t *testing.T) {
	now := time.Now()
	m, r, _ := open(t, t.TempDir(), &now)
	big := json.RawMessage(`"` + strings.Repeat("x", DefaultMaxArgBytes) + `"`)
	for _, tc := range []struct {
		req    Request
		reason string
	}{
		{Request{Device: "s1/d9", Name: "x"}, ReasonUnknownDevice},
		{Request{Device: "s1", Name: "x"}, ReasonBadDevice},
		{Request{Device: "s1/d1/x", Name: "x"}, ReasonBadDevice},
		{Request{Device: "s1/+", Name: "x"}, ReasonBadDevice},
		{Request{Device: "s1/d1", Name: "a/b"}, ReasonBadName},
		{Request{Device: "s1/d1", Name: "#"}, ReasonBadName},
		{Request{Device: "s1/d1", Name: "x", Args: map[string]json.RawMessage{"a": big}}, ReasonTooLarge},
		{Request{Device: "s1/d1", Name: "x", Args: map[string]json.RawMessage{"a": json.RawMessage(`{`)}}, ReasonBadArg},
		{Request{Device: "s1/d1", Name: "x", Args: map[string]json.RawMessage{"a b": json.RawMessage(`1`)}}, ReasonBadArg},
	} {
		if _, err := m.Send(context.Background(), tc.req); ErrReason(err) != tc.reason {
			t.Errorf("%+v: %v, want %s", tc.req, err, tc.reason)
		}
		if v := testutil.ToFloat64(m.errs.WithLabelValues(tc.reason)); v < 1 {
			t.Errorf("%s not counted", tc.reason)
		}
	}
	if len(r.sent) != 0 {
		t.Errorf("refused requests were published: %+v", r.sent)
	}
	c, _ := m.Send(context.Background(), Request{Device: "s1/d1", Name: "x"})
	for _, tc := range []struct {
		topic, payload string
		reason         string
	}{
		{"replies/s1/d1/nope", `{"id":"nope","ok":true}`, ReasonUnmatched},
		{"replies/s1/d2/" + c.ID, `{"id":"` + c.ID + `","ok":true}`, ReasonWrongDevice},
		{"replies/s1", `{}`, ReasonBadReply},
		{"replies/s1/d1/" + c.ID, `not json`, ReasonBadReply},
	} {
		if err := m.HandleReply(tc.topic, nil, []byte(tc.payload)); ErrReason(err) != tc.reason {
			t.Errorf("reply %s %s: %v, want %s", tc.topic, tc.payload, err, tc.reason)
		}
	}
	if g, _ := m.Get(c.ID); g.State != Delivered {
		t.Errorf("bad replies changed the command: %+v", g)
	}
}

// The journal stays bounded: past twice the history it is rewritten with
// only the commands kept, and a torn last line is skipped at replay.
func TestJournalBounded(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	m, _, _ := open(t, dir, &now)
	var last string
	for range 50 {
		c, err := m.Send(context.Background(), Request{Device: "s1/d1", Name: "x"})
		if err != nil {
			t.Fatal(err)
		}
		last = c.ID
	}
	m.Close()
	b, _ := os.ReadFile(filepath.Join(dir, FileName))
	if lines := strings.Count(string(b), "\n"); lines > 2*4+1 {
		t.Errorf("journal has %d lines for a history of 4", lines)
	}
	f, _ := os.OpenFile(filepath.Join(dir, FileName), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"id":"torn","sta`)
	f.Close()
	m2, _, _ := open(t, dir, &now)
	if got := m2.List("", 100); len(got) != 4 || got[0].ID != last {
		t.Errorf("replayed %d commands, newest %v; want 4, newest %s", len(got), got, last)
	}
}

func TestWait(t *testing.T) {
	now := time.Now()
	m, _, _ := open(t, t.TempDir(), &now)
	c, _ := m.Send(context.Background(), Request{Device: "s1/d1", Name: "x"})
	done := make(chan Command)
	go func() {
		got, _ := m.Wait(context.Background(), c.ID)
		done <- got
	}()
	if err := m.HandleReply("replies/s1/d1/"+c.ID, nil, []byte(`{"ok":false,"error":"busy"}`)); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got.State != Failed || got.Error != "device: busy" {
		t.Fatalf("waited: %+v", got)
	}
}

// slowAck is a Publisher whose PUBACK comes after the device's reply.
type slowAck struct{ m *Manager }

func (s *slowAck) Publish(_ context.Context, _ string, payload []byte, p Properties) error {
	var pl Payload
	_ = json.Unmarshal(payload, &pl)
	return s.m.HandleReply(pl.ReplyTo, p.CorrelationData, []byte(`{"ok":true}`))
}

// A reply that overtakes the PUBACK still leaves a delivered transition
// before the answered one.
func TestReplyBeforePuback(t *testing.T) {
	now := time.Now()
	var seen []State
	m, err := Open(Options{Dir: t.TempDir(), OnChange: func(c Command) { seen = append(seen, c.State) }, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.SetPublisher(&slowAck{m: m})
	c, err := m.Send(context.Background(), Request{Device: "s1/d1", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if c.State != Answered || c.Delivered.IsZero() || !slices.Equal(seen, []State{Sent, Delivered, Answered}) {
		t.Fatalf("command %+v, transitions %v", c, seen)
	}
}

// TestRepliesPerGateway: gateways sharing a broker each name themselves in
// the reply topic and subscribe to their own replies only.
func TestRepliesPerGateway(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m, err := Open(Options{Dir: t.TempDir(), Gateway: "gw-a", Known: func(string) bool { return true },
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	r := &recorder{}
	m.SetPublisher(r)
	c, err := m.Send(context.Background(), Request{Device: "s1/d1", Name: "report_state"})
	if err != nil {
		t.Fatal(err)
	}
	want := "replies/s1/d1/gw-a/" + c.ID
	if got := r.sent[0].ReplyTo; got != want {
		t.Fatalf("reply_to %q, want %q", got, want)
	}
	if f := ReplyFilter("gw-a"); f != "replies/+/+/gw-a/+" {
		t.Fatalf("ReplyFilter = %q", f)
	}
	for _, bad := range []string{"", "a/b", "gw+", "#"} {
		if f := ReplyFilter(bad); f != "replies/#" {
			t.Errorf("ReplyFilter(%q) = %q, want replies/#", bad, f)
		}
	}
	// A device that answers on reply_to without correlation data.
	if err := m.HandleReply(want, nil, []byte(`{"ok":true,"result":{"relay":"on"}}`)); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(c.ID); got.State != Answered {
		t.Fatalf("state %s, want answered", got.State)
	}
}
