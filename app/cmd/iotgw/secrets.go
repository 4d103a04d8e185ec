package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/iot-gateway/iot-gateway/app/ssmref"
)

// resolveSecrets replaces "ssm:/path" values with their SSM parameters
// (IOTGW_SSM_ENDPOINT points at an SSM-compatible server). Without any
// reference it makes no AWS call. A failure is a configuration error.
func resolveSecrets(fields []ssmref.Field) error {
	if !ssmref.Any(fields) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := ssmref.NewDefault(ctx, os.Getenv("IOTGW_SSM_ENDPOINT"))
	if err != nil {
		return &exitError{Code: 2, Err: err}
	}
	if err := r.Resolve(ctx, fields); err != nil {
		return &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	return nil
}
