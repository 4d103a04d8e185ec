// Package gwconfig builds a gateway from the configuration: it opens the
// parts cfg names (spool, dead letters, mapper, InfluxDB writer) and
// translates config.Config into gateway.Options. It is the one place that
// knows both, so that app/gateway does not import app/config; the binary
// and the gateway's tests build their gateways through it.
package gwconfig

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/deadletter"
	"github.com/iot-gateway/iot-gateway/app/fleet"
	"github.com/iot-gateway/iot-gateway/app/gateway"
	"github.com/iot-gateway/iot-gateway/app/influx"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// New opens the gateway's state (spool, dead letters) and parts (mapper,
// InfluxDB writer) as cfg says, and assembles the gateway over them. cfg
// must have been validated.
func New(cfg config.Config, log *slog.Logger) (*gateway.Gateway, error) {
	mapper, err := sensor.NewMapper(cfg.MapperConfig())
	if err != nil {
		return nil, fmt.Errorf("mapping: %w", err)
	}
	if err := os.MkdirAll(cfg.Spool.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool.dir: %w", err)
	}
	sp, err := spool.Open(spool.Options{
		Dir:          cfg.Spool.Dir,
		SegmentBytes: cfg.Spool.SegmentBytes,
		MaxBytes:     cfg.Spool.MaxBytes,
		Policy:       spool.Policy(cfg.Spool.Policy),
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	dead, err := deadletter.Open(cfg.Spool.Dir, cfg.DeadLetter.MaxBytes)
	if err != nil {
		sp.Close()
		return nil, err
	}
	w, err := influx.New(influx.Config{URL: cfg.Influx.URL, Token: cfg.Influx.Token, Org: cfg.Influx.Org,
		Bucket: cfg.Influx.Bucket, Timeout: cfg.Influx.Timeout.Duration, Gzip: cfg.Influx.Gzip.Enabled(cfg.Influx.URL)})
	if err != nil {
		sp.Close()
		dead.Close()
		return nil, err
	}
	g, err := gateway.New(Options(cfg, log, mapper, sp, w, dead))
	if err != nil {
		sp.Close()
		dead.Close()
		w.Close()
		return nil, err
	}
	return g, nil
}

// Options translates the configuration into the gateway's options over
// the given parts. Every setting the gateway takes from the configuration
// is translated here.
func Options(cfg config.Config, log *slog.Logger, mapper *sensor.Mapper, sp gateway.Store, w gateway.PointWriter, dead gateway.DeadSink) gateway.Options {
	mc := cfg.MQTT
	degraded := cfg.Spool.DegradedBytes
	if degraded == 0 {
		degraded = cfg.Spool.MaxBytes / 10 * 8
	}
	return gateway.Options{
		Log: log, Mapper: mapper, TopicPattern: cfg.Mapping.TopicPattern,
		Spool: sp, Writer: w, DeadLetters: dead,
		MQTT: mqtt.Config{
			URL: mc.URL, ClientID: mc.ClientID, Username: mc.Username, Password: mc.Password,
			QoS: byte(mc.QoS), Topics: mc.Topics, LineTopics: mc.LineTopics, Connections: mc.Connections,
			MaxPayload: cfg.Mapping.MaxPayload,
			KeepAlive:  mc.KeepAlive.Duration, ConnectTimeout: mc.ConnectTimeout.Duration,
			MaxReconnectInterval: mc.MaxReconnectInterval.Duration,
			CAFile:               mc.CAFile, CertFile: mc.CertFile, KeyFile: mc.KeyFile, InsecureSkipVerify: mc.InsecureSkipVerify,
			Protocol: mqttProtocol(mc.Protocol), SessionExpiry: mc.SessionExpiry.Duration,
		},
		BatchSize:        cfg.Influx.BatchSize,
		FlushInterval:    cfg.Influx.FlushInterval.Duration,
		MaxRetryInterval: cfg.Influx.MaxRetryInterval.Duration,
		Secret:           cfg.Influx.Token,
		DegradedBytes:    degraded,
		StateDir:         cfg.Spool.Dir,
		HTTPAddr:         cfg.HTTP.Addr,
		TLSCertFile:      cfg.Commands.TLSCertFile,
		TLSKeyFile:       cfg.Commands.TLSKeyFile,
		Fleet: fleet.Options{MaxDevices: cfg.Fleet.MaxDevices, SilentFactor: cfg.Fleet.SilentFactor,
			MinSilence: cfg.Fleet.MinSilence.Duration},
		SweepInterval: cfg.Fleet.SweepInterval.Duration,
	}
}

func mqttProtocol(p config.Protocol) byte {
	if p == config.MQTT311 {
		return mqtt.V311
	}
	return mqtt.V5
}
