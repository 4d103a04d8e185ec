package stack

import (
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Project is the tag value and SSM path root shared by every stack.
const Project = "iot-gateway"

// env is what every component needs to know about where it is deployed.
type env struct {
	stack     string
	region    string
	account   string
	partition string
	tags      pulumi.StringMap
}

// tagged returns the common tags plus a Name tag.
func (e env) tagged(name string) pulumi.StringMap {
	m := pulumi.StringMap{"Name": pulumi.String(fmt.Sprintf("%s-%s-%s", Project, e.stack, name))}
	for k, v := range e.tags {
		m[k] = v
	}
	return m
}

// paramPath is the SSM path under which the stack keeps its parameters.
func (e env) paramPath() string { return "/" + Project + "/" + e.stack }

// paramArn is the ARN of the stack's parameter path, with a suffix.
func (e env) paramArn(suffix string) string {
	return fmt.Sprintf("arn:%s:ssm:%s:%s:parameter%s%s", e.partition, e.region, e.account, e.paramPath(), suffix)
}

// Deployment is everything Deploy declared, for the program's outputs and
// for tests.
type Deployment struct {
	Network *Network
	Storage *Storage
	Secrets *Secrets
	Host    *Host
	Scale   *Scale // the scale topology; then Network, Secrets and Host are nil
}

// Run is the program body: load and validate the configuration, declare
// the stack, export its outputs.
func Run(ctx *pulumi.Context) error {
	c, err := LoadConfig(ctx)
	if err != nil {
		return err
	}
	d, err := Deploy(ctx, c)
	if err != nil {
		return err
	}
	d.Export(ctx, c)
	return nil
}

// Deploy declares the stack for a validated configuration.
func Deploy(ctx *pulumi.Context, c Config) (*Deployment, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	// Read the artifact before declaring anything: a missing build is a
	// configuration error, not a half-created stack.
	art, err := readArtifact(c.ArtifactPath, c.SigningPublicKey)
	if errors.Is(err, errBadSignature) && ctx.DryRun() {
		// A pull request's build is signed with a throwaway key, never the
		// release key: its preview still shows the diff, and up refuses.
		_ = ctx.Log.Warn(err.Error()+"; pulumi up will refuse it", nil)
		err = nil
	}
	if err != nil {
		return nil, err
	}
	region, err := aws.GetRegion(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("look up region: %w", err)
	}
	caller, err := aws.GetCallerIdentity(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("look up account: %w", err)
	}
	part, err := aws.GetPartition(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("look up partition: %w", err)
	}
	e := env{
		stack:     ctx.Stack(),
		region:    region.Name,
		account:   caller.AccountId,
		partition: part.Partition,
		tags: pulumi.StringMap{
			"project": pulumi.String(Project),
			"stack":   pulumi.String(ctx.Stack()),
			"owner":   pulumi.String(c.Owner),
		},
	}

	if c.Scale() {
		storage, err := NewStorage(ctx, "storage", e, c, art)
		if err != nil {
			return nil, err
		}
		sc, err := deployScale(ctx, e, c, storage)
		if err != nil {
			return nil, err
		}
		return &Deployment{Storage: storage, Scale: sc}, nil
	}
	network, err := NewNetwork(ctx, "network", e, c)
	if err != nil {
		return nil, err
	}
	storage, err := NewStorage(ctx, "storage", e, c, art)
	if err != nil {
		return nil, err
	}
	secrets, err := NewSecrets(ctx, "secrets", e, c)
	if err != nil {
		return nil, err
	}
	host, err := NewHost(ctx, "host", e, c, network, storage)
	if err != nil {
		return nil, err
	}
	return &Deployment{Network: network, Storage: storage, Secrets: secrets, Host: host}, nil
}

// HostParamsName is the SSM parameter the all-in-one host reads its
// parameters from.
func (e env) hostParamsName() string { return e.paramPath() + "/host-params" }

// AllInOneParams are the all-in-one host's parameters: what iotgw
// provision-files renders its configuration from.
func AllInOneParams(e env, c Config, volumeID, bucket, exportRoleArn string) provision.Params {
	return provision.Params{
		Stack:               e.stack,
		Region:              e.region,
		ParamPath:           e.paramPath(),
		DataVolumeID:        volumeID,
		DataDevice:          dataDevice,
		InfluxVersion:       c.InfluxVersion,
		InfluxOrg:           c.InfluxOrg,
		InfluxBucket:        c.InfluxBucket,
		InfluxRetentionDays: c.InfluxRetentionDays,
		InfluxListenPublic:  len(c.AdminCidrs) > 0,
		MQTTClientID:        Project + "-" + e.stack,
		MQTTQoS:             c.MQTTQoS,
		MQTTTopics:          c.MQTTTopics,
		MQTTPlaintextPublic: c.MQTTPlaintext,
		ExportBucket:        bucket,
		ExportPrefix:        c.ExportPrefix,
		ExportRoleArn:       exportRoleArn,
		SigningPublicKey:    c.SigningPublicKey,
	}
}

// UserData renders a host's bootstrap user-data, gzipped and base64-encoded
// for the instance's userDataBase64. hostParams is the SSM parameter the
// host reads the rest from.
func UserData(e env, c Config, hostParams string) (string, error) {
	gz, err := provision.GzipUserData(provision.Bootstrap{
		Stack:            e.stack,
		Region:           e.region,
		ParamPath:        e.paramPath(),
		HostParams:       hostParams,
		SigningPublicKey: c.SigningPublicKey,
	})
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(gz), nil
}

// Outputs are the stack outputs. None of them is secret.
func (d *Deployment) Outputs(c Config) pulumi.Map {
	if d.Scale != nil {
		return d.scaleOutputs(c)
	}
	h, s := d.Host, d.Storage
	region := h.region
	out := pulumi.Map{
		"instanceId":        h.Instance.ID(),
		"publicIp":          h.PublicIP,
		"publicDns":         h.PublicDNS,
		"mqttEndpoint":      pulumi.Sprintf("mqtts://%s:8883", h.PublicDNS),
		"influxUrl":         pulumi.String("http://localhost:8086 (run influxPortForwardCommand first)"),
		"ssmSessionCommand": pulumi.Sprintf("aws ssm start-session --region %s --target %s", region, h.Instance.ID()),
		"influxPortForwardCommand": pulumi.Sprintf(
			`aws ssm start-session --region %s --target %s --document-name AWS-StartPortForwardingSession --parameters '{"portNumber":["8086"],"localPortNumber":["8086"]}'`,
			region, h.Instance.ID()),
		"brokerCaParameter": pulumi.String(d.Secrets.BrokerCAName),
		"brokerCaCommand": pulumi.Sprintf(
			"aws ssm get-parameter --region %s --name %s --query Parameter.Value --output text > iotgw-ca.crt", region, d.Secrets.BrokerCAName),
		"bucketName":      s.Bucket.Bucket,
		"artifactUri":     s.ArtifactURI,
		"artifactSha256":  pulumi.String(s.ArtifactSHA256),
		"exportUri":       pulumi.Sprintf("s3://%s/%s", s.Bucket.Bucket, c.ExportPrefix),
		"dataVolumeId":    h.DataVolume.ID(),
		"securityGroupId": d.Network.SecurityGroup.ID(),
		"parameterPath":   pulumi.String(d.Secrets.Path),
	}
	if c.MQTTPlaintext {
		out["mqttPlainEndpoint"] = pulumi.Sprintf("mqtt://%s:1883", h.PublicDNS)
	}
	if len(c.AdminCidrs) > 0 {
		out["influxUrl"] = pulumi.Sprintf("http://%s:8086", h.PublicDNS)
	}
	return out
}

// scaleOutputs are the scale topology's outputs: where devices connect,
// how they enrol, and each slot. None is secret.
func (d *Deployment) scaleOutputs(c Config) pulumi.Map {
	sc, s := d.Scale, d.Storage
	total, per := IoTConnections(c)
	var slots pulumi.Array
	for _, sl := range sc.Slots {
		slots = append(slots, pulumi.Map{
			"slot":              pulumi.Int(sl.Index),
			"availabilityZone":  pulumi.String(sl.Zone),
			"instanceId":        sl.Instance.ID(),
			"dataVolumeId":      sl.Volume.ID(),
			"clientIdPrefix":    pulumi.String(sl.ClientID),
			"ssmSessionCommand": pulumi.Sprintf("aws ssm start-session --region %s --target %s", sc.IoT.region(), sl.Instance.ID()),
		})
	}
	return pulumi.Map{
		"topology":                pulumi.String("scale"),
		"mqttEndpoint":            pulumi.Sprintf("mqtts://%s:8883", sc.IoT.Endpoint),
		"iotThingGroup":           pulumi.String(sc.IoT.Names.ThingGroup),
		"iotThingType":            pulumi.String(sc.IoT.Names.ThingType),
		"iotDevicePolicy":         pulumi.String(sc.IoT.Names.DevicePolicy),
		"iotClaimPolicy":          pulumi.String(sc.IoT.Names.ClaimPolicy),
		"iotProvisioningTemplate": pulumi.String(sc.IoT.Names.Template),
		"iotConnections":          pulumi.Sprintf("%d in all, %d per slot", total, per),
		"deviceAddCommand": pulumi.Sprintf("iotgw-admin device add --region %s --site <site> --thing-group %s --thing-type %s --policy %s <device>",
			sc.IoT.region(), sc.IoT.Names.ThingGroup, sc.IoT.Names.ThingType, sc.IoT.Names.DevicePolicy),
		"influxEndpoint": pulumi.Sprintf("https://%s:8086 (inside the VPC only)", sc.Database.Endpoint),
		"vpcId":          sc.Network.Vpc.ID(),
		"slots":          slots,
		"bucketName":     s.Bucket.Bucket,
		"artifactUri":    s.ArtifactURI,
		"artifactSha256": pulumi.String(s.ArtifactSHA256),
		"exportUri":      pulumi.Sprintf("s3://%s/%s", s.Bucket.Bucket, c.ExportPrefix),
		"parameterPath":  pulumi.String(sc.IoT.env.paramPath()),
	}
}

// Export sets the stack outputs.
func (d *Deployment) Export(ctx *pulumi.Context, c Config) {
	for k, v := range d.Outputs(c) {
		ctx.Export(k, v)
	}
}
