package export

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// The S3 side runs against gofakes3, an S3 protocol server, in process:
// the real SDK, transfer manager, signing and checksum headers go over
// HTTP to it.

const testBucket = "iotgw-exports"

// s3Server is gofakes3 behind a handler that records requests and can fail
// chosen ones.
type s3Server struct {
	URL string

	mu       sync.Mutex
	requests []s3Request

	// failPart, when non-zero, makes every UploadPart of that part number
	// answer 500.
	failPart atomic.Int32
}

type s3Request struct {
	Method, Path string
	Query        map[string][]string
	Header       http.Header
}

func startS3(t *testing.T) *s3Server {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket(testBucket); err != nil {
		t.Fatal(err)
	}
	faker := gofakes3.New(backend).Server()
	s := &s3Server{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, s3Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Header: r.Header.Clone()})
		s.mu.Unlock()
		if n := s.failPart.Load(); n != 0 && r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == strconv.Itoa(int(n)) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected failure</Message></Error>`)
			return
		}
		faker.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// takeRequests returns and forgets the requests seen so far.
func (s *s3Server) takeRequests() []s3Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.requests
	s.requests = nil
	return r
}

// awsEnv gives the default chain static test credentials and nothing else
// to find (no shared files, no instance metadata).
func awsEnv(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", "eu-central-1")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_MAX_ATTEMPTS", "2")
}

func testConfig(s *s3Server, dir string) Config {
	return Config{
		Bucket:             testBucket,
		Prefix:             "site-a/exports",
		Dir:                dir,
		S3Endpoint:         s.URL,
		PartSize:           64 << 10,
		MultipartThreshold: 128 << 10,
	}.WithDefaults()
}

func newTestStore(t *testing.T, c Config) *Store {
	t.Helper()
	if err := c.Validate(true); err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// reader is a plain S3 client for looking at what was uploaded.
func reader(s *s3Server) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.URL),
		UsePathStyle: true,
		Region:       "eu-central-1",
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test-secret", ""),
	})
}

func listKeys(t *testing.T, c *s3.Client, prefix string) []string {
	t.Helper()
	out, err := c.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(testBucket), Prefix: aws.String(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	slices.Sort(keys)
	return keys
}

func getObject(t *testing.T, c *s3.Client, key string) ([]byte, map[string]string) {
	t.Helper()
	out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(testBucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b, out.Metadata
}

// writeLocal commits a local export of w with the given files, through the
// same writer the exporter uses.
func writeLocal(t *testing.T, root string, w Window, files map[string][]byte) *Manifest {
	t.Helper()
	lw, err := newLocalWriter(root, w)
	if err != nil {
		t.Fatal(err)
	}
	defer lw.discard()
	m := &Manifest{FormatVersion: 1, GatewayVersion: "test", From: w.From, To: w.To, CreatedAt: time.Now().UTC()}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f, err := lw.writeFile(n, files[n])
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, f)
	}
	if err := lw.commit(m); err != nil {
		t.Fatal(err)
	}
	return m
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func hexSHA(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestUploadObjectsKeysChecksumsManifest(t *testing.T) {
	awsEnv(t)
	srv := startS3(t)
	c := testConfig(srv, t.TempDir())
	st := newTestStore(t, c)
	day := Day(time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC))
	files := map[string][]byte{
		DashboardsName:      []byte(`[]` + "\n"),
		"temperature.lp.gz": randomBytes(t, 3000),
		"humidity.lp.gz":    randomBytes(t, 10),
	}
	m := writeLocal(t, c.Dir, day, files)
	srv.takeRequests()
	if err := st.Upload(context.Background(), filepath.Join(c.Dir, "2026/03/14"), day, m); err != nil {
		t.Fatal(err)
	}

	rd := reader(srv)
	base := "site-a/exports/2026/03/14/"
	want := []string{base + DashboardsName, base + "humidity.lp.gz", base + ManifestName, base + "temperature.lp.gz"}
	if got := listKeys(t, rd, "site-a/"); !slices.Equal(got, want) {
		t.Fatalf("keys:\n got %q\nwant %q", got, want)
	}
	for name, content := range files {
		b, meta := getObject(t, rd, base+name)
		if !bytes.Equal(b, content) {
			t.Errorf("%s: content differs", name)
		}
		if meta["sha256"] != hexSHA(content) {
			t.Errorf("%s: x-amz-meta-sha256 %q, want %q", name, meta["sha256"], hexSHA(content))
		}
	}
	mb, _ := getObject(t, rd, base+ManifestName)
	local, err := os.ReadFile(filepath.Join(c.Dir, "2026/03/14", ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mb, local) {
		t.Errorf("uploaded manifest differs from the local one")
	}
	var got Manifest
	if err := json.Unmarshal(mb, &got); err != nil {
		t.Fatal(err)
	}
	for _, f := range got.Files {
		if f.SHA256 != hexSHA(files[f.Name]) || f.Size != int64(len(files[f.Name])) {
			t.Errorf("manifest entry %+v does not describe %s", f, f.Name)
		}
	}

	// Every PUT carried a SHA-256 the server could check, the manifest was
	// the last object written.
	var puts []string
	for _, r := range srv.takeRequests() {
		if r.Method != http.MethodPut {
			continue
		}
		puts = append(puts, r.Path)
		name := r.Path[strings.LastIndexByte(r.Path, '/')+1:]
		sum := sha256.Sum256(files[name])
		if name == ManifestName {
			sum = sha256.Sum256(local)
		}
		if got, want := r.Header.Get("X-Amz-Checksum-Sha256"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
			t.Errorf("PUT %s: x-amz-checksum-sha256 %q, want %q", r.Path, got, want)
		}
	}
	if len(puts) != 4 || !strings.HasSuffix(puts[len(puts)-1], "/"+ManifestName) {
		t.Errorf("PUTs %q: want 4 with the manifest last", puts)
	}
}

func TestUploadMultipart(t *testing.T) {
	awsEnv(t)
	srv := startS3(t)
	c := testConfig(srv, t.TempDir())
	st := newTestStore(t, c)
	day := Day(time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC))
	big := randomBytes(t, 300<<10) // 64 KiB parts: 5 parts
	m := writeLocal(t, c.Dir, day, map[string][]byte{"big.lp.gz": big})
	srv.takeRequests()
	if err := st.Upload(context.Background(), filepath.Join(c.Dir, "2026/03/14"), day, m); err != nil {
		t.Fatal(err)
	}
	var parts, creates, completes int
	for _, r := range srv.takeRequests() {
		switch {
		case r.Method == http.MethodPost && r.Query["uploads"] != nil:
			creates++
			if a := r.Header.Get("X-Amz-Checksum-Algorithm"); a != "SHA256" {
				t.Errorf("CreateMultipartUpload: x-amz-checksum-algorithm %q, want SHA256", a)
			}
		case r.Method == http.MethodPut && r.Query["partNumber"] != nil:
			parts++
			if r.Header.Get("X-Amz-Checksum-Sha256") == "" {
				t.Errorf("UploadPart %s: no x-amz-checksum-sha256", r.Query["partNumber"])
			}
		case r.Method == http.MethodPost && r.Query["uploadId"] != nil:
			completes++
		}
	}
	if creates != 1 || parts != 5 || completes != 1 {
		t.Errorf("multipart requests: %d create, %d parts, %d complete; want 1, 5, 1", creates, parts, completes)
	}
	b, meta := getObject(t, reader(srv), "site-a/exports/2026/03/14/big.lp.gz")
	if !bytes.Equal(b, big) || meta["sha256"] != hexSHA(big) {
		t.Errorf("multipart object differs from the file (len %d, sha256 meta %q)", len(b), meta["sha256"])
	}
}

func TestUploadRerunReplacesDayAndLeavesOthers(t *testing.T) {
	awsEnv(t)
	srv := startS3(t)
	c := testConfig(srv, t.TempDir())
	st := newTestStore(t, c)
	ctx := context.Background()
	d1 := Day(time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC))
	d2 := Day(time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC))
	upload := func(w Window, files map[string][]byte) {
		t.Helper()
		m := writeLocal(t, c.Dir, w, files)
		if err := st.Upload(ctx, filepath.Join(c.Dir, filepath.FromSlash(w.Path())), w, m); err != nil {
			t.Fatal(err)
		}
	}
	upload(d1, map[string][]byte{"a.lp.gz": []byte("a1"), "b.lp.gz": []byte("b1")})
	upload(d2, map[string][]byte{"a.lp.gz": []byte("other day")})
	upload(d1, map[string][]byte{"a.lp.gz": []byte("a2"), "c.lp.gz": []byte("c2")})

	rd := reader(srv)
	if got, want := listKeys(t, rd, "site-a/exports/2026/03/14/"), []string{
		"site-a/exports/2026/03/14/a.lp.gz", "site-a/exports/2026/03/14/c.lp.gz", "site-a/exports/2026/03/14/manifest.json",
	}; !slices.Equal(got, want) {
		t.Errorf("day re-run left %q, want %q", got, want)
	}
	if b, _ := getObject(t, rd, "site-a/exports/2026/03/14/a.lp.gz"); string(b) != "a2" {
		t.Errorf("a.lp.gz = %q after re-run, want a2", b)
	}
	if got := listKeys(t, rd, "site-a/exports/2026/03/15/"); len(got) != 2 {
		t.Errorf("other day has %q, want its file and manifest", got)
	}
	if b, _ := getObject(t, rd, "site-a/exports/2026/03/15/a.lp.gz"); string(b) != "other day" {
		t.Errorf("other day's object changed to %q", b)
	}
	// The local folder was swapped whole: no file of the first run remains.
	if _, err := os.Stat(filepath.Join(c.Dir, "2026/03/14/b.lp.gz")); !os.IsNotExist(err) {
		t.Errorf("local b.lp.gz survived the re-run: %v", err)
	}
}

func TestUploadFailsMidwayThenSucceeds(t *testing.T) {
	awsEnv(t)
	srv := startS3(t)
	c := testConfig(srv, t.TempDir())
	st := newTestStore(t, c)
	ctx := context.Background()
	day := Day(time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC))
	dir := filepath.Join(c.Dir, "2026/03/14")
	rd := reader(srv)

	// An earlier complete upload of the day exists.
	m := writeLocal(t, c.Dir, day, map[string][]byte{"old.lp.gz": []byte("old")})
	if err := st.Upload(ctx, dir, day, m); err != nil {
		t.Fatal(err)
	}

	big := randomBytes(t, 300<<10)
	m = writeLocal(t, c.Dir, day, map[string][]byte{"big.lp.gz": big, "small.lp.gz": []byte("small")})
	srv.failPart.Store(2)
	err := st.Upload(ctx, dir, day, m)
	if err == nil {
		t.Fatal("upload with a failing part succeeded")
	}
	if !strings.Contains(err.Error(), "big.lp.gz") || !strings.Contains(err.Error(), "InternalError") {
		t.Errorf("error does not say which file and why: %v", err)
	}
	t.Logf("first run: %v", err)
	for _, k := range listKeys(t, rd, "site-a/") {
		if strings.HasSuffix(k, ManifestName) {
			t.Errorf("after a failed upload %s exists: the day looks complete", k)
		}
		if strings.HasSuffix(k, "big.lp.gz") {
			t.Errorf("after a failed upload the half-sent %s exists", k)
		}
	}
	uploads, err := rd.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(testBucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(uploads.Uploads) != 0 {
		t.Errorf("%d multipart uploads left open after the failure", len(uploads.Uploads))
	}

	srv.failPart.Store(0)
	if err := st.Upload(ctx, dir, day, m); err != nil {
		t.Fatalf("retry: %v", err)
	}
	want := []string{"site-a/exports/2026/03/14/big.lp.gz", "site-a/exports/2026/03/14/manifest.json", "site-a/exports/2026/03/14/small.lp.gz"}
	if got := listKeys(t, rd, "site-a/"); !slices.Equal(got, want) {
		t.Errorf("after the retry: %q, want %q", got, want)
	}
	if b, _ := getObject(t, rd, want[0]); !bytes.Equal(b, big) {
		t.Errorf("big.lp.gz differs after the retry")
	}
}

func TestStoreErrors(t *testing.T) {
	t.Run("unknown bucket", func(t *testing.T) {
		awsEnv(t)
		srv := startS3(t)
		c := testConfig(srv, t.TempDir())
		c.Bucket = "no-such-bucket"
		err := newTestStore(t, c).Check(context.Background())
		if err == nil || !strings.Contains(err.Error(), `"no-such-bucket"`) {
			t.Errorf("Check on a missing bucket: %v", err)
		}
	})
	t.Run("missing credentials", func(t *testing.T) {
		awsEnv(t)
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		srv := startS3(t)
		_, err := NewStore(context.Background(), testConfig(srv, t.TempDir()))
		if err == nil || !strings.Contains(err.Error(), "no AWS credentials") {
			t.Errorf("NewStore without credentials: %v", err)
		}
	})
}
