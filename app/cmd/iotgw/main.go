// Command iotgw is the iot-gateway binary: the MQTT → InfluxDB gateway, the
// sensor simulator, the local demo, the daily export and the host broker.
// Operator-only commands that pull in a large AWS client (device add) are in
// iotgw-admin, so the processes on a host neither map nor initialise them.
// This package only wires the app/ packages together.
package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/internal/cli"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code through cobra.
type exitError = cli.ExitError

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "iotgw",
		Short:         "MQTT → InfluxDB gateway that never loses a reading",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(cli.NewVersionCmd(version), newRunCmd(), newConfigCmd(), newBrokerCmd(), newSimulateCmd(), newExportCmd(), newDemoCmd(), newProvisionFilesCmd(), newCommandCmd(), newMovedDeviceCmd())
	return root
}

// newMovedDeviceCmd answers `iotgw device ...`, which older docs, scripts
// and stack outputs name, with where the command is now, instead of
// cobra's bare "unknown command". It takes any arguments and flags as they
// are, so the whole old command line gets the same answer.
func newMovedDeviceCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "device",
		Short:              "Moved to iotgw-admin",
		Hidden:             true,
		DisableFlagParsing: true,
		Args:               cobra.ArbitraryArgs,
		RunE: func(*cobra.Command, []string) error {
			return &exitError{Code: 2, Err: errors.New("device commands are in the operators' binary iotgw-admin (built beside iotgw by scripts/build.sh): " +
				"run `iotgw-admin device add ...` with the same flags")}
		},
	}
}

func main() {
	cli.Main(newRootCmd())
}
