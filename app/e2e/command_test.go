package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sim"
)

const testToken = "e2e-token-0123456789abcdef"

// tokenFile writes the API token where `iotgw command` reads it.
func tokenFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// cli runs `iotgw command ...` against g and returns its output and error.
func (g *gw) cli(t *testing.T, tok string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"command", "--url", "http://" + g.httpAddr, "--token-file", tok}, args...)
	cmd := exec.Command(binPath, full...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// api calls the gateway's API with the token.
func (g *gw) api(t *testing.T, path string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.httpAddr+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return resp.StatusCode
}

// startFleet runs a simulated fleet that obeys commands, publishing
// through url (anonymous: one connection answers for every device).
func startFleet(t *testing.T, url string, devices int, rate float64) *sim.Responder {
	t.Helper()
	controls := sim.NewControls()
	o := sim.Options{Devices: devices, Sites: 1, Rate: rate, QoS: 1, Controls: controls, DrainTimeout: time.Second}
	if _, err := sim.NewFleet(o); err != nil { // registers the devices' controls
		t.Fatal(err)
	}
	resp, err := sim.NewResponder(sim.PahoConfig{URL: url, ClientID: "responder"}, controls, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(resp.Close)
	pub, err := sim.NewPahoPublisher(sim.PahoConfig{URL: url, ClientID: "fleet"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _, _ = sim.Run(ctx, o, pub, nil) }()
	t.Cleanup(func() { cancel(); <-done; pub.Close() })
	return resp
}

func decodeCommand(t *testing.T, out string) command.Command {
	t.Helper()
	var c command.Command
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("not a command record:\n%s", out)
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&c); err != nil {
		t.Fatalf("not a command record: %v\n%s", err, out)
	}
	return c
}

// A command's round trip through mosquitto: the CLI asks the gateway's
// API, the gateway publishes over its MQTT 5 command connection, a
// simulated device obeys and replies, the status is answered, survives a
// restart, and reaches InfluxDB. Bad requests and stray replies are
// refused and counted.
func TestCommandRoundTripMosquitto(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken)
	g.start()
	tok := tokenFile(t)
	startFleet(t, mq.URL(), 4, 5)
	g.waitFor("4 devices known", 30*time.Second, func() bool { return g.metric("iotgw_devices_tracked") == 4 })
	if ok, body := g.ready(); !ok || !strings.Contains(body, `"commands":{"client_id":`) || !strings.Contains(body, `"connected":true`) {
		t.Errorf("/readyz does not show the command connection up: %s", body)
	}

	out, err := g.cli(t, tok, "send", "--device", "site-01/dev-0001", "--name", "set_interval", "--arg", "seconds=2", "--wait", "10s", "--json")
	if err != nil {
		t.Fatalf("command send: %v\n%s\n%s", err, out, g.logs())
	}
	c := decodeCommand(t, out)
	if c.State != command.Answered || c.Delivered.IsZero() || c.LatencyMS <= 0 {
		t.Fatalf("command = %+v, want answered with a delivery time and latency", c)
	}
	var st sim.State
	if err := json.Unmarshal(c.Result, &st); err != nil || st.IntervalSeconds != 2 {
		t.Fatalf("result %s: want interval_s 2 (%v)", c.Result, err)
	}

	// The device obeys: over the next 3 s it publishes about once per 2 s
	// while its neighbours keep 5 per second.
	var before []fleet.Device
	g.api(t, "/api/devices?q=dev-000", &before)
	time.Sleep(3 * time.Second) // the interval under test is wall-clock time
	var after []fleet.Device
	g.api(t, "/api/devices?q=dev-000", &after)
	grew := map[string]uint32{}
	for _, a := range after {
		for _, b := range before {
			if a.ID == b.ID {
				grew[a.ID] = a.Messages - b.Messages
			}
		}
	}
	if grew["site-01/dev-0001"] > 3 || grew["site-01/dev-0002"] < 8 {
		t.Errorf("messages in 3 s after set_interval 2: %v; want dev-0001 <= 3 and dev-0002 >= 8", grew)
	}

	out, err = g.cli(t, tok, "status", c.ID)
	if err != nil || !strings.Contains(out, "state     answered") || !strings.Contains(out, `"interval_s":2`) {
		t.Fatalf("status: %v\n%s", err, out)
	}

	// Refused requests: each a clear error, counted by reason.
	refusals := []struct {
		args   []string
		reason string
		text   string
	}{
		{[]string{"--device", "site-01/dev-9999", "--name", "report_state"}, "unknown_device", "has not been heard from"},
		{[]string{"--device", "site-01/dev-0002", "--name", "set_relay", "--arg", "on=" + strings.Repeat("x", 300)}, "too_large", "at most 256"},
		{[]string{"--device", "site-01", "--name", "report_state"}, "bad_device", "is not <site>/<device>"},
		{[]string{"--device", "site-01/dev-0002", "--name", "a/b"}, "bad_name", "command name"},
	}
	for _, r := range refusals {
		out, err := g.cli(t, tok, append([]string{"send"}, r.args...)...)
		if err == nil || !strings.Contains(out, r.text) {
			t.Errorf("send %v: err %v, output %q; want a failure saying %q", r.args, err, out, r.text)
		}
		if v := g.metric(`iotgw_command_errors_total{reason="` + r.reason + `"}`); v != 1 {
			t.Errorf("iotgw_command_errors_total{reason=%q} = %v, want 1", r.reason, v)
		}
	}
	// A device command the simulator does not know: delivered, then failed
	// by the device's own answer.
	out, err = g.cli(t, tok, "send", "--device", "site-01/dev-0003", "--name", "reboot", "--wait", "10s", "--json")
	if err == nil || decodeCommand(t, out).State != command.Failed || !strings.Contains(out, "unknown command") {
		t.Errorf("unknown command: err %v\n%s", err, out)
	}
	// A wrong token is refused.
	bad := filepath.Join(t.TempDir(), "bad")
	_ = os.WriteFile(bad, []byte("wrong-token-0123456789"), 0o600)
	if out, err := g.cli(t, bad, "status", c.ID); err == nil || !strings.Contains(out, "HTTP 401") {
		t.Errorf("wrong token: err %v, %q", err, out)
	}

	// A reply nobody asked for is refused and counted.
	stray := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("stray"))
	if tk := stray.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	// A reply meant for another gateway is not even seen by this one: it
	// subscribes to its own replies only.
	stray.Publish("replies/site-01/dev-0001/other-gw/0000000000000000", 1, false, `{"id":"0000000000000000","ok":true}`).Wait()
	stray.Publish("replies/site-01/dev-0001/gw-test/0000000000000000", 1, false, `{"id":"0000000000000000","ok":true}`).Wait()
	stray.Disconnect(100)
	g.waitFor("unmatched reply counted", 10*time.Second, func() bool {
		return g.metric(`iotgw_command_errors_total{reason="unmatched"}`) >= 1
	})
	if v := g.metric(`iotgw_command_errors_total{reason="unmatched"}`); v != 1 {
		t.Errorf("unmatched replies %v, want 1 (the other gateway's reply was seen)", v)
	}

	// The lifecycle reaches InfluxDB: sent, delivered, answered for the
	// first command (delivered also when the reply overtook the PUBACK).
	var states []string
	g.waitFor("command points in InfluxDB", 30*time.Second, func() bool {
		rows, err := in.Query(`from(bucket: "` + testsvc.Bucket + `") |> range(start: 0)
		  |> filter(fn: (r) => r._measurement == "iotgw_command" and r._field == "id" and r._value == "` + c.ID + `")`)
		states = states[:0]
		for _, r := range rows {
			states = append(states, fmt.Sprint(r["state"]))
		}
		slices.Sort(states)
		return err == nil && slices.Equal(states, []string{"answered", "delivered", "sent"})
	})

	// The record survives a restart of the gateway.
	// Only messages are acknowledged to the broker, not the lifecycle
	// points the gateway spools of its own. (Acked is read first: while
	// the fleet publishes, received may be ahead, never behind.)
	acked := g.metric("iotgw_messages_acked_total")
	if recv := g.metric(`iotgw_messages_received_total{format="json"}`); acked > recv {
		t.Errorf("acked %v > received %v: the gateway's own points were counted as acknowledged messages", acked, recv)
	}
	g.stop(15)
	g.startAgain()
	out, err = g.cli(t, tok, "status", c.ID, "--json")
	if err != nil || decodeCommand(t, out).State != command.Answered {
		t.Fatalf("status after restart: %v\n%s", err, out)
	}
}

// The same round trip through iotgw broker, where every party is its own
// user: the device may read only commands/<site>/<device>/ and write only
// its replies, the gateway the other way round.
func TestCommandRoundTripBroker(t *testing.T) {
	in := testsvc.StartInflux(t)
	dir := t.TempDir()
	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), 10)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	users := "gateway:::" + hash("gw-pass") + "\n" +
		"dev-0001:site-01:dev-0001:" + hash("dev1-pass") + "\n" +
		"dev-0002:site-01:dev-0002:" + hash("dev2-pass") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testsvc.FreePort(t)
	conf := fmt.Sprintf("data_dir = %q\nusers_file = %q\ngateway_users = [\"gateway\"]\n[plain]\naddr = \"127.0.0.1:%d\"\n[tls]\naddr = \"\"\n",
		filepath.Join(dir, "data"), filepath.Join(dir, "users"), port)
	confPath := filepath.Join(dir, "broker.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, _ := os.Create(filepath.Join(dir, "broker.log"))
	br := exec.Command(binPath, "broker", "--config", confPath)
	br.Stdout, br.Stderr = logf, logf
	if err := br.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Process.Kill(); _ = br.Wait(); logf.Close() })
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	waitFor(t, "iotgw broker accepting", 30*time.Second, func() bool {
		c, err := sim.NewPahoPublisher(sim.PahoConfig{URL: url, Username: "gateway", Password: "gw-pass", ClientID: "probe"})
		if err != nil {
			return false
		}
		c.Close()
		return true
	}, func() string { b, _ := os.ReadFile(filepath.Join(dir, "broker.log")); return string(b) })

	g := newGateway(t, url, in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken,
		"IOTGW_MQTT_USERNAME=gateway", "IOTGW_MQTT_PASSWORD=gw-pass")
	g.start()
	tok := tokenFile(t)

	// Each device connects as itself: one connection that reads its
	// commands and publishes its readings and replies.
	controls := sim.NewControls()
	if _, err := sim.NewFleet(sim.Options{Devices: 2, Sites: 1, Controls: controls}); err != nil {
		t.Fatal(err)
	}
	var responders []*sim.Responder
	for i, pw := range []string{"dev1-pass", "dev2-pass"} {
		name := fmt.Sprintf("dev-%04d", i+1)
		r, err := sim.NewResponder(sim.PahoConfig{URL: url, Username: name, Password: pw}, controls,
			[]string{"commands/site-01/" + name + "/+"}, slog.Default())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(r.Close)
		responders = append(responders, r)
		if err := r.PublishReading("sensors/site-01/"+name+"/environment", []byte(`{"temperature":20}`)); err != nil {
			t.Fatal(err)
		}
	}
	g.waitFor("2 devices known", 30*time.Second, func() bool { return g.metric("iotgw_devices_tracked") == 2 })

	out, err := g.cli(t, tok, "send", "--device", "site-01/dev-0002", "--name", "set_relay", "--arg", "on=true", "--wait", "10s", "--json")
	if err != nil {
		t.Fatalf("send: %v\n%s\n%s", err, out, g.logs())
	}
	c := decodeCommand(t, out)
	var st sim.State
	if c.State != command.Answered || json.Unmarshal(c.Result, &st) != nil || st.Relay == nil || !*st.Relay {
		t.Fatalf("set_relay: %+v (result %s)", c, c.Result)
	}

	// dev-0001 cannot forge dev-0002's reply: the broker refuses the
	// publish (the 3.1.1 client's connection is closed), and the command,
	// which dev-0002 (now offline) does not answer, expires.
	responders[1].Close()
	out, err = g.cli(t, tok, "send", "--device", "site-01/dev-0002", "--name", "report_state", "--expiry", "2s", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	c2 := decodeCommand(t, out)
	forger := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("").SetCleanSession(true).
		SetUsername("dev-0001").SetPassword("dev1-pass"))
	if tk := forger.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	forger.Publish("replies/site-01/dev-0002/"+c2.ID, 1, false, `{"id":"`+c2.ID+`","ok":true,"result":{"forged":true}}`).WaitTimeout(2 * time.Second)
	forger.Disconnect(100)
	out, _ = g.cli(t, tok, "status", c2.ID, "--wait", "10s", "--json")
	if got := decodeCommand(t, out); got.State != command.Expired {
		t.Fatalf("command to an offline device with a forged reply: %+v, want expired", got)
	}
	if v := g.metric(`iotgw_command_errors_total{reason="unmatched"}`); v != 0 {
		t.Errorf("unmatched replies = %v: the forged reply reached the gateway", v)
	}
}

// `iotgw simulate --obey` answers commands for its devices.
func TestSimulateObeys(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken)
	g.start()
	simCmd := exec.Command(binPath, "simulate", "--obey", "--devices", "2", "--sites", "1", "--rate", "5", "--duration", "60s", "--mqtt-url", mq.URL())
	if err := simCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = simCmd.Process.Kill(); _ = simCmd.Wait() })
	g.waitFor("2 devices known", 30*time.Second, func() bool { return g.metric("iotgw_devices_tracked") == 2 })
	out, err := g.cli(t, tokenFile(t), "send", "--device", "site-01/dev-0002", "--name", "set_interval", "--arg", "seconds=5", "--wait", "10s")
	if err != nil || !strings.Contains(out, "state     answered") || !strings.Contains(out, `"interval_s":5`) {
		t.Fatalf("send: %v\n%s", err, out)
	}
}

// A reply that arrives while the gateway is down is not lost: the command
// connection's session keeps it at the broker, and after the restart the
// command is answered.
func TestReplyWhileGatewayDown(t *testing.T) {
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken)
	g.start()
	tok := tokenFile(t)

	// A device that holds its answer back until told.
	got := make(chan paho.Message, 1)
	dev := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("slow-device"))
	if tk := dev.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	defer dev.Disconnect(100)
	if tk := dev.Subscribe("commands/s1/slow/+", 1, func(_ paho.Client, m paho.Message) { got <- m }); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	if tk := dev.Publish("sensors/s1/slow/env", 1, false, `{"v":1}`); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	g.waitFor("the device known", 30*time.Second, func() bool { return g.metric("iotgw_devices_tracked") == 1 })
	out, err := g.cli(t, tok, "send", "--device", "s1/slow", "--name", "report_state", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	c := decodeCommand(t, out)
	var cmd command.Payload
	select {
	case m := <-got:
		if err := json.Unmarshal(m.Payload(), &cmd); err != nil || cmd.ID != c.ID || cmd.ReplyTo != c.ReplyTopic() {
			t.Fatalf("device got %s, want id %s and reply_to %s", m.Payload(), c.ID, c.ReplyTopic())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not reach the device")
	}

	g.stop(15)
	if tk := dev.Publish(cmd.ReplyTo, 1, false, `{"id":"`+cmd.ID+`","ok":true,"result":{"late":"but kept"}}`); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	g.startAgain()
	out, err = g.cli(t, tok, "status", c.ID, "--wait", "15s", "--json")
	if got := decodeCommand(t, out); err != nil || got.State != command.Answered || !strings.Contains(string(got.Result), "but kept") {
		t.Fatalf("after the restart: %v\n%s\n%s", err, out, g.logs())
	}
}
