package command

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Replies come from devices: whatever arrives must be refused with a
// reason or taken, never crash, and never touch another device's command.
func FuzzHandleReply(f *testing.F) {
	f.Add("replies/s1/d1/x", []byte(nil), []byte(`{"id":"x","ok":true,"result":{"a":1}}`))
	f.Add("replies/s1/d1", []byte("x"), []byte(`{"ok":false,"error":"busy"}`))
	f.Add("replies//", []byte(nil), []byte(`[`))
	f.Add("replies/s1/d2/x", []byte(nil), []byte(`{"id":"x","ok":true,"result":"`+string(make([]byte, 5000))+`"}`))
	now := time.Now()
	m, _, _ := openFuzz(f, &now)
	c, err := m.Send(context.Background(), Request{Device: "s1/d1", Name: "x"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic string, corr, payload []byte) {
		before, _ := m.Get(c.ID)
		err := m.HandleReply(topic, corr, payload)
		if err != nil && ErrReason(err) == "" {
			t.Fatalf("error without a reason: %v", err)
		}
		after, _ := m.Get(c.ID)
		if after.State != before.State && topic != "replies/s1/d1" && !strings.HasPrefix(topic, "replies/s1/d1/") {
			t.Fatalf("s1/d1's command changed by a reply on %q", topic)
		}
		if len(after.Result) > maxReply {
			t.Fatalf("result of %d bytes kept", len(after.Result))
		}
	})
}

func openFuzz(f *testing.F, now *time.Time) (*Manager, *recorder, error) {
	m, err := Open(Options{Dir: f.TempDir(), Known: func(string) bool { return true }, Now: func() time.Time { return *now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	r := &recorder{}
	m.SetPublisher(r)
	return m, r, nil
}
