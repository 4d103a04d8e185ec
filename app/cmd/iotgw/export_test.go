package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// runExport runs `iotgw export args...` with exactly the given IOTGW_*
// and AWS environment and returns the exit code main would use.
func runExport(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "IOTGW_") && k != "IOTGW_INFLUXD" || strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for k, v := range env {
		t.Setenv(k, v)
	}
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"export"}, args...))
	err := root.ExecuteContext(context.Background())
	switch ee := (*exitError)(nil); {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		code = ee.Code
	default:
		code = 1
	}
	if err != nil {
		errb.WriteString("iotgw: " + err.Error() + "\n")
	}
	return code, out.String(), errb.String()
}

func baseEnv(dir string) map[string]string {
	return map[string]string{
		"IOTGW_INFLUX_URL":    "http://127.0.0.1:1",
		"IOTGW_INFLUX_ORG":    "iot",
		"IOTGW_INFLUX_BUCKET": "db/rp",
		"IOTGW_EXPORT_BUCKET": "exports",
		"IOTGW_EXPORT_DIR":    dir,
	}
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

func TestExportBadFlagsAndConfig(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		file string
		args []string
		want string
	}{
		{name: "from after to", args: []string{"--from", "2026-03-14T12:00:00Z", "--to", "2026-03-14T06:00:00Z"}, want: "is not before"},
		{name: "from without to", args: []string{"--from", "2026-03-14T12:00:00Z"}, want: "--from and --to go together"},
		{name: "bad day", args: []string{"--day", "14.03.2026"}, want: `--day: day "14.03.2026": want YYYY-MM-DD`},
		{name: "day and range", args: []string{"--day", "2026-03-14", "--from", "2026-03-14T12:00:00Z", "--to", "2026-03-15T00:00:00Z"}, want: "cannot be combined"},
		{name: "catch-up and day", args: []string{"--catch-up", "--day", "2026-03-14"}, want: "cannot be combined"},
		{name: "catch-up without upload", args: []string{"--catch-up", "--no-upload"}, want: "cannot be combined with --no-upload"},
		{name: "unknown flag", args: []string{"--dya", "2026-03-14"}, want: "unknown flag: --dya"},
		{name: "argument", args: []string{"2026-03-14"}, want: "no arguments"},
		{name: "no S3 bucket", env: map[string]string{"IOTGW_EXPORT_BUCKET": ""}, want: "export.bucket (IOTGW_EXPORT_BUCKET) is empty"},
		{name: "no database", env: map[string]string{"IOTGW_INFLUX_URL": ""}, want: "influx.url (IOTGW_INFLUX_URL) is empty"},
		{name: "bad part size", env: map[string]string{"IOTGW_EXPORT_PART_SIZE": "8MB"}, want: "export.part_size (IOTGW_EXPORT_PART_SIZE)"},
		{name: "part too small for AWS", args: []string{"--part-size", "1024"}, want: "AWS S3 needs at least"},
		{name: "unknown config key", file: "[influx]\nbatch_size = 5000\n[export]\nbukket = \"x\"\n", want: "unknown key export.bukket"},
		{name: "bad config file", file: "[export\n", want: "config "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			env := baseEnv(dir)
			for k, v := range c.env {
				env[k] = v
			}
			args := c.args
			if c.file != "" {
				p := filepath.Join(t.TempDir(), "gw.toml")
				if err := os.WriteFile(p, []byte(c.file), 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", p)
			}
			code, _, stderr := runExport(t, env, args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, c.want)
			}
			assertEmptyDir(t, dir)
		})
	}
}

func TestExportMissingCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	env := baseEnv(dir)
	env["AWS_REGION"] = "eu-central-1"
	code, _, stderr := runExport(t, env, "--day", "2026-03-14")
	if code != 1 || !strings.Contains(stderr, "no AWS credentials found") {
		t.Errorf("exit %d, stderr %q; want 1 and a missing-credentials error", code, stderr)
	}
	assertEmptyDir(t, dir)
}

// TestExportCatchUp runs the command against a real influxd and gofakes3
// (an S3 protocol server in process): three missed days are exported and
// uploaded, today is not, and a second run has nothing to do.
func TestExportCatchUp(t *testing.T) {
	in := testsvc.StartInflux(t)
	backend := s3mem.New()
	if err := backend.CreateBucket("exports"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer srv.Close()

	today := time.Now().UTC().Truncate(24 * time.Hour)
	var lp strings.Builder
	for d := -4; d <= 0; d++ {
		for h := range 24 {
			fmt.Fprintf(&lp, "temperature,site=s1,device=d1 value=%d.5 %d\n", h, today.AddDate(0, 0, d).Add(time.Duration(h)*time.Hour).UnixNano())
		}
	}
	resp, err := http.Post(in.URL()+"/api/v2/write?bucket=db/rp&precision=ns", "text/plain", strings.NewReader(lp.String()))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write: %v %v", err, resp)
	}
	resp.Body.Close()

	dir := t.TempDir()
	lastDone := today.AddDate(0, 0, -4)
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"last_day":"`+lastDone.Format(time.DateOnly)+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"IOTGW_INFLUX_URL":             in.URL(),
		"IOTGW_INFLUX_ORG":             "iot",
		"IOTGW_INFLUX_BUCKET":          "db/rp",
		"IOTGW_INFLUX_TOKEN":           "",
		"IOTGW_EXPORT_BUCKET":          "exports",
		"IOTGW_EXPORT_PREFIX":          "dev",
		"IOTGW_EXPORT_DIR":             dir,
		"IOTGW_S3_ENDPOINT":            srv.URL,
		"IOTGW_EXPORT_SKIP_DASHBOARDS": "true", // InfluxDB 1.8 has no dashboards API
		"AWS_ACCESS_KEY_ID":            "test",
		"AWS_SECRET_ACCESS_KEY":        "test-secret",
		"AWS_REGION":                   "eu-central-1",
	}

	code, stdout, stderr := runExport(t, env, "--catch-up")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	t.Log(stdout)
	var want []string
	for d := -3; d <= -1; d++ {
		p := today.AddDate(0, 0, d).Format("2006/01/02")
		want = append(want, "dev/"+p+"/manifest.json", "dev/"+p+"/temperature.lp.gz")
	}
	client := s3.New(s3.Options{BaseEndpoint: aws.String(srv.URL), UsePathStyle: true, Region: "eu-central-1",
		Credentials: credentials.NewStaticCredentialsProvider("test", "test-secret", "")})
	list, err := client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String("exports")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range list.Contents {
		got = append(got, aws.ToString(o.Key))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("objects\n got %q\nwant %q", got, want)
	}
	if !strings.Contains(stdout, "24 points") {
		t.Errorf("summary does not report the day's 24 points: %q", stdout)
	}
	state, _ := os.ReadFile(filepath.Join(dir, "state.json"))
	if y := today.AddDate(0, 0, -1).Format(time.DateOnly); !strings.Contains(string(state), y) {
		t.Errorf("state %s, want last_day %s", state, y)
	}

	code, stdout, stderr = runExport(t, env, "--catch-up")
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Errorf("second run: exit %d, %q %q", code, stdout, stderr)
	}

	// A reading of an uploaded day arrives late (a device replaying its
	// buffer): the next run finds the day stale and uploads it again.
	late := today.AddDate(0, 0, -2)
	resp, err = http.Post(in.URL()+"/api/v2/write?bucket=db/rp&precision=ns", "text/plain",
		strings.NewReader(fmt.Sprintf("temperature,site=s1,device=d1 value=99 %d\n", late.Add(30*time.Minute).UnixNano())))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write: %v %v", err, resp)
	}
	resp.Body.Close()
	code, stdout, stderr = runExport(t, env, "--catch-up")
	if code != 0 || !strings.Contains(stdout, "export "+late.Format(time.DateOnly)+": late data") || !strings.Contains(stdout, "25 points") {
		t.Fatalf("run after late data: exit %d, %q %q", code, stdout, stderr)
	}
	obj, err := client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String("exports"), Key: aws.String("dev/" + late.Format("2006/01/02") + "/manifest.json")})
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct{ Points int64 }
	if err := json.NewDecoder(obj.Body).Decode(&manifest); err != nil || manifest.Points != 25 {
		t.Fatalf("uploaded manifest of %s: %+v %v, want 25 points", late.Format(time.DateOnly), manifest, err)
	}
	obj.Body.Close()
	code, stdout, _ = runExport(t, env, "--catch-up")
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Errorf("run after the re-export: exit %d, %q", code, stdout)
	}

	// An S3 bucket that does not exist fails before anything is written.
	env["IOTGW_EXPORT_BUCKET"] = "no-such-bucket"
	env["IOTGW_EXPORT_DIR"] = filepath.Join(t.TempDir(), "out")
	code, _, stderr = runExport(t, env, "--day", today.AddDate(0, 0, -1).Format(time.DateOnly))
	if code != 1 || !strings.Contains(stderr, `S3 bucket "no-such-bucket"`) {
		t.Errorf("unknown S3 bucket: exit %d, %q", code, stderr)
	}
	assertEmptyDir(t, env["IOTGW_EXPORT_DIR"])
}
