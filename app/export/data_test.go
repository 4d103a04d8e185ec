package export

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// The data side runs against a real influxd (1.8 with Flux, the v2 query
// API) started by testsvc; see that package for how the binary is found.

var testDay = Day(time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC))

func writeLP(t *testing.T, in *testsvc.Influx, lp string) {
	t.Helper()
	resp, err := http.Post(in.URL()+"/api/v2/write?bucket="+testsvc.Bucket+"&precision=ns", "text/plain; charset=utf-8", strings.NewReader(lp))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("write: %s: %s", resp.Status, b)
	}
}

// testData returns line protocol for the day before, the test day and the
// day after, and the lines of the test day alone.
func testData() (all, day []string) {
	d := testDay.From
	ns := func(t time.Time) int64 { return t.UnixNano() }
	add := func(in bool, format string, args ...any) {
		l := fmt.Sprintf(format, args...)
		all = append(all, l)
		if in {
			day = append(day, l)
		}
	}
	// Edges: the first and last nanosecond of the day are in, the
	// neighbours' are not.
	add(false, `temperature,device=d1,site=s1 value=1.5 %d`, ns(d)-1)
	add(true, `temperature,device=d1,site=s1 value=2.5,count=3i,ok=true,note="first of the day" %d`, ns(d))
	add(true, `temperature,device=d1,site=s1 value=3.25 %d`, ns(d.Add(24*time.Hour))-1)
	add(false, `temperature,device=d1,site=s1 value=4 %d`, ns(d.Add(24*time.Hour)))
	add(true, `temperature,device=d2,site=s1 value=-7 %d`, ns(d.Add(time.Hour)))
	add(true, `humidity,site=s2 value=40 %d`, ns(d.Add(90*time.Minute)))
	add(true, `humidity,site=s2\ west value=41,raw=12i %d`, ns(d.Add(91*time.Minute)))
	// Odd names survive the trip: spaces, commas, quotes, dollar signs.
	add(true, `room\ temp\,x,loc=a\=b\ c value="q\"uote ${x}" %d`, ns(d.Add(2*time.Hour)))
	add(true, `cost$,k=v v=1i %d`, ns(d.Add(3*time.Hour)))
	add(true, `a${b}\x,k=v v=2i %d`, ns(d.Add(3*time.Hour)))
	// Only on other days: no file for it.
	add(false, `pressure,site=s1 value=1013 %d`, ns(d.Add(-time.Hour)))
	add(false, `pressure,site=s1 value=1014 %d`, ns(d.Add(25*time.Hour)))
	// Enough of one series that the encoder flushes many times.
	for i := range 20000 {
		add(true, `battery,device=d3,site=s1 level=%d.5,mv=%di %d`, i%100, 3000+i, ns(d.Add(time.Duration(i)*4*time.Second)))
	}
	return all, day
}

// canonical parses line protocol into one string per point with tags and
// fields sorted, so lines from different writers compare equal.
func canonical(t *testing.T, r io.Reader) []string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	dec := lineprotocol.NewDecoderWithBytes(b)
	var out []string
	for dec.Next() {
		m, err := dec.Measurement()
		if err != nil {
			t.Fatal(err)
		}
		var tags, fields []string
		for {
			k, v, err := dec.NextTag()
			if err != nil {
				t.Fatal(err)
			}
			if k == nil {
				break
			}
			tags = append(tags, string(k)+"="+string(v))
		}
		for {
			k, v, err := dec.NextField()
			if err != nil {
				t.Fatal(err)
			}
			if k == nil {
				break
			}
			fields = append(fields, fmt.Sprintf("%s=%s:%v", k, v.Kind(), v.Interface()))
		}
		ts, err := dec.Time(lineprotocol.Nanosecond, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(tags)
		slices.Sort(fields)
		out = append(out, fmt.Sprintf("%s %v %v %d", m, tags, fields, ts.UnixNano()))
	}
	slices.Sort(out)
	return out
}

func newTestExporter(in Influx, dir string) *Exporter {
	return &Exporter{Source: NewSource(in), Dir: dir, Version: "v-test", Bucket: in.Bucket}
}

func influxConf(in *testsvc.Influx) Influx {
	return Influx{URL: in.URL(), Token: "", Org: "iot", Bucket: testsvc.Bucket}
}

func TestExportDayHoldsExactlyThatDay(t *testing.T) {
	in := testsvc.StartInflux(t)
	all, day := testData()
	writeLP(t, in, strings.Join(all, "\n")+"\n")

	dir := t.TempDir()
	e := newTestExporter(influxConf(in), dir)
	defer e.Source.Close()
	res, err := e.Export(context.Background(), []Window{testDay})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "2026", "03", "14")
	if res[0].Dir != out {
		t.Errorf("written to %s, want %s", res[0].Dir, out)
	}
	m, err := readManifest(out)
	if err != nil {
		t.Fatal(err)
	}
	if !m.From.Equal(testDay.From) || !m.To.Equal(testDay.To) || m.GatewayVersion != "v-test" || m.InfluxBucket != testsvc.Bucket {
		t.Errorf("manifest header %+v", m)
	}

	var got []string
	var names []string
	var points int64
	for _, f := range m.Files {
		names = append(names, f.Name)
		b, err := os.ReadFile(filepath.Join(out, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != f.Size || hexSHA(b) != f.SHA256 {
			t.Errorf("%s: size/sha256 on disk differ from the manifest", f.Name)
		}
		if f.Name != FileName(f.Measurement) {
			t.Errorf("%s holds measurement %q", f.Name, f.Measurement)
		}
		zr, err := gzip.NewReader(strings.NewReader(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		lines := canonical(t, zr)
		if int64(len(lines)) != f.Points {
			t.Errorf("%s: %d lines, manifest says %d points", f.Name, len(lines), f.Points)
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, f.Measurement+" ") {
				t.Errorf("%s holds a point of another measurement: %s", f.Name, l)
			}
		}
		points += f.Points
		got = append(got, lines...)
	}
	slices.Sort(got)
	want := canonical(t, strings.NewReader(strings.Join(day, "\n")))
	if !slices.Equal(got, want) {
		t.Errorf("exported %d points, want %d", len(got), len(want))
		for _, l := range got {
			if !slices.Contains(want, l) {
				t.Errorf("  extra: %.200s", l)
			}
		}
		for _, l := range want {
			if !slices.Contains(got, l) {
				t.Errorf("  missing: %.200s", l)
			}
		}
	}
	if points != m.Points || m.Points != int64(len(day)) {
		t.Errorf("manifest total %d, files %d, written %d", m.Points, points, len(day))
	}
	wantNames := []string{"a%24%7Bb%7D%5Cx.lp.gz", "battery.lp.gz", "cost%24.lp.gz", "humidity.lp.gz", "room%20temp%2Cx.lp.gz", "temperature.lp.gz"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("files %q, want %q", names, wantNames)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "2026", "03", ".*"))
	if len(leftovers) != 0 {
		t.Errorf("staging left behind: %q", leftovers)
	}
}

func TestExportBadDatabase(t *testing.T) {
	in := testsvc.StartInflux(t)
	all, _ := testData()
	writeLP(t, in, strings.Join(all[:12], "\n")+"\n")
	ctx := context.Background()

	t.Run("unknown bucket", func(t *testing.T) {
		dir := t.TempDir()
		conf := influxConf(in)
		conf.Bucket = "nope/rp"
		_, err := newTestExporter(conf, dir).Export(ctx, []Window{testDay})
		if err == nil || !strings.Contains(err.Error(), `"nope/rp"`) {
			t.Fatalf("unknown bucket: %v", err)
		}
		t.Log(err)
		assertNothingWritten(t, dir)
	})

	t.Run("no dashboards API", func(t *testing.T) {
		dir := t.TempDir()
		e := newTestExporter(influxConf(in), dir)
		e.Dashboards = NewDashboards(influxConf(in))
		_, err := e.Export(ctx, []Window{testDay})
		if err == nil || !strings.Contains(err.Error(), "export.skip_dashboards") {
			t.Fatalf("dashboards from InfluxDB 1.8: %v", err)
		}
		assertNothingWritten(t, dir)
	})

	t.Run("unreachable database keeps the previous export", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := newTestExporter(influxConf(in), dir).Export(ctx, []Window{testDay}); err != nil {
			t.Fatal(err)
		}
		before, err := os.ReadFile(filepath.Join(dir, "2026/03/14", ManifestName))
		if err != nil {
			t.Fatal(err)
		}
		conf := influxConf(in)
		conf.URL = fmt.Sprintf("http://127.0.0.1:%d", testsvc.FreePort(t))
		_, err = newTestExporter(conf, dir).Export(ctx, []Window{testDay})
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("unreachable database: %v", err)
		}
		t.Log(err)
		after, err := os.ReadFile(filepath.Join(dir, "2026/03/14", ManifestName))
		if err != nil || string(after) != string(before) {
			t.Errorf("the previous export changed: %v", err)
		}
		leftovers, _ := filepath.Glob(filepath.Join(dir, "2026", "03", ".*"))
		if len(leftovers) != 0 {
			t.Errorf("staging left behind: %q", leftovers)
		}
	})

}

// assertNothingWritten checks that no file under dir could pass for an
// export: no manifest, no data file outside a staging folder.
func assertNothingWritten(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}
