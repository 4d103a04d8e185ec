package export

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Defaults, stated once. README.md documents each option next to them.
const (
	DefaultPrefix             = "exports"
	DefaultDir                = "/var/lib/iotgw/export"
	DefaultPartSize           = 8 << 20  // bytes per multipart part
	DefaultMultipartThreshold = 16 << 20 // files at least this large go multipart
	DefaultMaxCatchUpDays     = 31
	DefaultRecheckDays        = 7 // days --catch-up looks back for late data
	// MinAWSPartSize is S3's smallest allowed part (except the last one).
	// S3-compatible servers may allow less, so it is only enforced when no
	// custom endpoint is set.
	MinAWSPartSize = 5 << 20
)

// Influx is the connection to the database the data is read from. The keys
// are the gateway's [influx] table and IOTGW_INFLUX_* variables; the same
// values serve both.
type Influx struct {
	URL    string `toml:"url"`
	Token  string `toml:"token"`
	Org    string `toml:"org"`
	Bucket string `toml:"bucket"`
}

// Config is the [export] table of the gateway's TOML file. Zero values
// mean the defaults above; WithDefaults fills them in.
type Config struct {
	// Bucket is the S3 bucket the day's files are uploaded to.
	Bucket string `toml:"bucket"`
	// Prefix is the key prefix inside Bucket, without slashes at the ends.
	Prefix string `toml:"prefix"`
	// Dir is the local folder the files are written to before upload; it
	// also holds the catch-up state file.
	Dir string `toml:"dir"`
	// S3Endpoint points the S3 client at an S3-compatible server
	// (path-style addressing); empty means AWS.
	S3Endpoint string `toml:"s3_endpoint"`
	// Region overrides the region from the AWS default chain.
	Region string `toml:"region"`
	// PartSize is the size of each multipart upload part in bytes.
	PartSize int64 `toml:"part_size"`
	// MultipartThreshold is the file size from which uploads are multipart.
	MultipartThreshold int64 `toml:"multipart_threshold"`
	// MaxCatchUpDays bounds how many missed days one --catch-up run exports.
	MaxCatchUpDays int `toml:"max_catch_up_days"`
	// RecheckDays is how many past days each --catch-up run checks for late
	// data (and exports again when they have some).
	RecheckDays int `toml:"recheck_days"`
	// SkipDashboards leaves out dashboards.json, for databases without the
	// InfluxDB 2 dashboards API (InfluxDB 1.8 in local runs).
	SkipDashboards bool `toml:"skip_dashboards"`
}

// Environment variables read by FromEnv, with the TOML key each overrides.
var envKeys = []struct{ env, key string }{
	{"IOTGW_INFLUX_URL", "influx.url"},
	{"IOTGW_INFLUX_TOKEN", "influx.token"},
	{"IOTGW_INFLUX_ORG", "influx.org"},
	{"IOTGW_INFLUX_BUCKET", "influx.bucket"},
	{"IOTGW_EXPORT_BUCKET", "export.bucket"},
	{"IOTGW_EXPORT_PREFIX", "export.prefix"},
	{"IOTGW_EXPORT_DIR", "export.dir"},
	{"IOTGW_S3_ENDPOINT", "export.s3_endpoint"},
	{"IOTGW_EXPORT_PART_SIZE", "export.part_size"},
	{"IOTGW_EXPORT_SKIP_DASHBOARDS", "export.skip_dashboards"},
}

// FromEnv overrides fields with the IOTGW_* variables that are set
// (lookup is os.LookupEnv in production). A set but empty variable clears the
// value, so IOTGW_INFLUX_TOKEN= selects an empty token.
func FromEnv(in *Influx, c *Config, lookup func(string) (string, bool)) error {
	for _, e := range envKeys {
		v, ok := lookup(e.env)
		if !ok {
			continue
		}
		switch e.env {
		case "IOTGW_INFLUX_URL":
			in.URL = v
		case "IOTGW_INFLUX_TOKEN":
			in.Token = v
		case "IOTGW_INFLUX_ORG":
			in.Org = v
		case "IOTGW_INFLUX_BUCKET":
			in.Bucket = v
		case "IOTGW_EXPORT_BUCKET":
			c.Bucket = v
		case "IOTGW_EXPORT_PREFIX":
			c.Prefix = v
		case "IOTGW_EXPORT_DIR":
			c.Dir = v
		case "IOTGW_S3_ENDPOINT":
			c.S3Endpoint = v
		case "IOTGW_EXPORT_PART_SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%s (%s): %q is not a whole number of bytes", e.key, e.env, v)
			}
			c.PartSize = n
		case "IOTGW_EXPORT_SKIP_DASHBOARDS":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%s (%s): %q is not true or false", e.key, e.env, v)
			}
			c.SkipDashboards = b
		}
	}
	return nil
}

// WithDefaults returns c with every unset option at its default.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.MultipartThreshold == 0 {
		c.MultipartThreshold = DefaultMultipartThreshold
	}
	if c.MaxCatchUpDays == 0 {
		c.MaxCatchUpDays = DefaultMaxCatchUpDays
	}
	if c.RecheckDays == 0 {
		c.RecheckDays = DefaultRecheckDays
	}
	return c
}

// Validate checks the export options. upload says whether the S3 options
// are needed (they are not with --no-upload). Errors name the TOML key and
// its environment variable.
func (c Config) Validate(upload bool) error {
	var errs []error
	if upload && c.Bucket == "" {
		errs = append(errs, errors.New("export.bucket (IOTGW_EXPORT_BUCKET) is empty: name the S3 bucket, or pass --no-upload"))
	}
	if strings.Contains(c.Prefix, "//") || strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") {
		errs = append(errs, fmt.Errorf("export.prefix (IOTGW_EXPORT_PREFIX) %q: no leading, trailing or double slashes", c.Prefix))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("export.dir (IOTGW_EXPORT_DIR) is empty"))
	}
	if c.S3Endpoint != "" {
		if u, err := url.Parse(c.S3Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("export.s3_endpoint (IOTGW_S3_ENDPOINT) %q: want an http:// or https:// URL", c.S3Endpoint))
		}
	}
	switch {
	case c.PartSize <= 0:
		errs = append(errs, fmt.Errorf("export.part_size (IOTGW_EXPORT_PART_SIZE) %d: must be positive", c.PartSize))
	case c.S3Endpoint == "" && c.PartSize < MinAWSPartSize:
		errs = append(errs, fmt.Errorf("export.part_size (IOTGW_EXPORT_PART_SIZE) %d: AWS S3 needs at least %d bytes", c.PartSize, MinAWSPartSize))
	}
	if c.MultipartThreshold < c.PartSize {
		errs = append(errs, fmt.Errorf("export.multipart_threshold %d: must be at least export.part_size (%d)", c.MultipartThreshold, c.PartSize))
	}
	if c.MaxCatchUpDays < 1 || c.MaxCatchUpDays > 366 {
		errs = append(errs, fmt.Errorf("export.max_catch_up_days %d: must be between 1 and 366", c.MaxCatchUpDays))
	}
	if c.RecheckDays < 1 || c.RecheckDays > 366 {
		errs = append(errs, fmt.Errorf("export.recheck_days %d: must be between 1 and 366", c.RecheckDays))
	}
	return errors.Join(errs...)
}

// Validate checks the database connection settings. The token may be
// empty: InfluxDB 1.8 with authentication off accepts that.
func (in Influx) Validate() error {
	var errs []error
	if in.URL == "" {
		errs = append(errs, errors.New("influx.url (IOTGW_INFLUX_URL) is empty"))
	} else if u, err := url.Parse(in.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("influx.url (IOTGW_INFLUX_URL) %q: want an http:// or https:// URL", in.URL))
	}
	if in.Org == "" {
		errs = append(errs, errors.New("influx.org (IOTGW_INFLUX_ORG) is empty"))
	}
	if in.Bucket == "" {
		errs = append(errs, errors.New("influx.bucket (IOTGW_INFLUX_BUCKET) is empty"))
	}
	return errors.Join(errs...)
}
