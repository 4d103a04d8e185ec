package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/internal/cli"
)

// iotResponses answers the AWS IoT API calls of `device add` in the API
// reference's shapes (there is no local IoT Core server; app/iotcore's
// tests check each request the SDK builds).
func iotResponses(calls *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "POST /things/d7":
			_, _ = io.WriteString(w, `{"thingArn":"arn:aws:iot:eu-central-1:123456789012:thing/d7","thingName":"d7"}`)
		case "POST /keys-and-certificate":
			_, _ = io.WriteString(w, `{"certificateArn":"arn:aws:iot:eu-central-1:123456789012:cert/c7","certificateId":"c7",`+
				`"certificatePem":"-----BEGIN CERTIFICATE-----\nMIIBd7\n-----END CERTIFICATE-----\n",`+
				`"keyPair":{"PrivateKey":"-----BEGIN RSA PRIVATE KEY-----\nMIIEd7\n-----END RSA PRIVATE KEY-----\n"}}`)
		default:
			_, _ = io.WriteString(w, `{}`)
		}
	})
}

func TestDeviceAdd(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(iotResponses(&calls))
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	out := t.TempDir()
	run := func() (string, error) {
		cmd := newRootCmd()
		var buf bytes.Buffer
		cmd.SetOut(&buf)
		cmd.SetErr(&buf)
		cmd.SetArgs([]string{"device", "add", "--region", "eu-central-1", "--endpoint-url", srv.URL, "--out", out,
			"--site", "s1", "--thing-type", "t", "--thing-group", "g", "--policy", "p", "d7"})
		err := cmd.Execute()
		return buf.String(), err
	}
	if o, err := run(); err != nil || !strings.Contains(o, "thing arn:aws:iot:eu-central-1:123456789012:thing/d7") {
		t.Fatalf("device add: %v\n%s", err, o)
	}
	fi, err := os.Stat(filepath.Join(out, "d7.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("d7.key: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "d7.crt")); !strings.Contains(string(b), "MIIBd7") {
		t.Errorf("d7.crt = %q", b)
	}
	// Again: the key is there, so nothing is asked of IoT Core.
	n := calls.Load()
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "exists") || calls.Load() != n {
		t.Errorf("second add: %v, %d more calls", err, calls.Load()-n)
	}
}

// Bad arguments and flags are usage errors (exit code 2), found before
// any AWS configuration is loaded.
func TestDeviceAddUsage(t *testing.T) {
	full := []string{"--site", "s1", "--thing-type", "t", "--thing-group", "g", "--policy", "p"}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no device", full, "accepts 1 arg"},
		{"missing flag", []string{"--site", "s1", "d7"}, `"policy"`},
		{"unknown flag", append([]string{"--colour", "red", "d7"}, full...), "unknown flag: --colour"},
		{"bad site", append(append([]string{}, full...), "--site", "s/1", "d7"), `site "s/1"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			code := cli.Run(root, append([]string{"device", "add", "--out", t.TempDir()}, c.args...), &out)
			if code != 2 || !strings.Contains(out.String(), c.want) {
				t.Fatalf("exit %d, output %q; want 2 and %q", code, out.String(), c.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	if code := cli.Run(root, []string{"version"}, &out); code != 0 || out.String() != version+"\n" {
		t.Fatalf("version: exit %d, %q", code, out.String())
	}
}
