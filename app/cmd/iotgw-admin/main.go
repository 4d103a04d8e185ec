// Command iotgw-admin is the operators' binary: commands run from a
// workstation or CI against the AWS account, never on a gateway host
// (device add registers a device with AWS IoT Core). They live apart from
// iotgw because their AWS clients are large: linked into iotgw they would
// be mapped and initialised by every daemon on every host.
package main

import (
	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/internal/cli"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "iotgw-admin",
		Short:         "Operator commands of iot-gateway (AWS IoT Core devices)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage(err) })
	root.AddCommand(cli.NewVersionCmd(version), newDeviceCmd())
	return root
}

func main() {
	cli.Main(newRootCmd())
}
