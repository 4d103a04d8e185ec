// Package config loads the gateway's configuration: defaults, then a TOML
// file, then IOTGW_* environment variables, then command-line flags (applied
// by the caller). Every problem is reported with the key it concerns, before
// anything connects.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// Sample is the documented sample configuration. Its values are the
// defaults; a test keeps the two in step.
//
//go:embed sample.toml
var Sample string

// Config is the whole gateway configuration.
type Config struct {
	Gateway    Gateway    `toml:"gateway"`
	MQTT       MQTT       `toml:"mqtt"`
	Mapping    Mapping    `toml:"mapping"`
	Influx     Influx     `toml:"influx"`
	Spool      Spool      `toml:"spool"`
	DeadLetter DeadLetter `toml:"deadletter"`
	HTTP       HTTP       `toml:"http"`
	Log        Log        `toml:"log"`
	// Export is read by `iotgw export`; the gateway validates it too, so
	// one file serves both and a bad value fails when it is deployed.
	Export Export `toml:"export"`
	// Commands is the command API and connection; Fleet the device watch.
	Commands Commands `toml:"commands"`
	Fleet    Fleet    `toml:"fleet"`
}

// Commands configures commands to devices and the HTTP API (and live page)
// they are sent through. The API is off unless a token is configured.
type Commands struct {
	// Token (or the file TokenFile names) is the bearer token of the API
	// and the page; both empty: the API and the page are off.
	Token     string `toml:"token"`
	TokenFile string `toml:"token_file"`
	// TLSCertFile and TLSKeyFile serve http.addr over HTTPS; required when
	// the API is on and http.addr is not a loopback address.
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// ClientID of the command connection; empty: mqtt.client_id + "-commands".
	ClientID    string   `toml:"client_id"`
	Expiry      Duration `toml:"expiry"`
	MaxArgBytes int      `toml:"max_arg_bytes"`
	History     int      `toml:"history"`
}

// Enabled reports whether the command API is configured.
func (c Commands) Enabled() bool { return c.Token != "" || c.TokenFile != "" }

// Fleet configures the watch of devices.
type Fleet struct {
	MaxDevices    int      `toml:"max_devices"`
	SilentFactor  float64  `toml:"silent_factor"`
	MinSilence    Duration `toml:"min_silence"`
	SweepInterval Duration `toml:"sweep_interval"`
}

// Gateway identifies this gateway.
type Gateway struct {
	ID string `toml:"id"` // tag "gateway" on every point; empty = host name
	// MemoryLimit is the Go runtime's soft memory limit in bytes (what
	// GOMEMLIMIT sets, which overrides it); 0 turns it off.
	MemoryLimit int64 `toml:"memory_limit"`
}

// MQTT is the broker connection and subscriptions.
type MQTT struct {
	URL                  string   `toml:"url"`
	ClientID             string   `toml:"client_id"`
	Username             string   `toml:"username"`
	Password             string   `toml:"password"`
	QoS                  int      `toml:"qos"`
	Topics               []string `toml:"topics"`
	LineTopics           []string `toml:"line_topics"`
	Connections          int      `toml:"connections"`
	KeepAlive            Duration `toml:"keepalive"`
	ConnectTimeout       Duration `toml:"connect_timeout"`
	MaxReconnectInterval Duration `toml:"max_reconnect_interval"`
	CAFile               string   `toml:"ca_file"`
	CertFile             string   `toml:"cert_file"`
	KeyFile              string   `toml:"key_file"`
	InsecureSkipVerify   bool     `toml:"insecure_skip_verify"`
	// Protocol is the MQTT version the session speaks: "5" or "3.1.1".
	Protocol Protocol `toml:"protocol"`
	// SessionExpiry bounds how long an MQTT 5 broker keeps this gateway's
	// session, and the messages queued for it, after the connection ends.
	SessionExpiry Duration `toml:"session_expiry"`
}

// Protocol is an MQTT protocol version, "5" or "3.1.1".
type Protocol string

// MQTT protocol versions.
const (
	MQTT5   Protocol = "5"
	MQTT311 Protocol = "3.1.1"
)

// UnmarshalTOML accepts "5", "3.1.1" and the numbers 5 and 4 (the
// protocol level 3.1.1 sends).
func (p *Protocol) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		switch v {
		case 5:
			*p = MQTT5
			return nil
		case 4:
			*p = MQTT311
			return nil
		}
	case string:
		*p = Protocol(v)
		return nil
	}
	return fmt.Errorf("%v is not \"5\" or \"3.1.1\"", v)
}

// Mapping is how topics and payloads become points.
type Mapping struct {
	TopicPattern string            `toml:"topic_pattern"`
	Measurement  string            `toml:"measurement"`
	MaxPayload   int               `toml:"max_payload"`
	Tags         map[string]string `toml:"tags"`
	// LinePrecision maps topic filters to the unit of the timestamps in
	// line-protocol payloads on matching topics ("ns", "us", "ms", "s").
	LinePrecision map[string]string `toml:"line_precision"`
	// TimestampProperty names an MQTT 5 user property carrying the device
	// time ("" = off); TimestampPropertyPrecision is the unit of an
	// integer value ("ns", "us", "ms", "s"). See sensor.MapperConfig.
	TimestampProperty          string `toml:"timestamp_property"`
	TimestampPropertyPrecision string `toml:"timestamp_property_precision"`
}

// Influx is the InfluxDB 2 write target.
type Influx struct {
	URL              string   `toml:"url"`
	Token            string   `toml:"token"`
	Org              string   `toml:"org"`
	Bucket           string   `toml:"bucket"`
	BatchSize        int      `toml:"batch_size"`
	FlushInterval    Duration `toml:"flush_interval"`
	Timeout          Duration `toml:"timeout"`
	MaxRetryInterval Duration `toml:"max_retry_interval"`
	Gzip             Gzip     `toml:"gzip"`
}

// Spool is the durable queue between MQTT and InfluxDB.
type Spool struct {
	Dir           string `toml:"dir"`
	MaxBytes      int64  `toml:"max_bytes"`
	SegmentBytes  int64  `toml:"segment_bytes"`
	Policy        string `toml:"policy"`
	DegradedBytes int64  `toml:"degraded_bytes"`
}

// DeadLetter bounds the file of rejected messages.
type DeadLetter struct {
	MaxBytes int64 `toml:"max_bytes"`
}

// HTTP is the metrics and health listener.
type HTTP struct {
	Addr string `toml:"addr"`
}

// Log configures log/slog.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Duration is a time.Duration written as "250ms" or "30s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration like 250ms or 30s", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration back.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Gzip says whether write requests are compressed: true, false, or
// "auto", which compresses unless InfluxDB is on this host (loopback):
// there compression only costs CPU on both ends and memory in the gateway.
type Gzip string

// Gzip settings.
const (
	GzipAuto Gzip = "auto"
	GzipOn   Gzip = "true"
	GzipOff  Gzip = "false"
)

// UnmarshalTOML accepts a boolean or "auto".
func (g *Gzip) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case bool:
		*g = GzipOff
		if v {
			*g = GzipOn
		}
		return nil
	case string:
		switch Gzip(v) {
		case GzipAuto, GzipOn, GzipOff:
			*g = Gzip(v)
			return nil
		}
	}
	return fmt.Errorf("%v is not true, false or \"auto\"", v)
}

// Enabled resolves the setting for an InfluxDB URL.
func (g Gzip) Enabled(influxURL string) bool {
	switch g {
	case GzipOn:
		return true
	case GzipOff:
		return false
	}
	u, err := url.Parse(influxURL)
	if err != nil {
		return true
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// Default returns the defaults, the same values sample.toml documents.
func Default() Config {
	return Config{
		Gateway: Gateway{MemoryLimit: 16 << 20},
		MQTT: MQTT{
			URL:                  "tcp://127.0.0.1:1883",
			ClientID:             "iotgw",
			QoS:                  1,
			Topics:               []string{"sensors/#"},
			LineTopics:           []string{},
			Connections:          1,
			KeepAlive:            Duration{30 * time.Second},
			ConnectTimeout:       Duration{10 * time.Second},
			MaxReconnectInterval: Duration{30 * time.Second},
			Protocol:             MQTT5,
			SessionExpiry:        Duration{24 * time.Hour},
		},
		Mapping: Mapping{
			TopicPattern:  sensor.DefaultTopicPattern,
			MaxPayload:    sensor.DefaultMaxPayload,
			Tags:          map[string]string{},
			LinePrecision: map[string]string{},

			TimestampPropertyPrecision: "ms",
		},
		Influx: Influx{
			URL:              "http://127.0.0.1:8086",
			Bucket:           "sensors",
			BatchSize:        5000,
			FlushInterval:    Duration{100 * time.Millisecond},
			Timeout:          Duration{10 * time.Second},
			MaxRetryInterval: Duration{30 * time.Second},
			Gzip:             GzipAuto,
		},
		Spool: Spool{
			Dir:          "/var/lib/iotgw",
			MaxBytes:     1 << 30,
			SegmentBytes: 16 << 20,
			Policy:       "block",
		},
		DeadLetter: DeadLetter{MaxBytes: 64 << 20},
		HTTP:       HTTP{Addr: "127.0.0.1:9273"},
		Log:        Log{Level: "info", Format: "text"},
		Commands:   Commands{Expiry: Duration{time.Minute}, MaxArgBytes: 256, History: 10_000},
		Fleet: Fleet{MaxDevices: 100_000, SilentFactor: 5, MinSilence: Duration{30 * time.Second},
			SweepInterval: Duration{5 * time.Second}},
	}
}

// Load returns the defaults overlaid with the file at path (skipped when
// path is empty) and then with the environment, as lookup reports it
// (os.LookupEnv in production). It does not validate: flags may still
// change values, so call Validate last.
func Load(path string, lookup func(string) (string, bool)) (Config, error) {
	c := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, err // *PathError: "open /etc/iotgw/gw.toml: no such file or directory"
		}
		// Tables present in the file replace the default map rather than
		// merging into it; list-valued defaults likewise.
		c.Mapping.Tags, c.Mapping.LinePrecision = nil, nil
		md, err := toml.Decode(string(b), &c)
		if err != nil {
			return c, fmt.Errorf("%s: %w", path, err)
		}
		if un := md.Undecoded(); len(un) > 0 {
			keys := make([]string, len(un))
			for i, k := range un {
				keys[i] = k.String()
			}
			return c, fmt.Errorf("%s: unknown key %s", path, strings.Join(keys, ", "))
		}
		if c.Mapping.Tags == nil {
			c.Mapping.Tags = map[string]string{}
		}
		if c.Mapping.LinePrecision == nil {
			c.Mapping.LinePrecision = map[string]string{}
		}
	}
	if err := c.applyEnv(lookup); err != nil {
		return c, err
	}
	return c, nil
}

// envVar binds one environment variable to the config key it overrides.
type envVar struct {
	name, key string
	set       func(c *Config, v string) error
}

func str(f func(c *Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *f(c) = v; return nil }
}

func list(f func(c *Config) *[]string) func(*Config, string) error {
	return func(c *Config, v string) error {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		*f(c) = out
		return nil
	}
}

func integer(f func(c *Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
		*f(c) = n
		return nil
	}
}

func bytes64(f func(c *Config) *int64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number of bytes", v)
		}
		*f(c) = n
		return nil
	}
}

func boolean(f func(c *Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*f(c) = b
		return nil
	}
}

// Env lists the environment variables `iotgw run` and `iotgw export` read,
// in the order they are documented. The first twelve are a contract with
// the host's units. A set but empty variable sets an empty value, so
// IOTGW_INFLUX_TOKEN= selects an empty token.
var Env = []envVar{
	{"IOTGW_MQTT_URL", "mqtt.url", str(func(c *Config) *string { return &c.MQTT.URL })},
	{"IOTGW_MQTT_CLIENT_ID", "mqtt.client_id", str(func(c *Config) *string { return &c.MQTT.ClientID })},
	{"IOTGW_MQTT_USERNAME", "mqtt.username", str(func(c *Config) *string { return &c.MQTT.Username })},
	{"IOTGW_MQTT_PASSWORD", "mqtt.password", str(func(c *Config) *string { return &c.MQTT.Password })},
	{"IOTGW_MQTT_QOS", "mqtt.qos", integer(func(c *Config) *int { return &c.MQTT.QoS })},
	{"IOTGW_MQTT_TOPICS", "mqtt.topics", list(func(c *Config) *[]string { return &c.MQTT.Topics })},
	{"IOTGW_INFLUX_URL", "influx.url", str(func(c *Config) *string { return &c.Influx.URL })},
	{"IOTGW_INFLUX_TOKEN", "influx.token", str(func(c *Config) *string { return &c.Influx.Token })},
	{"IOTGW_INFLUX_ORG", "influx.org", str(func(c *Config) *string { return &c.Influx.Org })},
	{"IOTGW_INFLUX_BUCKET", "influx.bucket", str(func(c *Config) *string { return &c.Influx.Bucket })},
	{"IOTGW_HTTP_ADDR", "http.addr", str(func(c *Config) *string { return &c.HTTP.Addr })},
	{"IOTGW_SPOOL_DIR", "spool.dir", str(func(c *Config) *string { return &c.Spool.Dir })},
	{"IOTGW_MQTT_LINE_TOPICS", "mqtt.line_topics", list(func(c *Config) *[]string { return &c.MQTT.LineTopics })},
	{"IOTGW_MQTT_CONNECTIONS", "mqtt.connections", integer(func(c *Config) *int { return &c.MQTT.Connections })},
	{"IOTGW_MQTT_CA_FILE", "mqtt.ca_file", str(func(c *Config) *string { return &c.MQTT.CAFile })},
	{"IOTGW_MQTT_CERT_FILE", "mqtt.cert_file", str(func(c *Config) *string { return &c.MQTT.CertFile })},
	{"IOTGW_MQTT_KEY_FILE", "mqtt.key_file", str(func(c *Config) *string { return &c.MQTT.KeyFile })},
	{"IOTGW_GATEWAY_ID", "gateway.id", str(func(c *Config) *string { return &c.Gateway.ID })},
	{"IOTGW_LOG_LEVEL", "log.level", str(func(c *Config) *string { return &c.Log.Level })},
	{"IOTGW_LOG_FORMAT", "log.format", str(func(c *Config) *string { return &c.Log.Format })},
	{"IOTGW_MQTT_PROTOCOL", "mqtt.protocol", str(func(c *Config) *string { return (*string)(&c.MQTT.Protocol) })},
	{"IOTGW_COMMANDS_TOKEN", "commands.token", str(func(c *Config) *string { return &c.Commands.Token })},
	{"IOTGW_COMMANDS_TOKEN_FILE", "commands.token_file", str(func(c *Config) *string { return &c.Commands.TokenFile })},
	{"IOTGW_EXPORT_BUCKET", "export.bucket", str(func(c *Config) *string { return &c.Export.Bucket })},
	{"IOTGW_EXPORT_PREFIX", "export.prefix", str(func(c *Config) *string { return &c.Export.Prefix })},
	{"IOTGW_EXPORT_DIR", "export.dir", str(func(c *Config) *string { return &c.Export.Dir })},
	{"IOTGW_S3_ENDPOINT", "export.s3_endpoint", str(func(c *Config) *string { return &c.Export.S3Endpoint })},
	{"IOTGW_EXPORT_PART_SIZE", "export.part_size", bytes64(func(c *Config) *int64 { return &c.Export.PartSize })},
	{"IOTGW_EXPORT_SKIP_DASHBOARDS", "export.skip_dashboards", boolean(func(c *Config) *bool { return &c.Export.SkipDashboards })},
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	if lookup == nil {
		return nil
	}
	for _, e := range Env {
		v, ok := lookup(e.name)
		if !ok {
			continue
		}
		if err := e.set(c, v); err != nil {
			return fmt.Errorf("%s (%s): environment %s: %w", e.key, e.name, e.name, err)
		}
	}
	return nil
}

// Validate checks every value and reports all problems, each naming its
// key, joined into one error.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	c.validateGateway(bad)
	c.validateMQTT(bad)
	c.validateMapping(bad)
	c.validateInflux(bad)
	c.validateSpool(bad)
	c.validateHTTP(bad)
	c.validateCommands(bad)
	c.validateFleet(bad)
	c.validateLog(bad)
	// The gateway does not upload, so the bucket may be empty here; every
	// value that is set must still be one the export accepts.
	if err := c.Export.WithDefaults().Validate(false); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// badFunc records one problem with a key.
type badFunc func(key, format string, args ...any)

func positive(bad badFunc, key string, d Duration) {
	if d.Duration <= 0 {
		bad(key, "must be positive")
	}
}

func (c *Config) validateGateway(bad badFunc) {
	if l := c.Gateway.MemoryLimit; l != 0 && (l < 8<<20 || l > 1<<40) {
		bad("gateway.memory_limit", "%d is not 0 (off) or between 8 MiB and 1 TiB", l)
	}
}

func (c *Config) validateMQTT(bad badFunc) {
	if u, err := url.Parse(c.MQTT.URL); err != nil || u.Host == "" {
		bad("mqtt.url", "%q is not a URL like tcp://host:1883", c.MQTT.URL)
	} else if s := u.Scheme; s != "tcp" && s != "mqtt" && s != "ssl" && s != "tls" && s != "mqtts" && s != "ws" && s != "wss" {
		bad("mqtt.url", "scheme %q is not one of tcp, ssl, ws, wss", s)
	}
	if c.MQTT.ClientID == "" || len(c.MQTT.ClientID) > 23*8 {
		bad("mqtt.client_id", "must be set (a stable id keeps the persistent session)")
	}
	if c.MQTT.QoS < 0 || c.MQTT.QoS > 2 {
		bad("mqtt.qos", "%d is not 0, 1 or 2", c.MQTT.QoS)
	}
	filters := slices.Concat(c.MQTT.Topics, c.MQTT.LineTopics)
	if len(filters) == 0 {
		bad("mqtt.topics", "at least one topic filter is needed")
	}
	for _, t := range filters {
		if err := validFilter(t); err != nil {
			bad("mqtt.topics", "%q: %v", t, err)
		}
	}
	if c.MQTT.Connections < 1 || c.MQTT.Connections > 64 {
		bad("mqtt.connections", "%d is not between 1 and 64", c.MQTT.Connections)
	} else if c.MQTT.Connections > 1 {
		for _, t := range filters {
			if !strings.HasPrefix(t, "$share/") {
				bad("mqtt.connections", "%d connections need shared subscriptions ($share/group/...), %q is not one", c.MQTT.Connections, t)
			}
		}
	}
	if (c.MQTT.CertFile == "") != (c.MQTT.KeyFile == "") {
		bad("mqtt.cert_file", "cert_file and key_file go together")
	}
	for key, f := range map[string]string{"mqtt.ca_file": c.MQTT.CAFile, "mqtt.cert_file": c.MQTT.CertFile, "mqtt.key_file": c.MQTT.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	positive(bad, "mqtt.keepalive", c.MQTT.KeepAlive)
	positive(bad, "mqtt.connect_timeout", c.MQTT.ConnectTimeout)
	positive(bad, "mqtt.max_reconnect_interval", c.MQTT.MaxReconnectInterval)
	if c.MQTT.Protocol != MQTT5 && c.MQTT.Protocol != MQTT311 {
		bad("mqtt.protocol", "%q is not \"5\" or \"3.1.1\"", c.MQTT.Protocol)
	}
	// MQTT 5 carries the expiry in whole seconds; 0 would end the session
	// with the connection and drop what the broker queued meanwhile.
	if d := c.MQTT.SessionExpiry.Duration; d < time.Second || d > 0xFFFFFFFE*time.Second {
		bad("mqtt.session_expiry", "%s is not between 1s and 136 years", d)
	}
}

func (c *Config) validateMapping(bad badFunc) {
	if _, err := sensor.NewMapper(c.MapperConfig()); err != nil {
		bad("mapping", "%v", err)
	}
	if c.Mapping.MaxPayload < 1 || c.Mapping.MaxPayload > 16<<20 {
		bad("mapping.max_payload", "%d is not between 1 and 16 MiB", c.Mapping.MaxPayload)
	}
}

func (c *Config) validateInflux(bad badFunc) {
	if u, err := url.Parse(c.Influx.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("influx.url", "%q is not an http:// or https:// URL", c.Influx.URL)
	}
	if c.Influx.Bucket == "" {
		bad("influx.bucket", "must be set")
	}
	if c.Influx.BatchSize < 1 || c.Influx.BatchSize > 100000 {
		bad("influx.batch_size", "%d is not between 1 and 100000", c.Influx.BatchSize)
	}
	positive(bad, "influx.flush_interval", c.Influx.FlushInterval)
	positive(bad, "influx.timeout", c.Influx.Timeout)
	positive(bad, "influx.max_retry_interval", c.Influx.MaxRetryInterval)
}

func (c *Config) validateSpool(bad badFunc) {
	if c.Spool.Dir == "" {
		bad("spool.dir", "must be set")
	}
	if c.Spool.MaxBytes < 1<<20 {
		bad("spool.max_bytes", "%d is below 1 MiB", c.Spool.MaxBytes)
	}
	if c.Spool.SegmentBytes < 64<<10 || c.Spool.SegmentBytes > c.Spool.MaxBytes {
		bad("spool.segment_bytes", "%d is not between 64 KiB and spool.max_bytes", c.Spool.SegmentBytes)
	}
	if c.Spool.Policy != "block" && c.Spool.Policy != "drop-oldest" {
		bad("spool.policy", "%q is not block or drop-oldest", c.Spool.Policy)
	}
	if c.Spool.DegradedBytes < 0 || c.Spool.DegradedBytes > c.Spool.MaxBytes {
		bad("spool.degraded_bytes", "%d is not between 0 and spool.max_bytes", c.Spool.DegradedBytes)
	}
	if c.DeadLetter.MaxBytes < 4096 {
		bad("deadletter.max_bytes", "%d is below 4096", c.DeadLetter.MaxBytes)
	}
}

func (c *Config) validateHTTP(bad badFunc) {
	if c.HTTP.Addr != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Addr); err != nil {
			bad("http.addr", "%q is not host:port", c.HTTP.Addr)
		}
	}
}

func (c *Config) validateLog(bad badFunc) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "%q is not text or json", c.Log.Format)
	}
}

// validFilter checks an MQTT topic filter.
func validFilter(f string) error {
	if f == "" {
		return errors.New("empty filter")
	}
	if strings.HasPrefix(f, "$share/") {
		parts := strings.SplitN(f, "/", 3)
		if len(parts) < 3 || parts[1] == "" || parts[2] == "" {
			return errors.New("a shared subscription is $share/<group>/<filter>")
		}
		f = parts[2]
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return errors.New("# must be a whole last level")
		}
		if strings.Contains(l, "+") && l != "+" {
			return errors.New("+ must be a whole level")
		}
	}
	return nil
}

// MapperConfig is the mapping section in the domain's terms; the gateway
// id becomes the "gateway" tag.
func (c *Config) MapperConfig() sensor.MapperConfig {
	tags := map[string]string{}
	for k, v := range c.Mapping.Tags {
		tags[k] = v
	}
	id := c.Gateway.ID
	if id == "" {
		id, _ = os.Hostname()
	}
	if id != "" {
		tags["gateway"] = id
	}
	return sensor.MapperConfig{
		TopicPattern:  c.Mapping.TopicPattern,
		Measurement:   c.Mapping.Measurement,
		StaticTags:    tags,
		MaxPayload:    c.Mapping.MaxPayload,
		LinePrecision: c.Mapping.LinePrecision,

		TimestampProperty:          c.Mapping.TimestampProperty,
		TimestampPropertyPrecision: c.Mapping.TimestampPropertyPrecision,
	}
}

func (c *Config) validateCommands(bad badFunc) {
	cc := c.Commands
	if cc.Expiry.Duration < time.Second || cc.Expiry.Duration > 24*time.Hour {
		bad("commands.expiry", "%v is not between 1s and 24h", cc.Expiry.Duration)
	}
	if cc.MaxArgBytes < 1 || cc.MaxArgBytes > 4096 {
		bad("commands.max_arg_bytes", "%d is not between 1 and 4096", cc.MaxArgBytes)
	}
	if cc.History < 1 || cc.History > 1_000_000 {
		bad("commands.history", "%d is not between 1 and 1000000", cc.History)
	}
	if (cc.TLSCertFile == "") != (cc.TLSKeyFile == "") {
		bad("commands.tls_cert_file", "needs commands.tls_key_file too (both or neither)")
	}
	if cc.Token != "" && cc.TokenFile != "" {
		bad("commands.token", "set commands.token or commands.token_file, not both")
	}
	if cc.Enabled() {
		switch {
		case c.HTTP.Addr == "":
			bad("commands.token", "the command API needs http.addr")
		case cc.TLSCertFile == "" && !loopback(c.HTTP.Addr):
			bad("http.addr", "%q is not a loopback address: the command API (commands.token) is on, so it needs commands.tls_cert_file and commands.tls_key_file", c.HTTP.Addr)
		}
	}
}

func (c *Config) validateFleet(bad badFunc) {
	f := c.Fleet
	if f.MaxDevices < 1 || f.MaxDevices > 10_000_000 {
		bad("fleet.max_devices", "%d is not between 1 and 10000000", f.MaxDevices)
	}
	if !(f.SilentFactor >= 1 && f.SilentFactor <= 1000) {
		bad("fleet.silent_factor", "%v is not between 1 and 1000", f.SilentFactor)
	}
	if f.MinSilence.Duration < time.Second {
		bad("fleet.min_silence", "%v is below 1s", f.MinSilence.Duration)
	}
	if f.SweepInterval.Duration < 100*time.Millisecond {
		bad("fleet.sweep_interval", "%v is below 100ms", f.SweepInterval.Duration)
	}
}

// loopback reports whether host:port listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
