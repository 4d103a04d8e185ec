package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// execute runs the root command as main would and returns the exit code.
func execute(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	if err == nil {
		return 0, out.String()
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.Code, out.String() + err.Error()
	}
	return 1, out.String() + err.Error()
}

func TestRunCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var sample bytes.Buffer
	root := newRootCmd()
	root.SetArgs([]string{"config", "sample"})
	root.SetOut(&sample)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"sample is valid", []string{"run", "--check", "--config", write("sample.toml", sample.String())}, nil, 0, "configuration ok"},
		{"unknown key", []string{"run", "--check", "--config", write("bad.toml", "[mqtt]\nurll = \"x\"\n")}, nil, 2, "unknown key mqtt.urll"},
		{"missing file", []string{"run", "--check", "--config", filepath.Join(dir, "nope.toml")}, nil, 2, "no such file"},
		{"bad env", []string{"run", "--check"}, map[string]string{"IOTGW_MQTT_QOS": "7"}, 2, "mqtt.qos"},
		{"flag wins", []string{"run", "--check", "--influx-url", "localhost"}, map[string]string{"IOTGW_INFLUX_URL": "http://ok:8086"}, 2, "influx.url"},
		{"empty token accepted", []string{"run", "--check"}, map[string]string{"IOTGW_INFLUX_TOKEN": ""}, 0, "configuration ok"},
		// The nightly export reads the same file: its mistakes fail here, at deploy time.
		{"bad export value", []string{"run", "--check", "--config", write("export.toml", "[export]\nprefix = \"/exports/\"\n")}, nil, 2, "export.prefix"},
		{"bad export env", []string{"run", "--check"}, map[string]string{"IOTGW_EXPORT_PART_SIZE": "1024"}, 2, "export.part_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, out := execute(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d %q, want %d containing %q", code, out, tt.code, tt.want)
			}
		})
	}
}

// Secrets named as ssm:/path are read from SSM at start (kumo serves the
// SSM API in process); a missing one is a configuration error naming the key.
func TestRunResolvesSSMReferences(t *testing.T) {
	srv := testsvc.StartSSM(t)
	t.Setenv("IOTGW_SSM_ENDPOINT", srv.URL)
	t.Setenv("AWS_REGION", testsvc.SSMRegion)
	t.Setenv("AWS_ACCESS_KEY_ID", testsvc.SSMAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testsvc.SSMSecretKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	srv.Put(t, "/iot-gateway/dev/influx-token", "tok")
	t.Setenv("IOTGW_INFLUX_TOKEN", "ssm:/iot-gateway/dev/influx-token")
	if code, out := execute(t, "run", "--check"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	t.Setenv("IOTGW_MQTT_PASSWORD", "ssm:/iot-gateway/dev/missing")
	code, out := execute(t, "run", "--check")
	if code != 2 || !strings.Contains(out, "mqtt.password: ssm parameter /iot-gateway/dev/missing: ParameterNotFound") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

// The startup line names both URLs without their passwords.
func TestStartLogRedactsURLs(t *testing.T) {
	cfg := config.Default()
	cfg.Influx.URL = "http://user:secret@127.0.0.1:8086"
	cfg.MQTT.URL = "tcp://dev:secret@127.0.0.1:1883"
	var out bytes.Buffer
	logStart(slog.New(slog.NewTextHandler(&out, nil)), cfg)
	if s := out.String(); strings.Contains(s, "secret") || !strings.Contains(s, "127.0.0.1:8086") || !strings.Contains(s, "dev:xxxxx@127.0.0.1:1883") {
		t.Fatalf("start log: %s", s)
	}
	if got := redacted("http://u:secret@[::1"); strings.Contains(got, "secret") {
		t.Fatalf("redacted(unparsable) = %q", got)
	}
}
