package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Defaults of the [export] table, stated once. app/export/README.md
// documents each option next to them.
const (
	DefaultExportPrefix       = "exports"
	DefaultExportDir          = "/var/lib/iotgw/export"
	DefaultPartSize           = 8 << 20  // bytes per multipart part
	DefaultMultipartThreshold = 16 << 20 // files at least this large go multipart
	DefaultMaxCatchUpDays     = 31
	DefaultRecheckDays        = 7 // days --catch-up looks back for late data
	// MinAWSPartSize is S3's smallest allowed part (except the last one).
	// S3-compatible servers may allow less, so it is only enforced when no
	// custom endpoint is set.
	MinAWSPartSize = 5 << 20
)

// Export is the [export] table, read by `iotgw export` (app/export). Zero
// values mean the defaults above; WithDefaults fills them in. The gateway
// validates it too (`iotgw run --check`), so a bad value is found when the
// file is deployed, not when the nightly export runs.
type Export struct {
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

// WithDefaults returns c with every unset option at its default.
func (c Export) WithDefaults() Export {
	if c.Prefix == "" {
		c.Prefix = DefaultExportPrefix
	}
	if c.Dir == "" {
		c.Dir = DefaultExportDir
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
// are needed (they are not with --no-upload, nor for the gateway). Errors
// name the TOML key and its environment variable.
func (c Export) Validate(upload bool) error {
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
