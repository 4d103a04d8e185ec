package e2e

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// BenchmarkConnections drains a backlog (50k readings by default,
// IOTGW_BENCH_BACKLOG) through 1, 8 and 32 broker connections of one
// gateway, against mosquitto with max_inflight_messages 100: the limit AWS
// IoT Core puts on unacknowledged messages per connection. Above one
// connection the gateway subscribes $share/iotgw/sensors/# on each, and
// mosquitto splits the backlog evenly over the connections' sessions (see
// BenchmarkBacklogDrain for the figures reported).
//
// Each count runs with MQTT 3.1.1 and with MQTT 5. mosquitto 2.0 holds a
// 3.1.1 connection to max_inflight_messages, but takes an MQTT 5 client's
// Receive Maximum instead (the gateway's: the spool group divided by the
// connections), so the v5 runs show what the gateway does when the broker
// lets it set the window. Run with -benchtime 1x.
func BenchmarkConnections(b *testing.B) {
	backlog := envInt("IOTGW_BENCH_BACKLOG", 50000)
	for _, n := range []int{1, 8, 32} {
		for _, proto := range []string{"3.1.1", "5"} {
			b.Run(fmt.Sprintf("connections-%d/mqtt-%s", n, proto), func(b *testing.B) {
				b.Setenv("IOTGW_BENCH_CONNECTIONS", strconv.Itoa(n))
				b.Setenv("IOTGW_BENCH_GATEWAY_ENV", "IOTGW_MQTT_PROTOCOL="+proto)
				benchDrain(b, testsvc.MosquittoOptions{MaxInflight: 100, MaxQueued: backlog + 1000}, backlog, 0)
			})
		}
	}
}
