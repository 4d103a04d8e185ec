package ssmref

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/iot-gateway/iot-gateway/app/internal/backoff"
)

const (
	// attempts bounds the tries of one GetParameter: throttling and 5xx
	// are retried, a definite answer (not found, access denied) is not.
	attempts = 3
	// attemptTimeout bounds one try, so a stalled connection is retried
	// within the caller's deadline instead of using it all.
	attemptTimeout = 10 * time.Second
	// maxResponse bounds what is read of an answer: a value is at most
	// 8 KB (an advanced parameter), the rest of the JSON a few hundred bytes.
	maxResponse = 1 << 20
)

// Client makes SSM's GetParameter call, with decryption, over the service's
// JSON 1.1 protocol, signed with SigV4.
type Client struct {
	url    string // the endpoint, path "/"
	region string
	creds  aws.CredentialsProvider
	http   aws.HTTPClient
	signer *v4.Signer
	wait   backoff.Backoff
}

// NewClient builds a Client from cfg (its credentials, region and HTTP
// client). The endpoint is, in order: endpoint when set (IOTGW_SSM_ENDPOINT),
// an SSM-specific one from the configuration (AWS_ENDPOINT_URL_SSM, the
// shared config's services section), cfg.BaseEndpoint (AWS_ENDPOINT_URL),
// and otherwise SSM's regional endpoint in the region's partition. FIPS and
// dual-stack endpoints are not derived: asking for one (AWS_USE_FIPS_ENDPOINT,
// use_dualstack_endpoint, ...) without naming it is an error.
func NewClient(cfg aws.Config, endpoint string) (*Client, error) {
	if !validRegion(cfg.Region) {
		if cfg.Region == "" {
			return nil, errors.New("ssm: no AWS region: set AWS_REGION")
		}
		return nil, fmt.Errorf("ssm: AWS region %q is not a region name", cfg.Region)
	}
	if cfg.Credentials == nil {
		return nil, errors.New("ssm: no AWS credentials provider")
	}
	if endpoint == "" {
		endpoint = configuredEndpoint(cfg)
	}
	if endpoint == "" {
		if v := variant(cfg); v != "" {
			return nil, fmt.Errorf("ssm: a %s endpoint is configured but not derived here: set IOTGW_SSM_ENDPOINT to it", v)
		}
		endpoint = "https://ssm." + cfg.Region + "." + dnsSuffix(cfg.Region)
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("ssm: endpoint %q is not an http(s) URL", endpoint)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/"
	hc := cfg.HTTPClient
	if hc == nil {
		hc = awshttp.NewBuildableClient()
	}
	return &Client{
		url: u.String(), region: cfg.Region, creds: cfg.Credentials, http: hc, signer: v4.NewSigner(),
		wait: backoff.Backoff{Initial: 200 * time.Millisecond, Max: 2 * time.Second},
	}, nil
}

// configuredEndpoint is the SDK's own precedence for a service endpoint
// (service/ssm's resolveBaseEndpoint): AWS_ENDPOINT_URL in the environment
// beats the shared config's SSM entry unless AWS_ENDPOINT_URL_SSM is set.
func configuredEndpoint(cfg aws.Config) string {
	base := aws.ToString(cfg.BaseEndpoint)
	_, global := os.LookupEnv("AWS_ENDPOINT_URL")
	_, service := os.LookupEnv("AWS_ENDPOINT_URL_SSM")
	if global && !service {
		return base
	}
	type ignorer interface {
		GetIgnoreConfiguredEndpoints(context.Context) (bool, bool, error)
	}
	type provider interface {
		GetServiceBaseEndpoint(context.Context, string) (string, bool, error)
	}
	for _, src := range cfg.ConfigSources {
		if p, ok := src.(ignorer); ok {
			if ignore, found, _ := p.GetIgnoreConfiguredEndpoints(context.Background()); found {
				if ignore {
					return base
				}
				break
			}
		}
	}
	for _, src := range cfg.ConfigSources {
		if p, ok := src.(provider); ok {
			v, found, err := p.GetServiceBaseEndpoint(context.Background(), "SSM")
			if err == nil && found {
				return v
			}
			if err != nil || found {
				break
			}
		}
	}
	return base
}

// variant names the FIPS or dual-stack endpoint the configuration asks for,
// if any, found as the SDK finds it (the first source that sets it).
func variant(cfg aws.Config) string {
	type fips interface {
		GetUseFIPSEndpoint(context.Context) (aws.FIPSEndpointState, bool, error)
	}
	type dualStack interface {
		GetUseDualStackEndpoint(context.Context) (aws.DualStackEndpointState, bool, error)
	}
	for _, src := range cfg.ConfigSources {
		if p, ok := src.(fips); ok {
			if v, found, err := p.GetUseFIPSEndpoint(context.Background()); err == nil && found {
				if v == aws.FIPSEndpointStateEnabled {
					return "FIPS"
				}
				break
			}
		}
	}
	for _, src := range cfg.ConfigSources {
		if p, ok := src.(dualStack); ok {
			if v, found, err := p.GetUseDualStackEndpoint(context.Background()); err == nil && found {
				if v == aws.DualStackEndpointStateEnabled {
					return "dual-stack"
				}
				break
			}
		}
	}
	return ""
}

// dnsSuffix is the domain of region's partition (the SDK's partitions.json).
func dnsSuffix(region string) string {
	for _, p := range []struct{ prefix, suffix string }{
		{"cn-", "amazonaws.com.cn"},
		{"eusc-", "amazonaws.eu"},
		{"us-isob-", "sc2s.sgov.gov"},
		{"us-isof-", "csp.hci.ic.gov"},
		{"us-iso-", "c2s.ic.gov"},
		{"eu-isoe-", "cloud.adc-e.uk"},
	} {
		if strings.HasPrefix(region, p.prefix) {
			return p.suffix
		}
	}
	return "amazonaws.com" // aws and aws-us-gov
}

// validRegion reports whether region can be a host label: it goes into the
// endpoint's host name and the signature's scope.
func validRegion(region string) bool {
	if region == "" || len(region) > 63 || region[0] == '-' || region[len(region)-1] == '-' {
		return false
	}
	for _, c := range region {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// APIError is what SSM answered instead of a value. It never holds the
// request's value or the response body, only the error's type and message.
type APIError struct {
	Status    int    // HTTP status
	Type      string // e.g. ParameterNotFound, AccessDeniedException
	Message   string
	RequestID string
}

func (e *APIError) Error() string {
	var b strings.Builder
	if e.Type != "" {
		b.WriteString(e.Type)
	} else {
		b.WriteString("error")
	}
	fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" [request id " + e.RequestID + "]")
	}
	return b.String()
}

// retryable reports whether another try may succeed: the service was
// throttling or failing, not answering.
func (e *APIError) retryable() bool {
	switch e.Type {
	case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded":
		return true
	}
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// GetParameter returns the decrypted value of the parameter name, trying up
// to attempts times while SSM throttles, fails with a 5xx or the connection
// fails.
func (c *Client) GetParameter(ctx context.Context, name string) (string, error) {
	body, err := json.Marshal(struct {
		Name           string
		WithDecryption bool
	}{name, true})
	if err != nil {
		return "", err
	}
	wait := c.wait
	for try := 1; ; try++ {
		v, err := c.getOnce(ctx, body)
		if err == nil {
			return v, nil
		}
		var api *APIError
		again := errors.As(err, &api) && api.retryable() || errors.Is(err, errTransport)
		if try > 1 {
			err = fmt.Errorf("%w (after %d tries)", err, try)
		}
		if !again || try == attempts || ctx.Err() != nil {
			return "", err
		}
		t := time.NewTimer(wait.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return "", err
		case <-t.C:
		}
	}
}

// errTransport marks a failure to get any answer: worth another try.
var errTransport = errors.New("no answer")

func (c *Client) getOnce(ctx context.Context, body []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	creds, err := c.creds.Retrieve(ctx)
	if err != nil {
		return "", fmt.Errorf("aws credentials: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "AmazonSSM.GetParameter")
	sum := sha256.Sum256(body)
	if err := c.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "ssm", c.region, time.Now()); err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errTransport, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return "", fmt.Errorf("%w: reading the response: %w", errTransport, err)
	}
	if len(data) > maxResponse {
		return "", fmt.Errorf("response over %d bytes", maxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return "", apiError(resp, data)
	}
	var out struct {
		Parameter *struct{ Value *string }
	}
	// The decoder's error could quote the body, which holds the value.
	if json.Unmarshal(data, &out) != nil {
		return "", errors.New("response is not GetParameter's JSON")
	}
	if out.Parameter == nil || out.Parameter.Value == nil {
		return "", errors.New("response holds no value")
	}
	return *out.Parameter.Value, nil
}

// apiError reads an error answer the way the SDK's JSON protocol does: the
// type from X-Amzn-ErrorType or the body's __type/code, reduced to its
// name ("com.amazonaws.ssm#ParameterNotFound:http://..." → ParameterNotFound).
func apiError(resp *http.Response, data []byte) *APIError {
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Amzn-Requestid")}
	var body struct { // keys match case-insensitively: message or Message
		Type    string `json:"__type"`
		Code    string
		Message string
	}
	_ = json.Unmarshal(data, &body) // a body that is not an AWS error still has its status
	e.Type = resp.Header.Get("X-Amzn-Errortype")
	for _, t := range []string{body.Code, body.Type} {
		if e.Type == "" {
			e.Type = t
		}
	}
	e.Type, _, _ = strings.Cut(e.Type, ":")
	if _, after, ok := strings.Cut(e.Type, "#"); ok {
		e.Type = after
	}
	e.Message = body.Message
	if e.Type == "" && e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode) + ", " + strconv.Itoa(len(data)) + " bytes that are not an AWS error"
	}
	return e
}
