// Package influx writes line protocol to InfluxDB 2's /api/v2/write (and
// InfluxDB 1.8's compatible endpoint) through influxdb-client-go's HTTP
// service, and classifies failures so the caller knows whether to retry,
// split the batch, or wait.
//
// Why not the client's WriteAPI: the async writer drops the oldest batch
// when its buffer fills, and both writers copy every batch into a string
// and allocate a new gzip writer per request. The spool already holds the
// bytes; this writer sends them as they are through one reused gzip stream.
package influx

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api/http"
)

// Config says where and how to write.
type Config struct {
	URL     string
	Token   string // empty when authentication is off (InfluxDB 1.8 locally)
	Org     string
	Bucket  string
	Timeout time.Duration
	Gzip    bool
}

// Writer sends line-protocol batches. It is not safe for concurrent use:
// the gateway has one writer loop.
type Writer struct {
	client   influxdb2.Client
	svc      http.Service
	writeURL string
	gzip     bool
	zbuf     bytes.Buffer
	zw       *gzip.Writer
}

// New prepares a writer; it does not connect.
func New(cfg Config) (*Writer, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("influx: url %q is not http(s)", cfg.URL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	hc := &nethttp.Client{
		Timeout: cfg.Timeout,
		Transport: &nethttp.Transport{
			Proxy:               nethttp.ProxyFromEnvironment,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			// The body is already gzipped (or deliberately not): never let
			// the transport add compression of its own.
			DisableCompression: true,
		},
	}
	opts := influxdb2.DefaultOptions().SetHTTPClient(hc).SetLogLevel(0)
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	q := url.Values{}
	q.Set("org", cfg.Org)
	q.Set("bucket", cfg.Bucket)
	q.Set("precision", "ns")
	w := &Writer{
		client:   client,
		svc:      client.HTTPService(),
		writeURL: client.HTTPService().ServerAPIURL() + "write?" + q.Encode(),
		gzip:     cfg.Gzip,
	}
	if cfg.Gzip {
		// BestSpeed: on loopback and within a region the CPU is the
		// bottleneck, not the bytes; it still shrinks line protocol ~5x.
		w.zw, _ = gzip.NewWriterLevel(&w.zbuf, gzip.BestSpeed)
	}
	return w, nil
}

// WriteError is a failed write with what the caller needs to decide.
type WriteError struct {
	Status     int           // HTTP status; 0 for network errors
	Message    string        // the server's reason
	RetryAfter time.Duration // from Retry-After, 0 if absent
	Err        error
}

func (e *WriteError) Error() string {
	if e.Status == 0 {
		return "influx write: " + e.Err.Error()
	}
	return fmt.Sprintf("influx write: %d: %s", e.Status, e.Message)
}

func (e *WriteError) Unwrap() error { return e.Err }

// Rejected reports whether the server refused the data itself (400, and
// 422 for points outside the retention period): retrying the same batch can
// never succeed, so the caller splits it to find the bad points.
func (e *WriteError) Rejected() bool {
	return e.Status == nethttp.StatusBadRequest || e.Status == nethttp.StatusUnprocessableEntity
}

// TooLarge reports a 413: the caller should send smaller batches.
func (e *WriteError) TooLarge() bool { return e.Status == nethttp.StatusRequestEntityTooLarge }

// Write posts body, complete lines of line protocol with nanosecond times.
func (w *Writer) Write(ctx context.Context, body []byte) error {
	var r io.Reader = bytes.NewReader(body)
	if w.gzip {
		w.zbuf.Reset()
		w.zw.Reset(&w.zbuf)
		if _, err := w.zw.Write(body); err != nil {
			return &WriteError{Err: err}
		}
		if err := w.zw.Close(); err != nil {
			return &WriteError{Err: err}
		}
		r = bytes.NewReader(w.zbuf.Bytes())
	}
	perr := w.svc.DoPostRequest(ctx, w.writeURL, r, func(req *nethttp.Request) {
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
		if w.gzip {
			req.Header.Set("Content-Encoding", "gzip")
		}
	}, func(resp *nethttp.Response) error {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	})
	if perr == nil {
		return nil
	}
	if w.gzip {
		// The transport may still be reading the failed request's body
		// (an early answer, a timeout): the next request gets a new buffer.
		w.zbuf = bytes.Buffer{}
	}
	we := &WriteError{Status: perr.StatusCode, Message: perr.Message, RetryAfter: time.Duration(perr.RetryAfter) * time.Second, Err: perr.Err}
	if we.Message == "" && perr.Code != "" {
		we.Message = perr.Code
	}
	if we.Err == nil {
		we.Err = errors.New(we.Message)
	}
	return we
}

// Ping checks /health.
func (w *Writer) Ping(ctx context.Context) error {
	ok, err := w.client.Ping(ctx)
	if err != nil {
		return fmt.Errorf("influx ping: %w", err)
	}
	if !ok {
		return errors.New("influx ping: not healthy")
	}
	return nil
}

// Close releases idle connections.
func (w *Writer) Close() { w.client.Close() }
