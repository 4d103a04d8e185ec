package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// Three gateways share one subscription ($share/iotgw/sensors/#), each
// with its own spool and a stable client id for its slot. While 60k
// readings arrive at 6k/s, slot 1 is SIGKILLed and a new process takes
// its slot over (same client id, same spool directory) 30 s later; slot 2
// is SIGKILLed and restarted at once. Every reading is in InfluxDB
// exactly once: each slot tags its points with its own gateway id, so a
// reading stored by two slots would be two points. The test reports how
// long the dead slot's share waited: mosquitto keeps giving an offline
// member with a live session its turn, and holds those messages until the
// member (its client id) comes back.
func TestSharedSubscriptionFailover(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 200000})
	var gws [3]*gw
	for i := range gws {
		gws[i] = newGateway(t, mq.URL(), in.URL(),
			fmt.Sprintf("IOTGW_MQTT_CLIENT_ID=iotgw-slot-%d", i),
			"IOTGW_MQTT_TOPICS=$share/iotgw/sensors/#",
			fmt.Sprintf("IOTGW_GATEWAY_ID=slot-%d", i),
			"IOTGW_MQTT_PROTOCOL=5")
		gws[i].start()
	}
	for _, g := range gws {
		g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	}
	pub := newPublisher(t, mq.URL())
	const n, rate = 60000, 6000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pub.publish(ctx, 0, n, rate) }()

	waitFor(t, "a quarter published", time.Minute, func() bool { return pub.ackedCount() >= n/4 }, nil)
	dead := gws[1]
	dead.stop(syscall.SIGKILL)
	killedAt := time.Now()
	beforeKill := pub.ackedCount()

	waitFor(t, "half published", time.Minute, func() bool { return pub.ackedCount() >= n/2 }, nil)
	gws[2].stop(syscall.SIGKILL)
	gws[2].start()

	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The others have everything except the dead slot's share.
	others := func() float64 {
		return gws[0].metric("iotgw_points_spooled_total") + gws[2].metric("iotgw_points_spooled_total")
	}
	waitFor(t, "the live slots idle", time.Minute, func() bool {
		a := others()
		time.Sleep(500 * time.Millisecond)
		return others() == a
	}, nil)
	stranded, err := in.Count("env", "v")
	if err != nil {
		t.Fatal(err)
	}

	// A replacement takes the slot over 30 s after the kill.
	time.Sleep(time.Until(killedAt.Add(30 * time.Second))) // the outage under test
	logStart := len(dead.logsAll())
	dead.start()
	takenOver := time.Now()
	var got int64
	waitFor(t, fmt.Sprintf("%d points in InfluxDB", n), 2*time.Minute, func() bool {
		if c, err := in.Count("env", "v"); err == nil {
			got = c
		}
		return got >= n
	}, func() string {
		return fmt.Sprintf("have %d points\n%s\n%s", got, dead.metricsDump(), dead.logs())
	})
	drained := time.Now()
	for _, g := range gws {
		g.waitFor("spool empty", 30*time.Second, func() bool { return g.metric("iotgw_spool_entries") == 0 })
	}
	c, err := in.Count("env", "v")
	if err != nil {
		t.Fatal(err)
	}
	if c != n {
		t.Fatalf("InfluxDB has %d points, want exactly %d", c, n)
	}
	resumed := dead.metric(`iotgw_messages_received_total{format="json"}`)
	t.Logf("slot 1 killed after %d readings; its share waited %s for the replacement (%s after the kill), "+
		"then took %s to drain; %d readings (%.0f%% of all) were stranded meanwhile; the replacement received %.0f",
		beforeKill, takenOver.Sub(killedAt).Round(time.Millisecond), takenOver.Sub(killedAt).Round(time.Second),
		drained.Sub(takenOver).Round(time.Millisecond), n-stranded, 100*float64(n-stranded)/n, resumed)
	if n-stranded == 0 {
		t.Fatal("nothing waited for the dead slot: the broker did not hold its share (the test shows nothing)")
	}
	if v := dead.metric("iotgw_mqtt_sessions_lost_total"); v != 0 {
		t.Errorf("the replacement reports %v lost sessions", v)
	}
	if !strings.Contains(dead.logsAll()[logStart:], "session_present=true") {
		t.Errorf("the replacement did not resume the slot's session:\n%s", dead.logs())
	}
}

// logsAll is the whole log of the gateway's processes.
func (g *gw) logsAll() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "iotgw.log"))
	return string(b)
}

// The signal for a slot whose queued messages are gone: a gateway that had
// a broker session under its client id (recorded in its state directory)
// starts against a broker that has none (here mosquitto restarted without
// persistence; in production an expired session) and says so, in the log
// and in iotgw_mqtt_sessions_lost_total. A restart against a broker that
// kept the session says nothing.
func TestSessionLostSignal(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	g.stop(syscall.SIGTERM)
	g.start() // the session is kept
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	if v := g.metric("iotgw_mqtt_sessions_lost_total"); v != 0 {
		t.Fatalf("sessions lost = %v after a restart the broker kept the session through", v)
	}
	g.stop(syscall.SIGTERM)
	mq.Stop()
	mq.Start() // no persistence: the session is gone
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	if v := g.metric("iotgw_mqtt_sessions_lost_total"); v != 1 {
		t.Fatalf("sessions lost = %v, want 1\n%s", v, g.logs())
	}
	if !strings.Contains(g.logs(), "had no session for this client id") {
		t.Fatalf("no log line for the lost session:\n%s", g.logs())
	}
}
