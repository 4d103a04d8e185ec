// Package provision renders what a fresh Amazon Linux 2023 host needs to run
// iot-gateway: the cloud-init user-data (a small bootstrap), the systemd
// units, the configuration files and the setup script. The files live next
// to this package and are embedded, so the Pulumi program, the tests and the
// gateway binary (`iotgw provision-files`, which writes them on the host) use
// the same bytes.
package provision

import (
	"bytes"
	"compress/gzip"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"

	"github.com/iot-gateway/iot-gateway/provision/dashboards"
	"github.com/iot-gateway/iot-gateway/provision/signing"
)

//go:embed files
var files embed.FS

// MaxUserData is EC2's limit on user-data, counted before base64.
const MaxUserData = 16 * 1024

// UserDataBudget is what a role's user-data may use: half of EC2's limit,
// so that new roles and settings have room.
const UserDataBudget = MaxUserData / 2

// Where `iotgw provision-files` stages the rendered files; the setup script
// installs them from here into place, so rerunning it converges on them.
const (
	PayloadDir      = "/usr/local/lib/iotgw/payload"
	SetupScript     = "/usr/local/sbin/iotgw-setup"
	BootstrapScript = "/usr/local/sbin/iotgw-bootstrap"
	BootstrapEnv    = "/etc/iotgw/bootstrap.env"
)

// Defaults for Params fields left empty.
const (
	DefaultInfluxVersion        = "2.7.12"
	DefaultInfluxKeyURL         = "https://repos.influxdata.com/influxdata-archive.key"
	DefaultInfluxKeyFingerprint = "24C975CBA61A024EE1B631787C3D57159FC2F927"
	DefaultDataDevice           = "/dev/sdf"
	DefaultDataFSType           = "xfs"
	DefaultHTTPAddr             = "127.0.0.1:9273"
)

// Paths on the host that the rendered configuration, the units and the
// setup script agree on. /var/lib/iotgw and /var/lib/iotgw-broker are bind
// mounts of the data volume.
const (
	GatewayConfig   = "/etc/iotgw/gateway.toml"
	BrokerConfig    = "/etc/iotgw/broker.toml"
	SpoolDir        = "/var/lib/iotgw/spool"  // spool.dir; iotgw.service StateDirectory=iotgw
	ExportDir       = "/var/lib/iotgw/export" // export.dir; iotgw-export.service StateDirectory=iotgw/export
	BrokerDataDir   = "/var/lib/iotgw-broker" // data_dir; iotgw-broker.service StateDirectory=iotgw-broker
	BrokerTLSDir    = BrokerDataDir + "/tls"  // written by iotgw-setup
	BrokerUsersFile = "/etc/iotgw/broker-users"
	SigningKeyFile  = "/etc/iotgw/signing.pub" // Params.SigningPublicKey; checks the artifact
	ExportEnvFile   = "/etc/iotgw/export.env"  // iotgw-export.service: the export's own token
	// ExportCredsFile: the export role's short-lived credentials, written
	// by iotgw-export-secrets.service (root only), read by systemd for
	// iotgw-export.service.
	ExportCredsFile = "/run/iotgw-export-secrets/aws.env"
	MQTTPlainPort   = "1883"
	MQTTTLSPort     = "8883"
)

// GatewaySecrets are the SSM parameters, relative to Params.ParamPath, that
// gateway.toml refers to as ssm:/path values, and ExportSecrets those that
// export.env does. infra/stack creates each. The InfluxDB tokens are made by
// iotgw-setup with the operator token (influx-token), which neither gets:
// influx-run-token may only write the bucket, influx-export-token only read.
var (
	GatewaySecrets = []string{"mqtt-password", "influx-run-token"}
	ExportSecrets  = []string{"influx-export-token"}
)

// TokenPlaceholder starts the value infra/stack gives the token parameters
// until iotgw-setup writes the real token.
const TokenPlaceholder = "pending:"

// Host roles: what a host runs.
const (
	// RoleAllInOne runs the broker, InfluxDB 2 and the gateway.
	RoleAllInOne = "all-in-one"
	// RoleGateway runs only the gateway (a slot of the scale topology): it
	// subscribes to AWS IoT Core over mutual TLS and writes to Amazon
	// Timestream for InfluxDB.
	RoleGateway = "gateway"
)

// IoT Core client certificate and key of a gateway slot: iotgw-setup
// gateway-secrets copies them from SSM (IoTCertParam, IoTKeyParam under
// ParamPath) into memory, readable by the iotgw group only.
const (
	IoTCertParam = "iot-gateway-cert"
	IoTKeyParam  = "iot-gateway-key"
	IoTCertFile  = "/run/iotgw-secrets/iot.crt"
	IoTKeyFile   = "/run/iotgw-secrets/iot.key"
)

// Params are the stack settings the host needs. None of them is secret:
// secrets stay in SSM under ParamPath and are fetched by the host.
type Params struct {
	Stack     string // Pulumi stack name
	Region    string // AWS region, for the aws CLI and SDK on the host
	ParamPath string // SSM path of the stack's parameters, e.g. /iot-gateway/dev
	Role      string // RoleAllInOne (default) or RoleGateway

	// RoleGateway only.
	Slot            int    // the slot's number; its client id and data volume are the slot's
	BrokerURL       string // ssl://<IoT Core ATS endpoint>:8883
	MQTTConnections int    // connections of this slot to the shared subscription
	InfluxURL       string // https://<Timestream for InfluxDB endpoint>:8086
	// InfluxAdmin: this slot makes the gateways' and the export's InfluxDB
	// tokens (signing in as the admin) and runs the daily export.
	InfluxAdmin bool

	DataVolumeID string // EBS volume id of the data volume (found by NVMe serial)
	DataDevice   string // device name it is attached as; fallback when no id
	DataFSType   string // filesystem made on a blank data volume

	InfluxVersion        string // influxdb2 package version
	InfluxKeyURL         string // InfluxData package signing key
	InfluxKeyFingerprint string // its expected fingerprint
	InfluxOrg            string
	InfluxBucket         string
	InfluxRetentionDays  int    // 0 keeps data forever
	InfluxAdminUser      string // the admin login created by setup
	InfluxListenPublic   bool   // listen on all interfaces (adminCidrs set)

	MQTTClientID        string
	MQTTUsername        string // the gateway's own broker account
	MQTTQoS             int
	MQTTTopics          []string
	MQTTPlaintextPublic bool // plain 1883 on all interfaces, not loopback only

	HTTPAddr     string // gateway health and metrics listener
	ExportBucket string // S3 bucket of the daily export
	ExportPrefix string // key prefix of the daily export, ending in "/"
	// ExportRoleArn is the IAM role iotgw-export-secrets.service assumes
	// with the instance role for the export's short-lived credentials;
	// required on the all-in-one host. A gateway slot has none: its VPC
	// has no STS endpoint, and slot 0 exports with its own role.
	ExportRoleArn string

	// SigningPublicKey is the Ed25519 public key (PEM) the host checks the
	// gateway artifact's signature with (package provision/signing). It
	// reaches the host in the user-data only, never with the host
	// parameters: whoever can write those cannot change what the host
	// trusts.
	SigningPublicKey string `json:"-"`
}

// File is one rendered file and where it goes on the host.
type File struct {
	Path    string // absolute path on the host
	Mode    string // octal, e.g. "0644"
	Content string
}

// safe is what may appear in a rendered value: it goes into shell
// single quotes, TOML and JSON strings, so no quotes, backslashes,
// dollars, spaces or control characters.
var safe = regexp.MustCompile(`^[A-Za-z0-9._:/#+@=-]*$`)

func (p Params) withDefaults() Params {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&p.DataDevice, DefaultDataDevice)
	def(&p.DataFSType, DefaultDataFSType)
	def(&p.InfluxVersion, DefaultInfluxVersion)
	def(&p.InfluxKeyURL, DefaultInfluxKeyURL)
	def(&p.InfluxKeyFingerprint, DefaultInfluxKeyFingerprint)
	def(&p.InfluxOrg, "iot")
	def(&p.InfluxBucket, "sensors")
	def(&p.InfluxAdminUser, "admin")
	def(&p.MQTTUsername, "iotgw")
	def(&p.MQTTClientID, "iotgw-"+p.Stack)
	def(&p.HTTPAddr, DefaultHTTPAddr)
	def(&p.ExportPrefix, "exports/")
	def(&p.Role, RoleAllInOne)
	if p.Role == RoleGateway && p.MQTTConnections == 0 {
		p.MQTTConnections = 1
	}
	if len(p.MQTTTopics) == 0 {
		p.MQTTTopics = []string{"sensors/#"}
	}
	return p
}

// Validate reports the first field that is missing or cannot be rendered
// safely, by name.
func (p Params) Validate() error {
	p = p.withDefaults()
	fields := []struct {
		name, value string
		required    bool
	}{
		{"Stack", p.Stack, true},
		{"Region", p.Region, true},
		{"ParamPath", p.ParamPath, true},
		{"DataVolumeID", p.DataVolumeID, false},
		{"DataDevice", p.DataDevice, true},
		{"DataFSType", p.DataFSType, true},
		{"InfluxVersion", p.InfluxVersion, true},
		{"InfluxKeyURL", p.InfluxKeyURL, true},
		{"InfluxKeyFingerprint", p.InfluxKeyFingerprint, true},
		{"InfluxOrg", p.InfluxOrg, true},
		{"InfluxBucket", p.InfluxBucket, true},
		{"InfluxAdminUser", p.InfluxAdminUser, true},
		{"MQTTClientID", p.MQTTClientID, true},
		{"MQTTUsername", p.MQTTUsername, true},
		{"HTTPAddr", p.HTTPAddr, true},
		{"ExportBucket", p.ExportBucket, true},
		{"ExportPrefix", p.ExportPrefix, true},
		{"ExportRoleArn", p.ExportRoleArn, p.Role == RoleAllInOne},
		{"Role", p.Role, true},
		{"BrokerURL", p.BrokerURL, p.Role == RoleGateway},
		{"InfluxURL", p.InfluxURL, p.Role == RoleGateway},
	}
	for i, t := range p.MQTTTopics {
		fields = append(fields, struct {
			name, value string
			required    bool
		}{fmt.Sprintf("MQTTTopics[%d]", i), shareGroup.ReplaceAllString(t, ""), true})
	}
	for _, f := range fields {
		if f.required && f.value == "" {
			return fmt.Errorf("provision: %s is required", f.name)
		}
		if !safe.MatchString(f.value) {
			return fmt.Errorf("provision: %s %q has characters other than letters, digits and ._:/#+@=-", f.name, f.value)
		}
	}
	if p.ExportRoleArn != "" && !exportRoleArn.MatchString(p.ExportRoleArn) {
		return fmt.Errorf("provision: ExportRoleArn %q is not an IAM role ARN (arn:<partition>:iam::<account>:role/<name>)", p.ExportRoleArn)
	}
	if !strings.HasPrefix(p.ParamPath, "/") || strings.HasSuffix(p.ParamPath, "/") {
		return fmt.Errorf("provision: ParamPath %q must start with / and not end with /", p.ParamPath)
	}
	if k := strings.TrimSuffix(p.ExportPrefix, "/"); !strings.HasSuffix(p.ExportPrefix, "/") || k == "" ||
		strings.HasPrefix(k, "/") || strings.Contains(k, "//") {
		return fmt.Errorf("provision: ExportPrefix %q must end with / and have no leading or double slashes", p.ExportPrefix)
	}
	for i, t := range p.MQTTTopics {
		// The broker (and the IoT policy) let the gateway subscribe only
		// under sensors/.
		if f := shareGroup.ReplaceAllString(t, ""); f != "sensors/#" && !strings.HasPrefix(f, "sensors/") {
			return fmt.Errorf("provision: MQTTTopics[%d] %q is not under sensors/, which is all the broker lets the gateway subscribe to", i, t)
		}
		if p.Role == RoleGateway && !shareGroup.MatchString(t) {
			return fmt.Errorf("provision: MQTTTopics[%d] %q is not a shared subscription ($share/<group>/...): each message would reach every slot", i, t)
		}
	}
	switch p.Role {
	case RoleAllInOne:
		if p.BrokerURL != "" || p.InfluxURL != "" || p.InfluxAdmin || p.MQTTConnections != 0 || p.Slot != 0 {
			return errors.New("provision: BrokerURL, InfluxURL, InfluxAdmin, MQTTConnections and Slot are for the gateway role only")
		}
	case RoleGateway:
		if p.ExportRoleArn != "" {
			return errors.New("provision: ExportRoleArn is for the all-in-one host only: a gateway slot's VPC has no STS endpoint")
		}
		if !strings.HasPrefix(p.BrokerURL, "ssl://") {
			return fmt.Errorf("provision: BrokerURL %q is not ssl://host:port: a gateway slot reaches its broker over TLS only", p.BrokerURL)
		}
		if !strings.HasPrefix(p.InfluxURL, "https://") {
			return fmt.Errorf("provision: InfluxURL %q is not https://: a gateway slot reaches InfluxDB over TLS only", p.InfluxURL)
		}
		if p.MQTTConnections < 1 || p.MQTTConnections > 64 {
			return fmt.Errorf("provision: MQTTConnections %d is outside 1..64", p.MQTTConnections)
		}
		if p.Slot < 0 {
			return fmt.Errorf("provision: Slot %d is negative", p.Slot)
		}
		if p.MQTTPlaintextPublic || p.InfluxListenPublic {
			return errors.New("provision: MQTTPlaintextPublic and InfluxListenPublic are for the all-in-one role: a gateway slot runs no broker and no InfluxDB")
		}
	default:
		return fmt.Errorf("provision: Role %q is not %s or %s", p.Role, RoleAllInOne, RoleGateway)
	}
	if p.MQTTQoS < 0 || p.MQTTQoS > 2 {
		return fmt.Errorf("provision: MQTTQoS %d is not 0, 1 or 2", p.MQTTQoS)
	}
	if p.InfluxRetentionDays < 0 {
		return fmt.Errorf("provision: InfluxRetentionDays %d is negative", p.InfluxRetentionDays)
	}
	if p.SigningPublicKey == "" {
		return errors.New("provision: SigningPublicKey is required: the host refuses an unsigned gateway binary")
	}
	if _, err := signing.ParsePublicKey([]byte(p.SigningPublicKey)); err != nil {
		return fmt.Errorf("provision: SigningPublicKey: %w", err)
	}
	return nil
}

// exportRoleArn is the shape of an IAM role ARN, as aws sts assume-role
// takes it.
var exportRoleArn = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$`)

// shareGroup matches the $share/<group>/ prefix of a shared subscription.
var shareGroup = regexp.MustCompile(`^\$share/[A-Za-z0-9_-]+/`)

// payload maps each embedded file to its place on the host, and the role
// that gets it ("" for every role).
var payload = []struct {
	src, dst, role string
}{
	{"files/host.env.tmpl", "/etc/iotgw/host.env", ""},
	{"files/gateway.toml.tmpl", GatewayConfig, ""},
	{"files/broker.toml.tmpl", BrokerConfig, RoleAllInOne},
	{"files/export.env.tmpl", ExportEnvFile, ""},
	{"signing-key", SigningKeyFile, ""},
	// The dashboard as code, the same file `iotgw export` round-trips.
	{"dashboards:sensors.json", "/etc/iotgw/dashboards/iotgw.json", ""},
	{"files/influxdb-config.toml.tmpl", "/etc/influxdb/config.toml", RoleAllInOne},
	{"files/sysusers-iotgw.conf", "/etc/sysusers.d/iotgw.conf", ""},
	{"files/systemd/iotgw.service", "/etc/systemd/system/iotgw.service", ""},
	{"files/systemd/iotgw-broker.service", "/etc/systemd/system/iotgw-broker.service", RoleAllInOne},
	{"files/systemd/iotgw-export.service", "/etc/systemd/system/iotgw-export.service", ""},
	{"files/systemd/iotgw-export.timer", "/etc/systemd/system/iotgw-export.timer", ""},
	{"files/systemd/iotgw-secrets.service", "/etc/systemd/system/iotgw-secrets.service", ""},
	{"files/systemd/iotgw-export-secrets.service", "/etc/systemd/system/iotgw-export-secrets.service", ""},
	{"files/systemd/influxdb-dropin.conf", "/etc/systemd/system/influxdb.service.d/iotgw.conf", RoleAllInOne},
	{"files/systemd/iotgw-secrets-gateway.conf", "/etc/systemd/system/iotgw-secrets.service.d/gateway.conf", RoleGateway},
	{"files/systemd/iotgw-export-gateway.conf", "/etc/systemd/system/iotgw-export.service.d/gateway.conf", RoleGateway},
}

// Files renders every file the host gets: the bootstrap and setup scripts
// and the payload the setup installs. Paths are where `iotgw
// provision-files` writes them.
func Files(p Params) ([]File, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p = p.withDefaults()
	script, err := files.ReadFile("files/setup-host.sh")
	if err != nil {
		return nil, err
	}
	out := []File{
		{Path: BootstrapScript, Mode: "0755", Content: string(BootstrapScriptSource())},
		{Path: SetupScript, Mode: "0755", Content: string(script)},
	}
	for _, f := range payload {
		if f.role != "" && f.role != p.Role {
			continue
		}
		content, err := render(f.src, p)
		if err != nil {
			return nil, err
		}
		out = append(out, File{Path: PayloadDir + f.dst, Mode: "0644", Content: content})
	}
	return out, nil
}

func render(name string, p Params) (string, error) {
	if name == "signing-key" {
		return strings.TrimSpace(p.SigningPublicKey) + "\n", nil
	}
	if rest, ok := strings.CutPrefix(name, "dashboards:"); ok {
		b, err := dashboards.FS.ReadFile(rest)
		return string(b), err
	}
	b, err := files.ReadFile(name)
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(name, ".tmpl") {
		return string(b), nil
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(b))
	if err != nil {
		return "", fmt.Errorf("provision: parse %s: %w", name, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, p.templateData()); err != nil {
		return "", fmt.Errorf("provision: render %s: %w", name, err)
	}
	return buf.String(), nil
}

// templateData adds the values derived from Params and the paths above.
func (p Params) templateData() any {
	plain := "127.0.0.1:" + MQTTPlainPort
	if p.MQTTPlaintextPublic {
		plain = ":" + MQTTPlainPort
	}
	mqttURL, influxURL := "tcp://127.0.0.1:"+MQTTPlainPort, "http://127.0.0.1:8086"
	if p.Role == RoleGateway {
		mqttURL, influxURL = p.BrokerURL, p.InfluxURL
	}
	return struct {
		Params
		MQTTURL         string // the gateway's broker: plain MQTT on loopback, or IoT Core
		InfluxWriteURL  string // the gateway's InfluxDB
		Gateway         bool   // RoleGateway
		IoTCertFile     string
		IoTKeyFile      string
		MQTTPlainAddr   string // the broker's plain listener
		MQTTTLSAddr     string
		ExportKeyPrefix string // export.prefix takes no trailing slash

		// The host paths above.
		SpoolDir, ExportDir, BrokerDataDir, BrokerTLSDir, BrokerUsersFile string
	}{
		Params:          p,
		MQTTURL:         mqttURL,
		InfluxWriteURL:  influxURL,
		Gateway:         p.Role == RoleGateway,
		IoTCertFile:     IoTCertFile,
		IoTKeyFile:      IoTKeyFile,
		MQTTPlainAddr:   plain,
		MQTTTLSAddr:     ":" + MQTTTLSPort,
		ExportKeyPrefix: strings.TrimSuffix(p.ExportPrefix, "/"),
		SpoolDir:        SpoolDir,
		ExportDir:       ExportDir,
		BrokerDataDir:   BrokerDataDir,
		BrokerTLSDir:    BrokerTLSDir,
		BrokerUsersFile: BrokerUsersFile,
	}
}

// HostParams encodes the host's parameters for the SSM parameter the
// bootstrap reads (infra/stack writes it). The signing key is left out.
func HostParams(p Params) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(p.withDefaults())
}

// ParseHostParams decodes what HostParams encoded and adds the signing key
// the host got from its user-data; unknown fields are refused, so a newer
// stack's parameters are not half applied by an older binary.
func ParseHostParams(b []byte, signingPublicKey string) (Params, error) {
	var p Params
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Params{}, fmt.Errorf("provision: host parameters: %w", err)
	}
	p.SigningPublicKey = signingPublicKey
	if err := p.Validate(); err != nil {
		return Params{}, err
	}
	return p, nil
}

// WriteFiles writes fl under root ("/" on a host), each file through a
// temporary file and a rename so that a running script is never rewritten
// under itself. The payload directory is emptied first: it holds exactly
// what this render produced.
func WriteFiles(root string, fl []File) error {
	if err := os.RemoveAll(filepath.Join(root, PayloadDir)); err != nil {
		return err
	}
	for _, f := range fl {
		var mode uint32
		if _, err := fmt.Sscanf(f.Mode, "%o", &mode); err != nil {
			return fmt.Errorf("provision: %s: mode %q: %w", f.Path, f.Mode, err)
		}
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		tmp := dst + ".new"
		if err := os.WriteFile(tmp, []byte(f.Content), fs.FileMode(mode)); err != nil {
			return err
		}
		if err := os.Chmod(tmp, fs.FileMode(mode)); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
	}
	return nil
}

// Bootstrap is what a host's user-data carries: where it is, where its
// parameters are, and the key its gateway binary must be signed with.
// Everything else comes from the verified binary (`iotgw provision-files`)
// and the host parameters, so the user-data stays small for every role.
type Bootstrap struct {
	Stack      string
	Region     string
	ParamPath  string // the stack's SSM path; the artifact is ParamPath/artifact
	HostParams string // SSM parameter holding the host's Params (HostParams)

	SigningPublicKey string
}

// Validate reports the first field that is missing or unsafe, by name.
func (b Bootstrap) Validate() error {
	for _, f := range []struct{ name, value string }{
		{"Stack", b.Stack}, {"Region", b.Region}, {"ParamPath", b.ParamPath}, {"HostParams", b.HostParams},
	} {
		if f.value == "" {
			return fmt.Errorf("provision: bootstrap %s is required", f.name)
		}
		if !safe.MatchString(f.value) {
			return fmt.Errorf("provision: bootstrap %s %q has characters other than letters, digits and ._:/#+@=-", f.name, f.value)
		}
	}
	if !strings.HasPrefix(b.HostParams, b.ParamPath+"/") {
		return fmt.Errorf("provision: bootstrap HostParams %q is not under ParamPath %s, which is all the host may read", b.HostParams, b.ParamPath)
	}
	if b.SigningPublicKey == "" {
		return errors.New("provision: SigningPublicKey is required: the host refuses an unsigned gateway binary")
	}
	if _, err := signing.ParsePublicKey([]byte(b.SigningPublicKey)); err != nil {
		return fmt.Errorf("provision: SigningPublicKey: %w", err)
	}
	return nil
}

// BootstrapFiles are the files the user-data writes.
func BootstrapFiles(b Bootstrap) ([]File, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	env := fmt.Sprintf("# Written by cloud-init from the Pulumi stack; read by iotgw-bootstrap.\n"+
		"STACK='%s'\nAWS_REGION='%s'\nPARAM_PATH='%s'\nHOST_PARAMS='%s'\n", b.Stack, b.Region, b.ParamPath, b.HostParams)
	return []File{
		{Path: SigningKeyFile, Mode: "0644", Content: strings.TrimSpace(b.SigningPublicKey) + "\n"},
		{Path: BootstrapEnv, Mode: "0644", Content: env},
		{Path: BootstrapScript, Mode: "0755", Content: string(BootstrapScriptSource())},
	}, nil
}

// RenderUserData renders the #cloud-config document that bootstraps a host.
func RenderUserData(b Bootstrap) ([]byte, error) {
	fl, err := BootstrapFiles(b)
	if err != nil {
		return nil, err
	}
	src, err := files.ReadFile("files/cloud-config.yaml.tmpl")
	if err != nil {
		return nil, err
	}
	t, err := template.New("cloud-config").Funcs(template.FuncMap{"indent": indent}).Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("provision: parse cloud-config: %w", err)
	}
	var buf bytes.Buffer
	err = t.Execute(&buf, struct {
		Bootstrap
		Files []File
		Run   string
	}{b, fl, BootstrapScript})
	if err != nil {
		return nil, fmt.Errorf("provision: render cloud-config: %w", err)
	}
	return buf.Bytes(), nil
}

// GzipUserData renders the user-data and gzips it (cloud-init recognises
// gzip by its magic bytes), failing when it would not fit UserDataBudget.
// The output is the same for the same Bootstrap, so it does not cause diffs.
func GzipUserData(b Bootstrap) ([]byte, error) {
	ud, err := RenderUserData(b)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(ud); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if buf.Len() > UserDataBudget {
		return nil, fmt.Errorf("provision: user-data is %d bytes gzipped, over the budget of %d (EC2 takes %d)", buf.Len(), UserDataBudget, MaxUserData)
	}
	return buf.Bytes(), nil
}

// indent prefixes every non-empty line with n spaces, for a YAML block
// scalar. Content must end in a newline: the block keeps exactly one.
func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = pad + l
		}
	}
	return strings.Join(lines, "\n")
}

// Units returns the embedded systemd unit files by name (drop-ins not
// included).
func Units() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(files, "files/systemd", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".conf") {
			return err
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		out[d.Name()] = b
		return nil
	})
	return out, err
}

// SetupScriptSource returns the setup script as embedded.
func SetupScriptSource() []byte {
	b, _ := files.ReadFile("files/setup-host.sh")
	return b
}

// BootstrapScriptSource returns the bootstrap script as embedded.
func BootstrapScriptSource() []byte {
	b, _ := files.ReadFile("files/bootstrap.sh")
	return b
}
