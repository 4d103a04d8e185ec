package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/broker"
	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/gateway"
	"github.com/iot-gateway/iot-gateway/app/sim"
)

func newDemoCmd() *cobra.Command {
	var o struct {
		duration       time.Duration
		devices, sites int
		rate, badRatio float64
		seed           uint64
		verbose        bool
	}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Broker, simulated sensors and gateway in one process, writing to InfluxDB",
		Long: `Starts an in-process MQTT broker on loopback, a simulated sensor fleet and the
gateway, writing to the InfluxDB named by IOTGW_INFLUX_URL, IOTGW_INFLUX_TOKEN,
IOTGW_INFLUX_ORG and IOTGW_INFLUX_BUCKET. Runs for --duration or until Ctrl-C,
then prints points per measurement, publish→write latency and dead letters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.duration <= 0 {
				return &exitError{code: 2, err: errors.New("--duration must be positive")}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), o.duration, sim.Options{
				Devices: o.devices, Sites: o.sites, Rate: o.rate, BadRatio: o.badRatio, Seed: o.seed,
			}, o.verbose)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 30*time.Second, "how long the sensors publish")
	f.IntVar(&o.devices, "devices", 20, "simulated devices")
	f.IntVar(&o.sites, "sites", 3, "sites the devices are spread over")
	f.Float64Var(&o.rate, "rate", 5, "messages per second per device")
	f.Float64Var(&o.badRatio, "bad-ratio", 0.01, "share of malformed messages, to show dead-lettering")
	f.Uint64Var(&o.seed, "seed", 1, "simulator seed")
	f.BoolVar(&o.verbose, "verbose", false, "show the components' logs")
	return cmd
}

// latencies collects publish→write latencies from the points' device time,
// which the simulator sets to the moment it publishes.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) observe(lines [][]byte, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range lines {
		line = bytes.TrimRight(line, "\n")
		i := bytes.LastIndexByte(line, ' ')
		ns, err := strconv.ParseInt(string(line[i+1:]), 10, 64)
		if err == nil {
			l.all = append(l.all, at.Sub(time.Unix(0, ns)))
		}
	}
}

func (l *latencies) percentile(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.all) == 0 {
		return 0
	}
	slices.Sort(l.all)
	return l.all[min(len(l.all)-1, int(p*float64(len(l.all))))]
}

func runDemo(ctx context.Context, out io.Writer, d time.Duration, so sim.Options, verbose bool) error {
	cfg, err := config.Load("", os.LookupEnv)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	// The demo's own output is the report; the log shows problems only,
	// unless asked for more. log.format is honoured.
	logCfg := cfg.Log
	logCfg.Level = "warn"
	if verbose {
		logCfg.Level = "info"
	}
	log := newLogger(os.Stderr, logCfg)
	if os.Getenv("IOTGW_INFLUX_URL") == "" {
		return &exitError{code: 2, err: errors.New("IOTGW_INFLUX_URL is not set: start InfluxDB first (scripts/demo.sh does)")}
	}
	b, err := broker.New(broker.Options{
		Listeners:      []broker.Listener{{ID: "demo", Addr: "127.0.0.1:0"}},
		AllowAnonymous: true,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	if err := b.Start(); err != nil {
		return err
	}
	defer b.Close()
	mqttURL := "tcp://" + b.Addr("demo")

	cfg.MQTT.URL = mqttURL
	cfg.MQTT.ClientID = "iotgw-demo"
	cfg.Gateway.ID = "demo"
	if os.Getenv("IOTGW_SPOOL_DIR") == "" {
		dir, err := os.MkdirTemp("", "iotgw-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.Spool.Dir = dir
	}
	if os.Getenv("IOTGW_HTTP_ADDR") == "" {
		cfg.HTTP.Addr = "127.0.0.1:0"
	}
	if !cfg.Commands.Enabled() {
		// The demo's own API token, for its one command and the page.
		var b [16]byte
		_, _ = rand.Read(b[:])
		cfg.Commands.Token = hex.EncodeToString(b[:])
	}
	if err := cfg.Validate(); err != nil {
		return &exitError{code: 2, err: err}
	}
	g, err := newGateway(cfg, log)
	if err != nil {
		return err
	}
	var lat latencies
	g.OnWritten(lat.observe)
	gctx, cancelGateway := context.WithCancel(context.Background())
	stopCommands, err := startCommands(gctx, cfg, g, log)
	if err != nil {
		cancelGateway()
		return err
	}
	defer stopCommands()
	var runErr error
	gdone := make(chan struct{}) // closed when Run has returned runErr
	go func() { runErr = g.Run(gctx); close(gdone) }()
	stopGateway := func() error { cancelGateway(); <-gdone; return runErr }
	defer stopGateway()

	// Wait until the gateway is subscribed before the sensors start.
	for deadline := time.Now().Add(15 * time.Second); g.Ready() != nil; {
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway not ready after 15s: %v", g.Ready())
		}
		select {
		case <-gdone:
			return runErr
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	start := time.Now()
	fmt.Fprintf(out, "iotgw demo: broker %s, gateway metrics http://%s/metrics, InfluxDB %s bucket %q\n",
		mqttURL, g.HTTPAddr(), cfg.Influx.URL, cfg.Influx.Bucket)
	tok, _ := commandToken(cfg.Commands)
	fmt.Fprintf(out, "live page: http://%s/#token=%s\n", g.HTTPAddr(), tok)
	fmt.Fprintf(out, "publishing for %s (Ctrl-C to stop early)...\n", d)

	controls := sim.NewControls()
	so.Controls = controls
	devices, err := sim.NewResponder(sim.PahoConfig{URL: mqttURL, ClientID: "iotgw-demo-devices"}, controls, nil, log)
	if err != nil {
		return err
	}
	defer devices.Close()
	pub, err := sim.NewPahoPublisher(sim.PahoConfig{URL: mqttURL, ClientID: "iotgw-demo-sensors"})
	if err != nil {
		return err
	}
	so.Duration, so.QoS, so.Start = d, 1, time.Now()
	simCtx, cancelSim := context.WithTimeout(ctx, d+10*time.Second)
	roundTrip := make(chan string, 1)
	go func() {
		roundTrip <- demoCommand(simCtx, &apiClient{base: "http://" + g.HTTPAddr(), token: tok, http: &http.Client{Timeout: 20 * time.Second}}, g)
	}()
	report, simErr := sim.Run(simCtx, so, pub, nil)
	var commandLine string
	select {
	case commandLine = <-roundTrip:
	case <-time.After(15 * time.Second):
		commandLine = "no answer within 15 s"
	}
	cancelSim()
	_ = pub.Close()

	// Let the writer finish: wait until everything spooled is written.
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if spooled, written := gatherCounter(g, "iotgw_points_spooled_total"), gatherCounter(g, "iotgw_points_written_total"); spooled > 0 && spooled == written {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stopGateway(); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nsensors: %d sent, %d acknowledged by the broker, %d malformed on purpose\n",
		report.Sent, report.Acked, sumBad(report.Bad))
	fmt.Fprintf(out, "gateway: %.0f messages received, %.0f points written, %.0f dead letters\n",
		gatherCounter(g, "iotgw_messages_received_total"), gatherCounter(g, "iotgw_points_written_total"),
		gatherCounter(g, "iotgw_dead_letters_total"))
	fmt.Fprintf(out, "latency publish→InfluxDB: p50 %s, p99 %s\n",
		lat.percentile(0.50).Round(time.Millisecond), lat.percentile(0.99).Round(time.Millisecond))
	fmt.Fprintf(out, "command round trip: %s\n", commandLine)
	flux := fmt.Sprintf(`from(bucket: %q)
  |> range(start: %s)
  |> filter(fn: (r) => r.gateway == "demo")
  |> group(columns: ["_measurement", "_field"])
  |> count()`, cfg.Influx.Bucket, start.Add(-time.Minute).UTC().Format(time.RFC3339))
	counts, qerr := pointsPerMeasurement(cfg, flux)
	var stored int64
	if qerr != nil {
		fmt.Fprintf(out, "points per measurement: query failed: %v\n", qerr)
	} else {
		fmt.Fprintln(out, "points in InfluxDB per measurement:")
		for _, m := range slices.Sorted(maps.Keys(counts)) {
			fmt.Fprintf(out, "  %-12s %d\n", m, counts[m])
			stored += counts[m]
		}
	}
	fmt.Fprintf(out, "\nsee the data yourself (POST %s/api/v2/query, or the InfluxDB UI):\n%s\n", redacted(cfg.Influx.URL), flux)
	if simErr != nil && !errors.Is(simErr, context.Canceled) {
		return fmt.Errorf("simulator: %w", simErr)
	}
	if qerr != nil {
		return fmt.Errorf("count the points in InfluxDB: %w", qerr)
	}
	// Every well-formed reading the broker acknowledged must be in the
	// database: each carries its own device time, so none overwrites another.
	if want := report.Acked - sumBad(report.Bad); stored < want {
		return fmt.Errorf("readings lost: %d well-formed readings acknowledged, %d points in InfluxDB", want, stored)
	}
	return nil
}

// demoDevice is the device the demo sends its command to.
const demoDevice = "site-01/dev-0001"

// demoCommand waits until the gateway has heard from demoDevice, switches
// its relay on through the API and says how the round trip went.
func demoCommand(ctx context.Context, c *apiClient, g *gateway.Gateway) string {
	for !g.Fleet().Known(demoDevice) {
		select {
		case <-ctx.Done():
			return "not sent: " + demoDevice + " was never heard from"
		case <-time.After(50 * time.Millisecond):
		}
	}
	raw, err := c.do(ctx, http.MethodPost, "/api/commands", map[string]any{
		"device": demoDevice, "name": sim.CommandSetRelay, "args": map[string]any{"on": true}, "wait": "10s"})
	if err != nil {
		return "failed: " + err.Error()
	}
	var cmd command.Command
	if err := json.Unmarshal(raw, &cmd); err != nil {
		return "failed: " + err.Error()
	}
	if cmd.State != command.Answered {
		return fmt.Sprintf("set_relay on=true to %s: %s %s", demoDevice, cmd.State, cmd.Error)
	}
	return fmt.Sprintf("set_relay on=true to %s answered in %.1f ms: %s (command %s)", demoDevice, cmd.LatencyMS, cmd.Result, cmd.ID)
}

func sumBad(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// gatherCounter sums every series of a counter in the gateway's registry.
func gatherCounter(g *gateway.Gateway, name string) float64 {
	mfs, err := g.Registry().Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// pointsPerMeasurement counts points: a point has several fields, so the
// largest field count of a measurement is its number of points.
func pointsPerMeasurement(cfg config.Config, flux string) (map[string]int64, error) {
	client := influxdb2.NewClient(cfg.Influx.URL, cfg.Influx.Token)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := client.QueryAPI(cfg.Influx.Org).Query(ctx, flux)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	counts := map[string]int64{}
	for res.Next() {
		r := res.Record()
		if n, ok := r.Value().(int64); ok && n > counts[r.Measurement()] {
			counts[r.Measurement()] = n
		}
	}
	return counts, res.Err()
}
