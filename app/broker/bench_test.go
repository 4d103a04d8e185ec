package broker

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// raiseNofile lifts the soft RLIMIT_NOFILE to the hard limit and skips the
// benchmark if that is less than need.
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

// procStatus returns a field of /proc/<pid>/status in bytes (kB fields).
func procStatus(pid int, field string) uint64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func procFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// brokerProcessEnv makes the test binary run TestBrokerProcess: a broker in
// its own process, so its memory and descriptors can be measured alone.
const brokerProcessEnv = "IOTGW_TEST_BROKER_PROCESS"

// TestBrokerProcess is the broker process of BenchmarkIdleConnections; it
// does nothing unless started by it. It prints the broker's address and
// serves until stdin is closed.
func TestBrokerProcess(t *testing.T) {
	mode := os.Getenv(brokerProcessEnv)
	if mode == "" {
		t.Skip("run by BenchmarkIdleConnections")
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	o := plainOptions(t)
	o.noLimits = mode == "nolimits"
	id := "plain"
	if mode == "tls" {
		g, err := EnsureCertificates(t.TempDir(), nil, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ServerTLSConfig(g.CertFile, g.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		o.Listeners = []Listener{{ID: "tls", Addr: "127.0.0.1:0", TLS: sc}}
		id = "tls"
		fmt.Printf("ca %s\n", g.CAFile)
	}
	b := startBroker(t, o)
	fmt.Printf("addr %s\n", b.Addr(id))
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// BenchmarkIdleConnections logs in 10,000 devices (from 20 source addresses,
// 500 each) to a broker in a child process and leaves them idle; it reports
// the broker's resident memory per connection and its file descriptors.
// "tls" is "limits" over TLS, as devices connect.
func BenchmarkIdleConnections(b *testing.B) {
	const conns, addrs = 10000, 20
	raiseNofile(b, conns+200)
	for _, mode := range []string{"limits", "nolimits", "tls"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				benchIdle(b, mode, conns, addrs)
			}
		})
	}
}

func benchIdle(b *testing.B, mode string, conns, addrs int) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBrokerProcess$")
	cmd.Env = append(os.Environ(), brokerProcessEnv+"="+mode)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	var addr string
	var clientTLS *tls.Config
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if ca, ok := strings.CutPrefix(sc.Text(), "ca "); ok {
			pem, err := os.ReadFile(ca)
			if err != nil {
				b.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			clientTLS = &tls.Config{RootCAs: pool, ServerName: "localhost"}
		}
		if a, ok := strings.CutPrefix(sc.Text(), "addr "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		b.Fatal("broker process printed no address")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	pid := cmd.Process.Pid
	rss0, fds0 := procStatus(pid, "VmRSS"), procFDs(pid)
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		b.Fatal(err)
	}

	clients := make([]net.Conn, conns)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, addrs)
	for a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := fmt.Sprintf("127.0.1.%d", a+1)
			for i := a; i < conns; i += addrs {
				c, err := tryDialRaw(addr, dialConf{local: local, tls: clientTLS})
				if err != nil {
					errs <- err
					return
				}
				clients[i] = c
				_ = c.SetDeadline(time.Now().Add(waitFor))
				if _, err := c.Write(connectPacket("", "dev1", "dev1-secret", 300)); err != nil {
					errs <- err
					return
				}
				var ack [4]byte
				if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
					errs <- fmt.Errorf("connection %d: CONNACK %x: %v", i, ack, err)
					return
				}
				_ = c.SetDeadline(time.Time{})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	rss1, fds1 := procStatus(pid, "VmRSS"), procFDs(pid)
	b.ReportMetric(float64(rss1-rss0)/float64(conns), "rss-bytes/conn")
	b.ReportMetric(float64(rss1)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(fds1), "broker-fds")
	b.ReportMetric(float64(fds1-fds0)/float64(conns), "fds/conn")
	// Headroom under the systemd unit's LimitNOFILE=65536.
	b.ReportMetric(float64(65536-fds1), "fd-headroom-65536")
	b.ReportMetric(float64(limit.Cur), "nofile-here")
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
		dev.login("", "dev1", "dev1-secret")
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
