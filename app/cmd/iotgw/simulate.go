package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/sim"
)

// simFlags maps sim option names to the flags that set them, so option
// errors name what the user typed.
var simFlags = map[string]string{
	"Devices": "--devices", "Sites": "--sites", "Rate": "--rate", "TotalRate": "--total-rate",
	"Duration": "--duration", "Count": "--count", "QoS": "--qos", "BadRatio": "--bad-ratio",
	"Seed": "--seed", "TopicPrefix": "--topic-prefix", "Start": "--start",
	"MaxInFlight": "--max-inflight", "DrainTimeout": "--drain-timeout",
	"URL": "--mqtt-url", "CAFile": "--ca-file",
}

func newSimulateCmd() *cobra.Command {
	var (
		o      sim.Options
		pc     sim.PahoConfig
		qos    int
		start  string
		asJSON bool
		obey   bool
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Publish readings from a simulated sensor fleet over MQTT",
		Long: `Publish readings from a deterministic fleet of simulated sensors.

Each device publishes JSON to sensors/<site>/<device>/environment
(temperature, humidity, pressure) and, every tenth reading, to .../power
(battery, charging, status); "ts" is the device time in unix milliseconds.
--bad-ratio mixes in malformed messages of every kind the gateway must reject.

The broker URL, user name and password default to IOTGW_MQTT_URL,
IOTGW_MQTT_USERNAME and IOTGW_MQTT_PASSWORD. Exits 1 if any publish failed
or was not acknowledged, 2 for bad flags.`,
		Example: `  iotgw simulate --devices 50 --rate 2 --duration 1m --qos 1
  iotgw simulate --total-rate 20000 --count 1000000 --bad-ratio 0.05 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flags := cmd.Flags()
			if qos < 0 || qos > 2 {
				return usageError(fmt.Errorf("invalid --qos %d: must be 0, 1 or 2", qos))
			}
			o.QoS = byte(qos)
			if start != "" {
				t, err := time.Parse(time.RFC3339Nano, start)
				if err != nil {
					return usageError(fmt.Errorf("invalid --start %q: want RFC 3339, like 2026-11-26T00:00:00Z", start))
				}
				o.Start = t
			}
			// --total-rate replaces the default per-device rate.
			if flags.Changed("total-rate") && !flags.Changed("rate") {
				o.Rate = 0
			}
			for flag, env := range map[string]*string{
				"mqtt-url": &pc.URL, "username": &pc.Username, "password": &pc.Password,
			} {
				name := "IOTGW_MQTT_" + strings.ToUpper(strings.TrimPrefix(flag, "mqtt-"))
				if v, ok := os.LookupEnv(name); ok && !flags.Changed(flag) {
					*env = v
				}
			}
			if _, err := sim.NewFleet(o); err != nil {
				return optionError(err)
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if obey {
				// A second connection answers commands for every device
				// (commands/+/+/+): for brokers that let one client do so.
				o.Controls = sim.NewControls()
				rc := pc
				if rc.ClientID == "" {
					rc.ClientID = "iotgw-sim-commands-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
				} else {
					rc.ClientID += "-commands"
				}
				resp, err := sim.NewResponder(rc, o.Controls, nil, nil)
				if err != nil {
					return optionError(err)
				}
				defer resp.Close()
			}
			pub, err := sim.NewPahoPublisher(pc)
			if err != nil {
				return optionError(err)
			}
			rep, runErr := sim.Run(ctx, o, pub, nil)
			pub.Close()

			out := cmd.OutOrStdout()
			if asJSON {
				if err := json.NewEncoder(out).Encode(jsonReport(rep, runErr)); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(out, summary(rep))
			}
			if runErr != nil {
				return &exitError{Code: 1, Err: runErr}
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	f := cmd.Flags()
	f.IntVar(&o.Devices, "devices", 10, "simulated devices")
	f.IntVar(&o.Sites, "sites", 2, "sites the devices are spread over")
	f.Float64Var(&o.Rate, "rate", 1, "messages per second per device")
	f.Float64Var(&o.TotalRate, "total-rate", 0, "messages per second for the whole fleet (instead of --rate)")
	f.DurationVar(&o.Duration, "duration", 0, "stop after this much schedule time (0: no limit)")
	f.IntVar(&o.Count, "count", 0, "stop after this many messages (0: no limit)")
	f.IntVar(&qos, "qos", 1, "MQTT QoS 0, 1 or 2")
	f.Float64Var(&o.BadRatio, "bad-ratio", 0, "share of malformed messages, 0 to 1")
	f.Uint64Var(&o.Seed, "seed", 1, "random seed; the same seed gives the same readings")
	f.StringVar(&o.TopicPrefix, "topic-prefix", "sensors", "first topic level(s)")
	f.StringVar(&start, "start", "", "device clock at the first message, RFC 3339 (default now)")
	f.IntVar(&o.MaxInFlight, "max-inflight", 1000, "publishes awaiting acknowledgement at once")
	f.DurationVar(&o.DrainTimeout, "drain-timeout", 10*time.Second, "how long to wait for outstanding acks at the end")
	f.StringVar(&pc.URL, "mqtt-url", "tcp://127.0.0.1:1883", "broker URL: tcp://, ssl://, ws:// or wss:// (env IOTGW_MQTT_URL)")
	f.StringVar(&pc.Username, "username", "", "MQTT user name (env IOTGW_MQTT_USERNAME)")
	f.StringVar(&pc.Password, "password", "", "MQTT password; prefer the environment variable (env IOTGW_MQTT_PASSWORD)")
	f.StringVar(&pc.ClientID, "client-id", "", "MQTT client ID (default: the user name, else iotgw-sim-<random>)")
	f.StringVar(&pc.CAFile, "ca-file", "", "PEM CA bundle to trust for ssl:// and wss:// (default system roots)")
	f.DurationVar(&pc.ConnectTimeout, "connect-timeout", 10*time.Second, "how long to wait for the broker to accept the connection")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&obey, "obey", false, "answer commands (set_interval, set_relay, report_state) for every device over a second connection subscribed to commands/+/+/+")
	return cmd
}

func usageError(err error) error { return &exitError{Code: 2, Err: err} }

// optionError turns a sim.OptionError into a usage error naming the flag.
func optionError(err error) error {
	var oe *sim.OptionError
	if !errors.As(err, &oe) {
		return err
	}
	flag, ok := simFlags[oe.Option]
	if !ok {
		flag = oe.Option
	}
	return usageError(fmt.Errorf("invalid %s %v: %s", flag, oe.Value, oe.Reason))
}

func summary(r sim.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent %d, acked %d, failed %d, unacked %d", r.Sent, r.Acked, r.Failed, r.Unacked)
	var bad int64
	kinds := make([]string, 0, len(r.Bad))
	for k, n := range r.Bad {
		bad += n
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(kinds)
	fmt.Fprintf(&b, ", malformed %d", bad)
	if bad > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(kinds, ", "))
	}
	fmt.Fprintf(&b, " in %.2fs (%.0f msg/s)", r.Elapsed.Seconds(), rate(r))
	return b.String()
}

func rate(r sim.Report) float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

func jsonReport(r sim.Report, err error) any {
	type report struct {
		Sent           int64            `json:"sent"`
		Acked          int64            `json:"acked"`
		Failed         int64            `json:"failed"`
		Unacked        int64            `json:"unacked"`
		Bad            map[string]int64 `json:"bad"`
		ElapsedSeconds float64          `json:"elapsed_seconds"`
		MsgPerSecond   float64          `json:"msg_per_second"`
		Error          string           `json:"error,omitempty"`
	}
	out := report{r.Sent, r.Acked, r.Failed, r.Unacked, r.Bad, r.Elapsed.Seconds(), rate(r), ""}
	if out.Bad == nil {
		out.Bad = map[string]int64{}
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}
