package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// Fault tests: a publisher sends a known, numbered set of QoS 1 readings at
// a steady rate; in the middle of the stream something fails; InfluxDB must
// end with exactly that set. Each runs against mosquitto's default limits
// (20 in flight, 1000 queued per client) and against raised ones.

const (
	// influxOutage is how long InfluxDB stays down in the outage tests.
	influxOutage = 15 * time.Second
	// defaultLimitsRate is the publish rate used with mosquitto's default
	// limits. The broker drops what does not fit in a client's queue of
	// 1000, also while the gateway is connected, if the publisher outruns
	// the gateway's acknowledgements (20 in flight); 2000 msg/s is well
	// below what the gateway acknowledges at 20 in flight on this 2-core
	// machine (see README.md), and leaves the broker's queue room for the
	// ~0.3 s a restarted gateway is away.
	defaultLimitsRate = 2000
	// raisedLimitsRate is the publish rate with max_inflight_messages 1000.
	raisedLimitsRate = 5000
)

// limits is one broker configuration a fault test runs against.
type limits struct {
	name string
	opts testsvc.MosquittoOptions
	rate int
}

// brokerLimits returns the default and the raised configuration; queued is
// what the raised one must be able to queue (more than a test publishes).
func brokerLimits(queued int) []limits {
	return []limits{
		{"default-limits", testsvc.MosquittoOptions{Persistence: true}, defaultLimitsRate},
		{"raised-limits", testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: queued, Persistence: true}, raisedLimitsRate},
	}
}

// faultEnv is everything one fault scenario runs against.
type faultEnv struct {
	t   *testing.T
	in  *testsvc.Influx
	mq  *testsvc.Mosquitto
	g   *gw
	pub *publisher
}

// fastRetry keeps write retries short so a test does not wait out a 30 s
// backoff after the database returns.
const fastRetry = `
[influx]
max_retry_interval = "1s"
`

// runFault publishes n readings at l.rate, calls fault once a quarter of
// them are acknowledged, and then expects exactly n points.
func runFault(t *testing.T, l limits, n int, fault func(e *faultEnv)) {
	e := &faultEnv{t: t}
	e.in = testsvc.StartInflux(t)
	e.mq = testsvc.StartMosquitto(t, l.opts)
	e.g = newGateway(t, e.mq.URL(), e.in.URL())
	cfg := writeConfig(t, fastRetry)
	e.g.start("--config", cfg)
	e.g.waitFor("ready", 30*time.Second, func() bool { ok, _ := e.g.ready(); return ok })
	e.pub = newPublisher(t, e.mq.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.pub.publish(ctx, 0, n, l.rate) }()
	waitFor(t, "a quarter published", time.Minute, func() bool { return e.pub.ackedCount() >= n/4 }, nil)
	fault(e)
	if err := <-done; err != nil {
		t.Fatalf("publish: %v (%d acknowledged)", err, e.pub.ackedCount())
	}
	expectExactly(t, e.in, e.g, int64(n))
	if v := e.g.metric(`iotgw_spool_corrupt_records_total`); v != 0 {
		t.Errorf("corrupt records = %v after a clean run", v)
	}
}

// readyzFalse waits until /readyz fails with a reason containing want.
func readyzFalse(e *faultEnv, want string, timeout time.Duration) {
	e.t.Helper()
	var body string
	e.g.waitFor("/readyz not ready ("+want+")", timeout, func() bool {
		ok, b := e.g.ready()
		body = b
		return !ok && strings.Contains(b, want)
	})
	e.t.Logf("readyz while down: %s", body)
}

// 1. InfluxDB is killed mid-stream and stays away for influxOutage. The
// gateway keeps acknowledging into the spool, /readyz says the database
// is failing, and once it is back every reading arrives exactly once.
func TestFaultInfluxDown(t *testing.T) {
	for _, l := range brokerLimits(500000) {
		t.Run(l.name, func(t *testing.T) {
			n := l.rate * int(influxOutage/time.Second+8)
			runFault(t, l, n, func(e *faultEnv) {
				e.in.Kill()
				downAt := time.Now()
				readyzFalse(e, "last write failed", 10*time.Second)
				spooled := e.g.metric("iotgw_spool_entries")
				time.Sleep(time.Until(downAt.Add(influxOutage)))
				if grown := e.g.metric("iotgw_spool_entries"); grown <= spooled {
					t.Errorf("spool did not grow while InfluxDB was down: %v then %v", spooled, grown)
				}
				e.in.Start()
				e.g.waitFor("/readyz ready again", 30*time.Second, func() bool { ok, _ := e.g.ready(); return ok })
			})
		})
	}
}

// 2. The gateway is SIGKILLed mid-stream and started again with the same
// client id and state directory. Whatever it had spooled is replayed
// (duplicates overwrite the same points), whatever it had not acknowledged
// the broker delivers again.
func TestFaultGatewayKilled(t *testing.T) {
	for _, l := range brokerLimits(500000) {
		t.Run(l.name, func(t *testing.T) {
			n := l.rate * 8
			runFault(t, l, n, func(e *faultEnv) {
				e.g.stop(syscall.SIGKILL)
				e.g.startAgain()
			})
		})
	}
}

// 3. mosquitto (with persistence) is stopped and started mid-stream. The
// gateway reconnects, its persistent session resumes.
func TestFaultBrokerRestart(t *testing.T) {
	for _, l := range brokerLimits(500000) {
		t.Run(l.name, func(t *testing.T) {
			n := l.rate * 8
			runFault(t, l, n, func(e *faultEnv) {
				e.mq.Stop()
				e.mq.Start()
			})
		})
	}
}

// 4. All three at once: InfluxDB killed, the broker stopped, the gateway
// SIGKILLed; the broker and the gateway come back at once, InfluxDB after
// influxOutage.
func TestFaultAllAtOnce(t *testing.T) {
	for _, l := range brokerLimits(500000) {
		t.Run(l.name, func(t *testing.T) {
			n := l.rate * int(influxOutage/time.Second+8)
			runFault(t, l, n, func(e *faultEnv) {
				e.in.Kill()
				downAt := time.Now()
				e.mq.Stop()
				e.g.stop(syscall.SIGKILL)
				e.mq.Start()
				e.g.startAgain()
				readyzFalse(e, "last write failed", 15*time.Second)
				time.Sleep(time.Until(downAt.Add(influxOutage)))
				e.in.Start()
				e.g.waitFor("/readyz ready again", 30*time.Second, func() bool { ok, _ := e.g.ready(); return ok })
			})
		})
	}
}

// TestSustainableRate measures, with mosquitto's default limits, the
// highest publish rate at which the broker drops nothing for the gateway,
// and checks what it counts: after each step a probe published last tells
// when everything the broker was going to deliver has arrived; the gateway
// received no more than was published, InfluxDB holds exactly what it
// received, and the lowest rate loses nothing. Run it with
// IOTGW_MEASURE_RATE=1.
func TestSustainableRate(t *testing.T) {
	if os.Getenv("IOTGW_MEASURE_RATE") == "" {
		t.Skip("set IOTGW_MEASURE_RATE=1 to measure")
	}
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())
	from, sustained := 0, 0
	var stored int64
	for step, rate := range []int{2000, 4000, 8000, 12000, 16000, 20000, 25000} {
		n := rate * 5
		before := g.metric(`iotgw_messages_received_total{format="json"}`)
		start := time.Now()
		if err := pub.publish(context.Background(), from, from+n, rate); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		// The broker accepted the probe after acknowledging every reading,
		// and delivers in that order: once the probe is in InfluxDB, the
		// gateway has had everything the broker did not drop.
		pub.publishRaw(t, "sensors/s1/probe/probe", fmt.Appendf(nil, `{"ts":%d,"step":%d}`, pub.base+int64(step), step))
		g.waitFor(fmt.Sprintf("probe %d in InfluxDB", step), 60*time.Second, func() bool {
			c, err := in.Count("probe", "step")
			return err == nil && c == int64(step+1)
		})
		got := g.metric(`iotgw_messages_received_total{format="json"}`) - before - 1
		t.Logf("target %5d msg/s: published %d in %s (%.0f msg/s), gateway received %.0f, broker dropped %.0f",
			rate, n, took.Round(time.Millisecond), float64(n)/took.Seconds(), got, float64(n)-got)
		if got > float64(n) {
			t.Fatalf("received %.0f of %d published", got, n)
		}
		stored += int64(got)
		expectExactly(t, in, g, stored)
		if got == float64(n) && sustained == step {
			sustained++
		}
		from += n
	}
	if sustained == 0 {
		t.Fatalf("mosquitto's defaults dropped readings even at 2000 msg/s")
	}
	t.Logf("no drops up to step %d of 7", sustained)
	fmt.Println(g.metricsDump())
}
