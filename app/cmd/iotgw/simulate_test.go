package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func TestSimulateCommand(t *testing.T) {
	b, err := broker.New(broker.Options{Listeners: []broker.Listener{{ID: "t", Addr: "127.0.0.1:0"}}, AllowAnonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	url := "tcp://" + b.Addr("t")

	code, out := execute(t, "simulate", "--mqtt-url", url, "--count", "200", "--total-rate", "2000", "--bad-ratio", "0.1", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rep); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	if fmt.Sprint(rep["sent"]) != "200" || fmt.Sprint(rep["acked"]) != "200" {
		t.Fatalf("report = %v", rep)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"simulate", "--qos", "3"}, 2, "qos"},
		{[]string{"simulate", "--bad-ratio", "2"}, 2, "bad-ratio"},
		{[]string{"simulate", "--nope"}, 2, "unknown flag"},
		// Nothing listens there: every publish fails, the exit code says so.
		{[]string{"simulate", "--mqtt-url", fmt.Sprintf("tcp://127.0.0.1:%d", testsvc.FreePort(t)), "--count", "5", "--connect-timeout", "1s"}, 1, ""},
	} {
		code, out := execute(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d %q, want %d containing %q", tt.args, code, out, tt.code, tt.want)
		}
	}
}
