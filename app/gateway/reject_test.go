package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// rejectBatch is n points of measurement m; those i for which bad(i) holds
// carry a string where InfluxDB already has a float (a field-type
// conflict, as after a firmware update).
func rejectBatch(m string, n int, bad func(int) bool) [][]byte {
	lines := make([][]byte, n)
	for i := range lines {
		v := fmt.Sprintf("%d", i)
		if bad(i) {
			v = fmt.Sprintf("%q", v)
		}
		lines[i] = fmt.Appendf(nil, "%s v=%s %d\n", m, v, 1_700_000_000_000_000_000+int64(i))
	}
	return lines
}

func influxGateway(tb testing.TB, in *testsvc.Influx, measurement string) *Gateway {
	tb.Helper()
	cfg := config.Default()
	cfg.Spool.Dir = tb.TempDir()
	cfg.Influx.URL = in.URL()
	cfg.Influx.Bucket = testsvc.Bucket
	cfg.Influx.Gzip = config.GzipOff
	cfg.Influx.BatchSize = 5000
	cfg.Influx.FlushInterval = config.Duration{Duration: time.Millisecond}
	cfg.HTTP.Addr = ""
	g, err := FromConfig(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	// The field's type is float from now on (InfluxDB 1.8 keeps field
	// types per shard: the seed goes in the batch's time range).
	if err := g.writer.Write(context.Background(), fmt.Appendf(nil, "%s v=-1 %d\n", measurement, 1_700_000_000_000_000_000-1)); err != nil {
		tb.Fatal(err)
	}
	return g
}

func (g *Gateway) requests(t testing.TB) float64 {
	var n float64
	for _, r := range []string{"ok", "rejected", "retry", "too_large"} {
		n += labelValue(t, g, "iotgw_write_batches_total", "result", r)
	}
	return n
}

// Against real InfluxDB 1.8, which answers a field-type conflict with 400
// "partial write: ... dropped=N" and stores the other points: a batch in
// which every point is bad costs one request; a few bad points are found
// by splitting; many scattered ones stop the split at its bound, and the
// rest is dead-lettered as partly_rejected. Every point is either in
// InfluxDB or in the dead-letter file, and the requests stay bounded.
func TestRejectedBatchBounded(t *testing.T) {
	in := testsvc.StartInflux(t)
	const n = 5000
	for _, tt := range []struct {
		name                string
		bad                 func(int) bool
		wantBad, maxRequest int
		wantUnresolved      bool
	}{
		{"all bad", func(int) bool { return true }, n, 1, false},
		{"eight bad", func(i int) bool { return i%700 == 3 }, 8, maxSplitRequests, false},
		{"every tenth bad", func(i int) bool { return i%10 == 0 }, n / 10, maxSplitRequests + 16, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := fmt.Sprintf("rej_%d", time.Now().UnixNano())
			g := influxGateway(t, in, m)
			lines := rejectBatch(m, n, tt.bad)
			if err := g.spool.Append(lines); err != nil {
				t.Fatal(err)
			}
			runWriter(t, g)
			waitUntil(t, "the batch to be settled", func() bool { return g.spool.Stats().Records == 0 })
			reqs := g.requests(t)
			rejected := labelValue(t, g, "iotgw_dead_letters_total", "reason", sensor.ReasonRejected)
			unresolved := labelValue(t, g, "iotgw_dead_letters_total", "reason", reasonPartlyRejected)
			stored, err := in.Count(m, "v")
			if err != nil {
				t.Fatal(err)
			}
			stored-- // the seed
			t.Logf("%d requests; dead letters: %v rejected, %v partly_rejected; InfluxDB has %d", int(reqs), rejected, unresolved, stored)
			if reqs > float64(tt.maxRequest) {
				t.Errorf("%v requests, want at most %d", reqs, tt.maxRequest)
			}
			if stored != int64(n-tt.wantBad) {
				t.Errorf("InfluxDB has %d good points, want %d", stored, n-tt.wantBad)
			}
			if tt.wantUnresolved {
				if unresolved == 0 || rejected+unresolved < float64(tt.wantBad) {
					t.Errorf("dead letters %v + %v do not cover the %d bad points", rejected, unresolved, tt.wantBad)
				}
			} else if rejected != float64(tt.wantBad) || unresolved != 0 {
				t.Errorf("dead letters %v rejected, %v partly_rejected; want %d, 0", rejected, unresolved, tt.wantBad)
			}
		})
	}
}

// BenchmarkRejectedBatch reports the write requests a 5000-point batch in
// which every point is bad costs (requests/op) against real InfluxDB 1.8.
func BenchmarkRejectedBatch(b *testing.B) {
	in := testsvc.StartInflux(b)
	m := "rej_bench"
	g := influxGateway(b, in, m)
	defer g.closeState()
	lines := rejectBatch(m, 5000, func(int) bool { return true })
	before := g.requests(b)
	b.ResetTimer()
	for b.Loop() {
		if err := g.deliver(context.Background(), lines); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric((g.requests(b)-before)/float64(b.N), "requests/op")
}
