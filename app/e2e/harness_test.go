// Package e2e runs the iotgw binary as a real process against real
// mosquitto and InfluxDB processes, and asserts exact counts: every reading
// published is in InfluxDB exactly once, whatever fails in between.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "iotgw-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "iotgw")
	build := exec.Command("go", "build", "-o", binPath, "github.com/iot-gateway/iot-gateway/app/cmd/iotgw")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build iotgw:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gw is one iotgw run process with a fixed state directory and client id,
// so it can be killed and started again as the same gateway.
type gw struct {
	t        testing.TB
	env      []string
	dir      string
	httpAddr string
	cmd      *exec.Cmd
	exited   chan struct{}
	log      *os.File
	args     []string // of the last start, for startAgain
	// For a gateway in a network namespace: the command prefix that runs
	// it there, and a client that reaches its HTTP address.
	wrap  []string
	httpc *http.Client
}

// get fetches a path of the gateway's HTTP listener.
func (g *gw) get(path string) (*http.Response, error) {
	c := g.httpc
	if c == nil {
		c = http.DefaultClient
	}
	return c.Get("http://" + g.httpAddr + path)
}

func newGateway(t testing.TB, mqttURL, influxURL string, extra ...string) *gw {
	t.Helper()
	g := &gw{t: t, dir: t.TempDir(), httpAddr: fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t))}
	g.env = append(os.Environ(),
		"IOTGW_MQTT_URL="+mqttURL,
		"IOTGW_MQTT_CLIENT_ID=gw-"+strconv.Itoa(testsvc.FreePort(t)),
		"IOTGW_MQTT_TOPICS=sensors/#",
		"IOTGW_INFLUX_URL="+influxURL,
		"IOTGW_INFLUX_TOKEN=",
		"IOTGW_INFLUX_BUCKET="+testsvc.Bucket,
		"IOTGW_HTTP_ADDR="+g.httpAddr,
		"IOTGW_SPOOL_DIR="+filepath.Join(g.dir, "state"),
		"IOTGW_GATEWAY_ID=gw-test",
		"IOTGW_LOG_LEVEL=info",
	)
	g.env = append(g.env, extra...)
	t.Cleanup(func() { g.stop(syscall.SIGKILL) })
	return g
}

// start launches the process and waits until /healthz answers.
func (g *gw) start(args ...string) {
	g.t.Helper()
	logf, err := os.OpenFile(filepath.Join(g.dir, "iotgw.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		g.t.Fatal(err)
	}
	g.log = logf
	g.args = args
	argv := append(append(append([]string{}, g.wrap...), binPath, "run"), args...)
	g.cmd = exec.Command(argv[0], argv[1:]...)
	g.cmd.Env = g.env
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(g.cmd, g.exited)
	g.waitFor("gateway /healthz", 30*time.Second, func() bool {
		select {
		case <-g.exited:
			g.t.Fatalf("iotgw exited at start:\n%s", g.logs())
		default:
		}
		resp, err := g.get("/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stop signals the process and waits for it to exit.
func (g *gw) stop(sig syscall.Signal) {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Signal(sig)
	select {
	case <-g.exited:
	case <-time.After(20 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
		g.t.Errorf("iotgw did not stop within 20s after %v", sig)
	}
	g.log.Close()
}

func (g *gw) logs() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "iotgw.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// metric reads one sample from /metrics ("name" or `name{label="x"}`).
func (g *gw) metric(name string) float64 {
	resp, err := g.get("/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(line[len(name):]), 64)
			return v
		}
	}
	return 0
}

// metricsDump returns the iotgw_ series, for failure messages.
func (g *gw) metricsDump() string {
	resp, err := g.get("/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "iotgw_") && !strings.Contains(l, "_bucket") {
			sb.WriteString(l + "\n")
		}
	}
	return sb.String()
}

func (g *gw) ready() (bool, string) {
	resp, err := g.get("/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		sb.WriteString(sc.Text())
	}
	return resp.StatusCode == http.StatusOK, sb.String()
}

// waitFor polls cond (a readiness check, every 50 ms) until it holds.
func (g *gw) waitFor(what string, timeout time.Duration, cond func() bool) {
	g.t.Helper()
	waitFor(g.t, what, timeout, cond, g.logs)
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			extra := ""
			if logs != nil {
				extra = logs()
			}
			t.Fatalf("timed out after %s waiting for %s\n%s", timeout, what, extra)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publisher sends numbered QoS 1 readings and retries each until the
// broker acknowledges it. Every reading has its own device time, so a
// retried duplicate overwrites the same point: the expected set is exact.
type publisher struct {
	client paho.Client
	base   int64 // unix ms of reading 0
	// devices spreads the readings over this many devices (topics); 0
	// means the ten of reading.
	devices int
	// field is the JSON field of each reading; "" means "v".
	field string
	mu    sync.Mutex
	acked int
}

func newPublisher(t testing.TB, url string) *publisher {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("pub-%d", testsvc.FreePort(t))).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(500 * time.Millisecond).
		SetWriteTimeout(5 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return &publisher{client: c, base: time.Now().Add(-time.Hour).UnixMilli()}
}

// topic and payload of reading i; devices d0..d9 on site s1.
func reading(base int64, i int) (string, []byte) {
	return fmt.Sprintf("sensors/s1/d%d/env", i%10), []byte(fmt.Sprintf(`{"ts":%d,"v":%d,"ok":true}`, base+int64(i), i))
}

// reading returns reading i of this publisher's fleet: as the function
// reading, over p.devices devices and with field p.field.
func (p *publisher) reading(i int) (string, []byte) {
	if p.devices == 0 && p.field == "" {
		return reading(p.base, i)
	}
	devices, field := max(p.devices, 1), p.field
	if field == "" {
		field = "v"
	}
	return fmt.Sprintf("sensors/s1/d%d/env", i%devices), []byte(fmt.Sprintf(`{"ts":%d,%q:%d,"ok":true}`, p.base+int64(i), field, i))
}

// publish sends readings [from, to) at about rate per second (0 = as fast
// as the broker acknowledges), keeping up to 100 in flight. It returns
// when every one is acknowledged or ctx ends.
func (p *publisher) publish(ctx context.Context, from, to int, rate int) error {
	sem := make(chan struct{}, 100)
	var wg sync.WaitGroup
	// Reading i is due at start + i/rate; a late loop catches up (bounded
	// by the 100 in flight) rather than losing ticks, so the rate holds on
	// a busy machine.
	start := time.Now()
	var firstErr error
	var errMu sync.Mutex
	for i := from; i < to; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(i-from) * time.Second / time.Duration(rate))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			topic, payload := p.reading(i)
			for ctx.Err() == nil {
				tok := p.client.Publish(topic, 1, false, payload)
				if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
					p.mu.Lock()
					p.acked++
					p.mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond) // broker away: try again
			}
			errMu.Lock()
			if firstErr == nil {
				firstErr = ctx.Err()
			}
			errMu.Unlock()
		}(i)
	}
	wg.Wait()
	return firstErr
}

// publishRaw sends one message as is (for malformed input).
func (p *publisher) publishRaw(t testing.TB, topic string, payload []byte) {
	t.Helper()
	tok := p.client.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// expectExactly waits until InfluxDB holds n points of env.v, then checks
// the spool is empty and the count is still n (no duplicates in flight).
func expectExactly(t *testing.T, in *testsvc.Influx, g *gw, n int64) {
	t.Helper()
	var got int64
	waitFor(t, fmt.Sprintf("%d points in InfluxDB", n), 120*time.Second, func() bool {
		c, err := in.Count("env", "v")
		if err == nil {
			got = c
		}
		return got >= n
	}, func() string { return fmt.Sprintf("have %d points\n%s\n%s", got, g.metricsDump(), g.logs()) })
	waitFor(t, "spool empty", 30*time.Second, func() bool { return g.metric("iotgw_spool_entries") == 0 }, g.logs)
	c, err := in.Count("env", "v")
	if err != nil {
		t.Fatal(err)
	}
	if c != n {
		t.Fatalf("InfluxDB has %d points, want exactly %d", c, n)
	}
}

// pid is the running gateway's process id.
func (g *gw) pid() int {
	if g.cmd == nil || g.cmd.Process == nil {
		return 0
	}
	return g.cmd.Process.Pid
}

// spoolDir is the spool directory the harness gives the gateway.
func (g *gw) spoolDir() string { return filepath.Join(g.dir, "state") }

// writeConfig writes a TOML file for --config and returns its path.
func writeConfig(t testing.TB, toml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "iotgw.toml")
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ackedCount is how many readings the broker has acknowledged so far.
func (p *publisher) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked
}

// vmHWM returns a process's peak resident set size in bytes (VmHWM).
func vmHWM(pid int) int64 { return procStatus(pid, "VmHWM:") }

// procStatus reads one kB figure of /proc/<pid>/status, in bytes; -1 if
// it cannot.
func procStatus(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// startAgain starts the gateway with the arguments of its last start.
func (g *gw) startAgain() {
	g.t.Helper()
	g.start(g.args...)
}
