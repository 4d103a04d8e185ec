// Package ssmref resolves configuration values that name an AWS Systems
// Manager parameter — "ssm:/iot-gateway/dev/influx-token" — so secrets stay
// off the host's disk: the gateway reads them at start with the instance
// role, and the rendered configuration holds only their names.
//
// The one call it makes, GetParameter with decryption, is written here
// against SSM's JSON protocol (client.go) instead of using the SDK's
// service/ssm client: that package's init builds the schemas of the whole
// SSM API, about 1.4 MB of pointer-laden heap kept for the life of every
// iotgw process (the daemon and the broker included) and scanned by every
// garbage collection, which under the gateway's small memory limit runs
// many times a second — all for one request per name at start (figures in
// docs/history.md). The SDK still provides the credential chain and region
// (aws-sdk-go-v2/config) and the SigV4 signer.
package ssmref

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// Prefix marks a value as a parameter name.
const Prefix = "ssm:"

// IsRef reports whether v names a parameter.
func IsRef(v string) bool { return strings.HasPrefix(v, Prefix) }

// Field is one configuration value that may be a reference.
type Field struct {
	Key   string  // the configuration key, for errors
	Value *string // replaced in place when it is a reference
}

// Getter is the one SSM call needed: a parameter's decrypted value.
type Getter interface {
	GetParameter(ctx context.Context, name string) (string, error)
}

// Resolver looks parameters up, each name once.
type Resolver struct {
	get   Getter
	mu    sync.Mutex
	cache map[string]string
}

// New returns a Resolver using client.
func New(client Getter) *Resolver { return &Resolver{get: client, cache: map[string]string{}} }

// NewDefault builds an SSM client from the AWS default chain (environment,
// shared config, the instance role through IMDSv2). endpoint, when set,
// points it at an SSM-compatible server.
func NewDefault(ctx context.Context, endpoint string) (*Resolver, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("ssm: aws config: %w", err)
	}
	c, err := NewClient(cfg, endpoint)
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// Resolve replaces every reference among fields with the parameter's
// (decrypted) value. Fields without references are left alone and, when
// none has one, no AWS call is made. Errors name the key and parameter.
func (r *Resolver) Resolve(ctx context.Context, fields []Field) error {
	var errs []error
	for _, f := range fields {
		if f.Value == nil || !IsRef(*f.Value) {
			continue
		}
		name := strings.TrimPrefix(*f.Value, Prefix)
		v, err := r.lookup(ctx, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: ssm parameter %s: %w", f.Key, name, err))
			continue
		}
		*f.Value = v
	}
	return errors.Join(errs...)
}

func (r *Resolver) lookup(ctx context.Context, name string) (string, error) {
	if name == "" || !strings.HasPrefix(name, "/") {
		return "", errors.New("a parameter name is a path like /iot-gateway/dev/influx-token")
	}
	r.mu.Lock()
	v, ok := r.cache[name]
	r.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := r.get.GetParameter(ctx, name)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.cache[name] = v
	r.mu.Unlock()
	return v, nil
}

// Any reports whether any field holds a reference.
func Any(fields []Field) bool {
	for _, f := range fields {
		if f.Value != nil && IsRef(*f.Value) {
			return true
		}
	}
	return false
}
