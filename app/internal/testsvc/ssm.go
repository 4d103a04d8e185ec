package testsvc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/sivchari/kumo"
)

// SSM is an SSM-compatible server run in process (kumo), spoken to over
// HTTP with signed requests. kumo routes a request by its signature's
// service name but does not verify the signature.
type SSM struct {
	URL string
}

// SSMRegion and the static credentials below are what Put signs with;
// kumo accepts any.
const (
	SSMRegion      = "eu-west-1"
	SSMAccessKeyID = "AKIDEXAMPLE"
	SSMSecretKey   = "secret"
)

// StartSSM starts the server, stopped when the test ends.
func StartSSM(t testing.TB) *SSM {
	t.Helper()
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	return &SSM{URL: srv.URL}
}

// Put stores value as the SecureString parameter name, replacing any
// earlier value. The request is SSM's own PutParameter (JSON 1.1, SigV4),
// made without the SDK's service/ssm client so the module does not need
// it (see app/ssmref for why).
func (s *SSM) Put(t testing.TB, name, value string) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"Name": name, "Value": value, "Type": "SecureString", "Overwrite": true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "AmazonSSM.PutParameter")
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: SSMAccessKeyID, SecretAccessKey: SSMSecretKey}
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "ssm", SSMRegion, time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("ssm PutParameter %s: HTTP %d: %s", name, resp.StatusCode, b)
	}
}
