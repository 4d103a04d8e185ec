package testsvc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
)

// Influx is a running InfluxDB OSS 1.8 with Flux enabled. It serves the same
// /api/v2/write, /api/v2/query and /health endpoints as InfluxDB 2, with the
// bucket "db/rp" and authentication off (an empty token is accepted).
type Influx struct {
	t    testing.TB
	bin  string
	dir  string
	conf string
	Port int
	p    *proc
}

// Database, RetentionPolicy and Bucket name the throw-away database.
const (
	Database        = "db"
	RetentionPolicy = "rp"
	Bucket          = Database + "/" + RetentionPolicy
)

// StartInflux starts influxd on free loopback ports with a fresh data
// directory and creates the database; it is stopped when the test ends.
func StartInflux(t testing.TB) *Influx {
	t.Helper()
	bin := binary(t, "IOTGW_INFLUXD", "influxd", repoTools())
	in := &Influx{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
	rpc := FreePort(t)
	conf := InfluxConfig(in.dir, in.Port, rpc)
	in.conf = filepath.Join(in.dir, "influxd.conf")
	if err := os.WriteFile(in.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	in.Start()
	t.Cleanup(func() { in.p.stop(syscall.SIGTERM) })
	in.exec("CREATE DATABASE " + Database + " WITH NAME " + RetentionPolicy)
	return in
}

// URL is the HTTP base URL.
func (in *Influx) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", in.Port) }

// Start (re)starts influxd on the same port and data and waits until it
// takes databases and writes (InfluxReady).
func (in *Influx) Start() {
	in.t.Helper()
	ready := func() bool { return InfluxReady(in.URL()) }
	in.p = launch(in.t, "influxd", filepath.Join(in.dir, "influxd.log"), 2*readyTimeout, ready, in.bin, "-config", in.conf)
}

// Pid is the process id of the running influxd (it changes on Start).
func (in *Influx) Pid() int { return in.p.pid() }

// Stop shuts influxd down gracefully; Kill does not let it finish anything.
func (in *Influx) Stop() { in.p.stop(syscall.SIGTERM) }

// Kill stops influxd with SIGKILL.
func (in *Influx) Kill() { in.p.stop(nil) }

// exec runs an InfluxQL statement for setup only.
func (in *Influx) exec(q string) {
	in.t.Helper()
	if err := InfluxExec(in.URL(), q); err != nil {
		in.t.Fatalf("testsvc: influx %q: %v", q, err)
	}
}

// Query runs a Flux query through the v2 API (/api/v2/query) and returns
// every record's values.
func (in *Influx) Query(flux string) ([]map[string]any, error) {
	client := influxdb2.NewClient(in.URL(), "")
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := client.QueryAPI("").Query(ctx, flux)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var rows []map[string]any
	for res.Next() {
		rows = append(rows, res.Record().Values())
	}
	return rows, res.Err()
}

// CountFlux counts the points of a measurement's field over all time.
func CountFlux(measurement, field string) string {
	return fmt.Sprintf(`from(bucket: %q)
  |> range(start: 0)
  |> filter(fn: (r) => r._measurement == %q and r._field == %q)
  |> group()
  |> count()`, Bucket, measurement, field)
}

// Count returns how many points a measurement has for field.
func (in *Influx) Count(measurement, field string) (int64, error) {
	rows, err := in.Query(CountFlux(measurement, field))
	if err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	n, ok := rows[0]["_value"].(int64)
	if !ok {
		return 0, fmt.Errorf("count: unexpected value %#v", rows[0]["_value"])
	}
	return n, nil
}

// Series is one series of an InfluxQL answer.
type Series struct {
	Columns []string
	Values  [][]any // numbers as json.Number
}

// InfluxQL runs q through InfluxQL (/query) with nanosecond times and
// returns its series. Its JSON shows the stored bytes of strings, which
// Flux's CSV does not (it drops carriage returns, and gives an empty
// string back as null).
func (in *Influx) InfluxQL(q string) []Series {
	in.t.Helper()
	v := url.Values{"db": {Database}, "rp": {RetentionPolicy}, "epoch": {"ns"}, "q": {q}}
	resp, err := http.Get(in.URL() + "/query?" + v.Encode())
	if err != nil {
		in.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Results []struct {
			Error  string
			Series []Series
		}
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil || len(body.Results) != 1 || body.Results[0].Error != "" {
		in.t.Fatalf("%s: %v %+v", q, err, body)
	}
	return body.Results[0].Series
}
