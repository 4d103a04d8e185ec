// Command infra is the iot-gateway Pulumi program: `pulumi up` from the
// repository root (Pulumi.yaml points here). The stack itself is declared
// by package stack, so tests can run it under pulumi.WithMocks.
package main

import (
	"github.com/iot-gateway/iot-gateway/infra/stack"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func main() {
	pulumi.Run(stack.Run)
}
