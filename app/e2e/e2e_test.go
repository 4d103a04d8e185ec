package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func TestEndToEnd(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())

	const n = 2000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bad := map[string][]byte{
		"not_json":   []byte(`{"v":`),
		"bad_utf8":   {'{', '"', 'v', '"', ':', '"', 0xff, '"', '}'},
		"bad_ts":     []byte(`{"ts":"yesterday","v":1}`),
		"bad_field":  []byte(`{"v":{"nested":1}}`),
		"no_fields":  []byte(`{}`),
		"not_object": []byte(`[1,2,3]`),
	}
	done := make(chan error, 1)
	go func() { done <- pub.publish(ctx, 0, n, 0) }()
	for _, p := range bad { // malformed messages in the middle of good ones
		pub.publishRaw(t, "sensors/s1/bad/env", p)
	}
	pub.publishRaw(t, "sensors/too/short", []byte(`{"v":1}`))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, n)

	// Every rejected message is counted by reason.
	for reason := range bad {
		if v := g.metric(`iotgw_dead_letters_total{reason="` + reason + `"}`); v != 1 {
			t.Errorf("dead letters %s = %v, want 1", reason, v)
		}
	}
	if v := g.metric(`iotgw_dead_letters_total{reason="bad_topic"}`); v != 1 {
		t.Errorf("dead letters bad_topic = %v, want 1", v)
	}

	// One point read back: measurement, tags, fields and device time.
	rows, err := in.Query(`from(bucket: "` + testsvc.Bucket + `") |> range(start: 0)
	  |> filter(fn: (r) => r._measurement == "env" and r.device == "d7")
	  |> filter(fn: (r) => r._field == "v" and r._value == 1237.0)`)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("rows = %v, want one", rows)
	}
	r := rows[0]
	want := time.UnixMilli(pub.base + 1237).UTC()
	if r["site"] != "s1" || r["gateway"] != "gw-test" || !r["_time"].(time.Time).Equal(want) {
		t.Fatalf("point = %v, want site s1, gateway gw-test, time %s", r, want)
	}

	// SIGTERM stops it promptly.
	start := time.Now()
	g.stop(15)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
}

// The broker restarts (with persistence) in the middle of the stream: the
// gateway reconnects, its persistent session resumes, nothing is lost.
func TestBrokerRestart(t *testing.T) {
	in := testsvc.StartInflux(t)
	// The queue is raised from mosquitto's 1000: on a loaded machine the
	// publisher's retries after the restart can outrun the gateway for a
	// moment, and mosquitto drops what overflows a client's queue. That
	// limit has tests of its own; this one is about the restart.
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{Persistence: true, MaxQueued: 100_000})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())
	const n = 6000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pub.publish(ctx, 0, n, 2000) }()
	waitFor(t, "a third published", time.Minute, func() bool { pub.mu.Lock(); defer pub.mu.Unlock(); return pub.acked > n/3 }, nil)
	mq.Stop()
	mq.Start()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, n)
}
