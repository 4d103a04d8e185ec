package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestBufferedConnOrderAndClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(c)
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newBufferedConn(raw)
	var want bytes.Buffer
	for i := 0; i < 20000; i++ {
		p := []byte{0x40, 0x02, byte(i >> 8), byte(i)} // a PUBACK
		want.Write(p)
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("peer got %d bytes, want %d in order", len(b), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("peer got nothing")
	}
	if _, err := c.Write([]byte{1}); err == nil {
		t.Fatal("write after close succeeded")
	}
}

func TestBufferedConnReportsWriteErrors(t *testing.T) {
	a, b := net.Pipe()
	c := newBufferedConn(a)
	b.Close() // the peer is gone: the flusher's write fails
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Write([]byte("x")); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write error never surfaced")
		}
		time.Sleep(time.Millisecond)
	}
	c.Close()
}

// writeFails is a connection whose writes fail (as after a write deadline)
// while reads would wait for data that never comes.
type writeFails struct{ net.Conn }

func (writeFails) Write([]byte) (int, error) { return 0, errors.New("write deadline exceeded") }

// A failed write closes the connection, so the read loop on it ends
// instead of taking messages it can no longer acknowledge.
func TestBufferedConnClosesOnWriteError(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close() // the peer stays: only our own close can end the read
	c := newBufferedConn(writeFails{a})
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	if _, err := c.Write([]byte{0x40, 2, 0, 1}); err != nil {
		t.Fatal(err) // the first write only queues
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read succeeded on a connection whose writes fail")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked after a write error")
	}
}
