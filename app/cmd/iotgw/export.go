package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/export"
	"github.com/iot-gateway/iot-gateway/app/ssmref"
)

func newExportCmd() *cobra.Command {
	var (
		configFile       string
		day, from, to    string
		out              string
		noUpload         bool
		catchUp          bool
		noDashboards     bool
		partSize, thresh int64
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export a day's data and the dashboards to a folder and S3",
		Long: `Export writes the dashboards of the InfluxDB org (as an InfluxDB template,
like 'influx export') and the data of one UTC day (per measurement, gzipped
line protocol) to <out>/YYYY/MM/DD/ with a manifest.json, and uploads them to
s3://<bucket>/<prefix>/YYYY/MM/DD/. Without --day or --from/--to it exports
the previous UTC day; --catch-up exports every day since the last one that
was uploaded. See app/export/README.md.

Exit status: 0 done, 1 the export or upload failed, 2 bad flags or config.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &exitError{Code: 2, Err: fmt.Errorf("export takes no arguments, got %q", args)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, cfg, logCfg, err := loadExportConfig(configFile)
			if err != nil {
				return &exitError{Code: 2, Err: err}
			}
			if cmd.Flags().Changed("out") {
				cfg.Dir = out
			}
			if cmd.Flags().Changed("part-size") {
				cfg.PartSize = partSize
			}
			if cmd.Flags().Changed("multipart-threshold") {
				cfg.MultipartThreshold = thresh
			}
			if noDashboards {
				cfg.SkipDashboards = true
			}
			if err := resolveSecrets([]ssmref.Field{{Key: "influx.token", Value: &in.Token}}); err != nil {
				return err
			}
			cfg = cfg.WithDefaults()
			if err := errors.Join(in.Validate(), cfg.Validate(!noUpload)); err != nil {
				return &exitError{Code: 2, Err: err}
			}
			now := time.Now()
			windows, err := exportWindows(cmd, day, from, to, catchUp, noUpload, cfg, now)
			if err != nil {
				return err
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := newLogger(cmd.ErrOrStderr(), logCfg).With("cmd", "export")
			e := &export.Exporter{
				Source:  export.NewSource(in),
				Dir:     cfg.Dir,
				Version: version,
				Log:     log,
				Bucket:  in.Bucket,

				RecheckDays: cfg.RecheckDays,
			}
			defer e.Source.Close()
			if catchUp && !noUpload {
				// Days already uploaded get exported again when InfluxDB has
				// received readings of theirs since.
				last, err := export.LastDay(cfg.Dir)
				if err != nil {
					return fmt.Errorf("catch-up state: %w", err)
				}
				stale, err := e.Stale(ctx, export.Recheck(last, now, cfg.RecheckDays))
				if err != nil {
					return err
				}
				for _, w := range stale {
					fmt.Fprintf(cmd.OutOrStdout(), "export %s: late data, exporting it again\n", w)
				}
				windows = append(stale, windows...)
			}
			if len(windows) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "export: up to date, nothing to do")
				return nil
			}
			if !cfg.SkipDashboards {
				e.Dashboards = export.NewDashboards(in)
			}
			if !noUpload {
				if e.Store, err = export.NewStore(ctx, cfg); err != nil {
					return err
				}
			}
			results, err := e.Export(ctx, windows)
			for _, r := range results {
				where := r.Dir
				if r.Location != "" {
					where += " and " + r.Location
				}
				fmt.Fprintf(cmd.OutOrStdout(), "export %s: %d files, %d points in %s\n", r.Window, len(r.Manifest.Files), r.Manifest.Points, where)
			}
			return err
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{Code: 2, Err: err} })
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "the gateway's TOML config file (the export reads [influx] and [export]); IOTGW_* environment variables override it")
	f.StringVar(&day, "day", "", "UTC day to export, YYYY-MM-DD (default: yesterday)")
	f.StringVar(&from, "from", "", "start of the range to export, RFC 3339 (with --to)")
	f.StringVar(&to, "to", "", "end of the range to export, RFC 3339, exclusive (with --from)")
	f.StringVar(&out, "out", "", "local folder for the files and the state file (default export.dir, "+export.DefaultDir+")")
	f.BoolVar(&noUpload, "no-upload", false, "write the local files only")
	f.BoolVar(&catchUp, "catch-up", false, "export every day since the last uploaded one, up to yesterday (at most export.max_catch_up_days)")
	f.BoolVar(&noDashboards, "no-dashboards", false, "leave out dashboards.json (for databases without the InfluxDB 2 dashboards API)")
	f.Int64Var(&partSize, "part-size", 0, "multipart upload part size in bytes (default export.part_size)")
	f.Int64Var(&thresh, "multipart-threshold", 0, "file size from which uploads are multipart (default export.multipart_threshold)")
	return cmd
}

// loadExportConfig reads gateway.toml with the gateway's own loader
// (defaults < file < environment), so the export and `iotgw run` agree on
// every shared value and on what an unknown key is.
func loadExportConfig(path string) (export.Influx, export.Config, config.Log, error) {
	c, err := config.Load(path, os.LookupEnv)
	if err != nil {
		return export.Influx{}, export.Config{}, config.Log{}, fmt.Errorf("config file: %w", err)
	}
	return export.InfluxFrom(c.Influx), c.Export, c.Log, nil
}

// exportWindows turns the flags into the windows to export.
func exportWindows(cmd *cobra.Command, day, from, to string, catchUp, noUpload bool, cfg export.Config, now time.Time) ([]export.Window, error) {
	bad := func(format string, a ...any) error { return &exitError{Code: 2, Err: fmt.Errorf(format, a...)} }
	ranged := from != "" || to != ""
	switch {
	case day != "" && ranged:
		return nil, bad("--day and --from/--to cannot be combined")
	case catchUp && (day != "" || ranged):
		return nil, bad("--catch-up exports whole days up to yesterday; it cannot be combined with --day or --from/--to")
	case catchUp && noUpload:
		return nil, bad("--catch-up follows the uploads; it cannot be combined with --no-upload")
	}
	switch {
	case day != "":
		w, err := export.ParseDay(day)
		if err != nil {
			return nil, bad("--day: %w", err)
		}
		return []export.Window{w}, nil
	case ranged:
		if from == "" || to == "" {
			return nil, bad("--from and --to go together")
		}
		f, err := time.Parse(time.RFC3339Nano, from)
		if err != nil {
			return nil, bad("--from %q: want RFC 3339, e.g. 2026-03-14T06:00:00Z", from)
		}
		t, err := time.Parse(time.RFC3339Nano, to)
		if err != nil {
			return nil, bad("--to %q: want RFC 3339, e.g. 2026-03-14T12:00:00Z", to)
		}
		w, err := export.Range(f, t)
		if err != nil {
			return nil, bad("--from/--to: %w", err)
		}
		return []export.Window{w}, nil
	case catchUp:
		last, err := export.LastDay(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("catch-up state: %w", err)
		}
		days, skipped := export.CatchUp(last, now, cfg.MaxCatchUpDays)
		if skipped > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "export: %d missed days before %s are beyond export.max_catch_up_days (%d) and are not exported; use --day for them\n",
				skipped, days[0], cfg.MaxCatchUpDays)
		}
		return days, nil
	default:
		return []export.Window{export.Day(now.AddDate(0, 0, -1))}, nil
	}
}
