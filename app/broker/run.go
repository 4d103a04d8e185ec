package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ConfigError is a configuration that cannot be used: a broker.toml that
// does not parse or check, a users file or certificate that cannot be read,
// or Options that New refuses. `iotgw broker` exits with status 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Run loads the broker.toml at path, starts the broker and serves until ctx
// is done, then closes it. Logs go to logOut as text at the configured level.
func Run(ctx context.Context, path string, logOut io.Writer) error {
	return run(ctx, path, logOut, nil)
}

func run(ctx context.Context, path string, logOut io.Writer, ready func(*Broker)) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return &ConfigError{err}
	}
	log := cfg.Logger(logOut)
	opts, err := cfg.Options(log)
	if err != nil {
		return &ConfigError{fmt.Errorf("%s: %w", path, err)}
	}
	b, err := New(opts)
	if err != nil {
		return &ConfigError{fmt.Errorf("%s: %w", path, err)}
	}
	if err := b.Start(); err != nil {
		b.Close()
		return err
	}
	if ready != nil {
		ready(b)
	}
	<-ctx.Done()
	log.Info("shutting down", "cause", context.Cause(ctx))

	// Close waits CloseTimeout for clients, then closes the store; the extra
	// margin covers a store that does not close, so the process still exits.
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(b.opts.CloseTimeout + 5*time.Second):
		return errors.New("broker did not close in time")
	}
}
