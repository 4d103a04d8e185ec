package main

import (
	"io"
	"log/slog"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// newLogger is the one logger of the gateway's commands (run, export,
// demo): log.level and log.format (IOTGW_LOG_LEVEL, IOTGW_LOG_FORMAT) as
// the configuration says, written to w. The values were validated, or are
// the defaults; an unknown level logs at info.
func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
