package export

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/fsync"
)

// Manifest describes one window's export. It is written last, locally and
// in S3: a folder or prefix without manifest.json is not a complete export.
type Manifest struct {
	FormatVersion  int       `json:"format_version"`
	GatewayVersion string    `json:"gateway_version"`
	InfluxBucket   string    `json:"influx_bucket"`
	From           time.Time `json:"from"`
	To             time.Time `json:"to"`
	CreatedAt      time.Time `json:"created_at"`
	Points         int64     `json:"points"`
	Files          []File    `json:"files"`
	// Values counts, per measurement, the field values InfluxDB held for
	// the window just before the export read it. A later --catch-up run
	// counts again and exports the day anew if the counts changed (late
	// data): see Exporter.Stale.
	Values map[string]int64 `json:"values"`
	// RecheckUntil is the last day on which --catch-up still checks a
	// day's export for late data (YYYY-MM-DD); empty for ranges.
	RecheckUntil string `json:"recheck_until,omitempty"`
}

// File is one file of an export.
type File struct {
	Name        string `json:"name"`
	Measurement string `json:"measurement,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"` // hex, of the file's bytes as stored
	Points      int64  `json:"points"` // line-protocol lines; 0 for dashboards.json
}

// Names of the fixed files of an export.
const (
	ManifestName   = "manifest.json"
	DashboardsName = "dashboards.json"
	lpSuffix       = ".lp.gz"
)

// FileName is the file a measurement's data goes to: the measurement with
// every byte outside [A-Za-z0-9_-] (and a leading dot) percent-encoded, so
// any measurement name is one safe path element and S3 key part.
func FileName(measurement string) string {
	var b strings.Builder
	for i := 0; i < len(measurement); i++ {
		c := measurement[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || (c == '.' && i > 0) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String() + lpSuffix
}

// localWriter writes one window's files into a staging folder next to the
// final one and swaps it in when everything, manifest last, is on disk. A
// failed or interrupted run leaves the previous export of that window as it
// was (or no folder), never a mix.
type localWriter struct {
	final, staging string
}

func newLocalWriter(root string, w Window) (*localWriter, error) {
	final := filepath.Join(root, filepath.FromSlash(w.Path()))
	parent, base := filepath.Split(final)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	// Leftovers of runs that died before their clean-up.
	for _, pat := range []string{"." + base + ".partial-*", "." + base + ".old-*"} {
		old, _ := filepath.Glob(filepath.Join(parent, pat))
		for _, o := range old {
			os.RemoveAll(o)
		}
	}
	staging, err := os.MkdirTemp(parent, "."+base+".partial-")
	if err != nil {
		return nil, err
	}
	return &localWriter{final: final, staging: staging}, nil
}

// discard removes the staging folder; after commit it does nothing.
func (lw *localWriter) discard() {
	if lw.staging != "" {
		os.RemoveAll(lw.staging)
	}
}

// writeFile writes b as name and describes it.
func (lw *localWriter) writeFile(name string, b []byte) (File, error) {
	f, err := lw.create(name)
	if err != nil {
		return File{}, err
	}
	if _, err := f.Write(b); err != nil {
		f.abort()
		return File{}, err
	}
	return f.close()
}

// create opens name in the staging folder; what is written is hashed and
// counted on the way.
func (lw *localWriter) create(name string) (*countingFile, error) {
	path := filepath.Join(lw.staging, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	return &countingFile{name: name, path: path, f: f, h: sha256.New()}, nil
}

// commit writes the manifest, makes everything durable and puts the
// staging folder in place of the final one.
func (lw *localWriter) commit(m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := lw.create(ManifestName)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.abort()
		return err
	}
	if _, err := f.close(); err != nil {
		return err
	}
	if err := fsync.Dir(lw.staging); err != nil {
		return err
	}
	parent, base := filepath.Split(lw.final)
	var old string
	if _, err := os.Stat(lw.final); err == nil {
		old = filepath.Join(parent, "."+base+".old-"+filepath.Base(lw.staging))
		if err := os.Rename(lw.final, old); err != nil {
			return err
		}
	}
	if err := os.Rename(lw.staging, lw.final); err != nil {
		return err
	}
	lw.staging = ""
	if old != "" {
		os.RemoveAll(old)
	}
	return fsync.Dir(parent)
}

// countingFile is a file being written whose size and sha256 are known
// when it is closed.
type countingFile struct {
	name, path string
	f          *os.File
	h          hash.Hash
	n          int64
}

func (c *countingFile) Write(p []byte) (int, error) {
	n, err := c.f.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func (c *countingFile) close() (File, error) {
	err := c.f.Sync()
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return File{}, fmt.Errorf("write %s: %w", c.path, err)
	}
	return File{Name: c.name, Size: c.n, SHA256: hex.EncodeToString(c.h.Sum(nil))}, nil
}

func (c *countingFile) abort() {
	c.f.Close()
	os.Remove(c.path)
}

// writeMeasurement streams one measurement through gzip into its file. It
// returns ok=false (and leaves no file) when the window holds no points.
func (lw *localWriter) writeMeasurement(ctx context.Context, src *Source, w Window, m string) (File, bool, error) {
	f, err := lw.create(FileName(m))
	if err != nil {
		return File{}, false, err
	}
	gz, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
	points, err := src.WriteLineProtocol(ctx, w, m, gz)
	if err == nil {
		err = gz.Close()
	}
	if err != nil {
		f.abort()
		return File{}, false, err
	}
	if points == 0 {
		f.abort()
		return File{}, false, nil
	}
	file, err := f.close()
	file.Measurement, file.Points = m, points
	return file, err == nil, err
}

// readManifest reads the manifest of a committed export folder.
func readManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestName), err)
	}
	return &m, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
