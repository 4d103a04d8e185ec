package export

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Bucket: "b"}.WithDefaults()
	if err := ok.Validate(true); err != nil {
		t.Fatalf("defaults with a bucket: %v", err)
	}
	cases := []struct {
		name   string
		mod    func(*Config)
		upload bool
		want   string
	}{
		{"no bucket", func(c *Config) { c.Bucket = "" }, true, "export.bucket (IOTGW_EXPORT_BUCKET)"},
		{"prefix slash", func(c *Config) { c.Prefix = "/x" }, true, "export.prefix (IOTGW_EXPORT_PREFIX)"},
		{"endpoint", func(c *Config) { c.S3Endpoint = "localhost:9000" }, true, "export.s3_endpoint (IOTGW_S3_ENDPOINT)"},
		{"small part on AWS", func(c *Config) { c.PartSize = 1 << 20 }, true, "export.part_size"},
		{"threshold below part", func(c *Config) { c.MultipartThreshold = 1 << 20 }, true, "export.multipart_threshold"},
		{"catch-up bound", func(c *Config) { c.MaxCatchUpDays = 1000 }, true, "export.max_catch_up_days"},
		{"recheck bound", func(c *Config) { c.RecheckDays = -1 }, true, "export.recheck_days"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.mod(&cfg)
			if err := cfg.Validate(c.upload); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
	noBucket := ok
	noBucket.Bucket = ""
	if err := noBucket.Validate(false); err != nil {
		t.Errorf("--no-upload needs no bucket: %v", err)
	}
	small := ok
	small.S3Endpoint, small.PartSize = "http://127.0.0.1:9000", 64<<10
	if err := small.Validate(true); err != nil {
		t.Errorf("small parts on an S3-compatible server: %v", err)
	}
}

func TestInfluxValidate(t *testing.T) {
	if err := (Influx{URL: "http://127.0.0.1:8086", Org: "iot", Bucket: "sensors"}).Validate(); err != nil {
		t.Errorf("empty token must be accepted: %v", err)
	}
	err := Influx{URL: "127.0.0.1:8086"}.Validate()
	for _, want := range []string{"influx.url (IOTGW_INFLUX_URL)", "influx.org (IOTGW_INFLUX_ORG)", "influx.bucket (IOTGW_INFLUX_BUCKET)"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
