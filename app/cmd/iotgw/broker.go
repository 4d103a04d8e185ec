package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/spf13/cobra"
)

func newBrokerCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the MQTT broker (TLS, per-device users and ACL, persistent sessions)",
		Long: "Run the embedded MQTT broker until SIGTERM or SIGINT.\n" +
			"A configuration that cannot be used exits with status 2.\n" +
			"`iotgw broker sample-config` prints a documented broker.toml.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			err := broker.Run(ctx, configPath, cmd.ErrOrStderr())
			var ce *broker.ConfigError
			if errors.As(err, &ce) {
				return &exitError{code: 2, err: err}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/iotgw/broker.toml", "broker configuration file (TOML)")
	cmd.AddCommand(newBrokerHashPasswordCmd(), newBrokerSampleConfigCmd())
	return cmd
}

func newBrokerHashPasswordCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hash-password",
		Short: "Read a password on stdin and print its bcrypt hash for the users file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// One password: everything up to the first newline, so both
			// `echo secret |` and `printf secret |` work.
			in, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			if err != nil {
				return err
			}
			password, _, _ := bytes.Cut(in, []byte("\n"))
			password = bytes.TrimSuffix(password, []byte("\r"))
			hash, err := broker.HashPassword(string(password))
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("hash-password: %w", err)}
			}
			fmt.Fprintln(cmd.OutOrStdout(), hash)
			return nil
		},
	}
}

func newBrokerSampleConfigCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sample-config",
		Short: "Print a broker.toml documenting every option and its default",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(cmd.OutOrStdout(), broker.SampleConfig)
		},
	}
}
