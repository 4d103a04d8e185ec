//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// Network faults: the gateway runs in a network namespace of its own and
// reaches the broker and InfluxDB through TCP relays that listen in a
// second namespace, joined to the first by a veth pair. Both ends of the
// pair and every address used are inside the two namespaces the test
// creates; the relays forward to the services on this host's loopback.
// iptables and tc in the gateway's namespace make the faults: DROP both
// ways is a silent partition (no RST, no FIN), the statistic match drops a
// share of packets, tbf makes a slow link.

var netnsSeq atomic.Int32

// netns is the pair of namespaces of one test.
type netns struct {
	t           testing.TB
	svc, gw     string // namespace names
	svcIP, gwIP string
	gwDev       string // the gateway's end of the veth pair
	relays      []net.Listener
	mu          sync.Mutex
	conns       []net.Conn
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates the two namespaces and the veth pair between them.
func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	k := int(netnsSeq.Add(1))
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, k)
	n := &netns{t: t, svc: "iotgw-svc-" + id, gw: "iotgw-gw-" + id,
		svcIP: fmt.Sprintf("10.213.%d.1", k%250), gwIP: fmt.Sprintf("10.213.%d.2", k%250), gwDev: "gw0"}
	if out, err := exec.Command("ip", "netns", "add", n.svc).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.svc).Run() })
	run(t, "ip", "netns", "add", n.gw)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.gw).Run() })
	// Created inside the service namespace, so no interface ever appears
	// in the host's own namespace.
	run(t, "ip", "-n", n.svc, "link", "add", "svc0", "type", "veth", "peer", "name", n.gwDev, "netns", n.gw)
	run(t, "ip", "-n", n.svc, "addr", "add", n.svcIP+"/30", "dev", "svc0")
	run(t, "ip", "-n", n.gw, "addr", "add", n.gwIP+"/30", "dev", n.gwDev)
	for _, ns := range []string{n.svc, n.gw} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", n.svc, "link", "set", "svc0", "up")
	run(t, "ip", "-n", n.gw, "link", "set", n.gwDev, "up")
	t.Cleanup(n.closeRelays)
	return n
}

// in runs f on a thread that has entered namespace ns; sockets f creates
// belong to ns for their whole life.
func (n *netns) in(ns string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so the runtime retires it with this
		// goroutine instead of reusing it in the wrong namespace.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// relay listens in the service namespace and forwards each connection to
// target on the host's loopback; it returns the address the gateway uses.
func (n *netns) relay(target string) string {
	n.t.Helper()
	var ln net.Listener
	if err := n.in(n.svc, func() (err error) { ln, err = net.Listen("tcp", n.svcIP+":0"); return err }); err != nil {
		n.t.Fatal(err)
	}
	n.relays = append(n.relays, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			n.mu.Lock()
			n.conns = append(n.conns, c, up)
			n.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return ln.Addr().String()
}

func (n *netns) closeRelays() {
	for _, ln := range n.relays {
		ln.Close()
	}
	n.mu.Lock()
	for _, c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
}

// client reaches the gateway's HTTP listener from the service namespace.
func (n *netns) client() *http.Client {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = n.in(n.svc, func() (err error) {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// gwRun runs a command in the gateway's namespace.
func (n *netns) gwRun(args ...string) {
	n.t.Helper()
	run(n.t, append([]string{"ip", "netns", "exec", n.gw}, args...)...)
}

// drop silences TCP to and from the relays' ports, both ways, with no
// RST or FIN: a half-open partition for the gateway. The HTTP listener
// stays reachable for the test.
func (n *netns) drop(ports ...string) {
	for _, p := range ports {
		n.gwRun("iptables", "-A", "OUTPUT", "-p", "tcp", "-d", n.svcIP, "--dport", p, "-j", "DROP")
		n.gwRun("iptables", "-A", "INPUT", "-p", "tcp", "-s", n.svcIP, "--sport", p, "-j", "DROP")
	}
}

// gwOutput runs a command in the gateway's namespace and returns its output.
func (n *netns) gwOutput(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.gw}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// heal removes every iptables rule of the gateway's namespace.
func (n *netns) heal() { n.gwRun("iptables", "-F") }

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// netGateway starts a gateway in n's gateway namespace, connected to mq and
// in through relays, with short keep-alive and write timeouts so the
// faults are noticed quickly.
func netGateway(t *testing.T, n *netns, mq *testsvc.Mosquitto, in *testsvc.Influx) (g *gw, mqRelay, inRelay string) {
	t.Helper()
	mqRelay = n.relay(mq.Addr())
	inRelay = n.relay(strings.TrimPrefix(in.URL(), "http://"))
	g = newGateway(t, "tcp://"+mqRelay, "http://"+inRelay)
	g.httpAddr = fmt.Sprintf("%s:%d", n.gwIP, testsvc.FreePort(t))
	g.env = append(g.env, "IOTGW_HTTP_ADDR="+g.httpAddr)
	g.wrap = []string{"ip", "netns", "exec", n.gw}
	g.httpc = n.client()
	g.start("--config", writeConfig(t, `
[mqtt]
keepalive = "2s"
max_reconnect_interval = "1s"
[influx]
max_retry_interval = "1s"
timeout = "2s"
`))
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	return g, mqRelay, inRelay
}

// publishAsync publishes readings [0, n) at rate in the background; the
// returned function waits for the last acknowledgement.
func publishAsync(t *testing.T, pub *publisher, n, rate int) func() {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	done := make(chan error, 1)
	go func() { done <- pub.publish(ctx, 0, n, rate) }()
	return func() {
		t.Helper()
		defer cancel()
		if err := <-done; err != nil {
			t.Fatalf("publish: %v (%d acknowledged)", err, pub.ackedCount())
		}
	}
}

// A silent partition of the broker and the database, longer than the
// keep-alive: the gateway notices the dead broker connection by its
// keep-alive alone (nothing closes it), reconnects once the network is
// back, and every reading published meanwhile (the broker queues them for
// the persistent session) is in InfluxDB exactly once.
func TestNetnsPartitionLongerThanKeepAlive(t *testing.T) {
	const n, rate = 20000, 2000
	n2 := newNetns(t)
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000, Persistence: true})
	g, mqRelay, inRelay := netGateway(t, n2, mq, in)
	pub := newPublisher(t, mq.URL())
	wait := publishAsync(t, pub, n, rate)
	waitFor(t, "a quarter published", time.Minute, func() bool { return pub.ackedCount() >= n/4 }, nil)

	n2.drop(port(mqRelay), port(inRelay))
	cut := time.Now()
	g.waitFor("keep-alive notices the dead broker", 30*time.Second, func() bool { return g.metric(`iotgw_mqtt_connected{connection="1"}`) == 0 })
	t.Logf("disconnected %s after the partition began (keep-alive 2s)", time.Since(cut).Round(100*time.Millisecond))
	received := g.metric(`iotgw_messages_received_total{format="json"}`)
	// Still cut off while the publisher goes on (at its rate, three
	// quarters take well over twice the keep-alive): nothing arrives.
	waitFor(t, "three quarters published", time.Minute, func() bool { return pub.ackedCount() >= n*3/4 }, nil)
	if r := g.metric(`iotgw_messages_received_total{format="json"}`); r != received {
		t.Fatalf("received %v readings through a partition", r-received)
	}
	n2.heal()
	lasted := time.Since(cut)
	t.Logf("partition lasted %s", lasted.Round(100*time.Millisecond))
	if lasted < 4*time.Second {
		t.Fatalf("the partition lasted %s, not over twice the 2s keep-alive", lasted)
	}
	g.waitFor("reconnected", 30*time.Second, func() bool { return g.metric(`iotgw_mqtt_connected{connection="1"}`) == 1 })
	wait()
	expectExactly(t, in, g, n)
}

// InfluxDB alone unreachable (silently), the broker fine: the gateway goes
// on acknowledging every reading into the spool, /readyz says the database
// fails, and once the network is back InfluxDB holds each reading once.
func TestNetnsInfluxUnreachable(t *testing.T) {
	const n, rate = 10000, 2000
	n2 := newNetns(t)
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{Persistence: true})
	g, _, inRelay := netGateway(t, n2, mq, in)
	pub := newPublisher(t, mq.URL())
	wait := publishAsync(t, pub, n, rate)
	waitFor(t, "a quarter published", time.Minute, func() bool { return pub.ackedCount() >= n/4 }, nil)

	n2.drop(port(inRelay))
	var body string
	g.waitFor("/readyz: last write failed", 30*time.Second, func() bool {
		ok, b := g.ready()
		body = b
		return !ok && strings.Contains(b, "last write failed")
	})
	t.Logf("readyz with InfluxDB cut off: %s", body)
	wait()
	written := g.metric("iotgw_points_written_total")
	g.waitFor("every reading acknowledged while InfluxDB is unreachable", time.Minute, func() bool {
		return g.metric("iotgw_messages_acked_total") == n
	})
	if w := g.metric("iotgw_points_written_total"); w != written || w >= n {
		t.Fatalf("points written went from %v to %v of %d through the partition", written, w, n)
	}
	n2.heal()
	expectExactly(t, in, g, n)
}

// A lossy link (5% of packets dropped each way) and a slow one (tbf at
// 512 kbit/s each way): TCP carries the readings over both, slowly, and
// none is lost or doubled. Each case also checks that its fault acted: the
// DROP rules dropped packets, the shaper held some back.
func TestNetnsLossyAndSlowLink(t *testing.T) {
	shape := []string{"root", "tbf", "rate", "512kbit", "burst", "16kbit", "latency", "500ms"}
	for _, tc := range []struct {
		name         string
		apply, acted func(n *netns) bool
	}{
		{"loss", func(n *netns) bool {
			for _, chain := range []string{"INPUT", "OUTPUT"} {
				n.gwRun("iptables", "-A", chain, "-p", "tcp", "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP")
			}
			return true
		}, func(n *netns) bool {
			out := n.gwOutput("iptables-save", "-c")
			dropped := 0
			for _, l := range strings.Split(out, "\n") {
				var pkts, bytes int
				if _, err := fmt.Sscanf(l, "[%d:%d]", &pkts, &bytes); err == nil && strings.Contains(l, "statistic") && pkts > 0 {
					dropped++
				}
			}
			n.t.Logf("iptables: %s", out)
			return dropped == 2 // both directions lost packets
		}},
		{"slow", func(n *netns) bool {
			n.gwRun(append([]string{"tc", "qdisc", "add", "dev", n.gwDev}, shape...)...)
			run(n.t, append([]string{"ip", "netns", "exec", n.svc, "tc", "qdisc", "add", "dev", "svc0"}, shape...)...)
			return true
		}, func(n *netns) bool {
			out := n.gwOutput("tc", "-s", "qdisc", "show", "dev", n.gwDev)
			n.t.Logf("tc: %s", out)
			var sent, pkts, dropped, over int
			i := strings.Index(out, "Sent ")
			if i < 0 {
				return false
			}
			_, err := fmt.Sscanf(out[i:], "Sent %d bytes %d pkt (dropped %d, overlimits %d", &sent, &pkts, &dropped, &over)
			return err == nil && over > 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n, rate = 4000, 1000
			n2 := newNetns(t)
			in := testsvc.StartInflux(t)
			mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: 100000, Persistence: true})
			g, _, _ := netGateway(t, n2, mq, in)
			tc.apply(n2)
			pub := newPublisher(t, mq.URL())
			publishAsync(t, pub, n, rate)()
			expectExactly(t, in, g, n)
			if !tc.acted(n2) {
				t.Fatalf("the %s fault did not act on the link", tc.name)
			}
		})
	}
}
