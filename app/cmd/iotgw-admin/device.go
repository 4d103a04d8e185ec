package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/internal/cli"
	"github.com/iot-gateway/iot-gateway/app/iotcore"
)

func newDeviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Manage devices of the scale topology (AWS IoT Core)",
	}
	cmd.AddCommand(newDeviceAddCmd())
	return cmd
}

// newDeviceAddCmd registers one device with IoT Core, the way the stack's
// fleet-provisioning template does for devices that enrol by claim.
func newDeviceAddCmd() *cobra.Command {
	var (
		d        iotcore.Device
		region   string
		endpoint string
		out      string
	)
	cmd := &cobra.Command{
		Use:   "add <device>",
		Short: "Register a device with AWS IoT Core and write its certificate and key",
		Long: `add creates the thing <device> (of --thing-type, in --thing-group, with
attribute site=<--site>), an active certificate with the device policy
attached, and attaches the certificate to the thing. The certificate and
private key go to <out>/<device>.crt and <out>/<device>.key (0600); IoT Core
keeps no copy of the key. The device then connects to the stack's
mqttEndpoint with client id <device> and publishes under
sensors/<site>/<device>/. The stack outputs (pulumi stack output
deviceAddCommand) give the flags. AWS credentials and region come from the
usual places (environment, ~/.aws, --region).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return cli.Usage(err)
			}
			return nil
		},
		// cobra checks required flags after PreRunE; checking them here
		// gives a missing one exit code 2, as other bad flags.
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmd.ValidateRequiredFlags(); err != nil {
				return cli.Usage(err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			d.Name = args[0]
			if err := d.Validate(); err != nil {
				return cli.Usage(err)
			}
			crt, key := filepath.Join(out, d.Name+".crt"), filepath.Join(out, d.Name+".key")
			// Refuse before anything is created in IoT Core.
			for _, f := range []string{crt, key} {
				if _, err := os.Stat(f); err == nil {
					return fmt.Errorf("%s exists; remove it or choose another --out", f)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			ctx := cmd.Context()
			var opts []func(*awsconfig.LoadOptions) error
			if region != "" {
				opts = append(opts, awsconfig.WithRegion(region))
			}
			cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
			if err != nil {
				return fmt.Errorf("AWS configuration: %w", err)
			}
			client := iot.NewFromConfig(cfg, func(o *iot.Options) {
				if endpoint != "" {
					o.BaseEndpoint = aws.String(endpoint)
				}
			})
			r, err := iotcore.Register(ctx, client, d)
			if err != nil {
				return err
			}
			if err := writeNew(key, r.PrivateKey, 0o600); err != nil {
				return fmt.Errorf("%w (the certificate %s is registered; revoke it if the key is lost)", err, r.CertificateID)
			}
			if err := writeNew(crt, r.CertificatePEM, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "thing %s\ncertificate %s\nwrote %s and %s\n", r.ThingArn, r.CertificateArn, crt, key)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&d.Site, "site", "", "the device's site (its topics are sensors/<site>/<device>/...)")
	f.StringVar(&d.ThingType, "thing-type", "", "thing type (stack output iotThingType)")
	f.StringVar(&d.ThingGroup, "thing-group", "", "thing group (stack output iotThingGroup)")
	f.StringVar(&d.Policy, "policy", "", "device policy (stack output iotDevicePolicy)")
	f.StringVar(&region, "region", "", "AWS region (default: from the environment or ~/.aws)")
	f.StringVar(&endpoint, "endpoint-url", "", "IoT control plane endpoint (default: the region's; e.g. a VPC endpoint)")
	f.StringVar(&out, "out", ".", "directory for <device>.crt and <device>.key")
	for _, k := range []string{"site", "thing-type", "thing-group", "policy"} {
		_ = cmd.MarkFlagRequired(k)
	}
	return cmd
}

// writeNew writes a file that must not exist yet.
func writeNew(path, content string, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
