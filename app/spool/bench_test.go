package spool

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// BenchmarkAppend measures the gateway's write path: a batch of 100
// records of 120 bytes, one fsync per Append.
func BenchmarkAppend(b *testing.B) {
	s := open(b, Options{Dir: b.TempDir()})
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = bytes.Repeat([]byte{'a' + byte(i%26)}, 120)
	}
	b.SetBytes(100 * 120)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if err := s.Append(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/time.Since(start).Seconds(), "records/s")
}

// BenchmarkRead measures draining 100k records of 120 bytes already on
// disk (page cache warm) in batches of up to 5000 records or 1 MiB.
func BenchmarkRead(b *testing.B) {
	const total = 100_000
	s := open(b, Options{Dir: b.TempDir()})
	batch := make([][]byte, 10_000)
	for i := range batch {
		batch[i] = bytes.Repeat([]byte{'a' + byte(i%26)}, 120)
	}
	for range total / len(batch) {
		if err := s.Append(batch); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.SetBytes(total * 120)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		s.Rewind()
		for n := 0; n < total; {
			rb, err := s.Read(ctx, 5000, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			n += len(rb.Records)
		}
	}
	b.ReportMetric(float64(b.N*total)/time.Since(start).Seconds(), "records/s")
}
