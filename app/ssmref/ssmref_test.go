package ssmref

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/iot-gateway/iot-gateway/app/internal/backoff"
	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func staticCreds(id, secret, token string) aws.CredentialsProvider {
	return aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: token, Source: "test"}, nil
	})
}

// newClient is a Client for the SSM server at url, with short retry waits.
func newClient(t *testing.T, url string, creds aws.CredentialsProvider) *Client {
	t.Helper()
	c, err := NewClient(aws.Config{Region: testsvc.SSMRegion, Credentials: creds}, url)
	if err != nil {
		t.Fatal(err)
	}
	c.wait = backoff.Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond}
	return c
}

func TestResolve(t *testing.T) {
	ctx := context.Background()
	srv := testsvc.StartSSM(t)
	srv.Put(t, "/iot-gateway/dev/influx-token", "tok-123")
	srv.Put(t, "/iot-gateway/dev/mqtt-password", "pw")
	token, password, plain := "ssm:/iot-gateway/dev/influx-token", "ssm:/iot-gateway/dev/mqtt-password", "not-a-ref"
	r := New(newClient(t, srv.URL, staticCreds(testsvc.SSMAccessKeyID, testsvc.SSMSecretKey, "")))
	err := r.Resolve(ctx, []Field{{"influx.token", &token}, {"mqtt.password", &password}, {"mqtt.username", &plain}})
	if err != nil {
		t.Fatal(err)
	}
	// Without decryption the server answers a SecureString as "kms:alias/aws/ssm:tok-123".
	if token != "tok-123" || password != "pw" || plain != "not-a-ref" {
		t.Fatalf("resolved %q %q %q", token, password, plain)
	}

	missing, relative, known := "ssm:/iot-gateway/dev/nope", "ssm:nope", "ssm:/iot-gateway/dev/influx-token"
	err = r.Resolve(ctx, []Field{{"influx.token", &missing}, {"mqtt.password", &relative}, {"mqtt.username", &known}})
	if err == nil || !strings.Contains(err.Error(), "influx.token: ssm parameter /iot-gateway/dev/nope: ParameterNotFound (HTTP 400)") ||
		!strings.Contains(err.Error(), "mqtt.password") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "tok-123") {
		t.Fatalf("an error quotes a value: %v", err)
	}
	if missing != "ssm:/iot-gateway/dev/nope" || known != "tok-123" {
		t.Fatalf("a failed reference must stay as it was and the others resolve, got %q %q", missing, known)
	}
}

func TestNoReferencesNoCalls(t *testing.T) {
	v := "plain"
	r := New(nil) // a nil client would panic if called
	if err := r.Resolve(context.Background(), []Field{{"k", &v}}); err != nil || Any([]Field{{"k", &v}}) {
		t.Fatal(err)
	}
}

func TestEndpoint(t *testing.T) {
	creds := staticCreds("a", "b", "")
	tests := []struct {
		region, base, explicit string
		want                   string // the URL, or the start of the error
	}{
		{"eu-central-1", "", "", "https://ssm.eu-central-1.amazonaws.com/"},
		{"us-gov-west-1", "", "", "https://ssm.us-gov-west-1.amazonaws.com/"},
		{"cn-north-1", "", "", "https://ssm.cn-north-1.amazonaws.com.cn/"},
		{"us-isob-east-1", "", "", "https://ssm.us-isob-east-1.sc2s.sgov.gov/"},
		{"us-iso-east-1", "", "", "https://ssm.us-iso-east-1.c2s.ic.gov/"},
		{"eu-west-1", "http://127.0.0.1:4566", "", "http://127.0.0.1:4566/"},
		{"eu-west-1", "http://127.0.0.1:4566", "http://127.0.0.1:9/ssm/", "http://127.0.0.1:9/ssm/"},
		{"", "", "", "ssm: no AWS region"},
		{"eu-west-1.evil.example/x", "", "", "ssm: AWS region"},
		{"eu-west-1", "", "ftp://x", "ssm: endpoint"},
	}
	for _, tt := range tests {
		cfg := aws.Config{Region: tt.region, Credentials: creds}
		if tt.base != "" {
			cfg.BaseEndpoint = aws.String(tt.base)
		}
		c, err := NewClient(cfg, tt.explicit)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = c.url
		}
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%+v: got %q, want %q", tt, got, tt.want)
		}
	}
}

// NewDefault takes the endpoint from the SDK's configuration as the SDK's
// own SSM client would.
func TestDefaultEndpoint(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "a")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "b")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
	t.Setenv("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:2")
	for _, tt := range []struct{ explicit, want string }{{"", "http://127.0.0.1:2/"}, {"http://127.0.0.1:3", "http://127.0.0.1:3/"}} {
		r, err := NewDefault(context.Background(), tt.explicit)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.get.(*Client).url; got != tt.want {
			t.Errorf("endpoint %q, want %q", got, tt.want)
		}
	}

	os.Unsetenv("AWS_ENDPOINT_URL")
	os.Unsetenv("AWS_ENDPOINT_URL_SSM")
	t.Setenv("AWS_USE_FIPS_ENDPOINT", "true")
	if _, err := NewDefault(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "a FIPS endpoint is configured") {
		t.Fatalf("FIPS asked for: %v", err)
	}
	if _, err := NewDefault(context.Background(), "https://ssm-fips.eu-west-1.amazonaws.com"); err != nil {
		t.Fatalf("FIPS endpoint named: %v", err)
	}
}
