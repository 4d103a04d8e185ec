package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// spoolCap is the smallest spool.max_bytes the configuration accepts.
const spoolCap = 1 << 20

// capSampler records the largest iotgw_spool_bytes seen until stopped.
type capSampler struct {
	mu   sync.Mutex
	max  float64
	stop chan struct{}
	done chan struct{}
}

func sampleSpoolBytes(g *gw) *capSampler {
	s := &capSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if v := g.metric("iotgw_spool_bytes"); v >= 0 {
				s.mu.Lock()
				s.max = max(s.max, v)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *capSampler) finish() float64 {
	close(s.stop)
	<-s.done
	return s.max
}

// 5a. Spool cap with policy block: InfluxDB is down, more readings arrive
// than 1 MiB holds. The gateway stops acknowledging (the broker keeps the
// rest), counts the refused appends, never holds more than the cap and
// reports degraded; once InfluxDB is back every reading arrives.
//
// Only with raised broker limits: under block the broker must hold what
// the gateway does not acknowledge, and mosquitto's default queue of 1000
// per client drops the rest (the broker's loss, by configuration).
func TestFaultSpoolFullBlock(t *testing.T) {
	const n = 20000 // about 1.7 MiB of records
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000})
	g := newGateway(t, mq.URL(), in.URL())
	g.start("--config", writeConfig(t, fastRetry+fmt.Sprintf("[spool]\nmax_bytes = %d\nsegment_bytes = 262144\npolicy = \"block\"\n", spoolCap)))
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	sampler := sampleSpoolBytes(g)
	in.Kill()

	pub := newPublisher(t, mq.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := pub.publish(ctx, 0, n, 0); err != nil {
		t.Fatal(err)
	}
	g.waitFor(`append_errors{kind="full"} > 0`, 30*time.Second, func() bool {
		return g.metric(`iotgw_spool_append_errors_total{kind="full"}`) > 0
	})
	var body string
	g.waitFor("/readyz degraded", 10*time.Second, func() bool {
		ok, b := g.ready()
		body = b
		return !ok && (strings.Contains(b, "degraded") || strings.Contains(b, "spool: full"))
	})
	t.Logf("readyz at the cap: %s", body)
	// Held at the cap: the gateway tries the refused group again (after a
	// commit or a second) and is refused again, twice more.
	refused := g.metric(`iotgw_spool_append_errors_total{kind="full"}`)
	g.waitFor("two more refused appends", 30*time.Second, func() bool {
		return g.metric(`iotgw_spool_append_errors_total{kind="full"}`) >= refused+2
	})
	if acked := g.metric("iotgw_messages_acked_total"); acked >= n {
		t.Fatalf("gateway acknowledged %v of %d readings with a full spool", acked, n)
	} else {
		t.Logf("at the cap: %v of %d acknowledged, %v bytes spooled", acked, n, g.metric("iotgw_spool_bytes"))
	}

	in.Start()
	expectExactly(t, in, g, n)
	if peak := sampler.finish(); peak > spoolCap || peak == 0 {
		t.Fatalf("spool bytes peaked at %v, cap %d", peak, spoolCap)
	} else {
		t.Logf("spool bytes peak %v (cap %d)", peak, spoolCap)
	}
	if d := g.metric("iotgw_spool_dropped_total"); d != 0 {
		t.Fatalf("block policy dropped %v", d)
	}
	g.waitFor("/readyz ready again", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
}

// 5b. Spool cap with policy drop-oldest: the gateway keeps acknowledging,
// drops the oldest readings to make room and counts them; InfluxDB ends
// with exactly published − dropped, and those are the newest.
func TestFaultSpoolFullDropOldest(t *testing.T) {
	const n = 20000
	for _, l := range brokerLimits(100000) {
		t.Run(l.name, func(t *testing.T) {
			in := testsvc.StartInflux(t)
			mq := testsvc.StartMosquitto(t, l.opts)
			g := newGateway(t, mq.URL(), in.URL())
			g.start("--config", writeConfig(t, fastRetry+fmt.Sprintf("[spool]\nmax_bytes = %d\nsegment_bytes = 262144\npolicy = \"drop-oldest\"\n", spoolCap)))
			g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
			sampler := sampleSpoolBytes(g)
			in.Kill()

			pub := newPublisher(t, mq.URL())
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if err := pub.publish(ctx, 0, n, l.rate); err != nil {
				t.Fatal(err)
			}
			g.waitFor("every reading acknowledged", 30*time.Second, func() bool {
				return g.metric("iotgw_messages_acked_total") == n
			})
			dropped := g.metric("iotgw_spool_dropped_total")
			if dropped <= 0 {
				t.Fatalf("nothing dropped:\n%s", g.metricsDump())
			}
			t.Logf("dropped %v of %d", dropped, n)

			in.Start()
			expectExactly(t, in, g, int64(n)-int64(dropped))
			if d := g.metric("iotgw_spool_dropped_total"); d != dropped {
				t.Fatalf("dropped went from %v to %v after InfluxDB returned", dropped, d)
			}
			if peak := sampler.finish(); peak > spoolCap {
				t.Fatalf("spool bytes peaked at %v, cap %d", peak, spoolCap)
			}
			// The newest are kept: the last 1000 published are all there
			// (the publisher's 100 concurrent sends reorder only locally).
			newest := countWhere(t, in, fmt.Sprintf(`r._value >= %d.0`, n-1000))
			if newest != 1000 {
				t.Fatalf("%d of the newest 1000 readings in InfluxDB, want all", newest)
			}
		})
	}
}

// countWhere counts env.v points matching a Flux predicate on r.
func countWhere(t *testing.T, in *testsvc.Influx, pred string) int64 {
	t.Helper()
	rows, err := in.Query(fmt.Sprintf(`from(bucket: %q) |> range(start: 0)
	  |> filter(fn: (r) => r._measurement == "env" and r._field == "v")
	  |> filter(fn: (r) => %s)
	  |> group() |> count()`, testsvc.Bucket, pred))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		return 0
	}
	return rows[0]["_value"].(int64)
}

// spoolRecord is one record of a segment file, as the spool lays it out:
// u32 payload length, u32 CRC-32C, i64 append time, payload.
type spoolRecord struct {
	off     int64
	payload []byte
}

func readSegment(t *testing.T, path string) []spoolRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []spoolRecord
	for off := int64(0); off < int64(len(b)); {
		if int64(len(b))-off < 16 {
			t.Fatalf("%s: %d trailing bytes", path, int64(len(b))-off)
		}
		n := int64(binary.LittleEndian.Uint32(b[off:]))
		if off+16+n > int64(len(b)) {
			t.Fatalf("%s: record at %d runs past the end", path, off)
		}
		recs = append(recs, spoolRecord{off: off, payload: b[off+16 : off+16+n]})
		off += 16 + n
	}
	return recs
}

// newestSegment is the path of the spool's last segment file.
func newestSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment in %s: %v", dir, err)
	}
	sort.Strings(segs)
	return segs[len(segs)-1]
}

var lineValue = regexp.MustCompile(`[ ,]v=([0-9.e+-]+)`)

// 6. A damaged tail in the newest segment file. InfluxDB is down while n
// readings are spooled, so every one is still in the spool file when the
// gateway stops; the test then damages the file and starts the gateway with
// InfluxDB up. The gateway must start, cut the damage, count it in
// iotgw_spool_corrupt_records_total and deliver every record before it:
//   - garbage appended after the last record: no record is damaged, so
//     InfluxDB gets all n;
//   - the file truncated in the middle of the last record (a torn write):
//     that one record is gone, so InfluxDB gets exactly n−1 and the missing
//     reading is the one whose payload the test read from that record;
//   - one payload byte of the last record flipped: its checksum fails, same
//     n−1 with that reading missing.
//
// (On a real crash a torn record was never fsynced, so never acknowledged,
// and the broker still has it; here the damage is done after the
// acknowledgement on purpose, so the one reading is really lost.)
func TestFaultCorruptTail(t *testing.T) {
	const n = 500
	cases := []struct {
		name     string
		damage   func(t *testing.T, path string, last spoolRecord)
		loseLast bool
	}{
		{"garbage-appended", func(t *testing.T, path string, _ spoolRecord) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(bytes.Repeat([]byte{0xab}, 100)); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"torn-last-record", func(t *testing.T, path string, last spoolRecord) {
			if err := os.Truncate(path, last.off+16+int64(len(last.payload))/2); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"bitflip-last-record", func(t *testing.T, path string, last spoolRecord) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[last.off+16+3] ^= 0x01 // in the measurement name
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := testsvc.StartInflux(t)
			mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
			g := newGateway(t, mq.URL(), in.URL())
			g.start("--config", writeConfig(t, fastRetry))
			g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
			in.Kill()
			pub := newPublisher(t, mq.URL())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := pub.publish(ctx, 0, n, 0); err != nil {
				t.Fatal(err)
			}
			g.waitFor("every reading spooled", 30*time.Second, func() bool { return g.metric("iotgw_points_spooled_total") == n })
			g.stop(syscall.SIGTERM)

			seg := newestSegment(t, g.spoolDir())
			recs := readSegment(t, seg)
			last := recs[len(recs)-1]
			m := lineValue.FindSubmatch(last.payload)
			if m == nil {
				t.Fatalf("no v= in the last record %q", last.payload)
			}
			lastV := string(m[1])
			t.Logf("%s: %d records, last %q", filepath.Base(seg), len(recs), bytes.TrimSpace(last.payload))
			c.damage(t, seg, last)

			in.Start()
			g.startAgain()
			if v := g.metric("iotgw_spool_corrupt_records_total"); v < 1 {
				t.Fatalf("corrupt records = %v, want >= 1\n%s", v, g.logs())
			}
			want := int64(n)
			if c.loseLast {
				want--
			}
			expectExactly(t, in, g, want)
			lastThere := countWhere(t, in, "r._value == "+floatLit(lastV))
			if c.loseLast && lastThere != 0 {
				t.Fatalf("reading v=%s of the damaged record is in InfluxDB", lastV)
			}
			if !c.loseLast && lastThere != 1 {
				t.Fatalf("reading v=%s of the intact last record: %d points", lastV, lastThere)
			}
			if !strings.Contains(g.logs(), "damaged") {
				t.Errorf("no log line about the damaged record:\n%s", g.logs())
			}
		})
	}
}

func floatLit(s string) string {
	if !strings.ContainsAny(s, ".e") {
		return s + ".0"
	}
	return s
}

// runToExit runs "iotgw run" with env and waits for it to exit.
func runToExit(t *testing.T, env []string, timeout time.Duration) (code int, out string, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "run")
	cmd.Env = env
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("iotgw run still running after %s:\n%s", timeout, buf.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), buf.String(), took
}

// mountTmpfs mounts a tmpfs at a new directory (root only).
func mountTmpfs(t *testing.T, opts string, flags uintptr) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", flags, opts); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// 7. The state directory is unusable at start: "iotgw run" must exit
// non-zero at once, naming the directory, before it connects to the broker,
// so it acknowledges nothing. The broker keeps the gateway's queued
// messages, and a healthy gateway with the same client id gets them all.
func TestFaultStateDirUnusable(t *testing.T) {
	const n = 500 // under mosquitto's default queue of 1000 per client
	cases := []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"regular-file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "state")
			if err := os.WriteFile(p, []byte("not a directory\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}},
		{"read-only-fs", func(t *testing.T) string {
			return mountTmpfs(t, "size=1m", syscall.MS_RDONLY)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := c.dir(t)
			in := testsvc.StartInflux(t)
			mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
			g := newGateway(t, mq.URL(), in.URL())
			// Create the persistent session, then go away.
			g.start()
			g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
			g.stop(syscall.SIGTERM)
			pub := newPublisher(t, mq.URL())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := pub.publish(ctx, 0, n, 0); err != nil {
				t.Fatal(err)
			}

			env := append(append([]string(nil), g.env...), "IOTGW_SPOOL_DIR="+bad)
			code, out, took := runToExit(t, env, 15*time.Second)
			t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), strings.TrimSpace(out))
			if code == 0 {
				t.Fatal("iotgw run exited 0 with an unusable state directory")
			}
			if took > 5*time.Second {
				t.Errorf("took %s to give up", took)
			}
			if !strings.Contains(out, bad) {
				t.Errorf("error does not name %s:\n%s", bad, out)
			}
			if strings.Contains(out, "mqtt connected") {
				t.Errorf("connected to the broker before failing:\n%s", out)
			}

			g.startAgain()
			expectExactly(t, in, g, n)
		})
	}
}

// 7b. The state directory fills up while running (the disk, not the cap):
// appends fail with ENOSPC and count as a full spool (the block policy
// applies, not the I/O-error path), nothing is acknowledged, /readyz says
// why, the free space is exported, the process stays up; once space is
// freed everything the broker held arrives.
func TestFaultStateDirFull(t *testing.T) {
	const n = 500
	dir := mountTmpfs(t, "size=512k", 0)
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_SPOOL_DIR="+dir)
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })

	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			break // ENOSPC
		}
	}
	f.Close()

	pub := newPublisher(t, mq.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pub.publish(ctx, 0, n, 0); err != nil {
		t.Fatal(err)
	}
	// A full disk is a full spool (not an I/O error): the group is held
	// unacknowledged and tried again as commits free space.
	g.waitFor(`append_errors{kind="full"} > 0`, 30*time.Second, func() bool {
		return g.metric(`iotgw_spool_append_errors_total{kind="full"}`) > 0
	})
	var body string
	g.waitFor("/readyz reports the spool", 10*time.Second, func() bool {
		ok, b := g.ready()
		body = b
		return !ok && strings.Contains(b, "spool append failing") && strings.Contains(b, "spool: full")
	})
	t.Logf("readyz with a full disk: %s", body)
	refused := g.metric(`iotgw_spool_append_errors_total{kind="full"}`)
	g.waitFor("two more refused appends", 30*time.Second, func() bool {
		return g.metric(`iotgw_spool_append_errors_total{kind="full"}`) >= refused+2
	})
	if free := g.metric("iotgw_spool_disk_free_bytes"); free < 0 || free >= 64<<10 {
		t.Errorf("iotgw_spool_disk_free_bytes = %v on a full 512 KiB disk", free)
	}
	if io := g.metric(`iotgw_spool_append_errors_total{kind="io"}`); io != 0 {
		t.Errorf("a full disk counted as %v I/O errors", io)
	}
	if a := g.metric("iotgw_messages_acked_total"); a != 0 {
		t.Fatalf("acknowledged %v readings with a full disk", a)
	}
	if !strings.Contains(g.logs(), "no space left on device") {
		t.Errorf("log does not say the disk is full:\n%s", g.logs())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, n)
}
