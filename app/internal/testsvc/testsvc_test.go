package testsvc

import (
	"net/http"
	"strings"
	"testing"
)

func TestInfluxWriteAndQuery(t *testing.T) {
	in := StartInflux(t)
	body := strings.NewReader("m,site=a v=1 1700000000000000000\nm,site=b v=2 1700000000000000000\n")
	resp, err := http.Post(in.URL()+"/api/v2/write?bucket="+Bucket+"&precision=ns", "text/plain", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write: %s", resp.Status)
	}
	n, err := in.Count("m", "v")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	in.Stop()
	in.Start()
	if n, err := in.Count("m", "v"); err != nil || n != 2 {
		t.Fatalf("after restart count = %d, %v; want 2", n, err)
	}
}

func TestMosquittoRestart(t *testing.T) {
	m := StartMosquitto(t, MosquittoOptions{Persistence: true, MaxInflight: 1000})
	m.Stop()
	m.Start()
	m.Kill()
	m.Start()
}
