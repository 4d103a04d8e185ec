package command

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// An MQTT 5 device answers through the request/response properties alone:
// it replies on the Response Topic with the Correlation Data and a payload
// without an id, and the command is answered. The broker is a real
// mosquitto.
func TestMQTT5RoundTrip(t *testing.T) {
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	m, err := Open(Options{Dir: t.TempDir(), Expiry: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	up := make(chan bool, 4)
	conn, err := Dial(ctx, ConnConfig{URL: mq.URL(), ClientID: "gw-commands"}, m, slog.Default(), func(u bool) { up <- u })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m.SetPublisher(conn)

	type seen struct {
		responseTopic string
		correlation   []byte
		expiry        uint32
	}
	got := make(chan seen, 1)
	u, _ := url.Parse(mq.URL())
	subscribed := make(chan struct{})
	var dev *autopaho.ConnectionManager
	dev, err = autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{u}, KeepAlive: 30, CleanStartOnInitialConnection: true,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() {
				if _, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "commands/s1/d1/+", QoS: 1}}}); err == nil {
					close(subscribed)
				}
			}()
		},
		ClientConfig: paho.ClientConfig{ClientID: "s1-d1", OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				p := pr.Packet.Properties
				s := seen{responseTopic: p.ResponseTopic, correlation: p.CorrelationData}
				if p.MessageExpiry != nil {
					s.expiry = *p.MessageExpiry
				}
				got <- s
				go dev.Publish(ctx, &paho.Publish{QoS: 1, Topic: p.ResponseTopic, Payload: []byte(`{"ok":true,"result":{"mqtt":5}}`),
					Properties: &paho.PublishProperties{CorrelationData: p.CorrelationData}})
				return true, nil
			}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for u := range up {
		if u {
			break
		}
	}
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("device did not subscribe")
	}

	c, err := m.Send(ctx, Request{Device: "s1/d1", Name: "report_state"})
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s.responseTopic != c.ReplyTopic() || string(s.correlation) != c.ID || s.expiry == 0 || s.expiry > 30 {
		t.Errorf("properties seen by the device: %+v; want response topic %s, correlation %s, expiry <= 30", s, c.ReplyTopic(), c.ID)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	final, _ := m.Wait(wctx, c.ID)
	var res map[string]int
	if final.State != Answered || json.Unmarshal(final.Result, &res) != nil || res["mqtt"] != 5 {
		t.Fatalf("command = %+v", final)
	}
}
