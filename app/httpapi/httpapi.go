// Package httpapi serves the gateway's operational endpoints: Prometheus
// metrics, liveness and readiness.
package httpapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition: nil when fine, else why not. The
// reason is public (/readyz needs no credentials): a class of failure
// ("last write failed: 503"), never a server's own words, which may echo
// what was sent to it. It is cut to maxReason bytes in any case.
type Check func() error

// maxReason bounds the text /readyz shows per check.
const maxReason = 160

// Server is the HTTP listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Detail is information /readyz shows next to the checks without ever
// failing readiness (the fleet: a silent device is not the gateway's fault).
type Detail func() any

// Handler returns the mux: /metrics, /healthz (the process answers),
// /readyz (every check passes; 503 with the reasons otherwise).
func Handler(reg *prometheus.Registry, checks map[string]Check) http.Handler {
	return HandlerWith(reg, checks, nil)
}

// HandlerWith is Handler with details in /readyz; more routes may be added
// to the mux it returns.
func HandlerWith(reg *prometheus.Registry, checks map[string]Check, details map[string]Detail) *http.ServeMux {
	mux := http.NewServeMux()
	// Uncompressed: the page is a few KB, and gzip allocated a ~1 MB
	// compressor per scrape, which showed in the gateway's peak memory.
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, DisableCompression: true}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		status := map[string]string{}
		ready := true
		for name, check := range checks {
			if err := check(); err != nil {
				status[name] = cut(err.Error())
				ready = false
			} else {
				status[name] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		body := map[string]any{"ready": ready, "checks": status}
		if len(details) > 0 {
			d := map[string]any{}
			for name, f := range details {
				d[name] = f()
			}
			body["detail"] = d
		}
		_ = json.NewEncoder(w).Encode(body)
	})
	return mux
}

// cut bounds a reason to maxReason bytes, on a rune boundary.
func cut(s string) string {
	if len(s) <= maxReason {
		return s
	}
	i := maxReason
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

// Listen binds addr ("127.0.0.1:0" picks a port) and serves in the
// background.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	// Serve returns only once Shutdown closed the listener.
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// ListenTLS is Listen over HTTPS with the certificate and key files; with
// both empty it is Listen.
func ListenTLS(addr string, h http.Handler, certFile, keyFile string) (*Server, error) {
	if certFile == "" && keyFile == "" {
		return Listen(addr, h)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	tl := tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}})
	s := &Server{ln: tl, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = s.srv.Serve(tl) }()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops accepting and waits for requests in progress. It closes
// the listener itself: http.Server.Shutdown closes only the listeners Serve
// has started tracking, and a Shutdown right after Listen (a start that
// failed later) can come before the serving goroutine ran.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if cerr := s.ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
		err = cerr
	}
	return err
}
