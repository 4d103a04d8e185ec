package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lp "github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/iot-gateway/iot-gateway/app/command"
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
