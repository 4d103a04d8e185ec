package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// The README's main command in small: broker, sensors and gateway in one
// process, writing to a real InfluxDB, and a summary read back from it.
func TestDemoCommand(t *testing.T) {
	in := testsvc.StartInflux(t)
	t.Setenv("IOTGW_INFLUX_URL", in.URL())
	t.Setenv("IOTGW_INFLUX_TOKEN", "")
	t.Setenv("IOTGW_INFLUX_BUCKET", testsvc.Bucket)
	code, out := execute(t, "demo", "--duration", "2s", "--devices", "5", "--rate", "20", "--bad-ratio", "0.05")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{"sensors: 200 sent, 200 acknowledged", "latency publish→InfluxDB: p50", "environment", `from(bucket: "db/rp")`,
		"command round trip: set_relay on=true to site-01/dev-0001 answered in", `"relay":true`, "live page: http://127.0.0.1:"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// Points written plus dead letters account for every message.
	m := regexp.MustCompile(`(\d+) messages received, (\d+) points written, (\d+) dead letters`).FindStringSubmatch(out)
	if m == nil || m[1] != "200" {
		t.Fatalf("gateway line missing or wrong:\n%s", out)
	}
	written, _ := strconv.Atoi(m[2])
	dead, _ := strconv.Atoi(m[3])
	// The command's lifecycle is written too, as iotgw_command points.
	cm := regexp.MustCompile(`iotgw_command\s+(\d+)`).FindStringSubmatch(out)
	if cm == nil {
		t.Fatalf("no iotgw_command points:\n%s", out)
	}
	lifecycle, _ := strconv.Atoi(cm[1])
	if written == 0 || lifecycle < 2 || written-lifecycle+dead != 200 {
		t.Fatalf("written %s - command points %d + dead %s != 200:\n%s", m[2], lifecycle, m[3], out)
	}
	if code, out := execute(t, "demo", "--duration", "0s"); code != 2 {
		t.Fatalf("bad duration: exit %d %s", code, out)
	}
}
