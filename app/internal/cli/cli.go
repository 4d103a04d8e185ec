// Package cli is what the project's binaries (iotgw, iotgw-admin) share
// around cobra: the version command and how a command's error becomes the
// process's exit code. It imports nothing but cobra, so sharing it links
// nothing heavy into either binary.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// ExitError carries an exit code through cobra (2: bad flags, arguments or
// configuration; 1 is what any other error gives).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }
func (e *ExitError) ExitCode() int { return e.Code }

// Usage marks err as a usage error: exit code 2.
func Usage(err error) error { return &ExitError{Code: 2, Err: err} }

// NewVersionCmd prints version, the string stamped at build time with
// -ldflags "-X main.version=...".
func NewVersionCmd(version string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), version)
		},
	}
}

// ExitCode is the process exit code for what a command returned: 0 for
// nil, the code of the first error in the chain that has one
// (ExitCode() int), else 1.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var c interface{ ExitCode() int }
	if errors.As(err, &c) {
		return c.ExitCode()
	}
	return 1
}

// Run executes root with args and reports a failure on stderr as
// "<root name>: <error>"; it returns the exit code.
func Run(root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	}
	return ExitCode(err)
}

// Main runs root with the process's arguments and exits with its code.
func Main(root *cobra.Command) {
	os.Exit(Run(root, os.Args[1:], os.Stderr))
}
