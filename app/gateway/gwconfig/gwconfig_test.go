package gwconfig

import (
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
)

// The settings the translation derives rather than copies: the protocol
// byte, and the degraded mark that defaults to 80% of the spool's cap.
func TestOptionsDerived(t *testing.T) {
	for _, tc := range []struct {
		protocol       config.Protocol
		degraded, want int64
		wantProtocol   byte
	}{
		{config.MQTT5, 0, 800, mqtt.V5},
		{config.MQTT311, 0, 800, mqtt.V311},
		{config.MQTT5, 300, 300, mqtt.V5},
	} {
		cfg := config.Default()
		cfg.MQTT.Protocol = tc.protocol
		cfg.Spool.MaxBytes = 1000
		cfg.Spool.DegradedBytes = tc.degraded
		o := Options(cfg, nil, nil, nil, nil, nil)
		if o.MQTT.Protocol != tc.wantProtocol || o.DegradedBytes != tc.want {
			t.Errorf("protocol %q, degraded_bytes %d: got protocol %d, degraded %d; want %d, %d",
				tc.protocol, tc.degraded, o.MQTT.Protocol, o.DegradedBytes, tc.wantProtocol, tc.want)
		}
	}
}
