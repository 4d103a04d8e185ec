package stack

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/dlm"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ebs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ssm"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// dataDevice is the device name the data volume is attached as; on Nitro
// instances the host finds it by its NVMe serial (the volume id) instead.
const dataDevice = "/dev/sdf"

// AmiParameter is the public SSM parameter holding the latest Amazon Linux
// 2023 AMI for an architecture ("arm64" or "x86_64").
func AmiParameter(arch string) string {
	return "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-" + arch
}

// Host is the instance, its identity and its data volume.
type Host struct {
	pulumi.ResourceState

	Role       *iam.Role
	ExportRole *iam.Role // what iotgw export runs with; only Role may assume it
	Profile    *iam.InstanceProfile
	Instance   *ec2.Instance
	DataVolume *ebs.Volume
	Attachment *ec2.VolumeAttachment
	KeyPair    *ec2.KeyPair // nil unless sshPublicKey is set
	EIP        *ec2.Eip     // nil unless elasticIp is set
	Snapshots  *dlm.LifecyclePolicy
	Params     *ssm.Parameter // the host parameters (JSON) iotgw-bootstrap reads
	Rollout    *ssm.Association
	PublicIP   pulumi.StringOutput
	PublicDNS  pulumi.StringOutput

	region string
}

// NewHost declares the instance role, the data volume and the instance.
func NewHost(ctx *pulumi.Context, name string, e env, c Config, n *Network, s *Storage, opts ...pulumi.ResourceOption) (*Host, error) {
	h := &Host{region: e.region}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:Host", name, h, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(h)

	ami := c.AmiID
	if ami == "" {
		p, err := ssm.LookupParameter(ctx, &ssm.LookupParameterArgs{Name: AmiParameter(c.Arch())})
		if err != nil {
			return nil, fmt.Errorf("look up Amazon Linux 2023 AMI for %s: %w", c.Arch(), err)
		}
		ami = p.Value
	}

	if err := h.identity(ctx, name, e, c, s, parent); err != nil {
		return nil, err
	}

	var err error
	h.DataVolume, err = dataVolume(ctx, name, e, c, n.AvailabilityZone, "data", parent)
	if err != nil {
		return nil, err
	}

	if c.SSHPublicKey != "" {
		h.KeyPair, err = ec2.NewKeyPair(ctx, name+"-key", &ec2.KeyPairArgs{
			KeyNamePrefix: pulumi.String(fmt.Sprintf("%s-%s-", Project, e.stack)),
			PublicKey:     pulumi.String(c.SSHPublicKey),
			Tags:          e.tagged("key"),
		}, parent)
		if err != nil {
			return nil, err
		}
	}

	// What the host is configured with lives in an SSM parameter, not in
	// the user-data: a change reaches the running host through the rollout
	// below instead of replacing it.
	params := pulumi.All(h.DataVolume.ID(), s.Bucket.Bucket, h.ExportRole.Arn).ApplyT(func(v []any) (string, error) {
		b, err := provision.HostParams(AllInOneParams(e, c, string(v[0].(pulumi.ID)), v[1].(string), v[2].(string)))
		return string(b), err
	}).(pulumi.StringOutput)
	h.Params, err = hostParams(ctx, name, e, e.hostParamsName(),
		"Host parameters (JSON) iotgw provision-files renders the host's files from; no secrets", params, "host-params", parent)
	if err != nil {
		return nil, err
	}
	userData, err := UserData(e, c, e.hostParamsName())
	if err != nil {
		return nil, err
	}

	args := &ec2.InstanceArgs{
		Ami:                      pulumi.String(ami),
		InstanceType:             pulumi.String(c.InstanceType),
		SubnetId:                 pulumi.String(n.SubnetID),
		VpcSecurityGroupIds:      pulumi.StringArray{n.SecurityGroup.ID()},
		IamInstanceProfile:       h.Profile.Name,
		AssociatePublicIpAddress: pulumi.Bool(true),
		Monitoring:               pulumi.Bool(false),
		MetadataOptions:          metadataOptions(),
		RootBlockDevice:          rootDevice(c, e.tagged("root")),
		UserDataBase64:           pulumi.String(userData),
		// cloud-init runs user-data once per instance. The bootstrap
		// changes only with the signing key, and even then the host is
		// kept (user-data changes are ignored below): rotate the key with
		// `pulumi up --replace` on the instance.
		UserDataReplaceOnChange: pulumi.Bool(true),
		Tags:                    e.tagged("host"),
	}
	if strings.HasPrefix(c.InstanceType, "t") {
		// No surprise charges for burst credits.
		args.CreditSpecification = &ec2.InstanceCreditSpecificationArgs{CpuCredits: pulumi.String("standard")}
	}
	if h.KeyPair != nil {
		args.KeyName = h.KeyPair.KeyName
	}
	// Hosts made before the bootstrap carry the whole payload in their
	// user-data; they are upgraded in place by the rollout, not replaced.
	ignore := []string{"userDataBase64"}
	if c.AmiID == "" {
		// The SSM parameter moves with every AMI release; following it would
		// replace the host each time. Pin amiId, or `pulumi up --replace`.
		ignore = append([]string{"ami"}, ignore...)
	}
	instOpts := []pulumi.ResourceOption{parent, pulumi.DeleteBeforeReplace(true), pulumi.IgnoreChanges(ignore)}
	h.Instance, err = ec2.NewInstance(ctx, name+"-instance", args, instOpts...)
	if err != nil {
		return nil, err
	}

	h.Attachment, err = attachData(ctx, name, h.Instance, h.DataVolume, parent)
	if err != nil {
		return nil, err
	}

	h.PublicIP, h.PublicDNS = h.Instance.PublicIp, h.Instance.PublicDns
	if c.ElasticIP {
		h.EIP, err = ec2.NewEip(ctx, name+"-eip", &ec2.EipArgs{
			Domain:   pulumi.String("vpc"),
			Instance: h.Instance.ID(),
			Tags:     e.tagged("eip"),
		}, parent)
		if err != nil {
			return nil, err
		}
		h.PublicIP, h.PublicDNS = h.EIP.PublicIp, h.EIP.PublicDns
	}

	if c.Snapshots {
		if err := h.snapshots(ctx, name, e, c, parent); err != nil {
			return nil, err
		}
	}

	h.Rollout, err = newRollout(ctx, name, e, c, h.Instance, s.ArtifactSHA256, params, e.hostParamsName(), "rollout",
		parent, pulumi.DependsOn([]pulumi.Resource{s.ArtifactParam, h.Params, h.Attachment}))
	if err != nil {
		return nil, err
	}

	err = ctx.RegisterResourceOutputs(h, pulumi.Map{
		"instanceId":   h.Instance.ID(),
		"dataVolumeId": h.DataVolume.ID(),
		"publicDns":    h.PublicDNS,
	})
	return h, err
}

// The parts a gateway host has whether it is the all-in-one host or a
// slot of the scale topology; tag is the Name tag's suffix.

// dataVolume declares the encrypted volume the spool lives on. It names
// nothing of the instance: replacing the instance keeps it, and the new
// instance mounts the same spool.
func dataVolume(ctx *pulumi.Context, name string, e env, c Config, zone, tag string, parent pulumi.ResourceOption) (*ebs.Volume, error) {
	return ebs.NewVolume(ctx, name+"-data", &ebs.VolumeArgs{
		AvailabilityZone: pulumi.String(zone),
		Type:             pulumi.String("gp3"),
		Size:             pulumi.Int(c.DataVolumeSize),
		Iops:             pulumi.Int(c.DataVolumeIops),
		Throughput:       pulumi.Int(125),
		Encrypted:        pulumi.Bool(true),
		Tags:             withSnapshotTag(e, e.tagged(tag)),
	}, parent, pulumi.RetainOnDelete(c.DataVolumeRetain), pulumi.Protect(c.DataVolumeProtect))
}

// hostParams declares the SSM parameter paramName holding what the host is
// configured with (JSON, no secrets).
func hostParams(ctx *pulumi.Context, name string, e env, paramName, description string, value pulumi.StringOutput, tag string, parent pulumi.ResourceOption) (*ssm.Parameter, error) {
	return ssm.NewParameter(ctx, name+"-params", &ssm.ParameterArgs{
		Name:        pulumi.String(paramName),
		Description: pulumi.String(description),
		Type:        pulumi.String("String"),
		Tier:        pulumi.String("Standard"),
		Value:       value,
		Tags:        e.tagged(tag),
	}, parent)
}

// metadataOptions allows IMDSv2 only, one hop: a container on the host
// cannot reach the instance's credentials.
func metadataOptions() *ec2.InstanceMetadataOptionsArgs {
	return &ec2.InstanceMetadataOptionsArgs{
		HttpEndpoint:            pulumi.String("enabled"),
		HttpTokens:              pulumi.String("required"),
		HttpPutResponseHopLimit: pulumi.Int(1),
		InstanceMetadataTags:    pulumi.String("disabled"),
	}
}

func rootDevice(c Config, tags pulumi.StringMap) *ec2.InstanceRootBlockDeviceArgs {
	return &ec2.InstanceRootBlockDeviceArgs{
		VolumeType:          pulumi.String("gp3"),
		VolumeSize:          pulumi.Int(c.RootVolumeSize),
		Encrypted:           pulumi.Bool(true),
		DeleteOnTermination: pulumi.Bool(true),
		Tags:                tags,
	}
}

// attachData attaches the data volume as dataDevice.
func attachData(ctx *pulumi.Context, name string, inst *ec2.Instance, vol *ebs.Volume, parent pulumi.ResourceOption) (*ec2.VolumeAttachment, error) {
	return ec2.NewVolumeAttachment(ctx, name+"-data-attachment", &ec2.VolumeAttachmentArgs{
		DeviceName: pulumi.String(dataDevice),
		InstanceId: inst.ID(),
		VolumeId:   vol.ID(),
		// Stop the host before detaching so the filesystem is unmounted
		// cleanly when the instance is replaced.
		StopInstanceBeforeDetaching: pulumi.Bool(true),
	}, parent, pulumi.DeleteBeforeReplace(true))
}

// newRollout declares the association that runs the host's bootstrap again
// whenever the artifact or the host parameters change (its command names
// both sha256s). The bootstrap fetches and verifies the new binary, which
// writes the files; the setup restarts what changed, checks /readyz and
// puts the previous binary back if the new one fails; pulumi up waits for
// the result. No SSH, no new instance.
func newRollout(ctx *pulumi.Context, name string, e env, c Config, inst *ec2.Instance, artifactSHA256 string,
	params pulumi.StringOutput, paramsName, tag string, opts ...pulumi.ResourceOption) (*ssm.Association, error) {
	return ssm.NewAssociation(ctx, name+"-rollout", &ssm.AssociationArgs{
		Name: pulumi.String("AWS-RunShellScript"),
		Targets: ssm.AssociationTargetArray{&ssm.AssociationTargetArgs{
			Key:    pulumi.String("InstanceIds"),
			Values: pulumi.StringArray{inst.ID()},
		}},
		Parameters: pulumi.StringMap{
			"commands":         params.ApplyT(func(p string) string { return RolloutCommand(e, artifactSHA256, p, paramsName) }).(pulumi.StringOutput),
			"executionTimeout": pulumi.String("1800"),
		},
		ComplianceSeverity:           pulumi.String("HIGH"),
		MaxErrors:                    pulumi.String("0"),
		WaitForSuccessTimeoutSeconds: pulumi.Int(c.RolloutWaitSeconds),
		Tags:                         e.tagged(tag),
	}, opts...)
}

// RolloutCommand is the shell command a rollout association runs: the
// bootstrap, told which artifact and which host parameters (by sha256) it
// must find in SSM. A host made before the bootstrap existed has none: its
// own setup first installs the new binary (checking its signature), which
// then writes the bootstrap.
func RolloutCommand(e env, artifactSHA256, hostParams, hostParamsName string) string {
	sum := sha256.Sum256([]byte(hostParams))
	expect := "IOTGW_EXPECT_SHA256=" + artifactSHA256
	return "set -e; if [ ! -x " + provision.BootstrapScript + " ]; then " +
		expect + " " + provision.SetupScript + "; " +
		"aws ssm get-parameter --region " + e.region + " --name " + hostParamsName +
		" --query Parameter.Value --output text > /run/iotgw-host-params.json; " +
		"/usr/local/bin/iotgw provision-files --params /run/iotgw-host-params.json; fi; " +
		expect + " IOTGW_EXPECT_PARAMS=" + hex.EncodeToString(sum[:]) + " " + provision.BootstrapScript
}

// snapshotTag marks the volumes the stack's DLM policy snapshots.
const snapshotTag = "iotgw-snapshot"

func withSnapshotTag(e env, tags pulumi.StringMap) pulumi.StringMap {
	tags[snapshotTag] = pulumi.String(Project + "-" + e.stack)
	return tags
}

// identity declares the instance role, its policies and the profile, and
// the export's role, which trusts the instance role and which the instance
// role's policy names.
func (h *Host) identity(ctx *pulumi.Context, name string, e env, c Config, s *Storage, parent pulumi.ResourceOption) error {
	policy := func(role *iam.Role) (pulumi.StringOutput, error) {
		h.Role = role
		if err := h.exportIdentity(ctx, name, e, c, s, parent); err != nil {
			return pulumi.StringOutput{}, err
		}
		return pulumi.All(s.Bucket.Arn, h.ExportRole.Arn).ApplyT(func(v []any) (string, error) {
			return HostPolicy(e, v[0].(string), s.ArtifactKey, v[1].(string))
		}).(pulumi.StringOutput), nil
	}
	var err error
	h.Role, h.Profile, err = instanceIdentity(ctx, name, e, fmt.Sprintf("iot-gateway %s host", e.stack), "host", policy, parent)
	return err
}

// instanceIdentity declares a gateway instance's role with the SSM agent's
// policy and its own inline policy (made by policy once the role exists:
// the host's names a role that trusts this one), and the instance profile.
func instanceIdentity(ctx *pulumi.Context, name string, e env, description, tag string, policyOf func(*iam.Role) (pulumi.StringOutput, error), parent pulumi.ResourceOption) (*iam.Role, *iam.InstanceProfile, error) {
	assume, err := assumeRolePolicy("ec2.amazonaws.com")
	if err != nil {
		return nil, nil, err
	}
	role, err := iam.NewRole(ctx, name+"-role", &iam.RoleArgs{
		Description:      pulumi.String(description),
		AssumeRolePolicy: pulumi.String(assume),
		Tags:             e.tagged(tag),
	}, parent)
	if err != nil {
		return nil, nil, err
	}
	// Session Manager (shell and port forwarding) and Run Command instead of
	// SSH: what the SSM agent needs, in place of AmazonSSMManagedInstanceCore,
	// which also allows ssm:GetParameter(s) on every parameter.
	agent, err := SSMAgentPolicy()
	if err != nil {
		return nil, nil, err
	}
	if _, err = iam.NewRolePolicy(ctx, name+"-ssm-agent", &iam.RolePolicyArgs{Role: role.Name, Policy: pulumi.String(agent)}, parent); err != nil {
		return nil, nil, err
	}
	policy, err := policyOf(role)
	if err != nil {
		return nil, nil, err
	}
	if _, err = iam.NewRolePolicy(ctx, name+"-policy", &iam.RolePolicyArgs{Role: role.Name, Policy: policy}, parent); err != nil {
		return nil, nil, err
	}
	profile, err := iam.NewInstanceProfile(ctx, name+"-profile", &iam.InstanceProfileArgs{Role: role.Name, Tags: e.tagged(tag)}, parent)
	if err != nil {
		return nil, nil, err
	}
	return role, profile, nil
}

// exportIdentity declares the export's role: the daily export's S3 writes
// and its own InfluxDB token, nothing else, assumable by the instance role
// only. iotgw-export-secrets.service (root) assumes it and hands the
// export the session, so the export never holds the instance role.
func (h *Host) exportIdentity(ctx *pulumi.Context, name string, e env, c Config, s *Storage, parent pulumi.ResourceOption) error {
	trust := h.Role.Arn.ApplyT(func(arn string) (string, error) { return ExportTrustPolicy(arn) }).(pulumi.StringOutput)
	var err error
	h.ExportRole, err = iam.NewRole(ctx, name+"-export-role", &iam.RoleArgs{
		Description:      pulumi.String(fmt.Sprintf("iot-gateway %s daily export (assumed by the host role)", e.stack)),
		AssumeRolePolicy: trust,
		// An hour: the most a session assumed with instance credentials
		// may have (role chaining).
		MaxSessionDuration: pulumi.Int(3600),
		Tags:               e.tagged("export"),
	}, parent)
	if err != nil {
		return err
	}
	policy := s.Bucket.Arn.ApplyT(func(bucketArn string) (string, error) {
		return ExportPolicy(e, c, bucketArn)
	}).(pulumi.StringOutput)
	_, err = iam.NewRolePolicy(ctx, name+"-export-policy", &iam.RolePolicyArgs{
		Role:   h.ExportRole.Name,
		Policy: policy,
	}, parent)
	return err
}

// ExportTrustPolicy lets the host role, and no one else, assume the export
// role.
func ExportTrustPolicy(hostRoleArn string) (string, error) {
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{{
			Effect:    "Allow",
			Principal: map[string]string{"AWS": hostRoleArn},
			Action:    []string{"sts:AssumeRole"},
		}},
	}.json()
}

// ExportPolicy is the export role's inline policy: what `iotgw export`
// calls and nothing more. The token is a SecureString under the AWS
// managed key aws/ssm, whose key policy lets the account's principals
// decrypt through SSM, so no kms: statement is needed.
func ExportPolicy(e env, c Config, bucketArn string) (string, error) {
	token := []string{e.paramArn("/" + provision.ExportSecrets[0])}
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{
			{
				// iotgw export replaces a day's objects: the old manifest
				// first, stale files last (app/export/s3.go).
				Sid:      "WriteExports",
				Effect:   "Allow",
				Action:   []string{"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
				Resource: []string{bucketArn + "/" + c.ExportPrefix + "*"},
			},
			{
				// HeadBucket (the export's first check) has no prefix; a
				// listing with one stays under the export prefix.
				Sid:       "ListExports",
				Effect:    "Allow",
				Action:    []string{"s3:ListBucket"},
				Resource:  []string{bucketArn},
				Condition: map[string]any{"StringLikeIfExists": map[string]any{"s3:prefix": []string{c.ExportPrefix + "*"}}},
			},
			{
				Sid:      "ReadExportToken",
				Effect:   "Allow",
				Action:   []string{"ssm:GetParameter"},
				Resource: token,
			},
			{
				Sid:         "DenyOtherParameters",
				Effect:      "Deny",
				Action:      parameterReads,
				NotResource: token,
			},
		},
	}.json()
}

// SSMAgentActions are what the SSM agent calls for Session Manager, Run
// Command and associations: AmazonSSMManagedInstanceCore without
// ssm:GetParameter and ssm:GetParameters. None reads a parameter, an object
// or a secret; the ssm ones act on the calling instance, documents and
// associations, the message ones on the agent's own channels.
var SSMAgentActions = []string{
	"ssm:DescribeAssociation", "ssm:GetDeployablePatchSnapshotForInstance", "ssm:GetDocument",
	"ssm:DescribeDocument", "ssm:GetManifest", "ssm:ListAssociations", "ssm:ListInstanceAssociations",
	"ssm:PutInventory", "ssm:PutComplianceItems", "ssm:PutConfigurePackageResult",
	"ssm:UpdateAssociationStatus", "ssm:UpdateInstanceAssociationStatus", "ssm:UpdateInstanceInformation",
	"ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
	"ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
	"ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
	"ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
}

// SSMAgentPolicy is the host's policy for the SSM agent. The agent's
// actions take no narrower resource than "*".
func SSMAgentPolicy() (string, error) {
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{{
			Sid:      "SSMAgent",
			Effect:   "Allow",
			Action:   SSMAgentActions,
			Resource: []string{"*"},
		}},
	}.json()
}

// HostWritableParams are the parameters, under the stack's path, that the
// host writes: the broker CA and the InfluxDB tokens iotgw-setup makes.
var HostWritableParams = []string{"broker-ca", "influx-run-token", "influx-export-token"}

// parameterReads are the SSM actions that return parameter values.
var parameterReads = []string{"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"}

// HostPolicy is the host's inline policy: read its own gateway binary,
// read the stack's parameters and write the ones the host makes, and
// assume the export role (the export's S3 writes are that role's, not
// this one's). Every resource of an Allow is named; nothing is "*". An
// explicit Deny keeps parameter reads inside the stack's path whatever
// other policy is attached to the role later.
func HostPolicy(e env, bucketArn, artifactKey, exportRoleArn string) (string, error) {
	var writable []string
	for _, p := range HostWritableParams {
		writable = append(writable, e.paramArn("/"+p))
	}
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{
			{
				Sid:      "ReadGatewayArtifact",
				Effect:   "Allow",
				Action:   []string{"s3:GetObject"},
				Resource: []string{bucketArn + "/" + artifactKey},
			},
			{
				// iotgw-export-secrets.service (root) hands the export a
				// session of this role.
				Sid:      "AssumeExportRole",
				Effect:   "Allow",
				Action:   []string{"sts:AssumeRole"},
				Resource: []string{exportRoleArn},
			},
			{
				Sid:      "ReadStackParameters",
				Effect:   "Allow",
				Action:   []string{"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"},
				Resource: []string{e.paramArn(""), e.paramArn("/*")},
			},
			{
				Sid:         "DenyParametersOutsideStack",
				Effect:      "Deny",
				Action:      parameterReads,
				NotResource: []string{e.paramArn(""), e.paramArn("/*")},
			},
			{
				Sid:      "WriteHostParameters",
				Effect:   "Allow",
				Action:   []string{"ssm:PutParameter"},
				Resource: writable,
			},
		},
	}.json()
}

func assumeRolePolicy(service string) (string, error) {
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{{
			Effect:    "Allow",
			Principal: map[string]string{"Service": service},
			Action:    []string{"sts:AssumeRole"},
		}},
	}.json()
}

// snapshots declares the DLM role and the daily snapshot policy for the
// data volume.
func (h *Host) snapshots(ctx *pulumi.Context, name string, e env, c Config, parent pulumi.ResourceOption) error {
	assume, err := assumeRolePolicy("dlm.amazonaws.com")
	if err != nil {
		return err
	}
	role, err := iam.NewRole(ctx, name+"-dlm-role", &iam.RoleArgs{
		Description:      pulumi.String(fmt.Sprintf("iot-gateway %s data volume snapshots", e.stack)),
		AssumeRolePolicy: pulumi.String(assume),
		Tags:             e.tagged("dlm"),
	}, parent)
	if err != nil {
		return err
	}
	_, err = iam.NewRolePolicyAttachment(ctx, name+"-dlm-policy", &iam.RolePolicyAttachmentArgs{
		Role:      role.Name,
		PolicyArn: pulumi.Sprintf("arn:%s:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole", e.partition),
	}, parent)
	if err != nil {
		return err
	}
	h.Snapshots, err = dlm.NewLifecyclePolicy(ctx, name+"-snapshots", &dlm.LifecyclePolicyArgs{
		Description:      pulumi.String(fmt.Sprintf("iot-gateway %s daily data volume snapshots", e.stack)),
		ExecutionRoleArn: role.Arn,
		State:            pulumi.String("ENABLED"),
		PolicyDetails: &dlm.LifecyclePolicyPolicyDetailsArgs{
			ResourceTypes: pulumi.StringArray{pulumi.String("VOLUME")},
			TargetTags:    pulumi.StringMap{snapshotTag: pulumi.String(Project + "-" + e.stack)},
			Schedules: dlm.LifecyclePolicyPolicyDetailsScheduleArray{
				&dlm.LifecyclePolicyPolicyDetailsScheduleArgs{
					Name:     pulumi.String("daily"),
					CopyTags: pulumi.Bool(true),
					CreateRule: &dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs{
						Interval:     pulumi.Int(24),
						IntervalUnit: pulumi.String("HOURS"),
						Times:        pulumi.String(c.SnapshotTime),
					},
					RetainRule: &dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs{
						Count: pulumi.Int(c.SnapshotRetain),
					},
				},
			},
		},
		Tags: e.tagged("snapshots"),
	}, parent)
	return err
}
