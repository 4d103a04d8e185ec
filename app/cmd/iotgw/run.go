package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	_ "net/http/pprof" // served only when IOTGW_PPROF_ADDR is set
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/gateway/gwconfig"
	"github.com/iot-gateway/iot-gateway/app/ssmref"
)

// configFlags are the flags that override the configuration file and the
// environment.
type configFlags struct {
	path                                   string
	mqttURL, influxURL, influxBucket, http string
	spoolDir, logLevel                     string
}

func (f *configFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVarP(&f.path, "config", "c", "", "TOML configuration file (see 'iotgw config sample')")
	fs.StringVar(&f.mqttURL, "mqtt-url", "", "broker URL (mqtt.url, IOTGW_MQTT_URL)")
	fs.StringVar(&f.influxURL, "influx-url", "", "InfluxDB URL (influx.url, IOTGW_INFLUX_URL)")
	fs.StringVar(&f.influxBucket, "influx-bucket", "", "InfluxDB bucket (influx.bucket, IOTGW_INFLUX_BUCKET)")
	fs.StringVar(&f.http, "http-addr", "", "metrics and health listener (http.addr, IOTGW_HTTP_ADDR)")
	fs.StringVar(&f.spoolDir, "spool-dir", "", "state directory (spool.dir, IOTGW_SPOOL_DIR)")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (log.level)")
}

// load applies defaults < file < environment < flags and validates. Any
// problem is a usage error: exit code 2, before anything connects.
func (f *configFlags) load(cmd *cobra.Command) (config.Config, error) {
	cfg, err := config.Load(f.path, os.LookupEnv)
	if err != nil {
		return cfg, &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("mqtt-url", &cfg.MQTT.URL, f.mqttURL)
	set("influx-url", &cfg.Influx.URL, f.influxURL)
	set("influx-bucket", &cfg.Influx.Bucket, f.influxBucket)
	set("http-addr", &cfg.HTTP.Addr, f.http)
	set("spool-dir", &cfg.Spool.Dir, f.spoolDir)
	set("log-level", &cfg.Log.Level, f.logLevel)
	if err := cfg.Validate(); err != nil {
		return cfg, &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	return cfg, nil
}

func newRunCmd() *cobra.Command {
	var flags configFlags
	var check bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the gateway: MQTT → durable spool → InfluxDB",
		Long: `Run the gateway daemon. Messages are acknowledged to the broker only once
they are fsynced in the spool; a writer drains the spool into InfluxDB.
SIGTERM or SIGINT stops it within a few seconds; nothing in hand is lost.

IOTGW_PPROF_ADDR (e.g. 127.0.0.1:6060), when set, serves net/http/pprof there
for profiling; it is off by default.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := flags.load(cmd)
			if err != nil {
				return err
			}
			if err := resolveSecrets([]ssmref.Field{
				{Key: "mqtt.username", Value: &cfg.MQTT.Username},
				{Key: "mqtt.password", Value: &cfg.MQTT.Password},
				{Key: "influx.token", Value: &cfg.Influx.Token},
				{Key: "commands.token", Value: &cfg.Commands.Token},
			}); err != nil {
				return err
			}
			if err := checkCommands(cfg.Commands); err != nil {
				return err
			}
			if check {
				fmt.Fprintln(cmd.OutOrStdout(), "configuration ok")
				return nil
			}
			log := newLogger(os.Stderr, cfg.Log)
			followLimit := os.Getenv("GOMEMLIMIT") == "" && cfg.Gateway.MemoryLimit > 0
			if followLimit {
				debug.SetMemoryLimit(cfg.Gateway.MemoryLimit)
			}
			if addr := os.Getenv("IOTGW_PPROF_ADDR"); addr != "" {
				// Opt-in profiling for benchmarks; keep it on loopback.
				go func() {
					log.Info("pprof listening", "addr", addr)
					if err := http.ListenAndServe(addr, nil); err != nil { //nolint:gosec // opt-in, local
						log.Error("pprof", "err", err)
					}
				}()
			}
			g, err := gwconfig.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if followLimit {
				go followFleet(ctx, cfg.Gateway.MemoryLimit, g.HeldBytes, setMemoryLimit)
			}
			stopCommands, err := startCommands(ctx, cfg, g, log)
			if err != nil {
				return err
			}
			defer stopCommands()
			logStart(log, cfg)
			return g.Run(ctx)
		},
	}
	flags.register(cmd)
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration and exit")
	return cmd
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration helpers"}
	cmd.AddCommand(&cobra.Command{
		Use:   "sample",
		Short: "Print the documented sample configuration (every default)",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(cmd.OutOrStdout(), config.Sample)
		},
	})
	return cmd
}

// memoryLimit is the runtime's soft memory limit for the log; 0 when none.
func memoryLimit() int64 {
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		return l
	}
	return 0
}

// logStart logs what the gateway is about to connect to, with every
// credential in a URL redacted.
func logStart(log *slog.Logger, cfg config.Config) {
	log.Info("iotgw starting", "version", version, "mqtt", redacted(cfg.MQTT.URL), "influx", redacted(cfg.Influx.URL),
		"bucket", cfg.Influx.Bucket, "gzip", cfg.Influx.Gzip.Enabled(cfg.Influx.URL), "spool", cfg.Spool.Dir,
		"memory_limit", memoryLimit())
}

// redacted hides a password in a URL for the log. A URL that does not
// parse is not shown at all: it may still hold one.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
