package broker

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// SampleConfig is a broker.toml with every option, its default and why one
// would change it. `iotgw broker sample-config` prints it.
//
//go:embed sample.toml
var SampleConfig string

// Config is the broker.toml read by `iotgw broker --config`. Keys absent from
// the file keep the values of DefaultConfig.
type Config struct {
	LimitsConfig // connection-level limits, top-level keys (limits.go)

	DataDir          string        `toml:"data_dir"`
	UsersFile        string        `toml:"users_file"`
	Users            []UserConfig  `toml:"users"`
	GatewayUsers     []string      `toml:"gateway_users"`
	AllowAnonymous   bool          `toml:"allow_anonymous"`
	AllowPlainPublic bool          `toml:"allow_plain_public"`
	MaxInflight      int           `toml:"max_inflight"`
	MaxQueued        int           `toml:"max_queued"`
	SessionExpiry    time.Duration `toml:"session_expiry"`
	CloseTimeout     time.Duration `toml:"close_timeout"`
	LogLevel         string        `toml:"log_level"`
	LogFormat        string        `toml:"log_format"`
	Plain            PlainConfig   `toml:"plain"`
	TLS              TLSConfig     `toml:"tls"`
	Auth             AuthConfig    `toml:"auth"`
}

// AuthConfig is the [auth] table: the limits on password guessing.
type AuthConfig struct {
	FreeFailures        int           `toml:"free_failures"`
	AddrLockoutMax      time.Duration `toml:"addr_lockout_max"`
	UserLockoutMax      time.Duration `toml:"user_lockout_max"`
	MaxConcurrentChecks int           `toml:"max_concurrent_checks"`
	CheckQueueTimeout   time.Duration `toml:"check_queue_timeout"`
}

// UserConfig is one [[users]] table.
type UserConfig struct {
	Username     string `toml:"username"`
	PasswordHash string `toml:"password_hash"`
	Site         string `toml:"site"`
	Device       string `toml:"device"`
}

// PlainConfig is the [plain] table: MQTT without TLS.
type PlainConfig struct {
	Addr string `toml:"addr"` // "" disables the listener
}

// TLSConfig is the [tls] table.
type TLSConfig struct {
	Addr       string   `toml:"addr"` // "" disables the listener
	CertFile   string   `toml:"cert_file"`
	KeyFile    string   `toml:"key_file"`
	GenerateCA bool     `toml:"generate_ca"`
	Hosts      []string `toml:"hosts"`
	// ClientAuth is "none", "optional" (a client certificate, when given,
	// must verify and names the user) or "require".
	ClientAuth   string `toml:"client_auth"`
	ClientCAFile string `toml:"client_ca_file"`
}

// DefaultConfig returns the values used for keys a broker.toml leaves out.
func DefaultConfig() Config {
	return Config{
		LimitsConfig:  defaultLimitsConfig(),
		DataDir:       "/var/lib/iotgw-broker",
		MaxInflight:   DefaultMaxInflight,
		MaxQueued:     DefaultMaxQueued,
		SessionExpiry: DefaultSessionExpiry,
		CloseTimeout:  DefaultCloseTimeout,
		LogLevel:      "info",
		LogFormat:     "text",
		Plain:         PlainConfig{Addr: "127.0.0.1:1883"},
		TLS:           TLSConfig{Addr: ":8883", ClientAuth: "none"},
		Auth: AuthConfig{
			FreeFailures:        DefaultFreeFailures,
			AddrLockoutMax:      DefaultAddrLockoutMax,
			UserLockoutMax:      DefaultUserLockoutMax,
			MaxConcurrentChecks: DefaultMaxConcurrentCheck,
			CheckQueueTimeout:   DefaultCheckQueueTimeout,
		},
	}
}

// LoadConfig reads and checks a broker.toml. It reads no other file: the
// users file and certificates are read by Config.Options. Errors name the
// offending key.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	c, err := ParseConfig(string(data))
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig is LoadConfig on the file's contents.
func ParseConfig(text string) (Config, error) {
	c := DefaultConfig()
	md, err := toml.Decode(text, &c)
	if err != nil {
		return Config{}, err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func keyErr(key, format string, args ...any) error {
	return fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...))
}

func (c *Config) validate() error {
	if c.Plain.Addr == "" && c.TLS.Addr == "" {
		return keyErr("tls.addr", "both tls.addr and plain.addr are empty: the broker would not listen anywhere")
	}
	if c.Plain.Addr != "" {
		host, _, err := net.SplitHostPort(c.Plain.Addr)
		if err != nil {
			return keyErr("plain.addr", "%v", err)
		}
		if !c.AllowPlainPublic && !isLoopback(host) {
			return keyErr("plain.addr", "%q is not a loopback address; plain MQTT sends passwords in clear, set allow_plain_public = true to allow it", c.Plain.Addr)
		}
	}
	if c.TLS.Addr != "" {
		if _, _, err := net.SplitHostPort(c.TLS.Addr); err != nil {
			return keyErr("tls.addr", "%v", err)
		}
		switch {
		case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
			return keyErr("tls.cert_file", "tls.cert_file and tls.key_file must be set together")
		case c.TLS.CertFile == "" && !c.TLS.GenerateCA:
			return keyErr("tls.cert_file", "required when tls.addr is set, unless tls.generate_ca = true")
		case c.TLS.CertFile == "" && c.DataDir == "":
			return keyErr("tls.generate_ca", "needs data_dir to keep the generated CA across restarts")
		}
		switch c.TLS.ClientAuth {
		case "none":
		case "optional", "require":
			if c.TLS.ClientCAFile == "" && !c.TLS.GenerateCA {
				return keyErr("tls.client_ca_file", "required with tls.client_auth = %q unless tls.generate_ca = true (client certificates are then issued by the generated CA)", c.TLS.ClientAuth)
			}
		default:
			return keyErr("tls.client_auth", "%q is not one of none, optional, require", c.TLS.ClientAuth)
		}
	}
	if err := c.Auth.validate(); err != nil {
		return err
	}
	if c.MaxInflight < 1 {
		return keyErr("max_inflight", "must be at least 1, got %d", c.MaxInflight)
	}
	if c.MaxQueued < 1 || c.MaxQueued > maxQueuedLimit {
		return keyErr("max_queued", "must be between 1 and %d, got %d", maxQueuedLimit, c.MaxQueued)
	}
	if c.SessionExpiry < time.Second {
		return keyErr("session_expiry", "must be at least 1s, got %s", c.SessionExpiry)
	}
	if c.CloseTimeout < 0 {
		return keyErr("close_timeout", "must not be negative, got %s", c.CloseTimeout)
	}
	if err := c.LimitsConfig.validate(); err != nil {
		return err
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return keyErr("log_level", "%v", err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return keyErr("log_format", "%q is not one of text, json", c.LogFormat)
	}
	if len(c.Users) == 0 && c.UsersFile == "" && !c.AllowAnonymous {
		return keyErr("users_file", "no users_file, no [[users]] and allow_anonymous = false: no client could connect")
	}
	for i, u := range c.Users {
		if u.Username == "" {
			return keyErr(fmt.Sprintf("users[%d].username", i), "empty")
		}
		if u.PasswordHash == "" {
			return keyErr(fmt.Sprintf("users[%d].password_hash", i), "empty (make one with `iotgw broker hash-password`)")
		}
	}
	return nil
}

func (a AuthConfig) validate() error {
	switch {
	case a.FreeFailures < 1:
		return keyErr("auth.free_failures", "must be at least 1, got %d", a.FreeFailures)
	case a.AddrLockoutMax < time.Second:
		return keyErr("auth.addr_lockout_max", "must be at least 1s, got %s", a.AddrLockoutMax)
	case a.UserLockoutMax < time.Second:
		return keyErr("auth.user_lockout_max", "must be at least 1s, got %s", a.UserLockoutMax)
	case a.MaxConcurrentChecks < 1:
		return keyErr("auth.max_concurrent_checks", "must be at least 1, got %d", a.MaxConcurrentChecks)
	case a.CheckQueueTimeout < 10*time.Millisecond:
		return keyErr("auth.check_queue_timeout", "must be at least 10ms, got %s", a.CheckQueueTimeout)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

// Level is the parsed log_level.
func (c Config) Level() slog.Level {
	l, _ := parseLevel(c.LogLevel)
	return l
}

// Logger is a logger writing to w at log_level in log_format.
func (c Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Level()}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// TLSDir is where generate_ca keeps the CA and server certificate.
func (c Config) TLSDir() string { return filepath.Join(c.DataDir, "tls") }

// Options reads the users file and the TLS certificate (generating a CA and
// server certificate first when tls.generate_ca is set and no certificate is
// configured) and returns the broker Options. Errors name the key whose
// value could not be used.
func (c Config) Options(log *slog.Logger) (Options, error) {
	if log == nil {
		log = slog.Default()
	}
	o := Options{
		GatewayUsers:     c.GatewayUsers,
		AllowAnonymous:   c.AllowAnonymous,
		AllowPlainPublic: c.AllowPlainPublic,
		DataDir:          c.DataDir,
		MaxInflight:      c.MaxInflight,
		MaxQueued:        c.MaxQueued,
		SessionExpiry:    c.SessionExpiry,
		CloseTimeout:     c.CloseTimeout,
		Throttle:         ThrottleOptions(c.Auth),
		Logger:           log,
	}
	c.LimitsConfig.apply(&o)
	if c.UsersFile != "" {
		f, err := os.Open(c.UsersFile)
		if err != nil {
			return Options{}, keyErr("users_file", "%v", err)
		}
		users, err := ParseUsers(f)
		f.Close()
		if err != nil {
			return Options{}, keyErr("users_file", "%s: %v", c.UsersFile, err)
		}
		o.Users = users
	}
	for _, u := range c.Users {
		o.Users = append(o.Users, User(u))
	}
	if _, err := newAccessHook(o.Users, o.GatewayUsers, o.AllowAnonymous, log); err != nil {
		return Options{}, keyErr("users", "%v", err)
	}
	if c.Plain.Addr != "" {
		o.Listeners = append(o.Listeners, Listener{ID: "plain", Addr: c.Plain.Addr})
	}
	if c.TLS.Addr != "" {
		certFile, keyFile, key := c.TLS.CertFile, c.TLS.KeyFile, "tls.cert_file"
		if certFile == "" {
			g, err := EnsureCertificates(c.TLSDir(), c.TLS.Hosts, time.Now())
			if err != nil {
				return Options{}, keyErr("tls.generate_ca", "%v", err)
			}
			log.Info("clients must trust this CA", "ca_file", g.CAFile, "hosts", withLocalHosts(c.TLS.Hosts))
			certFile, keyFile, key = g.CertFile, g.KeyFile, "tls.generate_ca"
		}
		tc, err := ServerTLSConfig(certFile, keyFile)
		if err != nil {
			return Options{}, keyErr(key, "%v", err)
		}
		if c.TLS.ClientAuth != "none" {
			caFile, caKey := c.TLS.ClientCAFile, "tls.client_ca_file"
			if caFile == "" {
				caFile, caKey = filepath.Join(c.TLSDir(), "ca.pem"), "tls.generate_ca"
			}
			if err := requireClientCerts(tc, caFile, c.TLS.ClientAuth == "require"); err != nil {
				return Options{}, keyErr(caKey, "%v", err)
			}
		}
		o.Listeners = append(o.Listeners, Listener{ID: "tls", Addr: c.TLS.Addr, TLS: tc})
	}
	return o, nil
}

// ParseUsers reads a users file: one user per line as
//
//	username:site:device:bcrypt-hash
//
// with site and device empty for gateway users (`gateway:::$2a$10$...`).
// Blank lines and lines starting with # are ignored.
func ParseUsers(r io.Reader) ([]User, error) {
	var users []User
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		parts := strings.SplitN(text, ":", 4)
		if len(parts) != 4 {
			return nil, fmt.Errorf("line %d: want username:site:device:hash, got %d field(s)", line, len(parts))
		}
		u := User{Username: parts[0], Site: parts[1], Device: parts[2], PasswordHash: parts[3]}
		if u.Username == "" {
			return nil, fmt.Errorf("line %d: empty username", line)
		}
		if (u.Site == "") != (u.Device == "") {
			return nil, fmt.Errorf("line %d: user %q: site and device must both be set (device) or both empty (gateway)", line, u.Username)
		}
		if !strings.HasPrefix(u.PasswordHash, "$2") && u.PasswordHash != CertificateOnly {
			return nil, fmt.Errorf("line %d: user %q: hash is not bcrypt (make one with `iotgw broker hash-password`) nor %q (client certificate only)", line, u.Username, CertificateOnly)
		}
		users = append(users, u)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return users, nil
}
