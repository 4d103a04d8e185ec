package influx

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func TestWriter(t *testing.T) {
	in := testsvc.StartInflux(t)
	ctx := context.Background()
	for _, gz := range []bool{true, false} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			w, err := New(Config{URL: in.URL(), Bucket: testsvc.Bucket, Gzip: gz, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if err := w.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			m := fmt.Sprintf("w_gzip_%v", gz)
			body := fmt.Appendf(nil, "%s,d=a v=1 1700000000000000000\n%[1]s,d=b v=2 1700000000000000000\n", m)
			if err := w.Write(ctx, body); err != nil {
				t.Fatal(err)
			}
			// The same points again overwrite, they do not add.
			if err := w.Write(ctx, body); err != nil {
				t.Fatal(err)
			}
			if n, err := in.Count(m, "v"); err != nil || n != 2 {
				t.Fatalf("count = %d, %v; want 2", n, err)
			}
			err = w.Write(ctx, fmt.Appendf(nil, "%s v=\"text\" 1700000000000000000\n", m)) // field type conflict
			var we *WriteError
			if !errors.As(err, &we) || !we.Rejected() || we.Status != 400 || we.Message == "" {
				t.Fatalf("type conflict: %#v", err)
			}
		})
	}
}

func TestWriterUnreachable(t *testing.T) {
	w, err := New(Config{URL: fmt.Sprintf("http://127.0.0.1:%d", testsvc.FreePort(t)), Bucket: "b", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	err = w.Write(context.Background(), []byte("m v=1\n"))
	var we *WriteError
	if !errors.As(err, &we) || we.Status != 0 || we.Rejected() {
		t.Fatalf("unreachable: %#v", err)
	}
	if _, err := New(Config{URL: "localhost:8086"}); err == nil {
		t.Fatal("URL without scheme accepted")
	}
}
