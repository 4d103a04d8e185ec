package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkBacklogDrain measures how fast the gateway empties a backlog the
// broker holds for it: its persistent session is created, it stops, a
// backlog of QoS 1 readings is published (200k by default,
// IOTGW_BENCH_BACKLOG), and the clock runs from starting the gateway until
// InfluxDB has accepted every point. Reports msg/s and the gateway's peak
// RSS (VmHWM). Run with -benchtime 1x (scripts/bench-drain.sh).
//
// It also reports the CPU time per message of each process, since on a
// small machine the three compete for the same cores and msg/s depends on
// the broker's and the database's CPU as much as on the gateway's:
// gw_cpu_us/msg is the gateway process's whole CPU time (it is started for
// the drain, so this includes its start), mosquitto_cpu_us/msg and
// influxd_cpu_us/msg what the broker and influxd used from just before the
// gateway started until the drain completed. Read from /proc/<pid>/stat
// (see cpuTime); without /proc they are not reported.
//
// With IOTGW_BENCH_CPUPROFILE=path the gateway serves pprof
// (IOTGW_PPROF_ADDR) and a CPU profile of the first
// IOTGW_BENCH_PROFILE_SECONDS (default 5) of the drain is saved to
// path.<sub-benchmark>.
//
// Knobs (environment):
//   - IOTGW_BENCH_SPOOL_TMPFS=1 puts the gateway's spool directory on
//     /dev/shm (tmpfs, where fsync costs next to nothing), to compare with
//     the disk-backed spool of the default run; skipped without /dev/shm.
//   - IOTGW_BENCH_CONNECTIONS=N (N > 1) makes the gateway use N broker
//     connections (IOTGW_MQTT_CONNECTIONS) in one shared subscription,
//     $share/iotgw/sensors/#. The persistent sessions are created with the
//     same count, so every member of the group exists (offline) when the
//     backlog is published. mosquitto 2.0 hands a group's messages to its
//     members in turn whether they are connected or not, and queues an
//     offline member's share for it: the backlog is split evenly over the
//     connections' queues and each drains its own. Each connection has its
//     own window of max_inflight_messages.
//   - IOTGW_BENCH_DEVICES=N[,N...] spreads the backlog over N devices
//     (distinct topics sensors/s1/d<k>/env) instead of ten, and runs one
//     inflight-1000 drain per count (devices-N), so the cost per message
//     at each fleet size is compared within one run. Before each drain a
//     warm-up publishes one reading per device (field "warm", not counted)
//     through a running gateway, so InfluxDB's series exist and the drain
//     measures writing points, not creating series. The gateway of the
//     drain is a new process: its per-topic caches start empty.
func BenchmarkBacklogDrain(b *testing.B) {
	backlog := envInt("IOTGW_BENCH_BACKLOG", 200000)
	if fleets := envInts("IOTGW_BENCH_DEVICES"); len(fleets) > 0 {
		for _, n := range fleets {
			b.Run(fmt.Sprintf("devices-%d", n), func(b *testing.B) {
				benchDrain(b, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: backlog + 1000}, backlog, n)
			})
		}
		return
	}
	b.Run("inflight-1000", func(b *testing.B) {
		benchDrain(b, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: backlog + 1000}, backlog, 0)
	})
	// mosquitto's default window of 20 in flight; only the queue is raised
	// so that the (smaller) backlog fits.
	small := max(backlog/4, 1)
	b.Run("inflight-20", func(b *testing.B) {
		benchDrain(b, testsvc.MosquittoOptions{MaxQueued: small + 1000}, small, 0)
	})
}

// envInts reads a comma-separated list of positive integers ("" is none).
func envInts(name string) []int {
	var out []int
	for _, f := range strings.Split(os.Getenv(name), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			panic(fmt.Sprintf("%s: %q is not a positive integer", name, f))
		}
		out = append(out, n)
	}
	return out
}

// benchDrain drains backlog readings from devices devices (0: the ten of
// reading, without a warm-up).
func benchDrain(b *testing.B, opts testsvc.MosquittoOptions, backlog, devices int) {
	var extra []string
	spoolOn := "disk"
	if os.Getenv("IOTGW_BENCH_SPOOL_TMPFS") == "1" {
		dir := tmpfsDir(b)
		extra = append(extra, "IOTGW_SPOOL_DIR="+dir) // the last value of a variable wins
		spoolOn = "tmpfs " + dir
	}
	conns := envInt("IOTGW_BENCH_CONNECTIONS", 1)
	if conns > 1 {
		// Config requires $share/ filters with more than one connection.
		extra = append(extra, "IOTGW_MQTT_CONNECTIONS="+strconv.Itoa(conns), "IOTGW_MQTT_TOPICS=$share/iotgw/sensors/#")
	}
	b.Logf("gateway: %d broker connection(s), spool on %s, %d devices", conns, spoolOn, max(devices, 10))
	in := testsvc.StartInflux(b)
	mq := testsvc.StartMosquitto(b, opts)
	profile := os.Getenv("IOTGW_BENCH_CPUPROFILE")
	pprofAddr := ""
	if profile != "" {
		pprofAddr = fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(b))
		extra = append(extra, "IOTGW_PPROF_ADDR="+pprofAddr)
	}
	// IOTGW_BENCH_GATEWAY_ENV (comma list of K=V) tunes only the gateway
	// process, e.g. GOGC=50, without touching influxd or the publisher.
	for _, kv := range strings.Split(os.Getenv("IOTGW_BENCH_GATEWAY_ENV"), ",") {
		if strings.Contains(kv, "=") {
			extra = append(extra, kv)
		}
	}
	g := newGateway(b, mq.URL(), in.URL(), extra...)
	g.start() // creates the persistent session(s), one per connection
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(b, mq.URL())
	pub.devices = devices
	if devices > 0 {
		warmStart := time.Now()
		pub.field = "warm"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		err := pub.publish(ctx, 0, devices, 0)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		g.waitFor("warm-up written", 30*time.Minute, func() bool {
			return g.metric("iotgw_points_written_total") >= float64(devices)
		})
		pub.field = ""
		b.Logf("warm-up: %d series written in %s; influxd RSS %.0f MB, gateway RSS %.1f MB", devices,
			time.Since(warmStart).Round(time.Millisecond), float64(procStatus(in.Pid(), "VmRSS:"))/1e6,
			float64(procStatus(g.pid(), "VmRSS:"))/1e6)
		runningDrain(b, g, pub, in, mq.Pid(), backlog, devices, pprofAddr, profile)
		return
	}
	g.stop(syscall.SIGTERM)
	base := pub.base

	var elapsed time.Duration
	var peak, peakAnon int64
	// CPU time of each process over the drains; reported only if every
	// reading succeeded.
	var gwCPU, mqCPU, inCPU time.Duration
	cpuOK := true
	b.StopTimer()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pub.base = base + int64(i*backlog) // distinct timestamps per round
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		pubStart := time.Now()
		if err := pub.publish(ctx, 0, backlog, 0); err != nil {
			cancel()
			b.Fatal(err)
		}
		cancel()
		b.Logf("backlog of %d published in %s", backlog, time.Since(pubStart).Round(time.Millisecond))

		mq0, ok1 := cpuTime(mq.Pid())
		in0, ok2 := cpuTime(in.Pid())
		b.StartTimer()
		start := time.Now()
		g.startAgain()
		var profDone chan error
		if profile != "" && i == 0 {
			profDone = startProfile(pprofAddr, profile+"."+filepath.Base(b.Name()))
		}
		stopAnon := sampleAnon(g)
		g.waitFor("backlog drained", 10*time.Minute, func() bool {
			return g.metric("iotgw_points_written_total") >= float64(backlog)
		})
		d := time.Since(start)
		b.StopTimer()
		peakAnon = max(peakAnon, stopAnon())
		gw1, ok3 := cpuTime(g.pid()) // a new process: all of it is this drain's
		mq1, ok4 := cpuTime(mq.Pid())
		in1, ok5 := cpuTime(in.Pid())
		elapsed += d
		peak = max(peak, vmHWM(g.pid()))
		cpu := ""
		if ok1 && ok2 && ok3 && ok4 && ok5 {
			gwCPU, mqCPU, inCPU = gwCPU+gw1, mqCPU+mq1-mq0, inCPU+in1-in0
			cpu = fmt.Sprintf("; CPU per msg: gateway %.1f µs, mosquitto %.1f µs, influxd %.1f µs (in all %s, %s, %s)",
				perMsg(gw1, backlog), perMsg(mq1-mq0, backlog), perMsg(in1-in0, backlog),
				gw1, mq1-mq0, in1-in0)
		} else {
			cpuOK = false
		}
		if profDone != nil {
			if err := <-profDone; err != nil {
				b.Errorf("cpu profile: %v", err)
			}
		}
		b.Logf("drained %d in %s (%.0f msg/s), peak RSS %.1f MB (anonymous %.1f MB)%s", backlog, d.Round(time.Millisecond),
			float64(backlog)/d.Seconds(), float64(peak)/1e6, float64(peakAnon)/1e6, cpu)
		g.stop(syscall.SIGTERM)
	}
	want := int64(b.N * backlog)
	if c, err := in.Count("env", "v"); err != nil || c != want {
		b.Fatalf("InfluxDB has %d points (%v), want exactly %d", c, err, want)
	}
	b.ReportMetric(float64(want)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64(peak)/1e6, "peakRSS_MB")
	b.ReportMetric(float64(peakAnon)/1e6, "peakAnon_MB")
	if cpuOK {
		b.ReportMetric(perMsg(gwCPU, int(want)), "gw_cpu_us/msg")
		b.ReportMetric(perMsg(mqCPU, int(want)), "mosquitto_cpu_us/msg")
		b.ReportMetric(perMsg(inCPU, int(want)), "influxd_cpu_us/msg")
	}
}

// startProfile fetches the gateway's CPU profile into path; the channel
// gives the result.
func startProfile(addr, path string) chan error {
	done := make(chan error, 1)
	go func() { done <- fetchProfile(addr, path) }()
	return done
}

// sampleAnon samples the anonymous part of the gateway's RSS until the
// returned function is called, which returns its peak. The kernel keeps
// the peak of the whole RSS (VmHWM) but not of that part (heap, stacks:
// what the process itself costs, as opposed to the binary's pages, which
// are shared and reclaimable).
func sampleAnon(g *gw) (stop func() int64) {
	done := make(chan int64)
	quit := make(chan struct{})
	go func() {
		var hi int64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			hi = max(hi, procStatus(g.pid(), "RssAnon:"))
			select {
			case <-t.C:
			case <-quit:
				done <- hi
				return
			}
		}
	}()
	return func() int64 { close(quit); return <-done }
}

// runningDrain is the drain of a gateway that has been running: the
// gateway of the warm-up, which has heard from every device once, is
// stopped with SIGSTOP (its connection stays open; mosquitto queues for
// it) while the backlog is published, and resumed with SIGCONT. CPU time is
// what each process used from the resumption to the last point written,
// and the gateway's peak RSS is reset (clear_refs) just before, so both
// are the drain's alone and a large fleet's first sight of its devices
// (the warm-up) is not in them.
func runningDrain(b *testing.B, g *gw, pub *publisher, in *testsvc.Influx, mqPid, backlog, devices int, pprofAddr, profile string) {
	base := pub.base
	inPid := in.Pid()
	var elapsed time.Duration
	var peak, peakAnon int64
	var gwCPU, mqCPU, inCPU time.Duration
	cpuOK := true
	b.StopTimer()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pub.base = base + int64((i+1)*backlog)
		if err := g.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		pubStart := time.Now()
		err := pub.publish(ctx, 0, backlog, 0)
		cancel()
		if err != nil {
			_ = g.cmd.Process.Signal(syscall.SIGCONT)
			b.Fatal(err)
		}
		b.Logf("backlog of %d published in %s (gateway stopped)", backlog, time.Since(pubStart).Round(time.Millisecond))
		// "5" resets the peak RSS (VmHWM) to the current RSS.
		_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", g.pid()), []byte("5"), 0)
		gw0, ok0 := cpuTime(g.pid())
		mq0, ok1 := cpuTime(mqPid)
		in0, ok2 := cpuTime(inPid)
		b.StartTimer()
		start := time.Now()
		if err := g.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			b.Fatal(err)
		}
		var profDone chan error
		if profile != "" && i == 0 {
			profDone = startProfile(pprofAddr, profile+"."+filepath.Base(b.Name()))
		}
		stopAnon := sampleAnon(g)
		want := float64(devices + (i+1)*backlog)
		g.waitFor("backlog drained", 10*time.Minute, func() bool {
			return g.metric("iotgw_points_written_total") >= want
		})
		d := time.Since(start)
		b.StopTimer()
		peakAnon = max(peakAnon, stopAnon())
		gw1, ok3 := cpuTime(g.pid())
		mq1, ok4 := cpuTime(mqPid)
		in1, ok5 := cpuTime(inPid)
		elapsed += d
		peak = max(peak, vmHWM(g.pid()))
		cpu := ""
		if ok0 && ok1 && ok2 && ok3 && ok4 && ok5 {
			gwCPU, mqCPU, inCPU = gwCPU+gw1-gw0, mqCPU+mq1-mq0, inCPU+in1-in0
			cpu = fmt.Sprintf("; CPU per msg: gateway %.2f µs, mosquitto %.2f µs, influxd %.2f µs (in all %s, %s, %s)",
				perMsg(gw1-gw0, backlog), perMsg(mq1-mq0, backlog), perMsg(in1-in0, backlog),
				gw1-gw0, mq1-mq0, in1-in0)
		} else {
			cpuOK = false
		}
		if profDone != nil {
			if err := <-profDone; err != nil {
				b.Errorf("cpu profile: %v", err)
			}
		}
		b.Logf("drained %d from %d devices in %s (%.0f msg/s), peak RSS %.1f MB (anonymous %.1f MB)%s", backlog, devices,
			d.Round(time.Millisecond), float64(backlog)/d.Seconds(), float64(peak)/1e6, float64(peakAnon)/1e6, cpu)
	}
	want := int64(b.N * backlog)
	if c, err := in.Count("env", "v"); err != nil || c != want {
		b.Fatalf("InfluxDB has %d points of v (%v), want exactly %d", c, err, want)
	}
	b.ReportMetric(float64(want)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64(peak)/1e6, "peakRSS_MB")
	b.ReportMetric(float64(peakAnon)/1e6, "peakAnon_MB")
	if cpuOK {
		b.ReportMetric(perMsg(gwCPU, int(want)), "gw_cpu_us/msg")
		b.ReportMetric(perMsg(mqCPU, int(want)), "mosquitto_cpu_us/msg")
		b.ReportMetric(perMsg(inCPU, int(want)), "influxd_cpu_us/msg")
	}
}

// tmpfsDir makes a directory on /dev/shm, removed when the benchmark ends,
// or skips the benchmark when there is no /dev/shm.
func tmpfsDir(b *testing.B) string {
	b.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		b.Skip("IOTGW_BENCH_SPOOL_TMPFS: no /dev/shm on this machine")
	}
	dir, err := os.MkdirTemp("/dev/shm", "iotgw-bench-spool-")
	if err != nil {
		b.Fatal(err)
	}
	// Registered before the gateway's own cleanup, so it runs after the
	// gateway is stopped.
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// clockTicks is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// what sysconf(_SC_CLK_TCK) returns, which Linux fixes at 100 on every
// architecture whatever the kernel's own tick rate (CONFIG_HZ) is.
const clockTicks = 100

// cpuTime returns the CPU time a process has used so far, user plus
// system over all its threads (utime + stime, fields 14 and 15 of
// /proc/<pid>/stat; children are not included). ok is false without /proc
// (not Linux) or when the process is gone. The resolution is one tick,
// 10 ms.
func cpuTime(pid int) (d time.Duration, ok bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Field 2, the command name, is in parentheses and may hold spaces or
	// parentheses: the fields from 3 (state) on follow the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[14-3], 10, 64)
	stime, err2 := strconv.ParseInt(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, true
}

// perMsg is d in microseconds per message.
func perMsg(d time.Duration, msgs int) float64 {
	return float64(d.Microseconds()) / float64(msgs)
}

// fetchProfile saves a CPU profile of the gateway taken over
// IOTGW_BENCH_PROFILE_SECONDS.
func fetchProfile(addr, path string) error {
	secs := envInt("IOTGW_BENCH_PROFILE_SECONDS", 5)
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// The heap right after, for where the memory goes (inuse_space) and
	// what makes garbage (alloc_space).
	resp, err = http.Get(fmt.Sprintf("http://%s/debug/pprof/heap", addr))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	hf, err := os.Create(path + ".heap")
	if err != nil {
		return err
	}
	if _, err := io.Copy(hf, resp.Body); err != nil {
		hf.Close()
		return err
	}
	return hf.Close()
}

// BenchmarkLatencyUnderLoad: 5000 msg/s flow through the gateway
// (IOTGW_BENCH_RATE), and every 200 ms a probe reading is published; the
// time from publishing it to it being returned by a Flux query is one
// sample. Reports p50, p99 and max over IOTGW_BENCH_LATENCY_SECONDS
// (default 20). Queries poll every 10 ms, so figures include up to that
// much plus one query's duration.
func BenchmarkLatencyUnderLoad(b *testing.B) {
	rate := envInt("IOTGW_BENCH_RATE", 5000)
	dur := time.Duration(envInt("IOTGW_BENCH_LATENCY_SECONDS", 20)) * time.Second
	in := testsvc.StartInflux(b)
	mq := testsvc.StartMosquitto(b, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000})
	g := newGateway(b, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(b, mq.URL())
	probe := newPublisher(b, mq.URL())

	b.StopTimer()
	b.ResetTimer()
	var samples []time.Duration
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		loadDone := make(chan error, 1)
		n := rate * int(dur/time.Second+5)
		pub.base = time.Now().Add(-2 * time.Hour).UnixMilli()
		go func() { loadDone <- pub.publish(ctx, 0, n, rate) }()
		time.Sleep(2 * time.Second) // reach steady state
		b.StartTimer()
		for end, k := time.Now().Add(dur), 0; time.Now().Before(end); k++ {
			seq := i*1_000_000 + k
			sent := time.Now()
			samples = append(samples, probeLatency(b, probe, in, seq))
			time.Sleep(time.Until(sent.Add(200 * time.Millisecond)))
		}
		b.StopTimer()
		cancel()
		<-loadDone
	}
	slices.Sort(samples)
	q := func(p float64) time.Duration { return samples[min(len(samples)-1, int(p*float64(len(samples))))] }
	b.Logf("%d probes at %d msg/s: p50 %s p90 %s p99 %s max %s", len(samples), rate,
		q(0.5), q(0.9), q(0.99), samples[len(samples)-1])
	b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(samples[len(samples)-1].Microseconds())/1000, "max_ms")
}

// probeLatency publishes probe reading seq and returns how long it took to
// be returned by a Flux query (polled every 10 ms, so up to that much
// plus one query is included).
func probeLatency(b *testing.B, probe *publisher, in *testsvc.Influx, seq int) time.Duration {
	b.Helper()
	sent := time.Now()
	probe.publishRaw(b, "sensors/s1/probe/probe", []byte(fmt.Sprintf(`{"ts":%d,"seq":%d}`, sent.UnixMilli(), seq)))
	for {
		rows, err := in.Query(fmt.Sprintf(`from(bucket: %q) |> range(start: -10m)
		  |> filter(fn: (r) => r._measurement == "probe" and r._field == "seq" and r._value == %d.0)`, testsvc.Bucket, seq))
		if err == nil && len(rows) > 0 {
			return time.Since(sent)
		}
		if time.Since(sent) > 30*time.Second {
			b.Fatalf("probe %d not queryable after 30s", seq)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
