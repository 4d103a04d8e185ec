package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/deadletter"
	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// ---- helpers ----

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testGateway is a gateway over a fresh state directory writing to url;
// edit adjusts the configuration first. Its log goes to the returned buffer.
func testGateway(t *testing.T, url string, edit func(*config.Config)) (*Gateway, *syncBuffer) {
	t.Helper()
	cfg := config.Default()
	cfg.Spool.Dir = t.TempDir()
	cfg.Influx.URL = url
	cfg.Influx.Gzip = config.GzipOff
	cfg.Influx.MaxRetryInterval = config.Duration{Duration: 20 * time.Millisecond}
	cfg.HTTP.Addr = ""
	cfg.Gateway.ID = "gw"
	if edit != nil {
		edit(&cfg)
	}
	buf := &syncBuffer{}
	g, err := FromConfig(cfg, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	return g, buf
}

// runWriter runs g's writer loop until the test ends.
func runWriter(t *testing.T, g *Gateway) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.writeLoop(ctx, make(chan struct{}))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		g.closeState()
	})
}

func readyz(t *testing.T, g *Gateway) (int, string) {
	t.Helper()
	srv := httptest.NewServer(httpapi.Handler(g.reg, g.checks()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func labelValue(t testing.TB, g *Gateway, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// memStore is an in-memory stand-in for the spool. While blocked, Append
// does not return (a write to a wedged disk), and says so on entered.
type memStore struct {
	mu      sync.Mutex
	recs    [][]byte
	read    int // records handed out in the batch in hand
	wake    chan struct{}
	block   chan struct{} // non-nil: Append waits for it to close
	entered chan struct{}
}

func newMemStore() *memStore {
	return &memStore{wake: make(chan struct{}, 1), entered: make(chan struct{}, 1)}
}

func (m *memStore) Append(records [][]byte) error {
	m.mu.Lock()
	block := m.block
	m.mu.Unlock()
	if block != nil {
		select {
		case m.entered <- struct{}{}:
		default:
		}
		<-block
	}
	m.mu.Lock()
	for _, r := range records {
		m.recs = append(m.recs, bytes.Clone(r))
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return nil
}

func (m *memStore) Read(ctx context.Context, maxRecords, _ int) (spool.Batch, error) {
	for {
		m.mu.Lock()
		if len(m.recs) > 0 {
			n := min(len(m.recs), maxRecords)
			m.read = n
			b := spool.Batch{Records: m.recs[:n], Oldest: time.Now()}
			m.mu.Unlock()
			return b, nil
		}
		m.mu.Unlock()
		select {
		case <-m.wake:
		case <-ctx.Done():
			return spool.Batch{}, ctx.Err()
		}
	}
}

func (m *memStore) Rewind() {}

func (m *memStore) Commit(spool.Position) error {
	m.mu.Lock()
	m.recs = m.recs[m.read:]
	m.read = 0
	m.mu.Unlock()
	return nil
}

func (m *memStore) Stats() spool.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return spool.Stats{Records: int64(len(m.recs))}
}

func (m *memStore) Close() error { return nil }

func (m *memStore) setBlock(block chan struct{}) {
	m.mu.Lock()
	m.block = block
	m.mu.Unlock()
}

// ---- 13.1: a backward clock step ----

// After the wall clock steps back an hour, every record on disk looks an
// hour younger than linger. The writer must still send a small batch within
// flush_interval (measured on the monotonic clock), not an hour later.
func TestWriterSurvivesBackwardClockStep(t *testing.T) {
	fake, url := newFakeInflux(t, true)
	g, _ := testGateway(t, url, func(c *config.Config) {
		c.Influx.BatchSize = 1000
		c.Influx.FlushInterval = config.Duration{Duration: 200 * time.Millisecond}
	})
	g.appendReadings(t, 0, 3)
	g.now = func() time.Time { return time.Now().Add(-time.Hour).Round(0) }
	runWriter(t, g)
	waitUntil(t, "the readings from before the step", func() bool { return len(fake.written()) == 3 })
	g.appendReadings(t, 3, 5) // stamped by the stepped clock's future: also written
	waitUntil(t, "the readings after the step", func() bool { return len(fake.written()) == 5 })
}

func TestLingerWait(t *testing.T) {
	const l = 100 * time.Millisecond
	for _, tt := range []struct{ age, seen, want time.Duration }{
		{0, 0, l},
		{40 * time.Millisecond, 0, 60 * time.Millisecond},
		{-time.Hour, 0, l}, // clock stepped back: the monotonic bound
		{-time.Hour, 30 * time.Millisecond, 70 * time.Millisecond},
		{-time.Hour, 2 * l, 0},
		{time.Hour, 0, 0}, // clock stepped forward: at once
	} {
		if got := lingerWait(l, tt.age, tt.seen); got != tt.want {
			t.Errorf("lingerWait(%v, %v, %v) = %v, want %v", l, tt.age, tt.seen, got, tt.want)
		}
	}
}

// ---- 13.2: the watchdog sees a wedged disk ----

// notifySocket listens where sd_notify writes (NOTIFY_SOCKET) and asks for a
// watchdog every interval, as systemd would with WatchdogSec.
func notifySocket(t *testing.T, interval time.Duration) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", fmt.Sprint(interval.Microseconds()))
	os.Unsetenv("WATCHDOG_PID")
	return c
}

// nextPing returns true when a WATCHDOG=1 arrives within d.
func nextPing(t *testing.T, c *net.UnixConn, d time.Duration) bool {
	t.Helper()
	buf := make([]byte, 256)
	deadline := time.Now().Add(d)
	for {
		_ = c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false
			}
			t.Fatal(err)
		}
		if string(buf[:n]) == "WATCHDOG=1" {
			return true
		}
	}
}

// An Append that never returns (the disk hung inside a write) silences
// the watchdog, though the spool's Stats still answers; once the write
// returns, the pings resume.
func TestWatchdogQuietWhileAppendHangs(t *testing.T) {
	const interval = 300 * time.Millisecond
	sock := notifySocket(t, interval)
	g, logs := testGateway(t, "http://127.0.0.1:1", nil)
	mem := newMemStore()
	if err := g.spool.Close(); err != nil {
		t.Fatal(err)
	}
	g.spool = mem
	defer g.closeState()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.appendLoop()
	defer func() { g.stopAppender(); <-g.appended }()
	g.accepting.Store(true)
	go g.watchdog(ctx)

	if !nextPing(t, sock, 10*interval) {
		t.Fatal("no watchdog ping from a healthy gateway")
	}
	block := make(chan struct{})
	var unblock sync.Once
	release := func() { unblock.Do(func() { close(block) }) }
	defer release()
	mem.setBlock(block)
	g.enqueue(pending{data: reading(1), points: 1})
	<-mem.entered
	_ = mem.Stats() // answers: the old watchdog's probe would pass
	// The appender is stale after interval/2; a ping already on its way
	// may still arrive before that.
	time.Sleep(interval)
	for nextPing(t, sock, 10*time.Millisecond) {
	}
	if nextPing(t, sock, 3*interval) {
		t.Fatal("watchdog pinged while an append has hung for longer than half the interval")
	}
	if !strings.Contains(logs.String(), "watchdog: the spool is not making progress") {
		t.Fatalf("no log line about the stalled spool:\n%s", logs)
	}
	g.stallLimit = interval
	if code, body := readyz(t, g); code != 503 || !strings.Contains(body, "appender") {
		t.Fatalf("/readyz with an append hung: %d %s", code, body)
	}
	release()
	if !nextPing(t, sock, 10*interval) {
		t.Fatal("watchdog did not resume once the append returned")
	}
}

// ---- 13.6 (gateway side): dead letters that cannot be written ----

// A dead letter that cannot be written is counted and shown in /readyz,
// and the file is used again once it can be.
func TestDeadLetterFailureCountedAndReady(t *testing.T) {
	g, _ := testGateway(t, "http://127.0.0.1:1", nil)
	defer g.closeState()
	dir := filepath.Join(t.TempDir(), "dl")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	g.dead.Close()
	dead, err := deadletter.Open(dir, 1) // every entry rotates
	if err != nil {
		t.Fatal(err)
	}
	g.dead = dead
	bad := func() {
		g.handle(mqtt.Message{Message: sensor.Message{Topic: "sensors/s/d/env", Payload: []byte("not json"), Received: time.Now()}}, sensor.FormatJSON, mqtt.Ack{})
	}
	bad()
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	bad()
	bad()
	if v := metricValue(t, g, "iotgw_dead_letter_write_errors_total"); v != 2 {
		t.Fatalf("iotgw_dead_letter_write_errors_total = %v, want 2", v)
	}
	if v := labelValue(t, g, "iotgw_dead_letters_total", "reason", sensor.ReasonNotJSON); v != 3 {
		t.Fatalf("dead letters counted %v, want 3", v)
	}
	if code, body := readyz(t, g); code != 503 || !strings.Contains(body, "dead-letter writes failing") {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bad()
	if _, body := readyz(t, g); strings.Contains(body, "dead-letter") {
		t.Fatalf("/readyz still reports dead letters failing: %s", body)
	}
	if b, err := os.ReadFile(filepath.Join(dir, deadletter.FileName)); err != nil || !bytes.Contains(b, []byte("not json")) {
		t.Fatalf("dead letter after recovery: %q, %v", b, err)
	}
}

// ---- 11.10: /readyz and logs do not repeat what a server echoes ----

// InfluxDB stand-in that refuses every write and echoes the request's
// headers (the token among them) in its error message.
func TestReadyzHidesEchoedCredentials(t *testing.T) {
	const token = "s3cr3t-t0ken"
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var hdr bytes.Buffer
		_ = r.Header.Write(&hdr)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"code": "unauthorized", "message": "bad token; you sent: " + hdr.String()})
	}))
	defer echo.Close()
	g, logs := testGateway(t, echo.URL, func(c *config.Config) { c.Influx.Token = token })
	g.appendReadings(t, 0, 1)
	runWriter(t, g)
	waitUntil(t, "a failed write", func() bool { return g.writeErr.Load() != nil })
	code, body := readyz(t, g)
	if code != 503 || !strings.Contains(body, "401") {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if strings.Contains(body, token) || strings.Contains(body, "you sent") {
		t.Fatalf("/readyz repeats the server's words: %s", body)
	}
	if strings.Contains(logs.String(), token) {
		t.Fatalf("the log has the token:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "[token]") {
		t.Fatalf("the log lacks the write error:\n%s", logs)
	}
}

// ---- 13.14: the HTTP listener does not outlive a failed start ----

func TestRunClosesHTTPWhenMQTTFails(t *testing.T) {
	g, _ := testGateway(t, "http://127.0.0.1:1", func(c *config.Config) {
		c.HTTP.Addr = "127.0.0.1:0"
		c.MQTT.CAFile = filepath.Join(t.TempDir(), "missing-ca.pem") // Start fails
	})
	if err := g.Run(context.Background()); err == nil {
		t.Fatal("Run started without its CA file")
	}
	if c, err := net.DialTimeout("tcp", g.HTTPAddr(), time.Second); err == nil {
		c.Close()
		t.Fatalf("http listener %s still open after Run failed", g.HTTPAddr())
	}
}

// ---- 12: acknowledgements in arrival order ----

// brokerPeer is a scripted MQTT 3.1.1 broker for one connection: it
// accepts the gateway's session, subscribes it, and lets the test send
// PUBLISH packets and read what comes back.
type brokerPeer struct {
	ln   net.Listener
	conn net.Conn
	r    *bufio.Reader
}

func startBrokerPeer(t *testing.T) *brokerPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &brokerPeer{ln: ln}
}

func (p *brokerPeer) URL() string { return "tcp://" + p.ln.Addr().String() }

func (p *brokerPeer) accept(t *testing.T) {
	t.Helper()
	c, err := p.ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	p.conn, p.r = c, bufio.NewReader(c)
	if _, ok := p.read(t).(*packets.ConnectPacket); !ok {
		t.Fatal("first packet is not CONNECT")
	}
	ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	p.write(t, ca)
	sub, ok := p.read(t).(*packets.SubscribePacket)
	if !ok {
		t.Fatal("second packet is not SUBSCRIBE")
	}
	sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
	sa.MessageID, sa.ReturnCodes = sub.MessageID, []byte{1}
	p.write(t, sa)
}

func (p *brokerPeer) read(t *testing.T) packets.ControlPacket {
	t.Helper()
	for {
		pk, err := packets.ReadPacket(p.r)
		if err != nil {
			t.Fatal(err)
		}
		if _, ping := pk.(*packets.PingreqPacket); !ping {
			return pk
		}
	}
}

func (p *brokerPeer) write(t *testing.T, pk packets.ControlPacket) {
	t.Helper()
	if err := pk.Write(p.conn); err != nil {
		t.Fatal(err)
	}
}

func (p *brokerPeer) publish(t *testing.T, id uint16, topic, payload string) {
	t.Helper()
	pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pp.Qos, pp.MessageID, pp.TopicName, pp.Payload = 1, id, topic, []byte(payload)
	p.write(t, pp)
}

// A bad message behind a good one still waiting for its fsync is
// acknowledged after it, not ahead (MQTT 3.1.1 §4.6).
func TestAcksInArrivalOrder(t *testing.T) {
	peer := startBrokerPeer(t)
	_, url := newFakeInflux(t, true)
	// The scripted broker speaks MQTT 3.1.1, where the order is required.
	g, _ := testGateway(t, url, func(c *config.Config) { c.MQTT.URL, c.MQTT.Protocol = peer.URL(), config.MQTT311 })
	mem := newMemStore()
	if err := g.spool.Close(); err != nil {
		t.Fatal(err)
	}
	g.spool = mem
	block := make(chan struct{})
	var unblock sync.Once
	release := func() { unblock.Do(func() { close(block) }) }
	mem.setBlock(block)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	defer release() // before Run's shutdown waits for the append
	peer.accept(t)
	peer.publish(t, 1, "sensors/s/d/env", `{"v":1}`)
	<-mem.entered // the good message's append is in progress
	peer.publish(t, 2, "sensors/s/d/env", `not json`)
	waitUntil(t, "the bad message to be dead-lettered", func() bool {
		return labelValue(t, g, "iotgw_dead_letters_total", "reason", sensor.ReasonNotJSON) == 1
	})
	release()
	var ids []uint16
	for len(ids) < 2 {
		if pa, ok := peer.read(t).(*packets.PubackPacket); ok {
			ids = append(ids, pa.MessageID)
		}
	}
	if ids[0] != 1 || ids[1] != 2 {
		t.Fatalf("PUBACKs in order %v, want [1 2]", ids)
	}
}
