package stack

import (
	"encoding/json"
	"fmt"
	"regexp"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iot"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Policy variables IoT Core fills in per connection: the thing the
// device's certificate is attached to, and that thing's site attribute
// (set when the device is registered).
const (
	varThing = "${iot:Connection.Thing.ThingName}"
	varSite  = "${iot:Connection.Thing.Attributes[site]}"
)

// IoTNames are the IoT Core names of a stack's fleet.
type IoTNames struct {
	ThingType, ThingGroup, DevicePolicy, GatewayPolicy, ClaimPolicy, Template string
	// GatewayClientPrefix starts every gateway connection's client id:
	// <prefix><slot>-<n>.
	GatewayClientPrefix string
}

var iotUnsafe = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// iotNames names the fleet's IoT resources after the stack.
func iotNames(e env) IoTNames {
	base := iotUnsafe.ReplaceAllString(Project+"-"+e.stack, "-")
	return IoTNames{
		ThingType:           base + "-sensor",
		ThingGroup:          base + "-fleet",
		DevicePolicy:        base + "-device",
		GatewayPolicy:       base + "-gateway",
		ClaimPolicy:         base + "-claim",
		Template:            base + "-fleet",
		GatewayClientPrefix: base + "-gw-",
	}
}

// iotArn is an IoT Core resource ARN of the stack's account and region.
func (e env) iotArn(kind, rest string) string {
	return fmt.Sprintf("arn:%s:iot:%s:%s:%s/%s", e.partition, e.region, e.account, kind, rest)
}

// iotPolicy is an IoT Core policy document. Its statements use the IAM
// grammar; resources take policy variables and * and ? wildcards.
type iotPolicy struct {
	Version   string         `json:"Version"`
	Statement []iotStatement `json:"Statement"`
}

type iotStatement struct {
	Sid       string         `json:"Sid,omitempty"`
	Effect    string         `json:"Effect"`
	Action    []string       `json:"Action"`
	Resource  []string       `json:"Resource"`
	Condition map[string]any `json:"Condition,omitempty"`
}

// DevicePolicy is attached to every device certificate. A device connects
// only with its thing name as client id, and only while its certificate is
// attached to that thing; it publishes readings only under
// sensors/<site>/<thing>/ and replies only under replies/<site>/<thing>/,
// and subscribes only to commands/<site>/<thing>/#, the rules the
// project's own broker applies (app/broker). No retain, no other topics.
func DevicePolicy(e env) (string, error) {
	own := varSite + "/" + varThing
	return iotPolicyJSON(iotPolicy{Version: "2012-10-17", Statement: []iotStatement{
		{
			Sid: "ConnectAsOwnThing", Effect: "Allow", Action: []string{"iot:Connect"},
			Resource:  []string{e.iotArn("client", varThing)},
			Condition: map[string]any{"Bool": map[string]string{"iot:Connection.Thing.IsAttached": "true"}},
		},
		{
			Sid: "PublishOwnReadingsAndReplies", Effect: "Allow", Action: []string{"iot:Publish"},
			Resource: []string{e.iotArn("topic", "sensors/"+own+"/*"), e.iotArn("topic", "replies/"+own+"/*")},
		},
		{
			Sid: "SubscribeOwnCommands", Effect: "Allow", Action: []string{"iot:Subscribe"},
			Resource: []string{e.iotArn("topicfilter", "commands/"+own+"/#")},
		},
		{
			Sid: "ReceiveOwnCommands", Effect: "Allow", Action: []string{"iot:Receive"},
			Resource: []string{e.iotArn("topic", "commands/"+own+"/*")},
		},
	}})
}

// GatewayIoTPolicy is attached to the gateways' certificate. The slots
// connect as <prefix><slot>-<n>, share the subscription to the readings
// ($share/<group>/sensors/...) and read replies; they publish commands and
// nothing else, so they cannot forge a reading or a reply.
func GatewayIoTPolicy(e env, c Config) (string, error) {
	n := iotNames(e)
	return iotPolicyJSON(iotPolicy{Version: "2012-10-17", Statement: []iotStatement{
		{
			Sid: "ConnectAsSlots", Effect: "Allow", Action: []string{"iot:Connect"},
			Resource: []string{e.iotArn("client", n.GatewayClientPrefix+"*")},
		},
		{
			Sid: "SubscribeSharedReadingsAndReplies", Effect: "Allow", Action: []string{"iot:Subscribe"},
			Resource: []string{e.iotArn("topicfilter", "$share/"+c.SharedGroup+"/sensors/*"), e.iotArn("topicfilter", "replies/*")},
		},
		{
			Sid: "ReceiveReadingsAndReplies", Effect: "Allow", Action: []string{"iot:Receive"},
			Resource: []string{e.iotArn("topic", "sensors/*"), e.iotArn("topic", "replies/*")},
		},
		{
			Sid: "PublishCommands", Effect: "Allow", Action: []string{"iot:Publish"},
			Resource: []string{e.iotArn("topic", "commands/*")},
		},
	}})
}

// ClaimPolicy is for fleet provisioning by claim: a certificate baked into
// devices at manufacture may only ask IoT Core for its own certificate and
// run the stack's provisioning template.
func ClaimPolicy(e env) (string, error) {
	n := iotNames(e)
	topics := []string{"$aws/certificates/create/json*", "$aws/provisioning-templates/" + n.Template + "/provision/json*"}
	var pub, sub []string
	for _, t := range topics {
		pub = append(pub, e.iotArn("topic", t))
		sub = append(sub, e.iotArn("topicfilter", t))
	}
	return iotPolicyJSON(iotPolicy{Version: "2012-10-17", Statement: []iotStatement{
		{Sid: "Connect", Effect: "Allow", Action: []string{"iot:Connect"}, Resource: []string{e.iotArn("client", "*")}},
		{Sid: "Provision", Effect: "Allow", Action: []string{"iot:Publish", "iot:Receive"}, Resource: pub},
		{Sid: "ProvisionReplies", Effect: "Allow", Action: []string{"iot:Subscribe"}, Resource: sub},
	}})
}

// ProvisioningTemplate registers a device by claim: a thing named by the
// device, of the fleet's type, in the fleet's group, with its site as an
// attribute, its new certificate active and the device policy attached.
func ProvisioningTemplate(e env) (string, error) {
	n := iotNames(e)
	ref := func(p string) map[string]string { return map[string]string{"Ref": p} }
	b, err := json.Marshal(map[string]any{
		"Parameters": map[string]any{
			"ThingName":                 map[string]string{"Type": "String"},
			"Site":                      map[string]string{"Type": "String"},
			"AWS::IoT::Certificate::Id": map[string]string{"Type": "String"},
		},
		"Resources": map[string]any{
			"thing": map[string]any{
				"Type": "AWS::IoT::Thing",
				"Properties": map[string]any{
					"ThingName":        ref("ThingName"),
					"ThingTypeName":    n.ThingType,
					"ThingGroups":      []string{n.ThingGroup},
					"AttributePayload": map[string]any{"site": ref("Site")},
				},
			},
			"certificate": map[string]any{
				"Type":       "AWS::IoT::Certificate",
				"Properties": map[string]any{"CertificateId": ref("AWS::IoT::Certificate::Id"), "Status": "ACTIVE"},
			},
			"policy": map[string]any{
				"Type":       "AWS::IoT::Policy",
				"Properties": map[string]any{"PolicyName": n.DevicePolicy},
			},
		},
	})
	return string(b), err
}

func iotPolicyJSON(p iotPolicy) (string, error) {
	b, err := json.Marshal(p)
	return string(b), err
}

// IoT is the fleet's IoT Core side: thing type and group, the device,
// gateway and claim policies, the provisioning template and the gateways'
// certificate.
type IoT struct {
	pulumi.ResourceState

	Names         IoTNames
	Endpoint      string // the account's ATS endpoint
	env           env
	ThingType     *iot.ThingType
	ThingGroup    *iot.ThingGroup
	DevicePolicy  *iot.Policy
	GatewayPolicy *iot.Policy
	ClaimPolicy   *iot.Policy
	Template      *iot.ProvisioningTemplate
	GatewayCert   *iot.Certificate
	ProvisionRole *iam.Role
}

func (t *IoT) region() string { return t.env.region }

// NewIoT declares the IoT Core resources.
func NewIoT(ctx *pulumi.Context, name string, e env, c Config, endpoint string, opts ...pulumi.ResourceOption) (*IoT, error) {
	t := &IoT{Names: iotNames(e), Endpoint: endpoint, env: e}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:IoT", name, t, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(t)
	var err error
	t.ThingType, err = iot.NewThingType(ctx, name+"-thing-type", &iot.ThingTypeArgs{
		Name: pulumi.String(t.Names.ThingType),
		Properties: &iot.ThingTypePropertiesArgs{
			Description:          pulumi.String("iot-gateway sensor"),
			SearchableAttributes: pulumi.StringArray{pulumi.String("site")},
		},
		Tags: e.tagged("thing-type"),
	}, parent)
	if err != nil {
		return nil, err
	}
	t.ThingGroup, err = iot.NewThingGroup(ctx, name+"-fleet", &iot.ThingGroupArgs{
		Name: pulumi.String(t.Names.ThingGroup),
		Properties: &iot.ThingGroupPropertiesArgs{
			Description: pulumi.String("iot-gateway " + e.stack + " devices"),
		},
		Tags: e.tagged("fleet"),
	}, parent)
	if err != nil {
		return nil, err
	}
	policy := func(id, policyName string, doc func() (string, error)) (*iot.Policy, error) {
		d, err := doc()
		if err != nil {
			return nil, err
		}
		return iot.NewPolicy(ctx, name+"-"+id+"-policy", &iot.PolicyArgs{
			Name:   pulumi.String(policyName),
			Policy: pulumi.String(d),
			Tags:   e.tagged(id + "-policy"),
		}, parent)
	}
	if t.DevicePolicy, err = policy("device", t.Names.DevicePolicy, func() (string, error) { return DevicePolicy(e) }); err != nil {
		return nil, err
	}
	if t.GatewayPolicy, err = policy("gateway", t.Names.GatewayPolicy, func() (string, error) { return GatewayIoTPolicy(e, c) }); err != nil {
		return nil, err
	}
	if t.ClaimPolicy, err = policy("claim", t.Names.ClaimPolicy, func() (string, error) { return ClaimPolicy(e) }); err != nil {
		return nil, err
	}

	assume, err := assumeRolePolicy("iot.amazonaws.com")
	if err != nil {
		return nil, err
	}
	t.ProvisionRole, err = iam.NewRole(ctx, name+"-provisioning-role", &iam.RoleArgs{
		Description:      pulumi.String(fmt.Sprintf("iot-gateway %s fleet provisioning", e.stack)),
		AssumeRolePolicy: pulumi.String(assume),
		Tags:             e.tagged("provisioning"),
	}, parent)
	if err != nil {
		return nil, err
	}
	_, err = iam.NewRolePolicyAttachment(ctx, name+"-provisioning-policy", &iam.RolePolicyAttachmentArgs{
		Role:      t.ProvisionRole.Name,
		PolicyArn: pulumi.Sprintf("arn:%s:iam::aws:policy/service-role/AWSIoTThingsRegistration", e.partition),
	}, parent)
	if err != nil {
		return nil, err
	}
	body, err := ProvisioningTemplate(e)
	if err != nil {
		return nil, err
	}
	t.Template, err = iot.NewProvisioningTemplate(ctx, name+"-template", &iot.ProvisioningTemplateArgs{
		Name:                pulumi.String(t.Names.Template),
		Description:         pulumi.String("iot-gateway " + e.stack + ": a device by claim, in the fleet, with the device policy"),
		ProvisioningRoleArn: t.ProvisionRole.Arn,
		Enabled:             pulumi.Bool(true),
		TemplateBody:        pulumi.String(body),
		Tags:                e.tagged("template"),
	}, parent, pulumi.DependsOn([]pulumi.Resource{t.DevicePolicy, t.ThingGroup, t.ThingType}))
	if err != nil {
		return nil, err
	}

	// IoT Core makes the key pair; the private key is a secret output,
	// stored only in a SecureString parameter (scale.go).
	t.GatewayCert, err = iot.NewCertificate(ctx, name+"-gateway-cert", &iot.CertificateArgs{
		Active: pulumi.Bool(true),
	}, parent)
	if err != nil {
		return nil, err
	}
	_, err = iot.NewPolicyAttachment(ctx, name+"-gateway-cert-policy", &iot.PolicyAttachmentArgs{
		Policy: t.GatewayPolicy.Name,
		Target: t.GatewayCert.Arn,
	}, parent)
	if err != nil {
		return nil, err
	}
	err = ctx.RegisterResourceOutputs(t, pulumi.Map{"endpoint": pulumi.String(endpoint)})
	return t, err
}
