package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	var influxErr error
	srv, err := Listen("127.0.0.1:0", Handler(reg, map[string]Check{
		"mqtt":   func() error { return nil },
		"influx": func() error { return influxErr },
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "iotgw_test_total 3") {
		t.Fatalf("/metrics %d %s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	influxErr = errors.New("last write failed: 503")
	code, body := get("/readyz")
	var r struct {
		Ready  bool
		Checks map[string]string
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if code != 503 || r.Ready || r.Checks["influx"] != "last write failed: 503" || r.Checks["mqtt"] != "ok" {
		t.Fatalf("/readyz %d %s", code, body)
	}
	// A long reason (a server's echo, say) is cut, on a rune boundary.
	influxErr = errors.New(strings.Repeat("é", 1000))
	_, body = get("/readyz")
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if got := r.Checks["influx"]; len(got) > maxReason+3 || !strings.HasSuffix(got, "...") || !utf8.ValidString(got) {
		t.Fatalf("long reason shown as %d bytes: %q", len(got), got)
	}
}

// Shutdown right after Listen closes the socket before it returns, even if
// the serving goroutine has not run yet, so a gateway that fails to start
// leaves no listener behind. With one P and nothing between the calls that
// parks, that goroutine cannot have run; binding the same address again
// (which does not park either) fails while the socket is open.
func TestShutdownBeforeServeCloses(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	srv, err := Listen("127.0.0.1:0", http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", srv.Addr())
	if err != nil {
		t.Fatalf("%s still bound after Shutdown: %v", srv.Addr(), err)
	}
	ln.Close()
}
