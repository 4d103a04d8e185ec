package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// Buffering the broker connection. At tens of thousands of messages per
// second, one read per packet and one write per acknowledgement were the
// largest cost in the gateway's profile. bufferedConn reads through a
// bufio.Reader (the session parses PUBLISH packets in its buffer) and hands
// writes to a flusher goroutine that sends whatever has accumulated in one
// system call, so a burst of PUBACKs costs one write.
//
// The price: a Write returns before its bytes reach the socket, so a write
// error surfaces on a later Write (or Close), and the session ends like on
// any lost connection. An unacknowledged message is redelivered by the
// broker in that case, so nothing is lost.

const (
	readBufferSize = 64 << 10
	// maxPending bounds bytes waiting for the flusher; Write blocks above.
	maxPending = 1 << 20
)

// dial connects to the broker at u (tcp://, mqtt://, ssl://, tls://,
// mqtts://, ws://, wss://) and wraps the connection. Like paho's own
// dialer it honours ALL_PROXY and NO_PROXY for TCP; WebSockets use paho's
// implementation.
func dial(u *url.URL, tc *tls.Config, timeout time.Duration) (*bufferedConn, error) {
	var conn net.Conn
	var err error
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
		conn, err = proxy.FromEnvironmentUsing(&net.Dialer{Timeout: timeout}).Dial("tcp", u.Host)
	case "ws", "wss":
		wsURL := *u
		wsURL.User = nil
		var wtc *tls.Config
		if u.Scheme == "wss" {
			wtc = tc
		}
		conn, err = paho.NewWebsocket(wsURL.String(), wtc, timeout, nil, nil)
	default:
		return nil, errors.New("mqtt: unknown scheme " + u.Scheme)
	}
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if tc != nil {
			cfg = tc.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tconn := tls.Client(conn, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := tconn.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tconn
	}
	return newBufferedConn(conn), nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader

	mu      sync.Mutex
	cond    *sync.Cond // signalled when pending shrinks or the flusher stops
	pending []byte
	spare   []byte
	err     error // first write error; every later Write returns it
	writing bool  // the flusher is writing a swapped-out buffer
	closed  bool
	wake    chan struct{}
	done    chan struct{}
}

func newBufferedConn(c net.Conn) *bufferedConn {
	b := &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flusher()
	return b
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closed && len(b.pending) >= maxPending {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, net.ErrClosed
	}
	b.pending = append(b.pending, p...)
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *bufferedConn) flusher() {
	defer close(b.done)
	for range b.wake {
		b.mu.Lock()
		for len(b.pending) > 0 && b.err == nil {
			out := b.pending
			b.pending = b.spare[:0]
			b.writing = true
			b.mu.Unlock()
			_ = b.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			_, err := b.Conn.Write(out)
			b.mu.Lock()
			b.writing = false
			b.spare = out[:0]
			if err != nil {
				b.err = err
				// Acknowledgements can no longer be sent: end the session
				// (the read loop fails) instead of reading on unacked.
				_ = b.Conn.Close()
			}
			b.cond.Broadcast()
		}
		stop := b.closed || b.err != nil
		b.mu.Unlock()
		if stop {
			return
		}
	}
}

// closeWrite waits until everything written so far is sent, then shuts
// down the sending side (for TLS: close_notify), so that the peer reads
// all of it and sees the end. Closing a socket with unread data in it
// resets the connection instead, and the peer may then lose what was sent
// last. Connections without a half close (WebSockets) report
// errors.ErrUnsupported.
func (b *bufferedConn) closeWrite() error {
	b.mu.Lock()
	for (len(b.pending) > 0 || b.writing) && b.err == nil && !b.closed {
		b.cond.Wait()
	}
	err := b.err
	b.mu.Unlock()
	if err != nil {
		return err
	}
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// Close sends what is pending (bounded by the connection's write deadline
// semantics: a dead peer errors out) and closes the connection.
func (b *bufferedConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	select {
	case <-b.done:
	case <-time.After(2 * time.Second):
	}
	return b.Conn.Close()
}
