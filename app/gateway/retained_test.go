package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// has reports whether InfluxDB got a line with the field v=val.
func (f *fakeInflux) has(val string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for l := range f.lines {
		if strings.Contains(l, " v="+val+" ") {
			return true
		}
	}
	return false
}

// A device's retained reading is sent again to every new subscription; a
// reading without "ts" would become a new point each time the gateway
// reconnects. Against real mosquitto: the reading retained before the
// gateway subscribed is acknowledged and counted, not stored; readings
// forwarded live are stored, even those published with the retain flag
// (MQTT 3.1.1 clears it when forwarding to an existing subscription).
func TestRetainedReadingIgnored(t *testing.T) {
	m := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	pub := paho.NewClient(paho.NewClientOptions().AddBroker(m.URL()).SetClientID("device").SetAutoReconnect(false))
	if tok := pub.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	send := func(payload string, retain bool) {
		t.Helper()
		if tok := pub.Publish("sensors/s1/d1/env", 1, retain, payload); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	send(`{"v":1}`, true) // retained before the gateway subscribes

	fake, url := newFakeInflux(t, true)
	g, _ := testGateway(t, url, func(c *config.Config) {
		c.MQTT.URL = m.URL()
		c.Influx.FlushInterval = config.Duration{Duration: time.Millisecond}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitUntil(t, "the gateway to subscribe", func() bool { return g.connected[0].Load() })
	send(`{"v":2}`, false)
	send(`{"v":3}`, true)
	waitUntil(t, "the live readings", func() bool { return fake.has("2") && fake.has("3") })
	if fake.has("1") {
		t.Fatal("the retained reading was stored")
	}
	if v := labelValue(t, g, "iotgw_messages_ignored_total", "reason", reasonRetained); v != 1 {
		t.Fatalf("ignored{retained} = %v, want 1", v)
	}
	if v := metricValue(t, g, "iotgw_messages_acked_total"); v != 3 {
		t.Fatalf("acked = %v, want 3", v)
	}
}
