package httpapi

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/fleet"
)

const token = "0123456789abcdef-test"

func newAPI(t *testing.T) (*API, *httptest.Server) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w := fleet.New(fleet.Options{})
	w.Seen("s1/d1", time.Now())
	m, err := command.Open(command.Options{Dir: t.TempDir(), Known: w.Known, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	a := &API{Token: token, Commands: m, Fleet: w, Registry: reg, Interval: 50 * time.Millisecond,
		DeadLetters: func(int) any { return []string{} }}
	mux := HandlerWith(reg, nil, nil)
	for p, h := range a.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return a, srv
}

func call(t *testing.T, srv *httptest.Server, method, path, tok, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp, v
}

func TestAPIRefusals(t *testing.T) {
	a, srv := newAPI(t)
	for _, tc := range []struct {
		method, path, tok, body string
		code                    int
		reason                  string
	}{
		{"GET", "/api/commands", "", "", 401, "unauthorized"},
		{"GET", "/api/commands", "wrong", "", 401, "unauthorized"},
		{"GET", "/api/commands/nope", token, "", 404, "not_found"},
		{"POST", "/api/commands", token, `{"device":"s1/d9","name":"x"}`, 404, "unknown_device"},
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x","args":{"a":"` + strings.Repeat("x", 300) + `"}}`, 413, "too_large"},
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x","colour":1}`, 400, "bad_json"},
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x","wait":"soon"}`, 400, "bad_wait"},
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x","expiry":"1ms"}`, 400, "bad_expiry"},
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x","pad":"` + strings.Repeat("x", maxBody) + `"}`, 413, "too_large"},
		// No command connection: the request is refused, not queued.
		{"POST", "/api/commands", token, `{"device":"s1/d1","name":"x"}`, 503, "not_connected"},
	} {
		resp, v := call(t, srv, tc.method, tc.path, tc.tok, tc.body)
		if resp.StatusCode != tc.code || v["reason"] != tc.reason || v["error"] == "" {
			t.Errorf("%s %s %.60s: %d %v, want %d %s", tc.method, tc.path, tc.body, resp.StatusCode, v, tc.code, tc.reason)
		}
	}
	if v := testutil.ToFloat64(a.unauthorized); v != 2 {
		t.Errorf("unauthorized counted %v, want 2", v)
	}
}

// The page needs no token and loads nothing from elsewhere.
func TestPage(t *testing.T) {
	_, srv := newAPI(t)
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Fatalf("page: %d, CSP %q", resp.StatusCode, csp)
	}
	b, _ := pageFS.ReadFile("page/index.html")
	for _, ext := range []string{"http://", "https://", "//cdn", "<link ", "src=\""} {
		if strings.Contains(string(b), ext) {
			t.Errorf("the page refers to an outside asset (%q)", ext)
		}
	}
}

// /api/events streams status events as server-sent events.
func TestEvents(t *testing.T) {
	_, srv := newAPI(t)
	req, _ := http.NewRequest("GET", srv.URL+"/api/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	events := 0
	for sc.Scan() && events < 2 {
		line := sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var st Status
			if err := json.Unmarshal([]byte(data), &st); err != nil {
				t.Fatalf("event data: %v", err)
			}
			if st.Devices.Devices != 1 || len(st.DeviceList) != 1 || st.DeviceList[0].ID != "s1/d1" {
				t.Fatalf("status %+v", st)
			}
			events++
		}
	}
	if events != 2 {
		t.Fatalf("%d events", events)
	}
}

func TestStreamsBounded(t *testing.T) {
	a, srv := newAPI(t)
	a.streams.Store(maxStreams)
	resp, v := call(t, srv, "GET", "/api/events", token, "")
	if resp.StatusCode != 503 || v["reason"] != "too_many_streams" {
		t.Fatalf("stream past the bound: %d %v", resp.StatusCode, v)
	}
	if n := a.streams.Load(); n != maxStreams {
		t.Fatalf("streams = %d after a refusal", n)
	}
}
