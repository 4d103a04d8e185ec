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
	"log/slog"
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
	"github.com/iot-gateway/iot-gateway/app/gateway/gwconfig"
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
				return &exitError{Code: 2, Err: errors.New("--duration must be positive")}
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

// demo is the state the steps of runDemo share.
type demo struct {
	out     io.Writer
	cfg     config.Config
	log     *slog.Logger
	mqttURL string
	token   string // the API token, for the command and the live page
	g       *gateway.Gateway
	lat     latencies

	cancelGateway context.CancelFunc
	gdone         chan struct{} // closed when g.Run has returned runErr
	runErr        error
}

// demoFleet is what the simulated fleet did.
type demoFleet struct {
	report  sim.Report
	err     error  // the simulator's
	command string // how the command round trip went
}

func runDemo(ctx context.Context, out io.Writer, d time.Duration, so sim.Options, verbose bool) error {
	dm := &demo{out: out}
	if err := dm.loadConfig(verbose); err != nil {
		return err
	}
	stopBroker, err := dm.startBroker()
	if err != nil {
		return err
	}
	defer stopBroker()
	removeSpool, err := dm.configureGateway()
	if err != nil {
		return err
	}
	defer removeSpool()
	stopCommands, err := dm.startGateway()
	if err != nil {
		return err
	}
	// Deferred in this order, the gateway stops before its command
	// service.
	defer stopCommands()
	defer func() { _ = dm.stopGateway() }()
	if err := dm.waitReady(ctx); err != nil {
		return err
	}
	start := time.Now()
	dm.printBanner(d)
	fleet, closeDevices, err := dm.runFleet(ctx, d, so)
	if err != nil {
		return err
	}
	defer closeDevices()
	dm.waitWritten()
	if err := dm.stopGateway(); err != nil {
		return err
	}
	return dm.report(fleet, start)
}

// loadConfig reads the configuration from the environment and makes the
// logger.
func (dm *demo) loadConfig(verbose bool) error {
	cfg, err := config.Load("", os.LookupEnv)
	if err != nil {
		return &exitError{Code: 2, Err: err}
	}
	// The demo's own output is the report; the log shows problems only,
	// unless asked for more. log.format is honoured.
	logCfg := cfg.Log
	logCfg.Level = "warn"
	if verbose {
		logCfg.Level = "info"
	}
	dm.cfg, dm.log = cfg, newLogger(os.Stderr, logCfg)
	if os.Getenv("IOTGW_INFLUX_URL") == "" {
		return &exitError{Code: 2, Err: errors.New("IOTGW_INFLUX_URL is not set: start InfluxDB first (scripts/demo.sh does)")}
	}
	return nil
}

// startBroker starts the in-process broker on a free loopback port.
func (dm *demo) startBroker() (stop func(), err error) {
	b, err := broker.New(broker.Options{
		Listeners:      []broker.Listener{{ID: "demo", Addr: "127.0.0.1:0"}},
		AllowAnonymous: true,
		Logger:         dm.log,
	})
	if err != nil {
		return nil, err
	}
	if err := b.Start(); err != nil {
		return nil, err
	}
	dm.mqttURL = "tcp://" + b.Addr("demo")
	return func() { _ = b.Close() }, nil
}

// configureGateway points the gateway at the demo's broker and fills in
// what the environment left out (spool directory, HTTP address, API
// token) with throwaway values; remove deletes a spool made here.
func (dm *demo) configureGateway() (remove func(), err error) {
	cfg := &dm.cfg
	cfg.MQTT.URL = dm.mqttURL
	cfg.MQTT.ClientID = "iotgw-demo"
	cfg.Gateway.ID = "demo"
	remove = func() {}
	if os.Getenv("IOTGW_SPOOL_DIR") == "" {
		dir, err := os.MkdirTemp("", "iotgw-demo-")
		if err != nil {
			return nil, err
		}
		remove = func() { _ = os.RemoveAll(dir) }
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
		remove()
		return nil, &exitError{Code: 2, Err: err}
	}
	return remove, nil
}

// startGateway builds the gateway and runs it in the background until
// stopGateway; stopCommands ends the command service.
func (dm *demo) startGateway() (stopCommands func(), err error) {
	g, err := gwconfig.New(dm.cfg, dm.log)
	if err != nil {
		return nil, err
	}
	g.OnWritten(dm.lat.observe)
	// Its own context: the gateway outlives Ctrl-C long enough to write
	// what the sensors sent.
	gctx, cancel := context.WithCancel(context.Background())
	stopCommands, err = startCommands(gctx, dm.cfg, g, dm.log)
	if err != nil {
		cancel()
		return nil, err
	}
	dm.g, dm.cancelGateway, dm.gdone = g, cancel, make(chan struct{})
	go func() { dm.runErr = g.Run(gctx); close(dm.gdone) }()
	return stopCommands, nil
}

// stopGateway stops the gateway and returns Run's error; it may be called
// again.
func (dm *demo) stopGateway() error {
	dm.cancelGateway()
	<-dm.gdone
	return dm.runErr
}

// waitReady waits until the gateway is subscribed, so that the sensors'
// first messages are not lost.
func (dm *demo) waitReady(ctx context.Context) error {
	for deadline := time.Now().Add(15 * time.Second); dm.g.Ready() != nil; {
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway not ready after 15s: %v", dm.g.Ready())
		}
		select {
		case <-dm.gdone:
			return dm.runErr
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// printBanner says where everything is.
func (dm *demo) printBanner(d time.Duration) {
	fmt.Fprintf(dm.out, "iotgw demo: broker %s, gateway metrics http://%s/metrics, InfluxDB %s bucket %q\n",
		dm.mqttURL, dm.g.HTTPAddr(), dm.cfg.Influx.URL, dm.cfg.Influx.Bucket)
	dm.token, _ = commandToken(dm.cfg.Commands)
	fmt.Fprintf(dm.out, "live page: http://%s/#token=%s\n", dm.g.HTTPAddr(), dm.token)
	fmt.Fprintf(dm.out, "publishing for %s (Ctrl-C to stop early)...\n", d)
}

// runFleet runs the simulated sensors for d, and meanwhile sends the demo
// command to a device and follows it. closeDevices disconnects the devices
// that answer commands.
func (dm *demo) runFleet(ctx context.Context, d time.Duration, so sim.Options) (fleet demoFleet, closeDevices func(), err error) {
	controls := sim.NewControls()
	so.Controls = controls
	devices, err := sim.NewResponder(sim.PahoConfig{URL: dm.mqttURL, ClientID: "iotgw-demo-devices"}, controls, nil, dm.log)
	if err != nil {
		return fleet, nil, err
	}
	pub, err := sim.NewPahoPublisher(sim.PahoConfig{URL: dm.mqttURL, ClientID: "iotgw-demo-sensors"})
	if err != nil {
		devices.Close()
		return fleet, nil, err
	}
	so.Duration, so.QoS, so.Start = d, 1, time.Now()
	simCtx, cancelSim := context.WithTimeout(ctx, d+10*time.Second)
	roundTrip := dm.startCommandRoundTrip(simCtx)
	fleet.report, fleet.err = sim.Run(simCtx, so, pub, nil)
	fleet.command = awaitRoundTrip(roundTrip)
	cancelSim()
	_ = pub.Close()
	return fleet, devices.Close, nil
}

// startCommandRoundTrip sends the demo command through the API in the
// background; the channel gets how it went.
func (dm *demo) startCommandRoundTrip(ctx context.Context) <-chan string {
	roundTrip := make(chan string, 1)
	c := &apiClient{base: "http://" + dm.g.HTTPAddr(), token: dm.token, http: &http.Client{Timeout: 20 * time.Second}}
	go func() { roundTrip <- demoCommand(ctx, c, dm.g) }()
	return roundTrip
}

// awaitRoundTrip waits a bounded time for the command's outcome: the
// report must not hang on a device that never answers.
func awaitRoundTrip(roundTrip <-chan string) string {
	select {
	case line := <-roundTrip:
		return line
	case <-time.After(15 * time.Second):
		return "no answer within 15 s"
	}
}

// waitWritten lets the writer finish: it waits, for a bounded time, until
// everything spooled is written.
func (dm *demo) waitWritten() {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if spooled, written := gatherCounter(dm.g, "iotgw_points_spooled_total"), gatherCounter(dm.g, "iotgw_points_written_total"); spooled > 0 && spooled == written {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// report prints what the sensors sent, what the gateway did and what is in
// InfluxDB, and fails when an acknowledged reading is missing there.
func (dm *demo) report(fleet demoFleet, start time.Time) error {
	out, g, report := dm.out, dm.g, fleet.report
	fmt.Fprintf(out, "\nsensors: %d sent, %d acknowledged by the broker, %d malformed on purpose\n",
		report.Sent, report.Acked, sumBad(report.Bad))
	fmt.Fprintf(out, "gateway: %.0f messages received, %.0f points written, %.0f dead letters\n",
		gatherCounter(g, "iotgw_messages_received_total"), gatherCounter(g, "iotgw_points_written_total"),
		gatherCounter(g, "iotgw_dead_letters_total"))
	fmt.Fprintf(out, "latency publish→InfluxDB: p50 %s, p99 %s\n",
		dm.lat.percentile(0.50).Round(time.Millisecond), dm.lat.percentile(0.99).Round(time.Millisecond))
	fmt.Fprintf(out, "command round trip: %s\n", fleet.command)
	flux := demoFlux(dm.cfg.Influx.Bucket, start)
	stored, qerr := dm.printStored(flux)
	fmt.Fprintf(out, "\nsee the data yourself (POST %s/api/v2/query, or the InfluxDB UI):\n%s\n", redacted(dm.cfg.Influx.URL), flux)
	if fleet.err != nil && !errors.Is(fleet.err, context.Canceled) {
		return fmt.Errorf("simulator: %w", fleet.err)
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

// demoFlux is the query counting the demo's points per measurement and
// field, from a minute before start (device clocks may lag).
func demoFlux(bucket string, start time.Time) string {
	return fmt.Sprintf(`from(bucket: %q)
  |> range(start: %s)
  |> filter(fn: (r) => r.gateway == "demo")
  |> group(columns: ["_measurement", "_field"])
  |> count()`, bucket, start.Add(-time.Minute).UTC().Format(time.RFC3339))
}

// printStored prints the points in InfluxDB per measurement and returns
// their total.
func (dm *demo) printStored(flux string) (int64, error) {
	counts, err := pointsPerMeasurement(dm.cfg, flux)
	if err != nil {
		fmt.Fprintf(dm.out, "points per measurement: query failed: %v\n", err)
		return 0, err
	}
	var stored int64
	fmt.Fprintln(dm.out, "points in InfluxDB per measurement:")
	for _, m := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(dm.out, "  %-12s %d\n", m, counts[m])
		stored += counts[m]
	}
	return stored, nil
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
