package broker

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// raiseNofile lifts the soft RLIMIT_NOFILE to the hard limit: both ends of
// every connection live in this process.
func raiseNofile(b *testing.B, need uint64) uint64 {
	b.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	if rl.Cur < need {
		b.Skipf("RLIMIT_NOFILE hard limit %d < %d needed", rl.Cur, need)
	}
	return rl.Cur
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func rssBytes() uint64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// goMem is the Go heap and goroutine stacks in use, after a GC.
func goMem() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// BenchmarkIdleConnections logs in 10,000 devices (from 20 source addresses,
// 500 each) and leaves them idle; it reports what one connection costs the
// process (both ends are in it; the client end is a bare socket) and the
// file descriptors left.
func BenchmarkIdleConnections(b *testing.B) {
	const conns, addrs = 10000, 20
	limit := raiseNofile(b, 2*conns+200)
	for _, mode := range []string{"limits", "nolimits"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				o := plainOptions(b)
				o.noLimits = mode == "nolimits"
				br := startBroker(b, o)
				addr := br.Addr("plain")
				fds0, mem0, rss0 := openFDs(), goMem(), rssBytes()

				clients := make([]net.Conn, conns)
				var wg sync.WaitGroup
				errs := make(chan error, addrs)
				for a := range addrs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						local := fmt.Sprintf("127.0.1.%d", a+1)
						for i := a; i < conns; i += addrs {
							c, err := tryDialRaw(addr, dialConf{local: local})
							if err != nil {
								errs <- err
								return
							}
							_ = c.SetDeadline(time.Now().Add(waitFor))
							if _, err := c.Write(connectPacket(fmt.Sprintf("idle-%d", i), "dev1", "dev1-secret", 300)); err != nil {
								errs <- err
								return
							}
							var ack [4]byte
							if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
								errs <- fmt.Errorf("connection %d: CONNACK %x: %v", i, ack, err)
								return
							}
							_ = c.SetDeadline(time.Time{})
							clients[i] = c
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				fds1, mem1, rss1 := openFDs(), goMem(), rssBytes()
				b.ReportMetric(float64(mem1-mem0)/conns, "go-bytes/conn")
				b.ReportMetric(float64(rss1-rss0)/conns, "rss-bytes/conn")
				// Each connection holds two descriptors here; a broker
				// process holds one.
				brokerFDs := fds0 + (fds1-fds0)/2
				b.ReportMetric(float64(brokerFDs), "broker-fds")
				b.ReportMetric(float64(int(limit)-brokerFDs), "fd-headroom")
				b.ReportMetric(float64(br.LimitStats().Connections), "counted-conns")
				for _, c := range clients {
					c.Close()
				}
				br.Close()
			}
		})
	}
}

// BenchmarkPublishThroughput sends QoS 0 messages from one device to one
// subscriber through a broker with the limits and one without, alternating
// in chunks so both see the same machine load, and reports the cost of the
// limits from the ratio of their throughputs. "reading" is a sensor reading;
// "8KiB" is large enough to be charged against max_queued_bytes.
func BenchmarkPublishThroughput(b *testing.B) {
	for _, bc := range []struct {
		name    string
		payload []byte
	}{
		{"reading", []byte(`{"t":21.5,"h":40.2,"ts":1764576000}`)},
		{"8KiB", make([]byte, 8<<10)},
	} {
		b.Run(bc.name, func(b *testing.B) { benchPublish(b, bc.payload) })
	}
}

func benchPublish(b *testing.B, payload []byte) {
	const chunk = 200
	type rig struct {
		dev  *rawClient
		got  chan struct{}
		busy time.Duration
	}
	setup := func(noLimits bool) *rig {
		o := plainOptions(b)
		o.noLimits = noLimits
		br := startBroker(b, o)
		sub := dialRaw(b, br.Addr("plain"), dialConf{})
		sub.login("bench-gw", "gateway", "gw-secret")
		sub.send(subscribePacket("sensors/#", 0, 1))
		if typ, _ := sub.next(); typ != 0x90 {
			b.Fatalf("want SUBACK, got %#x", typ)
		}
		got := make(chan struct{}, 4*chunk)
		go func() {
			for {
				typ, _, err := sub.tryNext(time.Hour)
				if err != nil {
					return
				}
				if typ&0xf0 == 0x30 {
					got <- struct{}{}
				}
			}
		}()
		dev := dialRaw(b, br.Addr("plain"), dialConf{})
		dev.login("bench-dev", "dev1", "dev1-secret")
		return &rig{dev: dev, got: got}
	}
	on, off := setup(false), setup(true)
	msg := publishPacket("sensors/plant-a/dev1/temp", payload, 0, 0)
	batch := make([]byte, 0, chunk*len(msg))
	for range chunk {
		batch = append(batch, msg...)
	}
	run := func(r *rig, n int) {
		start := time.Now()
		r.dev.send(batch[:n*len(msg)])
		for range n {
			<-r.got
		}
		r.busy += time.Since(start)
	}
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		run(on, n)
		run(off, n)
	}
	b.StopTimer()
	onRate := float64(b.N) / on.busy.Seconds()
	offRate := float64(b.N) / off.busy.Seconds()
	b.ReportMetric(onRate, "msgs/s-limits")
	b.ReportMetric(offRate, "msgs/s-nolimits")
	b.ReportMetric(100*(offRate-onRate)/offRate, "cost-%")
}
