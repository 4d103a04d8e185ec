// Package stack declares the iot-gateway AWS stack: network rules, storage,
// secrets and the host, as Pulumi component resources whose bodies are plain
// functions, so tests can run them under pulumi.WithMocks.
package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/iot-gateway/iot-gateway/provision/signing"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/config"
)

// Config is the stack configuration, read from Pulumi config under the
// project's namespace (iot-gateway:<key>). Infra/README.md documents every key.
type Config struct {
	Owner        string // tag "owner" on every resource; required
	InstanceType string // default t4g.small
	Architecture string // "arm64" or "x86_64"; derived from InstanceType when empty
	AmiID        string // pin an AMI; default: latest Amazon Linux 2023 via SSM

	VpcID    string // default: the region's default VPC
	SubnetID string // default: the default VPC's default subnet in the first AZ

	MQTTCidrs     []string // may reach MQTT over TLS (8883)
	MQTTPlaintext bool     // also open plain MQTT 1883 to MQTTCidrs; refused when one is the internet
	AdminCidrs    []string // may reach InfluxDB 8086; default none
	SSHCidrs      []string // may reach SSH 22; default none
	SSHPublicKey  string   // imports a key pair when set

	RootVolumeSize     int    // GiB, default 16
	DataVolumeSize     int    // GiB, default 20
	DataVolumeIops     int    // gp3 IOPS, default 3000
	DataVolumeRetain   bool   // keep the data volume on destroy, default true
	DataVolumeProtect  bool   // refuse to delete the data volume, default false
	Snapshots          bool   // daily DLM snapshots of the data volume, default true
	SnapshotRetain     int    // snapshots kept, default 7
	SnapshotTime       string // UTC "HH:MM" of the daily snapshot, default 04:00
	ElasticIP          bool   // allocate and associate an Elastic IP, default false
	RolloutWaitSeconds int    // how long pulumi up waits for the host to apply a new binary, default 1200

	ArtifactPath        string // gateway binary for the architecture; default dist/iotgw-linux-<goarch>
	SigningPublicKey    string // Ed25519 public key (PEM) the host checks the binary with; default dist/iotgw-signing.pub
	ExportPrefix        string // default exports/
	ExportRetentionDays int    // expire exports after N days, default 365
	NoncurrentDays      int    // expire old object versions after N days, default 30
	BucketForceDestroy  bool   // empty the bucket on destroy, default true

	InfluxVersion       string // default provision.DefaultInfluxVersion
	InfluxOrg           string // default iot
	InfluxBucket        string // default sensors
	InfluxRetentionDays int    // default 0 (forever)
	MQTTTopics          []string
	MQTTQoS             int // default 1

	// The scale topology (infra/README.md, "The scale topology"): all
	// three together, or none.
	Broker   string // "local" (default: iotgw broker on the host) or "iot-core"
	Database string // "local" (default: InfluxDB 2 on the host) or "timestream"
	Gateways int    // gateway hosts (slots); 0 (default) is the all-in-one host

	VpcCidr                string // the scale topology's VPC, default 10.42.0.0/16
	AvailabilityZones      int    // AZs the slots and subnets spread over, default 2
	TimestreamInstanceType string // default db.influx.medium
	TimestreamStorage      int    // GiB, default 20
	TimestreamMultiAZ      bool   // a standby in another AZ, default false
	PeakMessagesPerSecond  int    // all devices together; sizes the IoT Core connections, default 1000
	SharedGroup            string // $share/<group>/sensors/#, default iotgw
	DetailedMonitoring     bool   // gateway slots' 1-minute CloudWatch metrics, default true
	BucketAccessLogs       bool   // S3 server access logs of the stack's bucket (scale), default true

	// Secrets: set with `pulumi config set --secret`.
	InfluxAdminPassword string
	InfluxToken         string
	MQTTPassword        string
}

// Secret config keys: required, and must be stored as Pulumi secrets.
const (
	KeyInfluxAdminPassword = "influxAdminPassword"
	KeyInfluxToken         = "influxToken"
	KeyMQTTPassword        = "mqttPassword"
)

// Defaults returns a Config with every optional key at its default.
func Defaults() Config {
	return Config{
		InstanceType:        "t4g.small",
		RootVolumeSize:      16,
		DataVolumeSize:      20,
		DataVolumeIops:      3000,
		DataVolumeRetain:    true,
		Snapshots:           true,
		SnapshotRetain:      7,
		SnapshotTime:        "04:00",
		RolloutWaitSeconds:  1200,
		ExportPrefix:        "exports/",
		ExportRetentionDays: 365,
		NoncurrentDays:      30,
		BucketForceDestroy:  true,
		InfluxOrg:           "iot",
		InfluxBucket:        "sensors",
		MQTTTopics:          []string{"sensors/#"},
		MQTTQoS:             1,

		Broker:                 BrokerLocal,
		Database:               DatabaseLocal,
		VpcCidr:                "10.42.0.0/16",
		AvailabilityZones:      2,
		TimestreamInstanceType: "db.influx.medium",
		TimestreamStorage:      20,
		PeakMessagesPerSecond:  1000,
		SharedGroup:            "iotgw",
		DetailedMonitoring:     true,
		BucketAccessLogs:       true,
	}
}

// Values of broker and database.
const (
	BrokerLocal        = "local"
	BrokerIoTCore      = "iot-core"
	DatabaseLocal      = "local"
	DatabaseTimestream = "timestream"
)

// Scale reports whether c is the scale topology.
func (c Config) Scale() bool { return c.Gateways > 0 }

// LoadConfig reads the stack configuration and validates it. It returns one
// error naming every bad key, before any resource is declared.
func LoadConfig(ctx *pulumi.Context) (Config, error) {
	c := Defaults()
	cfg := config.New(ctx, "")
	var errs []error
	str := func(key string, dst *string) {
		if v, err := cfg.Try(key); err == nil {
			*dst = v
		}
	}
	integer := func(key string, dst *int) {
		if v, err := cfg.Try(key); err == nil {
			if _, err := fmt.Sscan(v, dst); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", key, v))
			}
		}
	}
	boolean := func(key string, dst *bool) {
		if v, err := cfg.Try(key); err == nil {
			switch v {
			case "true":
				*dst = true
			case "false":
				*dst = false
			default:
				errs = append(errs, fmt.Errorf("%s: %q is not true or false", key, v))
			}
		}
	}
	list := func(key string, dst *[]string) {
		if _, err := cfg.Try(key); err == nil {
			var v []string
			if err := cfg.TryObject(key, &v); err != nil {
				errs = append(errs, fmt.Errorf("%s: want a list of strings: %v", key, err))
				return
			}
			*dst = v
		}
	}
	secret := func(key string, dst *string) {
		v, err := cfg.Try(key)
		if err != nil || v == "" {
			return // Validate reports it
		}
		if !ctx.IsConfigSecret(ctx.Project() + ":" + key) {
			errs = append(errs, fmt.Errorf("%s: is stored in plain text; set it again with: pulumi config set --secret %s <value>", key, key))
			return
		}
		*dst = v
	}

	str("owner", &c.Owner)
	str("instanceType", &c.InstanceType)
	str("architecture", &c.Architecture)
	str("amiId", &c.AmiID)
	str("vpcId", &c.VpcID)
	str("subnetId", &c.SubnetID)
	list("mqttCidrs", &c.MQTTCidrs)
	boolean("mqttPlaintext", &c.MQTTPlaintext)
	list("adminCidrs", &c.AdminCidrs)
	list("sshCidrs", &c.SSHCidrs)
	str("sshPublicKey", &c.SSHPublicKey)
	integer("rootVolumeSize", &c.RootVolumeSize)
	integer("dataVolumeSize", &c.DataVolumeSize)
	integer("dataVolumeIops", &c.DataVolumeIops)
	boolean("dataVolumeRetain", &c.DataVolumeRetain)
	boolean("dataVolumeProtect", &c.DataVolumeProtect)
	boolean("snapshots", &c.Snapshots)
	integer("snapshotRetain", &c.SnapshotRetain)
	str("snapshotTime", &c.SnapshotTime)
	boolean("elasticIp", &c.ElasticIP)
	integer("rolloutWaitSeconds", &c.RolloutWaitSeconds)
	str("artifactPath", &c.ArtifactPath)
	str("signingPublicKey", &c.SigningPublicKey)
	str("exportPrefix", &c.ExportPrefix)
	integer("exportRetentionDays", &c.ExportRetentionDays)
	integer("noncurrentVersionDays", &c.NoncurrentDays)
	boolean("bucketForceDestroy", &c.BucketForceDestroy)
	str("influxVersion", &c.InfluxVersion)
	str("influxOrg", &c.InfluxOrg)
	str("influxBucket", &c.InfluxBucket)
	integer("influxRetentionDays", &c.InfluxRetentionDays)
	list("mqttTopics", &c.MQTTTopics)
	integer("mqttQos", &c.MQTTQoS)
	str("broker", &c.Broker)
	str("database", &c.Database)
	integer("gateways", &c.Gateways)
	str("vpcCidr", &c.VpcCidr)
	integer("availabilityZones", &c.AvailabilityZones)
	str("timestreamInstanceType", &c.TimestreamInstanceType)
	integer("timestreamStorage", &c.TimestreamStorage)
	boolean("timestreamMultiAz", &c.TimestreamMultiAZ)
	integer("peakMessagesPerSecond", &c.PeakMessagesPerSecond)
	str("sharedGroup", &c.SharedGroup)
	boolean("detailedMonitoring", &c.DetailedMonitoring)
	boolean("bucketAccessLogs", &c.BucketAccessLogs)
	secret(KeyInfluxAdminPassword, &c.InfluxAdminPassword)
	secret(KeyInfluxToken, &c.InfluxToken)
	secret(KeyMQTTPassword, &c.MQTTPassword)

	root := projectRoot(ctx)
	if c.ArtifactPath != "" && !filepath.IsAbs(c.ArtifactPath) {
		c.ArtifactPath = filepath.Join(root, c.ArtifactPath)
	}
	if k := strings.TrimSpace(c.SigningPublicKey); k != "" && !strings.HasPrefix(k, "-----") {
		// The one base64 line of the PEM file, which reads better in
		// Pulumi.<stack>.yaml.
		c.SigningPublicKey = "-----BEGIN PUBLIC KEY-----\n" + k + "\n-----END PUBLIC KEY-----\n"
	}
	if c.SigningPublicKey == "" {
		// The key scripts/build.sh signed with (a development key unless
		// IOTGW_SIGNING_KEY was set). Pin it per stack so that a binary
		// signed by any other key is refused.
		if b, err := os.ReadFile(filepath.Join(root, DefaultSigningKeyFile)); err == nil {
			c.SigningPublicKey = string(b)
			_ = ctx.Log.Warn("signingPublicKey is not set: using "+DefaultSigningKeyFile+" from the build; "+
				"pin it with: pulumi config set signingPublicKey \"$(cat "+DefaultSigningKeyFile+")\"", nil)
		}
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("invalid stack configuration:\n%w", err)
	}
	if c.ArtifactPath == "" {
		c.ArtifactPath = filepath.Join(root, "dist", "iotgw-linux-"+c.GoArch())
	}
	if len(c.MQTTCidrs) == 0 && !c.Scale() {
		_ = ctx.Log.Warn("mqttCidrs is empty: no device can reach the broker from outside the host; "+
			"run: pulumi config set --path 'mqttCidrs[0]' <your devices' CIDR>", nil)
	}
	return c, nil
}

// DefaultSigningKeyFile is where scripts/build.sh writes the public key of
// the key it signed with, relative to the repository root.
const DefaultSigningKeyFile = "dist/iotgw-signing.pub"

// projectRoot is the directory of Pulumi.yaml, against which relative paths
// in the configuration are resolved. The CLI says where it is; without it,
// look upwards from the program's directory.
func projectRoot(ctx *pulumi.Context) string {
	if r := ctx.RootDirectory(); r != "" {
		return r
	}
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "Pulumi.yaml")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// arm64Family matches the Graviton instance families (t4g, m7g, c8gd, x2gd,
// im4gn, a1, ...): a "g" after the generation digit, before any suffix.
var arm64Family = regexp.MustCompile(`^(a1|[a-z]+[0-9]+g[a-z]*)\.`)

// InstanceArch is the architecture an instance type runs: arm64 or x86_64.
func InstanceArch(instanceType string) string {
	if arm64Family.MatchString(instanceType) {
		return "arm64"
	}
	return "x86_64"
}

// Arch is the configured or derived architecture.
func (c Config) Arch() string {
	if c.Architecture != "" {
		return c.Architecture
	}
	return InstanceArch(c.InstanceType)
}

// GoArch is Arch in Go's spelling, as used by the build script.
func (c Config) GoArch() string {
	if c.Arch() == "arm64" {
		return "arm64"
	}
	return "amd64"
}

var (
	instanceTypeRe = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
	hhmm           = regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]$`)
	safeName       = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	topicRe        = regexp.MustCompile(`^[A-Za-z0-9._/#+-]+$`)
	hostEnvSafe    = regexp.MustCompile(`^[A-Za-z0-9+/=._~:@%,-]+$`)
)

// Validate checks the configuration; the error names every bad key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if c.Owner == "" {
		bad("owner", "required (tagged on every resource); run: pulumi config set owner <team or email>")
	} else if strings.ContainsAny(c.Owner, "\"'\\\n") || len(c.Owner) > 256 {
		bad("owner", "%q is not a valid tag value", c.Owner)
	}
	required := []struct{ key, value string }{
		{KeyInfluxAdminPassword, c.InfluxAdminPassword},
		{KeyInfluxToken, c.InfluxToken},
		{KeyMQTTPassword, c.MQTTPassword},
	}
	if c.Scale() {
		// Timestream hands out no operator token, and IoT Core takes
		// certificates, not passwords.
		required = required[:1]
		for _, s := range []struct{ key, value, why string }{
			{KeyInfluxToken, c.InfluxToken, "Timestream for InfluxDB makes no operator token from it; the gateway slot signs in as the admin"},
			{KeyMQTTPassword, c.MQTTPassword, "devices and gateways authenticate to IoT Core with certificates"},
		} {
			if s.value != "" {
				bad(s.key, "is unused with gateways > 0 (%s); remove it: pulumi config rm %s", s.why, s.key)
			}
		}
	}
	for _, s := range required {
		if s.value == "" {
			bad(s.key, "required secret is not set; run: pulumi config set --secret %s <value>", s.key)
		} else if len(s.value) < 8 {
			bad(s.key, "is shorter than 8 characters (InfluxDB refuses shorter passwords)")
		}
	}
	c.validateScale(bad)
	if c.MQTTPassword != "" && !hostEnvSafe.MatchString(c.MQTTPassword) {
		// The host hands it to the gateway in a systemd environment file.
		bad(KeyMQTTPassword, "may hold only letters, digits and +/=._~:@%%,- (for example: openssl rand -base64 24)")
	}
	if !instanceTypeRe.MatchString(c.InstanceType) {
		bad("instanceType", "%q is not an EC2 instance type like t4g.small", c.InstanceType)
	}
	switch c.Architecture {
	case "", "arm64", "x86_64":
		if c.Architecture != "" && c.Architecture != InstanceArch(c.InstanceType) {
			bad("architecture", "%s does not match instanceType %s, which is %s", c.Architecture, c.InstanceType, InstanceArch(c.InstanceType))
		}
	default:
		bad("architecture", "%q is not arm64 or x86_64", c.Architecture)
	}
	if c.AmiID != "" && !strings.HasPrefix(c.AmiID, "ami-") {
		bad("amiId", "%q is not an AMI id (ami-...)", c.AmiID)
	}
	if c.VpcID != "" && !strings.HasPrefix(c.VpcID, "vpc-") {
		bad("vpcId", "%q is not a VPC id (vpc-...)", c.VpcID)
	}
	if c.SubnetID != "" && !strings.HasPrefix(c.SubnetID, "subnet-") {
		bad("subnetId", "%q is not a subnet id (subnet-...)", c.SubnetID)
	}
	cidrs := func(key string, list []string, allowAny bool) {
		for _, s := range list {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				bad(key, "%q is not a CIDR block like 203.0.113.0/24", s)
				continue
			}
			if p != p.Masked() {
				bad(key, "%q has host bits set; did you mean %s?", s, p.Masked())
				continue
			}
			if !allowAny && p.Bits() == 0 {
				bad(key, "%s would open the port to the whole internet; list the networks that need it (or use an SSM session)", s)
			} else if !allowAny && ((p.Addr().Is4() && p.Bits() < 8) || (p.Addr().Is6() && p.Bits() < 32)) {
				// 0.0.0.0/1 plus 128.0.0.0/1 is the internet too.
				bad(key, "%s is broader than /8 (IPv6: /32); list the networks that need it (or use an SSM session)", s)
			}
		}
	}
	cidrs("mqttCidrs", c.MQTTCidrs, true)
	if c.MQTTPlaintext {
		for _, s := range c.MQTTCidrs {
			if p, err := netip.ParsePrefix(s); err == nil && tooBroad(p) {
				bad("mqttPlaintext", "would open plain MQTT (1883, no TLS) to %s from mqttCidrs; plain MQTT is never opened to the internet (nor broader than /8, IPv6 /32): "+
					"list the devices' networks in mqttCidrs, or leave mqttPlaintext false and use 8883", s)
			}
		}
	}
	cidrs("adminCidrs", c.AdminCidrs, false)
	cidrs("sshCidrs", c.SSHCidrs, false)
	if c.SSHPublicKey != "" && !strings.HasPrefix(c.SSHPublicKey, "ssh-") && !strings.HasPrefix(c.SSHPublicKey, "ecdsa-") {
		bad("sshPublicKey", "is not an OpenSSH public key (ssh-ed25519 ..., ssh-rsa ..., ecdsa-...)")
	}
	if c.RootVolumeSize < 8 || c.RootVolumeSize > 16384 {
		bad("rootVolumeSize", "%d GiB is outside 8..16384 (the AMI needs 8)", c.RootVolumeSize)
	}
	if c.DataVolumeSize < 1 || c.DataVolumeSize > 16384 {
		bad("dataVolumeSize", "%d GiB is outside 1..16384", c.DataVolumeSize)
	}
	if c.DataVolumeIops < 3000 || c.DataVolumeIops > 16000 {
		bad("dataVolumeIops", "%d is outside gp3's 3000..16000", c.DataVolumeIops)
	}
	if c.Snapshots {
		if c.SnapshotRetain < 1 || c.SnapshotRetain > 1000 {
			bad("snapshotRetain", "%d is outside 1..1000", c.SnapshotRetain)
		}
		if !hhmm.MatchString(c.SnapshotTime) {
			bad("snapshotTime", "%q is not a UTC time like 04:00", c.SnapshotTime)
		}
	}
	if c.RolloutWaitSeconds < 0 || c.RolloutWaitSeconds > 3600 {
		bad("rolloutWaitSeconds", "%d is outside 0..3600", c.RolloutWaitSeconds)
	}
	if !safeName.MatchString(strings.TrimSuffix(c.ExportPrefix, "/")) || !strings.HasSuffix(c.ExportPrefix, "/") || strings.HasPrefix(c.ExportPrefix, "artifacts/") {
		bad("exportPrefix", "%q must be one path segment ending in / (and not artifacts/)", c.ExportPrefix)
	}
	if c.ExportRetentionDays < 1 {
		bad("exportRetentionDays", "%d must be at least 1", c.ExportRetentionDays)
	}
	if c.NoncurrentDays < 1 {
		bad("noncurrentVersionDays", "%d must be at least 1", c.NoncurrentDays)
	}
	if c.SigningPublicKey == "" {
		bad("signingPublicKey", "required: the host installs only a gateway binary signed by this key; run scripts/build.sh (it writes %s), "+
			"then: pulumi config set signingPublicKey \"$(cat %s)\"", DefaultSigningKeyFile, DefaultSigningKeyFile)
	} else if _, err := signing.ParsePublicKey([]byte(c.SigningPublicKey)); err != nil {
		bad("signingPublicKey", "%v", err)
	}
	if c.InfluxVersion != "" && !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(c.InfluxVersion) {
		bad("influxVersion", "%q is not a version like 2.7.12", c.InfluxVersion)
	}
	if !safeName.MatchString(c.InfluxOrg) {
		bad("influxOrg", "%q must be letters, digits, ., _ or -", c.InfluxOrg)
	}
	if !safeName.MatchString(c.InfluxBucket) {
		bad("influxBucket", "%q must be letters, digits, ., _ or -", c.InfluxBucket)
	}
	if c.InfluxRetentionDays < 0 {
		bad("influxRetentionDays", "%d is negative (0 keeps data forever)", c.InfluxRetentionDays)
	}
	if len(c.MQTTTopics) == 0 {
		bad("mqttTopics", "needs at least one topic filter")
	}
	for _, t := range c.MQTTTopics {
		if !topicRe.MatchString(t) {
			bad("mqttTopics", "%q is not a topic filter like sensors/#", t)
		}
	}
	if c.MQTTQoS < 0 || c.MQTTQoS > 2 {
		bad("mqttQos", "%d is not 0, 1 or 2", c.MQTTQoS)
	}
	return errors.Join(errs...)
}
