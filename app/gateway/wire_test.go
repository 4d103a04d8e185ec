package gateway

// Most tests here state their setting as configuration and build the
// gateway from it the way the binary does, through app/gateway/gwconfig.
// gwconfig imports this package, so this package's own tests cannot import
// it; gwconfig_test.go, in the external test package of this directory,
// hands its functions over before any test runs.

import (
	"log/slog"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// Set to gwconfig.New and gwconfig.Options by gwconfig_test.go.
var (
	FromConfig        func(config.Config, *slog.Logger) (*Gateway, error)
	OptionsFromConfig func(config.Config, *slog.Logger, *sensor.Mapper, Store, PointWriter, DeadSink) Options
)
