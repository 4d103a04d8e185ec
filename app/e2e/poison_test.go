package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// Points the database refuses (a field whose type conflicts with the stored
// one) are found by splitting the batch, dead-lettered with the server's
// reason, and never block the good readings around them.
func TestPoisonPointsAreDeadLettered(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Field v is a float: write one first so the type is fixed.
	if err := pub.publish(ctx, 0, 1, 0); err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, 1)

	const n, poison = 3000, 3
	done := make(chan error, 1)
	go func() { done <- pub.publish(ctx, 1, n, 0) }()
	for i := 0; i < poison; i++ {
		pub.publishRaw(t, "sensors/s1/d1/env", fmt.Appendf(nil, `{"ts":%d,"v":"not a number"}`, pub.base-1000-int64(i)))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, n)
	waitFor(t, "3 rejected points dead-lettered", 30*time.Second, func() bool {
		return g.metric(`iotgw_dead_letters_total{reason="rejected_by_database"}`) == poison
	}, g.metricsDump)
}
