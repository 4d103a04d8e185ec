package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lp "github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// The command API is refused at start, naming the key, when it would be
// reachable without TLS, or its token or certificate cannot be used.
func TestRunCheckCommands(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("abc\n"), 0o600)
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"IOTGW_COMMANDS_TOKEN": "0123456789abcdef"}, []string{"--http-addr", "0.0.0.0:9273"}, "http.addr: \"0.0.0.0:9273\" is not a loopback address"},
		{map[string]string{"IOTGW_COMMANDS_TOKEN": "short"}, nil, "commands.token has 5 characters"},
		{map[string]string{"IOTGW_COMMANDS_TOKEN_FILE": short}, nil, "commands.token_file: " + short + " holds a token of 3 characters"},
		{map[string]string{"IOTGW_COMMANDS_TOKEN_FILE": filepath.Join(dir, "none")}, nil, "commands.token_file: open"},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		code, out := execute(t, append([]string{"run", "--check", "--spool-dir", dir}, tc.args...)...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v %v: exit %d %q, want 2 and %q", tc.env, tc.args, code, out, tc.want)
		}
		for k := range tc.env {
			os.Unsetenv(k)
		}
	}
	t.Setenv("IOTGW_COMMANDS_TOKEN", "0123456789abcdef")
	if code, out := execute(t, "run", "--check", "--spool-dir", dir); code != 0 {
		t.Errorf("loopback with a token: exit %d %s", code, out)
	}
}

// Every lifecycle point is valid line protocol with the documented tags.
func TestCommandPoint(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []command.Command{
		{ID: "ab12", Device: "site-01/dev-0001", Name: "set_interval", State: command.Sent, Created: at},
		{ID: "ab12", Device: "site-01/dev-0001", Name: "set_interval", State: command.Answered, Created: at, Finished: at.Add(time.Second), LatencyMS: 12.5},
		{ID: "ab12", Device: "site-01/dev-0001", Name: "x", State: command.Failed, Created: at, Finished: at, Error: `device: "no" \ never` + "\n"},
	} {
		line := commandPoint(c, "gw 1,a")
		dec := lp.NewDecoderWithBytes(line)
		if !dec.Next() {
			t.Fatalf("%s: no line", line)
		}
		m, err := dec.Measurement()
		if err != nil || string(m) != "iotgw_command" {
			t.Fatalf("%s: measurement %q %v", line, m, err)
		}
		tags := map[string]string{}
		for {
			k, v, err := dec.NextTag()
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			if k == nil {
				break
			}
			tags[string(k)] = string(v)
		}
		if tags["site"] != "site-01" || tags["device"] != "dev-0001" || tags["state"] != string(c.State) || tags["gateway"] != "gw 1,a" {
			t.Errorf("%s: tags %v", line, tags)
		}
		fields := map[string]any{}
		for {
			k, v, err := dec.NextField()
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			if k == nil {
				break
			}
			fields[string(k)] = v.Interface()
		}
		if fields["id"] != "ab12" || (c.State == command.Answered && fields["latency_ms"] != 12.5) ||
			(c.Error != "" && !strings.Contains(fields["error"].(string), `"no" \ never`)) {
			t.Errorf("%s: fields %v", line, fields)
		}
		if ts, err := dec.Time(lp.Nanosecond, time.Time{}); err != nil || ts.IsZero() {
			t.Errorf("%s: time %v %v", line, ts, err)
		}
	}
}

// Over TLS the CLI trusts the CA it is given, and nothing else.
func TestCommandCLIOverTLS(t *testing.T) {
	certs := testsvc.MakeCerts(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/commands/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer 0123456789abcdef" {
			w.WriteHeader(401)
			return
		}
		_, _ = w.Write([]byte(`{"id":"` + r.PathValue("id") + `","device":"s/d","name":"x","state":"answered","latency_ms":1.5,"result":{}}`))
	})
	srv, err := httpapi.ListenTLS("127.0.0.1:0", mux, certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	tok := filepath.Join(t.TempDir(), "tok")
	_ = os.WriteFile(tok, []byte("0123456789abcdef"), 0o600)
	url := "https://localhost:" + strings.Split(srv.Addr(), ":")[1]
	code, out := execute(t, "command", "--url", url, "--token-file", tok, "--ca-file", certs.CA, "status", "abc")
	if code != 0 || !strings.Contains(out, "state     answered") {
		t.Fatalf("over TLS with the CA: exit %d %s", code, out)
	}
	if code, out := execute(t, "command", "--url", url, "--token-file", tok, "--ca-file", certs.OtherCA, "status", "abc"); code != 1 || !strings.Contains(out, "certificate") {
		t.Fatalf("another CA: exit %d %s", code, out)
	}
}
