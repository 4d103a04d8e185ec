package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/iot-gateway/iot-gateway/app/deadletter"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// publish5 publishes each message at QoS 1 over MQTT 5 with its user
// properties, in order, and returns once the broker acknowledged them all.
func publish5(t *testing.T, mq *testsvc.Mosquitto, msgs []msg5) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", mq.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: "pub5", Conn: conn})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "pub5", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatalf("connect: %v %v", ca, err)
	}
	defer c.Disconnect(&paho.Disconnect{}) //nolint:errcheck // the test is over either way
	for _, m := range msgs {
		var props paho.UserProperties
		for _, kv := range m.props {
			props.Add(kv[0], kv[1])
		}
		if _, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: m.topic, Payload: []byte(m.payload),
			Properties: &paho.PublishProperties{User: props}}); err != nil {
			t.Fatalf("publish %s: %v", m.topic, err)
		}
	}
}

type msg5 struct {
	topic, payload string
	props          [][2]string
}

// A device time carried as an MQTT 5 user property (mapping.timestamp_property)
// through mosquitto, the running gateway and InfluxDB: integer milliseconds
// and RFC 3339 with nanoseconds are stored at exactly that time, a payload
// "ts" wins over it, and a message whose property is not a time is
// dead-lettered with its reason while the good ones around it are stored.
func TestTimestampProperty(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_MQTT_LINE_TOPICS=lp/#")
	g.start("--config", writeConfig(t, "[mapping]\ntimestamp_property = \"ts\"\n"))
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })

	publish5(t, mq, []msg5{
		{"sensors/s1/d1/prop", `{"v":1}`, [][2]string{{"fw", "1.2"}, {"ts", "1764158400123"}}},
		{"sensors/s1/d2/prop", `{"v":2}`, [][2]string{{"ts", "2026-11-26T12:00:00.000000456Z"}}},
		{"sensors/s1/d3/prop", `{"v":3}`, [][2]string{{"ts", "yesterday"}}},
		{"sensors/s1/d4/prop", `{"v":4}`, [][2]string{{"ts", "1764158400999"}}},
		{"sensors/s1/d5/prop", `{"ts":1764158400555,"v":5}`, [][2]string{{"ts", "1764158400999"}}},
		{"lp/x", "propline,host=a v=6", [][2]string{{"ts", "1764158400777"}}},
	})

	g.waitFor("5 points written and 1 dead letter", 30*time.Second, func() bool {
		return g.metric("iotgw_points_written_total") == 5 && g.metric(`iotgw_dead_letters_total{reason="bad_ts_property"}`) == 1
	})
	want := map[string]string{
		"d1": "1764158400123000000",
		"d2": "1795694400000000456",
		"d4": "1764158400999000000",
		"d5": "1764158400555000000", // the payload's ts
	}
	_, rows := influxQL(t, in, `SELECT "v", "device" FROM "prop"`)
	got := map[string]string{}
	for _, r := range rows {
		got[fmt.Sprint(r[2])] = fmt.Sprint(r[0])
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("prop points (device: time) %v, want %v", got, want)
	}
	if _, rows = influxQL(t, in, `SELECT "v" FROM "propline"`); len(rows) != 1 || fmt.Sprint(rows[0][0]) != "1764158400777000000" {
		t.Errorf("propline: %v, want one point at 1764158400777000000", rows)
	}

	b, err := os.ReadFile(filepath.Join(g.dir, "state", deadletter.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var e deadletter.Entry
	if err := json.Unmarshal(b, &e); err != nil || strings.Count(string(b), "\n") != 1 {
		t.Fatalf("dead letters %q: %v, want one entry", b, err)
	}
	if e.Topic != "sensors/s1/d3/prop" || e.Reason != "bad_ts_property" || !strings.Contains(e.Error, `ts="yesterday"`) || e.Payload != `{"v":3}` {
		t.Errorf("dead letter %+v", e)
	}
}
