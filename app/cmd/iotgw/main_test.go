package main

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/internal/cli"
)

// The host binary links neither the AWS IoT client nor app/iotcore: every
// daemon on a host would map and initialise them for a command that only
// operators run (iotgw-admin device add). Both architectures are checked,
// as scripts/build.sh builds both.
func TestNoOperatorOnlyDeps(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command lists the binary's packages: %v", err)
	}
	heavy := []string{
		"github.com/aws/aws-sdk-go-v2/service/iot",
		"github.com/iot-gateway/iot-gateway/app/iotcore",
	}
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command(gobin, "list", "-deps", ".")
		cmd.Env = append(cmd.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps (linux/%s): %v", arch, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 || !slices.Contains(deps, "github.com/spf13/cobra") {
			t.Fatalf("go list -deps (linux/%s) gave %d packages, not the binary's", arch, len(deps))
		}
		for _, p := range deps {
			for _, h := range heavy {
				if p == h || strings.HasPrefix(p, h+"/") {
					t.Errorf("linux/%s: iotgw links %s; operator-only code belongs in app/cmd/iotgw-admin", arch, p)
				}
			}
		}
	}
}

// `iotgw device ...` (the old place of device add) says where the command
// went, with exit code 2, whatever flags follow.
func TestDeviceMoved(t *testing.T) {
	for _, args := range [][]string{
		{"device"},
		{"device", "add", "--region", "eu-central-1", "--site", "s1", "d7"},
		{"device", "--help"},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		code := cli.Run(root, args, &out)
		if code != 2 || !strings.Contains(out.String(), "iotgw-admin device add") {
			t.Errorf("iotgw %s: exit %d, %q; want 2 and a pointer to iotgw-admin device add", strings.Join(args, " "), code, out.String())
		}
	}
}
