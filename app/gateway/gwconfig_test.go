package gateway_test

import (
	"github.com/iot-gateway/iot-gateway/app/gateway"
	"github.com/iot-gateway/iot-gateway/app/gateway/gwconfig"
)

// The package's tests build gateways with the binary's translation of the
// configuration rather than a copy of it (see wire_test.go).
func init() {
	gateway.FromConfig = gwconfig.New
	gateway.OptionsFromConfig = gwconfig.Options
}
