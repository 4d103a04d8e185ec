package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

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
				return &exitError{Code: 2, Err: err}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/iotgw/broker.toml", "broker configuration file (TOML)")
	cmd.AddCommand(newBrokerHashPasswordCmd(), newBrokerSampleConfigCmd(), newBrokerIssueCertCmd())
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
				return &exitError{Code: 2, Err: fmt.Errorf("hash-password: %w", err)}
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

func newBrokerIssueCertCmd() *cobra.Command {
	var configPath, user, certOut, keyOut string
	cmd := &cobra.Command{
		Use:   "issue-cert",
		Short: "Issue a device's client certificate from the broker's generated CA",
		Long: "Issue a client certificate whose common name is --user, signed by the CA that\n" +
			"tls.generate_ca keeps in <data_dir>/tls. With tls.client_auth = optional or require\n" +
			"the broker takes the device's identity from it (no password needed: give the user\n" +
			"the hash \"" + broker.CertificateOnly + "\" in the users file to refuse passwords altogether).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user == "" {
				return &exitError{Code: 2, Err: errors.New("issue-cert: --user is required")}
			}
			cfg, err := broker.LoadConfig(configPath)
			if err != nil {
				return &exitError{Code: 2, Err: err}
			}
			certPEM, keyPEM, err := broker.IssueClientCert(cfg.TLSDir(), user, time.Now())
			if err != nil {
				return fmt.Errorf("issue-cert: %w", err)
			}
			if err := os.WriteFile(keyOut, keyPEM, 0o600); err != nil {
				return fmt.Errorf("issue-cert: %w", err)
			}
			if err := os.WriteFile(certOut, certPEM, 0o644); err != nil {
				return fmt.Errorf("issue-cert: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate %s and key %s for %q\n", certOut, keyOut, user)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/iotgw/broker.toml", "broker configuration file (TOML)")
	cmd.Flags().StringVar(&user, "user", "", "the device's user name, as in the users file")
	cmd.Flags().StringVar(&certOut, "cert-out", "client.pem", "where to write the certificate (PEM)")
	cmd.Flags().StringVar(&keyOut, "key-out", "client.key", "where to write the private key (PEM, mode 0600)")
	return cmd
}
