package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/provision"
)

// newProvisionFilesCmd writes the host's setup script, units and
// configuration. iotgw-bootstrap runs it once it has checked this binary's
// signature, so the files come from the same signed artifact as the code
// that reads them.
func newProvisionFilesCmd() *cobra.Command {
	var params, signingKey, root string
	cmd := &cobra.Command{
		Use:   "provision-files",
		Short: "Write the host's setup script, units and configuration (run by iotgw-bootstrap)",
		Long: `provision-files renders the files embedded in this binary (package provision)
for the host parameters in --params (JSON, as the stack stores them in SSM)
and writes them under --root: the setup and bootstrap scripts into
/usr/local/sbin, the rest into ` + provision.PayloadDir + `, from where
iotgw-setup installs them. The signing key comes from --signing-key (the
one the user-data installed), never from the parameters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(params)
			if err != nil {
				return err
			}
			key, err := os.ReadFile(signingKey)
			if err != nil {
				return err
			}
			p, err := provision.ParseHostParams(b, string(key))
			if err != nil {
				return fmt.Errorf("%s: %w", params, err)
			}
			fl, err := provision.Files(p)
			if err != nil {
				return err
			}
			if err := provision.WriteFiles(root, fl); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d files under %s\n", len(fl), root)
			return nil
		},
	}
	cmd.Flags().StringVar(&params, "params", "", "host parameters (JSON)")
	cmd.Flags().StringVar(&signingKey, "signing-key", provision.SigningKeyFile, "Ed25519 public key (PEM) the binary was checked with")
	cmd.Flags().StringVar(&root, "root", "/", "directory standing in for /")
	_ = cmd.MarkFlagRequired("params")
	return cmd
}
