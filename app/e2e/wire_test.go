package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// influxQL returns the rows of q (testsvc's InfluxQL) as one table, with
// the columns of its series.
func influxQL(t *testing.T, in *testsvc.Influx, q string) (cols []string, rows [][]any) {
	t.Helper()
	for _, s := range in.InfluxQL(q) {
		cols = s.Columns
		rows = append(rows, s.Values...)
	}
	return cols, rows
}

// The wire contract through the running gateway: strings stored byte for
// byte, a newline refused with its reason, line-protocol timestamps read
// in the unit configured for the topic, and untimed lines of one series in
// one message kept apart.
func TestWireContract(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_MQTT_LINE_TOPICS=lp/#")
	g.start("--config", writeConfig(t, "[mapping.line_precision]\n\"lp/ms/#\" = \"ms\"\n"))
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())

	text := "tab\tcr\rbell\a q\" back\\ lit\\n end\\"
	payload, _ := json.Marshal(map[string]any{"ts": int64(1764158400123), "note": text})
	pub.publishRaw(t, "sensors/s1/d1/notes", payload)
	pub.publishRaw(t, "sensors/s1/d1/notes", []byte(`{"note":"two\nlines"}`))
	pub.publishRaw(t, "lp/ms/x", []byte("cpu,host=a v=1 1764158400123"))
	pub.publishRaw(t, "lp/other", []byte("mem,host=a free=1i\nmem,host=a free=2i\nmem,host=b free=3i"))

	g.waitFor("5 points written and 1 dead letter", 30*time.Second, func() bool {
		return g.metric("iotgw_points_written_total") == 5 && g.metric(`iotgw_dead_letters_total{reason="newline_in_string"}`) == 1
	})
	_, rows := influxQL(t, in, `SELECT "note" FROM "notes"`)
	if len(rows) != 1 || rows[0][1] != text || fmt.Sprint(rows[0][0]) != "1764158400123000000" {
		t.Errorf("notes: %q, want %q at 1764158400123000000", rows, text)
	}
	_, rows = influxQL(t, in, `SELECT "v" FROM "cpu"`)
	if len(rows) != 1 || fmt.Sprint(rows[0][0]) != "1764158400123000000" {
		t.Errorf("cpu (ms precision): %v", rows)
	}
	_, rows = influxQL(t, in, `SELECT "free" FROM "mem" GROUP BY "host"`)
	if len(rows) != 3 {
		t.Errorf("mem: %v, want 3 points (two of host a, one of host b)", rows)
	}
}
