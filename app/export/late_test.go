package export

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// exportedLines returns the lines of measurement m in the local export of w.
func exportedLines(t *testing.T, dir string, w Window, m string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(w.Path()), FileName(m)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return canonical(t, zr)
}

// A day exported while InfluxDB did not yet hold all its readings (an
// outage drained later, devices replaying their buffers with old ts) is
// found stale by the next check and exported again with the late points; a
// replay of points already there (the same series and times) changes
// nothing and costs no export.
func TestLateDataMakesTheDayStale(t *testing.T) {
	in := testsvc.StartInflux(t)
	d := testDay.From
	writeLP(t, in, fmt.Sprintf("temperature,device=d1 value=1 %d\ntemperature,device=d1 value=2 %d\n", d.Add(time.Hour).UnixNano(), d.Add(2*time.Hour).UnixNano()))
	dir := t.TempDir()
	e := newTestExporter(influxConf(in), dir)
	e.RecheckDays = 3
	defer e.Source.Close()
	ctx := context.Background()
	res, err := e.Export(ctx, []Window{testDay})
	if err != nil {
		t.Fatal(err)
	}
	if m := res[0].Manifest; m.Values["temperature"] != 2 || m.RecheckUntil != "2026-03-17" {
		t.Fatalf("manifest values %v, recheck_until %q", m.Values, m.RecheckUntil)
	}
	if stale, err := e.Stale(ctx, []Window{testDay}); err != nil || len(stale) != 0 {
		t.Fatalf("freshly exported day: stale %v, %v", stale, err)
	}

	// A replay: same points again, nothing new.
	writeLP(t, in, fmt.Sprintf("temperature,device=d1 value=1 %d\n", d.Add(time.Hour).UnixNano()))
	if stale, err := e.Stale(ctx, []Window{testDay}); err != nil || len(stale) != 0 {
		t.Fatalf("after a replay: stale %v, %v", stale, err)
	}

	// Late readings: one in the day, one field added to a point, and one of
	// a measurement the export did not have.
	writeLP(t, in, fmt.Sprintf("temperature,device=d1 value=3 %d\ntemperature,device=d1 rssi=-70i %d\nbattery,device=d1 level=90 %d\n",
		d.Add(3*time.Hour).UnixNano(), d.Add(2*time.Hour).UnixNano(), d.Add(4*time.Hour).UnixNano()))
	stale, err := e.Stale(ctx, []Window{Day(d.AddDate(0, 0, -1)), testDay})
	if err != nil || !slices.Equal(stale, []Window{testDay}) {
		t.Fatalf("after late data: stale %v, %v (the day before has no export to compare)", stale, err)
	}
	if _, err := e.Export(ctx, stale[:1]); err != nil {
		t.Fatal(err)
	}
	got := exportedLines(t, dir, testDay, "temperature")
	want := canonical(t, strings.NewReader(fmt.Sprintf("temperature,device=d1 value=1 %d\ntemperature,device=d1 rssi=-70i,value=2 %d\ntemperature,device=d1 value=3 %d\n",
		d.Add(time.Hour).UnixNano(), d.Add(2*time.Hour).UnixNano(), d.Add(3*time.Hour).UnixNano())))
	if !slices.Equal(got, want) {
		t.Fatalf("re-export holds %q\nwant %q", got, want)
	}
	if got := exportedLines(t, dir, testDay, "battery"); len(got) != 1 {
		t.Fatalf("re-export: battery %q", got)
	}
	if stale, err := e.Stale(ctx, []Window{testDay}); err != nil || len(stale) != 0 {
		t.Fatalf("after the re-export: stale %v, %v", stale, err)
	}
}

func TestRecheckDays(t *testing.T) {
	now := time.Date(2026, 3, 20, 3, 0, 0, 0, time.UTC)
	days := func(ws []Window) (s []string) {
		for _, w := range ws {
			s = append(s, w.String())
		}
		return s
	}
	for _, tt := range []struct {
		last time.Time
		k    int
		want []string
	}{
		{time.Time{}, 7, nil},
		{date(2026, 3, 19), 3, []string{"2026-03-17", "2026-03-18", "2026-03-19"}},
		{date(2026, 3, 18), 3, []string{"2026-03-17", "2026-03-18"}},
		{date(2026, 3, 10), 3, nil},
		{date(2026, 3, 25), 1, []string{"2026-03-19"}},
	} {
		if got := days(Recheck(tt.last, now, tt.k)); !slices.Equal(got, tt.want) {
			t.Errorf("Recheck(%s, %d) = %q, want %q", tt.last.Format(time.DateOnly), tt.k, got, tt.want)
		}
	}
}

// The row encoder writes string values as InfluxDB stored them: control
// characters and backslashes before n, t, r come back as they went in.
func TestExportStringsExactly(t *testing.T) {
	in := testsvc.StartInflux(t)
	d := testDay.From
	values := []string{"tab\there", `C:\new\table`, `q"uote`, `end\`, "bell\a", `\\n`}
	var lp strings.Builder
	for i, v := range values {
		esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v)
		fmt.Fprintf(&lp, "notes,k=v s=\"%s\" %d\n", esc, d.Add(time.Duration(i)*time.Minute).UnixNano())
	}
	writeLP(t, in, lp.String())
	dir := t.TempDir()
	e := newTestExporter(influxConf(in), dir)
	defer e.Source.Close()
	if _, err := e.Export(context.Background(), []Window{testDay}); err != nil {
		t.Fatal(err)
	}
	// Byte for byte: a parser-based comparison would hide the difference,
	// as the line-protocol library reads \t and a tab alike.
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(testDay.Path()), FileName("notes")))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil || string(got) != lp.String() {
		t.Fatalf("exported %q (%v)\nwant %q", got, err, lp.String())
	}
}
