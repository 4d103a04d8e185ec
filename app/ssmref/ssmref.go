// Package ssmref resolves configuration values that name an AWS Systems
// Manager parameter — "ssm:/iot-gateway/dev/influx-token" — so secrets stay
// off the host's disk: the gateway reads them at start with the instance
// role, and the rendered configuration holds only their names.
package ssmref

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
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

// Getter is the one SSM call needed.
type Getter interface {
	GetParameter(ctx context.Context, in *ssm.GetParameterInput, opts ...func(*ssm.Options)) (*ssm.GetParameterOutput, error)
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
	return New(ssm.NewFromConfig(cfg, func(o *ssm.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})), nil
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
	out, err := r.get.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
	if err != nil {
		return "", err
	}
	if out.Parameter == nil || out.Parameter.Value == nil {
		return "", errors.New("no value")
	}
	r.mu.Lock()
	r.cache[name] = *out.Parameter.Value
	r.mu.Unlock()
	return *out.Parameter.Value, nil
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
