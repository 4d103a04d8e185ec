package cli

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/spf13/cobra"
)

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("boom"), 1},
		{Usage(errors.New("bad flag")), 2},
		{fmt.Errorf("wrapped: %w", &ExitError{Code: 3, Err: errors.New("x")}), 3},
	} {
		if got := ExitCode(c.err); got != c.want {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestRun(t *testing.T) {
	root := &cobra.Command{Use: "tool", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(NewVersionCmd("v1.2.3"), &cobra.Command{
		Use:  "fail",
		RunE: func(*cobra.Command, []string) error { return Usage(errors.New("--x is required")) },
	})
	var out, errb bytes.Buffer
	root.SetOut(&out)
	if code := Run(root, []string{"version"}, &errb); code != 0 || out.String() != "v1.2.3\n" || errb.Len() != 0 {
		t.Fatalf("version: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	if code := Run(root, []string{"fail"}, &errb); code != 2 || errb.String() != "tool: --x is required\n" {
		t.Fatalf("fail: code %d, err %q", code, errb.String())
	}
}
