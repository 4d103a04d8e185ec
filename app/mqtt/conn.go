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

// Buffering the broker connection. paho reads each packet with several
// small reads and writes each acknowledgement with its own write: at tens
// of thousands of messages per second those system calls were the largest
// cost in the gateway's profile. bufferedConn reads through a bufio.Reader
// and hands writes to a flusher goroutine that sends whatever has
// accumulated in one system call, so a burst of PUBACKs costs one write.
//
// The price: a Write returns before its bytes reach the socket, so a write
// error surfaces on a later Write (or Close), which paho treats as a lost
// connection like any other. An unacknowledged message is redelivered by
// the broker in that case, so nothing is lost.

const (
	readBufferSize = 64 << 10
	// maxPending bounds bytes waiting for the flusher; Write blocks above.
	maxPending = 1 << 20
)

// dialBuffered replaces paho's dialer for tcp:// and ssl:// and wraps the
// connection; WebSocket URLs use paho's own implementation unchanged. Like
// paho's dialer it honours ALL_PROXY and NO_PROXY.
func dialBuffered(tc *tls.Config, timeout time.Duration) paho.OpenConnectionFunc {
	return func(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
		switch u.Scheme {
		case "tcp", "mqtt", "ssl", "tls", "mqtts":
		case "ws", "wss":
			wsURL := *u
			wsURL.User = nil
			var wtc *tls.Config
			if u.Scheme == "wss" {
				wtc = tc
			}
			return paho.NewWebsocket(wsURL.String(), wtc, timeout, o.HTTPHeaders, o.WebsocketOptions)
		default:
			return nil, errors.New("mqtt: unknown scheme " + u.Scheme)
		}
		conn, err := proxy.FromEnvironmentUsing(&net.Dialer{Timeout: timeout}).Dial("tcp", u.Host)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "tcp" && u.Scheme != "mqtt" {
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
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader

	mu      sync.Mutex
	cond    *sync.Cond // signalled when pending shrinks or the flusher stops
	pending []byte
	spare   []byte
	err     error // first write error; every later Write returns it
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
			b.mu.Unlock()
			_, err := b.Conn.Write(out)
			b.mu.Lock()
			b.spare = out[:0]
			if err != nil {
				b.err = err
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
