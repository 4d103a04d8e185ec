package gateway

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// Shutdown tests of ingest: the broker is the scripted peer (the gateway's
// own MQTT client against a real socket), the spool an in-memory store.

// shutdownWithBlockedAppend runs a gateway over st, publishes ids 1..n
// while the first append is held, shuts the gateway down, then lets the
// append go on, and returns the PUBACKs the broker received until the
// connection closed.
func shutdownWithBlockedAppend(t *testing.T, st Store, entered <-chan struct{}, release func(), n int) []uint16 {
	t.Helper()
	peer := startBrokerPeer(t)
	_, url := newFakeInflux(t, true)
	g, _ := testGateway(t, url, func(c *config.Config) { c.MQTT.URL, c.MQTT.Protocol = peer.URL(), config.MQTT311 })
	if err := g.spool.Close(); err != nil {
		t.Fatal(err)
	}
	g.spool = st
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer release()
	peer.accept(t)
	publish := func(id int) {
		peer.publish(t, uint16(id), fmt.Sprintf("sensors/s/d%d/env", id), fmt.Sprintf(`{"v":%d}`, id))
	}
	publish(1)
	<-entered // message 1's append is in progress
	for id := 2; id <= n; id++ {
		publish(id)
	}
	waitUntil(t, "the other messages to wait in the inbox", func() bool { return len(g.inbox) == n-1 })
	cancel()
	waitUntil(t, "shutdown to stop taking messages", func() bool { return !g.accepting.Load() })
	release()
	var acks []uint16
	for {
		pk, err := packets.ReadPacket(peer.r)
		if err != nil {
			break // the gateway closed the connection
		}
		if pa, ok := pk.(*packets.PubackPacket); ok {
			acks = append(acks, pa.MessageID)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return acks
}

// What the gateway had taken in when shutdown began is spooled and then
// acknowledged, each message exactly once.
func TestShutdownSpoolsAndAcksWhatIsInHand(t *testing.T) {
	const n = 5
	mem := newMemStore()
	block := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(block) }) }
	mem.setBlock(block)
	rec := &recordingStore{Store: mem}
	acks := shutdownWithBlockedAppend(t, rec, mem.entered, release, n)

	seen := map[uint16]int{}
	for _, id := range acks {
		seen[id]++
	}
	for id := uint16(1); id <= n; id++ {
		if seen[id] != 1 {
			t.Errorf("message %d acknowledged %d times, want once (PUBACKs %v)", id, seen[id], acks)
		}
	}
	if len(acks) != n {
		t.Errorf("PUBACKs %v, want each of 1..%d once", acks, n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id := 1; id <= n; id++ {
		found := false
		for _, r := range rec.appended {
			found = found || bytes.Contains(r, fmt.Appendf(nil, "device=d%d,", id))
		}
		if !found {
			t.Errorf("message %d was acknowledged but is not in the spool", id)
		}
	}
}

// recordingStore keeps a copy of every record appended (the writer may
// have committed them since).
type recordingStore struct {
	Store
	mu       sync.Mutex
	appended [][]byte
}

func (s *recordingStore) Append(records [][]byte) error {
	err := s.Store.Append(records)
	if err == nil {
		s.mu.Lock()
		for _, r := range records {
			s.appended = append(s.appended, bytes.Clone(r))
		}
		s.mu.Unlock()
	}
	return err
}

// refusingStore holds its first Append, then refuses every one as full.
type refusingStore struct {
	*memStore
	entered chan struct{}
	block   chan struct{}
}

func (s *refusingStore) Append([][]byte) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.block
	return spool.ErrFull
}

// A spool that is full when shutdown comes: nothing was spooled, so
// nothing is acknowledged, and the broker keeps every message.
func TestShutdownAcksNothingUnspooled(t *testing.T) {
	st := &refusingStore{memStore: newMemStore(), entered: make(chan struct{}, 1), block: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(st.block) }) }
	if acks := shutdownWithBlockedAppend(t, st, st.entered, release, 3); len(acks) != 0 {
		t.Fatalf("PUBACKs %v for messages the spool never took", acks)
	}
}
