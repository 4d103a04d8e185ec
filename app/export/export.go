// Package export is the daily job behind `iotgw export`: it writes a
// window's data (per measurement, gzipped line protocol streamed from a
// Flux query) and the org's dashboards (an InfluxDB template, as `influx
// export` writes it) to a local folder with a manifest, and uploads them to
// S3. README.md describes the files, the options and the S3 layout.
package export

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"time"
)

// Exporter exports windows of one bucket. Store nil means no upload.
type Exporter struct {
	Source     *Source
	Dashboards *Dashboards // nil: no dashboards.json
	Store      *Store
	Dir        string
	Version    string // gateway version, recorded in the manifest
	Log        *slog.Logger
	Bucket     string // the InfluxDB bucket, recorded in the manifest
	// RecheckDays is how many days after a day --catch-up still looks for
	// late data in it; recorded in the manifest. 0 means DefaultRecheckDays.
	RecheckDays int
}

// Result is what one window's export produced.
type Result struct {
	Window   Window
	Dir      string
	Location string // s3:// URL, empty without upload
	Manifest *Manifest
}

// Export writes and (with a Store) uploads each window in order, and stops
// at the first failure. Each day that is uploaded is recorded in the state
// file for --catch-up.
func (e *Exporter) Export(ctx context.Context, windows []Window) ([]Result, error) {
	if e.Store != nil {
		if err := e.Store.Check(ctx); err != nil {
			return nil, err
		}
	}
	var done []Result
	for _, w := range windows {
		r, err := e.exportWindow(ctx, w)
		if err != nil {
			return done, fmt.Errorf("export %s: %w", w, err)
		}
		done = append(done, r)
	}
	return done, nil
}

func (e *Exporter) exportWindow(ctx context.Context, w Window) (Result, error) {
	start := time.Now()
	log := e.logger().With("window", w.String())
	lw, err := newLocalWriter(e.Dir, w)
	if err != nil {
		return Result{}, err
	}
	defer lw.discard()

	m := &Manifest{FormatVersion: 1, GatewayVersion: e.Version, InfluxBucket: e.Bucket, From: w.From, To: w.To}
	// Counted before the data is read: a point written in between is then
	// exported and also makes the next count differ, which costs one more
	// export of the day, never a missed point.
	values, err := e.Source.Values(ctx, w)
	if err != nil {
		return Result{}, err
	}
	m.Values = values
	if w.IsDay() {
		m.RecheckUntil = w.From.AddDate(0, 0, e.recheckDays()).Format(time.DateOnly)
	}
	if e.Dashboards != nil {
		tmpl, err := e.Dashboards.Export(ctx)
		if err != nil {
			return Result{}, err
		}
		f, err := lw.writeFile(DashboardsName, tmpl)
		if err != nil {
			return Result{}, err
		}
		m.Files = append(m.Files, f)
	}
	names, err := e.Source.Measurements(ctx, w)
	if err != nil {
		return Result{}, err
	}
	for _, name := range names {
		f, ok, err := lw.writeMeasurement(ctx, e.Source, w, name)
		if err != nil {
			return Result{}, err
		}
		if ok {
			m.Files = append(m.Files, f)
			m.Points += f.Points
			log.Debug("measurement written", "measurement", name, "points", f.Points, "bytes", f.Size)
		}
	}
	m.CreatedAt = time.Now().UTC()
	if err := lw.commit(m); err != nil {
		return Result{}, err
	}
	r := Result{Window: w, Dir: lw.final, Manifest: m}
	log.Info("written", "dir", lw.final, "files", len(m.Files), "points", m.Points)

	if e.Store == nil {
		return r, nil
	}
	if err := e.Store.Upload(ctx, lw.final, w, m); err != nil {
		return r, err
	}
	r.Location = e.Store.Location(w)
	if w.IsDay() {
		if err := recordDay(e.Dir, w.From); err != nil {
			return r, fmt.Errorf("record %s in %s: %w", w, filepath.Join(e.Dir, StateName), err)
		}
	}
	log.Info("uploaded", "to", r.Location, "took", time.Since(start).Round(time.Millisecond))
	return r, nil
}

func (e *Exporter) recheckDays() int {
	if e.RecheckDays > 0 {
		return e.RecheckDays
	}
	return DefaultRecheckDays
}

// Stale returns the days among days whose local export no longer matches
// the database: InfluxDB now holds a different number of field values for a
// measurement of the day than when it was exported (readings that arrived
// late, after an outage or replayed by devices from their own buffers), or
// the export's manifest is unreadable or has no counts (written by an older
// version). Days without a local export are skipped. Exporting them again
// replaces them whole, locally and in S3.
func (e *Exporter) Stale(ctx context.Context, days []Window) ([]Window, error) {
	var stale []Window
	for _, w := range days {
		m, err := readManifest(filepath.Join(e.Dir, filepath.FromSlash(w.Path())))
		if errors.Is(err, fs.ErrNotExist) {
			// Exported elsewhere, or the folder was cleared: nothing to
			// compare with.
			e.logger().Debug("export: no local export of the day, not checked for late data", "window", w.String())
			continue
		}
		if err != nil {
			e.logger().Warn("export: local manifest unreadable, exporting the day again", "window", w.String(), "err", err)
			stale = append(stale, w)
			continue
		}
		now, err := e.Source.Values(ctx, w)
		if err != nil {
			return nil, fmt.Errorf("recheck %s: %w", w, err)
		}
		if m.Values == nil || !maps.Equal(now, m.Values) {
			e.logger().Info("export: late data, exporting the day again", "window", w.String(), "exported", m.Values, "now", now)
			stale = append(stale, w)
		}
	}
	return stale, nil
}

func (e *Exporter) logger() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}
