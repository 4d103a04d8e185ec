package export

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// Config is the [export] table of the gateway's TOML file. app/config
// loads, defaults and validates it with the rest of the file, so `iotgw
// run --check` and `iotgw export` judge it alike.
type Config = config.Export

// Defaults, stated once in app/config. README.md documents each option.
const (
	DefaultPrefix             = config.DefaultExportPrefix
	DefaultDir                = config.DefaultExportDir
	DefaultPartSize           = config.DefaultPartSize
	DefaultMultipartThreshold = config.DefaultMultipartThreshold
	DefaultMaxCatchUpDays     = config.DefaultMaxCatchUpDays
	DefaultRecheckDays        = config.DefaultRecheckDays
	MinAWSPartSize            = config.MinAWSPartSize
)

// Influx is the connection to the database the data is read from: the
// gateway's [influx] table (and IOTGW_INFLUX_* variables), of which the
// export needs these four.
type Influx struct {
	URL    string
	Token  string
	Org    string
	Bucket string
}

// InfluxFrom takes the connection from the gateway's [influx] table.
func InfluxFrom(c config.Influx) Influx {
	return Influx{URL: c.URL, Token: c.Token, Org: c.Org, Bucket: c.Bucket}
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
