package ssmref

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// sigV4Server stands in for AWS where the local SSM server cannot: kumo
// does not verify signatures. It checks the request is GetParameter signed
// for service ssm in testsvc.SSMRegion with creds over the body it carries,
// and answers as SSM does (an InvalidSignatureException otherwise).
func sigV4Server(t *testing.T, creds aws.Credentials, value string, requests *atomic.Int32) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("X-Amzn-Requestid", "req-1")
		fail := func(typ, msg string) {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"__type": "com.amazon.coral.service#" + typ, "message": msg})
		}
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.URL.Path != "/" ||
			r.Header.Get("X-Amz-Target") != "AmazonSSM.GetParameter" || r.Header.Get("Content-Type") != "application/x-amz-json-1.1" {
			fail("UnknownOperationException", "not a GetParameter request")
			return
		}
		auth := r.Header.Get("Authorization")
		scope := "Credential=" + creds.AccessKeyID + "/"
		when, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
		if err != nil || !strings.Contains(auth, scope+when.Format("20060102")+"/"+testsvc.SSMRegion+"/ssm/aws4_request,") {
			fail("UnrecognizedClientException", "The security token included in the request is invalid.")
			return
		}
		// The same signature computed here over what arrived: the headers
		// the client says it signed, and the body's own hash.
		_, signed, _ := strings.Cut(auth, "SignedHeaders=")
		signed, _, _ = strings.Cut(signed, ",")
		check, _ := http.NewRequest(http.MethodPost, "http://"+r.Host+"/", bytes.NewReader(body))
		for _, h := range strings.Split(signed, ";") {
			if h != "host" {
				check.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
			}
		}
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, check, hex.EncodeToString(sum[:]), "ssm", testsvc.SSMRegion, when); err != nil {
			t.Error(err)
		}
		if check.Header.Get("Authorization") != auth || !strings.Contains(signed, "x-amz-target") ||
			(creds.SessionToken != "" && !strings.Contains(signed, "x-amz-security-token")) {
			fail("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
			return
		}
		var in struct {
			Name           string
			WithDecryption *bool
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Name != "/iot-gateway/dev/influx-token" || in.WithDecryption == nil || !*in.WithDecryption {
			fail("ValidationException", "unexpected body "+string(body))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Parameter": map[string]any{"Name": in.Name, "Type": "SecureString", "Value": value}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Requests are SigV4-signed for SSM with session credentials, and AWS's
// refusal reaches the error with its type and message, without a retry.
func TestRequestIsSigned(t *testing.T) {
	creds := aws.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret", SessionToken: "session-token"}
	var requests atomic.Int32
	srv := sigV4Server(t, creds, "tok-123", &requests)
	ref := "ssm:/iot-gateway/dev/influx-token"
	if err := New(newClient(t, srv.URL, staticCreds(creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken))).
		Resolve(context.Background(), []Field{{"influx.token", &ref}}); err != nil || ref != "tok-123" {
		t.Fatalf("resolved %q, %v", ref, err)
	}

	for _, bad := range []struct{ id, secret, token, want string }{
		{creds.AccessKeyID, "wrong", creds.SessionToken, "InvalidSignatureException (HTTP 400): The request signature we calculated"},
		{creds.AccessKeyID, creds.SecretAccessKey, "", "InvalidSignatureException"},
		{"AKIAOTHER", creds.SecretAccessKey, creds.SessionToken, "UnrecognizedClientException (HTTP 400): The security token"},
	} {
		requests.Store(0)
		ref := "ssm:/iot-gateway/dev/influx-token"
		err := New(newClient(t, srv.URL, staticCreds(bad.id, bad.secret, bad.token))).
			Resolve(context.Background(), []Field{{"influx.token", &ref}})
		want := "influx.token: ssm parameter /iot-gateway/dev/influx-token: " + bad.want
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "req-1") {
			t.Errorf("err = %v, want %q", err, want)
		}
		if n := requests.Load(); n != 1 {
			t.Errorf("%d requests for a refusal, want 1", n)
		}
	}
}

// Throttling and 5xx are retried a few times, then reported; the value
// comes from the local SSM server behind a proxy that fails the first
// requests as AWS and a load balancer in front of it would.
func TestRetries(t *testing.T) {
	ssm := testsvc.StartSSM(t)
	ssm.Put(t, "/iot-gateway/dev/influx-token", "tok-123")
	target, _ := url.Parse(ssm.URL)
	pass := httputil.NewSingleHostReverseProxy(target)
	type fault struct {
		status int
		answer string
	}
	var failing, requests atomic.Int32
	var answer atomic.Pointer[fault]
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if failing.Add(-1) >= 0 {
			f := answer.Load()
			w.WriteHeader(f.status)
			_, _ = io.WriteString(w, f.answer)
			return
		}
		pass.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	c := newClient(t, proxy.URL, staticCreds(testsvc.SSMAccessKeyID, testsvc.SSMSecretKey, ""))

	for _, tt := range []struct {
		status      int
		answer, err string
	}{
		{400, `{"__type":"ThrottlingException","message":"Rate exceeded"}`, "ThrottlingException (HTTP 400): Rate exceeded (after 3 tries)"},
		{503, "<html>busy</html>", "error (HTTP 503): Service Unavailable, 17 bytes that are not an AWS error (after 3 tries)"},
	} {
		answer.Store(&fault{tt.status, tt.answer})
		failing.Store(attempts - 1)
		requests.Store(0)
		if v, err := c.GetParameter(context.Background(), "/iot-gateway/dev/influx-token"); err != nil || v != "tok-123" {
			t.Fatalf("got %q, %v", v, err)
		}
		if n := requests.Load(); n != attempts {
			t.Fatalf("%d requests, want %d", n, attempts)
		}

		failing.Store(attempts)
		requests.Store(0)
		_, err := c.GetParameter(context.Background(), "/iot-gateway/dev/influx-token")
		if err == nil || err.Error() != tt.err || requests.Load() != attempts {
			t.Fatalf("err = %v after %d requests, want %s", err, requests.Load(), tt.err)
		}
	}
}

// service/ssm's init costs every iotgw process 1.4 MB of live heap (see
// the package doc); this package must not bring it back.
func TestDoesNotLinkServiceSSM(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	const heavy = "github.com/aws/aws-sdk-go-v2/service/ssm"
	sawConfig := false
	for _, p := range deps {
		if p == heavy || strings.HasPrefix(p, heavy+"/") {
			t.Errorf("app/ssmref imports %s", p)
		}
		sawConfig = sawConfig || p == "github.com/aws/aws-sdk-go-v2/config"
	}
	if !sawConfig {
		t.Fatalf("go list printed no aws-sdk-go-v2/config among %d packages: %s", len(deps), out)
	}
}
