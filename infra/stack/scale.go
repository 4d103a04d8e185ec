package stack

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ebs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/s3"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ssm"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/timestreaminfluxdb"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Scale is the scale topology: its network, IoT Core side, database,
// secrets and gateway slots.
type Scale struct {
	Network   *ScaleNetwork
	IoT       *IoT
	Database  *timestreaminfluxdb.DbInstance
	Params    map[string]*ssm.Parameter // the stack's secrets and the hosts' tokens, by name
	Slots     []*Slot
	LogBucket *s3.BucketV2 // nil unless bucketAccessLogs
}

// Slot is one gateway host: its volume and client id outlive its instance.
type Slot struct {
	pulumi.ResourceState

	Index      int
	Zone       string
	ClientID   string
	Role       *iam.Role
	Volume     *ebs.Volume
	Instance   *ec2.Instance
	Attachment *ec2.VolumeAttachment
	Params     *ssm.Parameter
	Rollout    *ssm.Association

	profileName pulumi.StringOutput
}

// slotParamsName is the SSM parameter a slot reads its host parameters from.
func (e env) slotParamsName(i int) string {
	return fmt.Sprintf("%s/slots/%d/host-params", e.paramPath(), i)
}

var dbUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// dbName is the Timestream instance's name: a letter first, letters,
// digits and single hyphens, at most 40 characters.
func dbName(e env) string {
	n := strings.Trim(dbUnsafe.ReplaceAllString(strings.ToLower(Project+"-"+e.stack), "-"), "-")
	if len(n) > 40 {
		n = strings.TrimRight(n[:40], "-")
	}
	return n
}

// SlotParams are a slot's host parameters.
func SlotParams(e env, c Config, i int, volumeID, bucket, influxEndpoint, iotEndpoint string) provision.Params {
	_, per := IoTConnections(c)
	var topics []string
	for _, t := range c.MQTTTopics {
		topics = append(topics, "$share/"+c.SharedGroup+"/"+t)
	}
	return provision.Params{
		Role:             provision.RoleGateway,
		Slot:             i,
		Stack:            e.stack,
		Region:           e.region,
		ParamPath:        e.paramPath(),
		DataVolumeID:     volumeID,
		DataDevice:       dataDevice,
		InfluxOrg:        c.InfluxOrg,
		InfluxBucket:     c.InfluxBucket,
		MQTTClientID:     fmt.Sprintf("%s%d", iotNames(e).GatewayClientPrefix, i),
		MQTTQoS:          c.MQTTQoS,
		MQTTTopics:       topics,
		BrokerURL:        "ssl://" + iotEndpoint + ":8883",
		MQTTConnections:  per,
		InfluxURL:        "https://" + influxEndpoint + ":8086",
		InfluxAdmin:      i == 0,
		ExportBucket:     bucket,
		ExportPrefix:     c.ExportPrefix,
		SigningPublicKey: c.SigningPublicKey,
	}
}

// deployScale declares the scale topology.
func deployScale(ctx *pulumi.Context, e env, c Config, storage *Storage) (*Scale, error) {
	ep, err := iot.GetEndpoint(ctx, &iot.GetEndpointArgs{EndpointType: pulumi.StringRef("iot:Data-ATS")})
	if err != nil {
		return nil, fmt.Errorf("look up the IoT Core ATS endpoint: %w", err)
	}
	sc := &Scale{Params: map[string]*ssm.Parameter{}}
	if sc.Network, err = NewScaleNetwork(ctx, "vpc", e, c, ep.EndpointAddress); err != nil {
		return nil, err
	}
	if sc.IoT, err = NewIoT(ctx, "iot", e, c, ep.EndpointAddress); err != nil {
		return nil, err
	}
	if c.BucketAccessLogs {
		if err := sc.accessLogs(ctx, e, c, storage); err != nil {
			return nil, err
		}
	}

	var subnets pulumi.StringArray
	for _, s := range sc.Network.Subnets {
		subnets = append(subnets, s.ID())
	}
	deployment := "SINGLE_AZ"
	if c.TimestreamMultiAZ {
		deployment = "WITH_MULTIAZ_STANDBY"
	}
	sc.Database, err = timestreaminfluxdb.NewDbInstance(ctx, "influxdb", &timestreaminfluxdb.DbInstanceArgs{
		Name:                pulumi.String(dbName(e)),
		DbInstanceType:      pulumi.String(c.TimestreamInstanceType),
		DbStorageType:       pulumi.String("InfluxIOIncludedT1"),
		AllocatedStorage:    pulumi.Int(c.TimestreamStorage),
		DeploymentType:      pulumi.String(deployment),
		Organization:        pulumi.String(c.InfluxOrg),
		Bucket:              pulumi.String(c.InfluxBucket),
		Username:            pulumi.String("admin"),
		Password:            pulumi.ToSecret(pulumi.String(c.InfluxAdminPassword)).(pulumi.StringOutput),
		PubliclyAccessible:  pulumi.Bool(false),
		VpcSubnetIds:        subnets,
		VpcSecurityGroupIds: pulumi.StringArray{sc.Network.DatabaseSG.ID()},
		Tags:                e.tagged("influxdb"),
	}, pulumi.Protect(c.DataVolumeProtect))
	if err != nil {
		return nil, err
	}

	if err := sc.secrets(ctx, e, c); err != nil {
		return nil, err
	}

	ami := c.AmiID
	if ami == "" {
		p, err := ssm.LookupParameter(ctx, &ssm.LookupParameterArgs{Name: AmiParameter(c.Arch())})
		if err != nil {
			return nil, fmt.Errorf("look up Amazon Linux 2023 AMI for %s: %w", c.Arch(), err)
		}
		ami = p.Value
	}
	var prev pulumi.Resource
	for i := 0; i < c.Gateways; i++ {
		s, err := newSlot(ctx, e, c, i, ami, sc, storage, prev)
		if err != nil {
			return nil, err
		}
		sc.Slots = append(sc.Slots, s)
		prev = s.Rollout
	}
	if c.Snapshots {
		if err := (&Host{}).snapshots(ctx, "gateways", e, c, pulumi.Composite()); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// secrets declares the scale topology's SSM parameters: the InfluxDB admin
// password (the token-making slot signs in with it), the tokens that slot
// writes, and the gateways' IoT Core certificate and private key.
func (sc *Scale) secrets(ctx *pulumi.Context, e env, c Config) error {
	param := func(n, desc, typ string, value pulumi.StringInput, opts ...pulumi.ResourceOption) error {
		p, err := ssm.NewParameter(ctx, "secrets-"+n, &ssm.ParameterArgs{
			Name:        pulumi.String(e.paramPath() + "/" + n),
			Description: pulumi.String(desc),
			Type:        pulumi.String(typ),
			Value:       value,
			Tags:        e.tagged(n),
		}, append(opts, pulumi.AdditionalSecretOutputs([]string{"value"}))...)
		sc.Params[n] = p
		return err
	}
	if err := param("influx-admin-password", "Timestream for InfluxDB admin password", "SecureString",
		pulumi.ToSecret(pulumi.String(c.InfluxAdminPassword)).(pulumi.StringOutput)); err != nil {
		return err
	}
	for _, n := range []string{"influx-run-token", "influx-export-token"} {
		if err := param(n, "InfluxDB token of iotgw "+strings.TrimSuffix(strings.TrimPrefix(n, "influx-"), "-token")+", written by gateway slot 0",
			"SecureString", pulumi.ToSecret(pulumi.String(provision.TokenPlaceholder+" written by gateway slot 0")).(pulumi.StringOutput),
			pulumi.IgnoreChanges([]string{"value"})); err != nil {
			return err
		}
	}
	cert := sc.IoT.GatewayCert
	if err := param(provision.IoTCertParam, "IoT Core certificate of the gateway slots (PEM)", "String", cert.CertificatePem); err != nil {
		return err
	}
	return param(provision.IoTKeyParam, "IoT Core private key of the gateway slots (PEM)", "SecureString",
		pulumi.ToSecret(cert.PrivateKey).(pulumi.StringOutput))
}

// accessLogs gives the stack's bucket S3 server access logs in a bucket of
// their own.
func (sc *Scale) accessLogs(ctx *pulumi.Context, e env, c Config, storage *Storage) error {
	logs, err := s3.NewBucketV2(ctx, "storage-access-logs", &s3.BucketV2Args{
		BucketPrefix: pulumi.String(fmt.Sprintf("%s-%s-logs-", Project, e.stack)),
		ForceDestroy: pulumi.Bool(c.BucketForceDestroy),
		Tags:         e.tagged("access-logs"),
	})
	if err != nil {
		return err
	}
	sc.LogBucket = logs
	if _, err = s3.NewBucketPublicAccessBlock(ctx, "storage-access-logs-public-access", &s3.BucketPublicAccessBlockArgs{
		Bucket: logs.ID(), BlockPublicAcls: pulumi.Bool(true), BlockPublicPolicy: pulumi.Bool(true),
		IgnorePublicAcls: pulumi.Bool(true), RestrictPublicBuckets: pulumi.Bool(true),
	}); err != nil {
		return err
	}
	if _, err = s3.NewBucketServerSideEncryptionConfigurationV2(ctx, "storage-access-logs-encryption", &s3.BucketServerSideEncryptionConfigurationV2Args{
		Bucket: logs.ID(),
		Rules: s3.BucketServerSideEncryptionConfigurationV2RuleArray{&s3.BucketServerSideEncryptionConfigurationV2RuleArgs{
			ApplyServerSideEncryptionByDefault: &s3.BucketServerSideEncryptionConfigurationV2RuleApplyServerSideEncryptionByDefaultArgs{
				SseAlgorithm: pulumi.String("AES256"),
			},
		}},
	}); err != nil {
		return err
	}
	// S3's log delivery writes with the logging service principal, which
	// the bucket policy allows for the stack's bucket only.
	policy := pulumi.All(logs.Arn, storage.Bucket.Arn).ApplyT(func(v []any) (string, error) {
		return policyDoc{Version: "2012-10-17", Statement: []statement{{
			Sid: "S3ServerAccessLogs", Effect: "Allow",
			Principal: map[string]string{"Service": "logging.s3.amazonaws.com"},
			Action:    []string{"s3:PutObject"},
			Resource:  []string{v[0].(string) + "/*"},
			Condition: map[string]any{
				"ArnLike":      map[string]string{"aws:SourceArn": v[1].(string)},
				"StringEquals": map[string]string{"aws:SourceAccount": e.account},
			},
		}}}.json()
	}).(pulumi.StringOutput)
	if _, err = s3.NewBucketPolicy(ctx, "storage-access-logs-policy", &s3.BucketPolicyArgs{Bucket: logs.ID(), Policy: policy}); err != nil {
		return err
	}
	_, err = s3.NewBucketLoggingV2(ctx, "storage-access-logging", &s3.BucketLoggingV2Args{
		Bucket:       storage.Bucket.ID(),
		TargetBucket: logs.ID(),
		TargetPrefix: pulumi.String("s3/"),
	})
	return err
}

// newSlot declares one gateway slot. prev is the previous slot's rollout:
// this slot changes only after that one is done and healthy.
func newSlot(ctx *pulumi.Context, e env, c Config, i int, ami string, sc *Scale, storage *Storage, prev pulumi.Resource) (*Slot, error) {
	name := fmt.Sprintf("gw-%d", i)
	s := &Slot{Index: i, Zone: sc.Network.Zones[i%len(sc.Network.Zones)]}
	s.ClientID = fmt.Sprintf("%s%d", iotNames(e).GatewayClientPrefix, i)
	if err := ctx.RegisterComponentResource("iot-gateway:infra:Slot", name, s); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(s)
	subnet := sc.Network.Subnets[i%len(sc.Network.Subnets)]
	after := func(rs ...pulumi.Resource) pulumi.ResourceOption {
		if prev != nil {
			rs = append(rs, prev)
		}
		return pulumi.DependsOn(rs)
	}

	if err := s.identity(ctx, name, e, c, storage, parent); err != nil {
		return nil, err
	}
	var err error
	s.Volume, err = dataVolume(ctx, name, e, c, s.Zone, name+"-data", parent)
	if err != nil {
		return nil, err
	}
	params := pulumi.All(s.Volume.ID(), storage.Bucket.Bucket, sc.Database.Endpoint).ApplyT(func(v []any) (string, error) {
		b, err := provision.HostParams(SlotParams(e, c, i, string(v[0].(pulumi.ID)), v[1].(string), v[2].(string), sc.IoT.Endpoint))
		return string(b), err
	}).(pulumi.StringOutput)
	s.Params, err = hostParams(ctx, name, e, e.slotParamsName(i),
		fmt.Sprintf("Host parameters (JSON) of gateway slot %d; no secrets", i), params, name+"-params", parent)
	if err != nil {
		return nil, err
	}
	userData, err := UserData(e, c, e.slotParamsName(i))
	if err != nil {
		return nil, err
	}
	args := &ec2.InstanceArgs{
		Ami:                      pulumi.String(ami),
		InstanceType:             pulumi.String(c.InstanceType),
		SubnetId:                 subnet.ID(),
		VpcSecurityGroupIds:      pulumi.StringArray{sc.Network.GatewaySG.ID()},
		IamInstanceProfile:       s.profileName,
		AssociatePublicIpAddress: pulumi.Bool(false),
		Monitoring:               pulumi.Bool(c.DetailedMonitoring),
		MetadataOptions:          metadataOptions(),
		RootBlockDevice:          rootDevice(c, e.tagged(name+"-root")),
		UserDataBase64:           pulumi.String(userData),
		UserDataReplaceOnChange:  pulumi.Bool(true),
		Tags:                     e.tagged(name),
	}
	if strings.HasPrefix(c.InstanceType, "t") {
		args.CreditSpecification = &ec2.InstanceCreditSpecificationArgs{CpuCredits: pulumi.String("standard")}
	}
	instOpts := []pulumi.ResourceOption{parent, pulumi.DeleteBeforeReplace(true), after()}
	if c.AmiID == "" {
		instOpts = append(instOpts, pulumi.IgnoreChanges([]string{"ami"}))
	}
	s.Instance, err = ec2.NewInstance(ctx, name+"-instance", args, instOpts...)
	if err != nil {
		return nil, err
	}
	s.Attachment, err = attachData(ctx, name, s.Instance, s.Volume, parent)
	if err != nil {
		return nil, err
	}
	// The readiness gate: pulumi up waits until this slot's bootstrap has
	// installed the binary and /readyz answered (else the slot rolled back
	// and the association failed), and only then touches the next slot.
	s.Rollout, err = newRollout(ctx, name, e, c, s.Instance, storage.ArtifactSHA256, params, e.slotParamsName(i), name+"-rollout",
		parent, after(storage.ArtifactParam, s.Params, s.Attachment))
	if err != nil {
		return nil, err
	}
	err = ctx.RegisterResourceOutputs(s, pulumi.Map{"instanceId": s.Instance.ID(), "dataVolumeId": s.Volume.ID()})
	return s, err
}

// identity declares the slot's role: slot 0 also makes the InfluxDB
// tokens and exports, so only its role reads the admin password, writes
// the tokens and writes the export prefix.
func (s *Slot) identity(ctx *pulumi.Context, name string, e env, c Config, st *Storage, parent pulumi.ResourceOption) error {
	policy := st.Bucket.Arn.ApplyT(func(bucketArn string) (string, error) {
		return SlotPolicy(e, c, s.Index, bucketArn, st.ArtifactKey)
	}).(pulumi.StringOutput)
	role, profile, err := instanceIdentity(ctx, name, e, fmt.Sprintf("iot-gateway %s gateway slot %d", e.stack, s.Index), name,
		func(*iam.Role) (pulumi.StringOutput, error) { return policy, nil }, parent)
	if err != nil {
		return err
	}
	s.Role, s.profileName = role, profile.Name
	return nil
}

// SlotReadParams are the parameters, under the stack's path, every slot
// reads; SlotAdminParams those slot 0 also reads, SlotWritableParams those
// it writes.
var (
	SlotReadParams     = []string{"artifact", "influx-run-token", provision.IoTCertParam, provision.IoTKeyParam}
	SlotAdminParams    = []string{"influx-admin-password", "influx-export-token"}
	SlotWritableParams = []string{"influx-run-token", "influx-export-token"}
)

// SlotPolicy is a gateway slot's inline policy. Every resource is named;
// the Deny keeps parameter reads to the ones listed whatever else is
// attached to the role later.
func SlotPolicy(e env, c Config, slot int, bucketArn, artifactKey string) (string, error) {
	reads := []string{e.paramArn(strings.TrimPrefix(e.slotParamsName(slot), e.paramPath()))}
	for _, p := range SlotReadParams {
		reads = append(reads, e.paramArn("/"+p))
	}
	st := []statement{{
		Sid: "ReadGatewayArtifact", Effect: "Allow", Action: []string{"s3:GetObject"},
		Resource: []string{bucketArn + "/" + artifactKey},
	}}
	if slot == 0 {
		for _, p := range SlotAdminParams {
			reads = append(reads, e.paramArn("/"+p))
		}
		var writable []string
		for _, p := range SlotWritableParams {
			writable = append(writable, e.paramArn("/"+p))
		}
		st = append(st,
			statement{Sid: "WriteExports", Effect: "Allow", Action: []string{"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
				Resource: []string{bucketArn + "/" + c.ExportPrefix + "*"}},
			statement{Sid: "ListExports", Effect: "Allow", Action: []string{"s3:ListBucket"}, Resource: []string{bucketArn},
				Condition: map[string]any{"StringLikeIfExists": map[string]any{"s3:prefix": []string{c.ExportPrefix + "*"}}}},
			statement{Sid: "WriteTokens", Effect: "Allow", Action: []string{"ssm:PutParameter"}, Resource: writable},
		)
	}
	st = append(st,
		statement{Sid: "ReadSlotParameters", Effect: "Allow", Action: []string{"ssm:GetParameter", "ssm:GetParameters"}, Resource: reads},
		statement{Sid: "DenyOtherParameters", Effect: "Deny", Action: parameterReads, NotResource: reads},
	)
	return policyDoc{Version: "2012-10-17", Statement: st}.json()
}
