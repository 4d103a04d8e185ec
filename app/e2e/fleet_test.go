package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// A device that stops publishing is flagged silent once it has been quiet
// for silent_factor times its own interval (in iotgw_devices_silent and in
// /readyz's detail, which stays ready), while a device that keeps its pace
// is not; the silent one returns to normal by itself with its next message.
func TestSilentDevice(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken)
	g.start("--config", writeConfig(t, "[fleet]\nsilent_factor = 3.0\nmin_silence = \"1s\"\nsweep_interval = \"100ms\"\n"))
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })

	c := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("fleet-test"))
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	send := func(dev string) {
		tk := c.Publish("sensors/s1/"+dev+"/env", 1, false, `{"v":1}`)
		if !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
			t.Fatalf("publish: %v", tk.Error())
		}
	}
	// Both devices publish every 100 ms for a second, then "quiet" stops.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range 10 {
		<-tick.C
		send("steady")
		send("quiet")
	}
	stopSteady := make(chan struct{})
	steadyDone := make(chan struct{})
	go func() {
		defer close(steadyDone)
		for {
			select {
			case <-stopSteady:
				return
			case <-tick.C:
				send("steady")
			}
		}
	}()
	defer func() { close(stopSteady); <-steadyDone }()

	g.waitFor("quiet flagged silent", 10*time.Second, func() bool { return g.metric("iotgw_devices_silent") == 1 })
	ok, body := g.ready()
	if !ok {
		t.Errorf("/readyz not ready with a silent device: %s", body)
	}
	var rz struct {
		Detail struct {
			Fleet struct {
				Devices int      `json:"devices"`
				Silent  int      `json:"silent"`
				IDs     []string `json:"silent_devices"`
			} `json:"fleet"`
		} `json:"detail"`
	}
	if err := json.Unmarshal([]byte(body), &rz); err != nil {
		t.Fatal(err)
	}
	if f := rz.Detail.Fleet; f.Devices != 2 || f.Silent != 1 || len(f.IDs) != 1 || f.IDs[0] != "s1/quiet" {
		t.Errorf("/readyz fleet detail = %+v, want 2 devices, s1/quiet silent", f)
	}

	send("quiet")
	g.waitFor("quiet back to normal", 10*time.Second, func() bool { return g.metric("iotgw_devices_silent") == 0 })
	// Rejected messages count against their device.
	tk := c.Publish("sensors/s1/quiet/env", 1, false, `not json`)
	tk.WaitTimeout(5 * time.Second)
	var devs []fleet.Device
	g.waitFor("rejected counted", 10*time.Second, func() bool {
		g.api(t, "/api/devices?q=quiet", &devs)
		return len(devs) == 1 && devs[0].Rejected == 1
	})
	if devs[0].Messages != 12 || devs[0].Silent {
		t.Errorf("s1/quiet = %+v, want 12 messages, not silent", devs[0])
	}
}

// A fleet larger than the topic cache, each device publishing in turn:
// the cache freezes with a stable share and lets the rest pass through
// (names viewing the read buffer, prefixes built into the line). Every
// reading must still land under its own device, with its own value.
func TestFleetLargerThanTopicCache(t *testing.T) {
	const devices, rounds = 40_000, 3
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000, MaxQueued: devices*rounds + 1000})
	g := newGateway(t, mq.URL(), in.URL())
	g.start()
	g.waitFor("ready", 30*time.Second, func() bool { ok, _ := g.ready(); return ok })
	pub := newPublisher(t, mq.URL())
	pub.devices = devices
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := pub.publish(ctx, 0, devices*rounds, 0); err != nil {
		t.Fatal(err)
	}
	expectExactly(t, in, g, devices*rounds)
	if f := g.metric("iotgw_topic_cache_frozen_shards"); f == 0 {
		t.Fatalf("no shard froze with %d devices in turn: the test does not test passing topics\n%s", devices, g.metricsDump())
	}
	if h, m := g.metric("iotgw_topic_cache_hits_total"), g.metric("iotgw_topic_cache_misses_total"); h == 0 || m == 0 {
		t.Fatalf("topic cache hits %v, misses %v: want both", h, m)
	}
	rows, err := in.Query(fmt.Sprintf(`from(bucket: %q) |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "env" and r._field == "v")
  |> group(columns: ["device"]) |> count() |> group() |> count()`, testsvc.Bucket))
	if err != nil || len(rows) != 1 || rows[0]["_value"] != int64(devices) {
		t.Fatalf("devices with points: %v, %v; want %d", rows, err, devices)
	}
	// Reading i is device i % devices with value i: a prefix built for
	// another topic, or a name changed under the mapper, shows here.
	for _, d := range []int{0, 1, 12_345, devices - 1} {
		rows, err := in.Query(fmt.Sprintf(`from(bucket: %q) |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "env" and r._field == "v" and r.device == "d%d" and r.site == "s1")
  |> keep(columns: ["_value"]) |> sort(columns: ["_value"])`, testsvc.Bucket, d))
		if err != nil {
			t.Fatal(err)
		}
		var got []float64 // JSON numbers are stored as floats
		for _, r := range rows {
			v, _ := r["_value"].(float64)
			got = append(got, v)
		}
		want := []float64{float64(d), float64(d + devices), float64(d + 2*devices)}
		if !slices.Equal(got, want) {
			t.Fatalf("device d%d has values %v, want %v", d, got, want)
		}
	}
}
