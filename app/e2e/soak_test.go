package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// BenchmarkSoak runs the pipeline at a steady rate for a long time:
// IOTGW_SOAK_RATE readings per second (default 20000) from
// IOTGW_SOAK_DEVICES devices (100000) for IOTGW_SOAK_MINUTES (30). It
// reports the gateway's RSS after the first minute and its highest after
// that (flat memory means the two are close), publish → queryable latency
// of a probe every 500 ms (p50, p99, max), and checks that InfluxDB holds
// every reading exactly once.
//
//	IOTGW_SOAK_MINUTES=30 go test ./app/e2e -run '^$' -bench Soak -benchtime 1x -timeout 60m -v
func BenchmarkSoak(b *testing.B) {
	rate := envInt("IOTGW_SOAK_RATE", 20000)
	devices := envInt("IOTGW_SOAK_DEVICES", 100000)
	dur := time.Duration(envInt("IOTGW_SOAK_MINUTES", 30)) * time.Minute
	in := testsvc.StartInflux(b)
	mq := testsvc.StartMosquitto(b, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 1_000_000})
	g := newGateway(b, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(b, mq.URL())
	pub.devices = devices
	probe := newPublisher(b, mq.URL())
	n := rate * int(dur/time.Second)
	pub.base = time.Now().Add(-24 * time.Hour).UnixMilli()

	b.ResetTimer()
	ctx, cancel := context.WithTimeout(context.Background(), dur+10*time.Minute)
	defer cancel()
	loadDone := make(chan error, 1)
	start := time.Now()
	go func() { loadDone <- pub.publish(ctx, 0, n, rate) }()

	var samples []time.Duration
	var rssAtMinute, rssMax int64
	nextRSS := start.Add(time.Minute)
	for seq := 0; time.Since(start) < dur; seq++ {
		if now := time.Now(); now.After(nextRSS) {
			rss := procStatus(g.pid(), "VmRSS:")
			if rssAtMinute == 0 {
				rssAtMinute = rss
			}
			rssMax = max(rssMax, rss)
			b.Logf("%s: gateway RSS %.1f MB, %d published", now.Sub(start).Round(time.Second), float64(rss)/1e6, pub.ackedCount())
			nextRSS = now.Add(time.Minute)
		}
		sent := time.Now()
		samples = append(samples, probeLatency(b, probe, in, seq))
		time.Sleep(time.Until(sent.Add(500 * time.Millisecond)))
	}
	if err := <-loadDone; err != nil {
		b.Fatalf("publisher: %v (%d of %d acknowledged)", err, pub.ackedCount(), n)
	}
	b.StopTimer()
	var got int64
	waitFor(b, fmt.Sprintf("%d readings in InfluxDB", n), 10*time.Minute, func() bool {
		c, err := in.Count("env", "v")
		if err == nil {
			got = c
		}
		return got >= int64(n)
	}, func() string { return fmt.Sprintf("have %d\n%s", got, g.metricsDump()) })
	if got != int64(n) {
		b.Fatalf("InfluxDB has %d readings, want exactly %d", got, n)
	}
	slices.Sort(samples)
	q := func(p float64) time.Duration { return samples[min(len(samples)-1, int(p*float64(len(samples))))] }
	b.Logf("%d readings at %d/s from %d devices over %s: probes p50 %s p99 %s max %s; RSS %.1f MB at 1 min, max %.1f MB after",
		n, rate, devices, dur, q(0.5), q(0.99), samples[len(samples)-1], float64(rssAtMinute)/1e6, float64(rssMax)/1e6)
	b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(rssAtMinute)/1e6, "rss_1min_MB")
	b.ReportMetric(float64(rssMax)/1e6, "rss_max_MB")
}
