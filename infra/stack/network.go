package stack

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/vpc"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Ports the security group may open.
const (
	PortMQTTTLS   = 8883
	PortMQTTPlain = 1883
	PortInflux    = 8086
	PortSSH       = 22
)

// Network is where the host lives and the security group in front of it.
type Network struct {
	pulumi.ResourceState

	VpcID            string
	SubnetID         string
	AvailabilityZone string
	SecurityGroup    *ec2.SecurityGroup
}

// IngressRule is one port opened to one CIDR block.
type IngressRule struct {
	Port        int
	Cidr        string
	Description string
}

// IngressRules lists what the security group lets in, from the config:
// 8883 from mqttCidrs, 1883 too when mqttPlaintext, 8086 from adminCidrs,
// 22 from sshCidrs. Validate has already refused the whole internet for
// 1883, 8086 and 22; the check here makes that a property of this function
// as well: plain MQTT, InfluxDB and SSH never go to /0 nor a block broader
// than /8 (IPv6 /32), whatever the config.
func IngressRules(c Config) ([]IngressRule, error) {
	var rules []IngressRule
	add := func(port int, cidrs []string, what string, anyOK bool) error {
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("ingress %d: %w", port, err)
			}
			if !anyOK && tooBroad(p) {
				return fmt.Errorf("ingress %d from %s refused: never open %s to the internet", port, s, what)
			}
			rules = append(rules, IngressRule{Port: port, Cidr: p.String(), Description: what})
		}
		return nil
	}
	if err := add(PortMQTTTLS, c.MQTTCidrs, "MQTT over TLS", true); err != nil {
		return nil, err
	}
	if c.MQTTPlaintext {
		if err := add(PortMQTTPlain, c.MQTTCidrs, "plain MQTT", false); err != nil {
			return nil, err
		}
	}
	if err := add(PortInflux, c.AdminCidrs, "InfluxDB", false); err != nil {
		return nil, err
	}
	if err := add(PortSSH, c.SSHCidrs, "SSH", false); err != nil {
		return nil, err
	}
	return rules, nil
}

// NewNetwork finds the VPC and subnet and declares the security group.
func NewNetwork(ctx *pulumi.Context, name string, e env, c Config, opts ...pulumi.ResourceOption) (*Network, error) {
	n := &Network{}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:Network", name, n, opts...); err != nil {
		return nil, err
	}
	if err := n.locate(ctx, c); err != nil {
		return nil, err
	}
	rules, err := IngressRules(c)
	if err != nil {
		return nil, err
	}
	parent := pulumi.Parent(n)
	sg, err := ec2.NewSecurityGroup(ctx, name+"-sg", &ec2.SecurityGroupArgs{
		Description: pulumi.String(fmt.Sprintf("iot-gateway %s host", e.stack)),
		VpcId:       pulumi.String(n.VpcID),
		Tags:        e.tagged("host"),
	}, parent)
	if err != nil {
		return nil, err
	}
	n.SecurityGroup = sg
	for _, r := range rules {
		_, err := vpc.NewSecurityGroupIngressRule(ctx, fmt.Sprintf("%s-in-%d-%s", name, r.Port, cidrName(r.Cidr)), &vpc.SecurityGroupIngressRuleArgs{
			SecurityGroupId: sg.ID(),
			Description:     pulumi.String(r.Description),
			IpProtocol:      pulumi.String("tcp"),
			FromPort:        pulumi.Int(r.Port),
			ToPort:          pulumi.Int(r.Port),
			CidrIpv4:        cidrIf(r.Cidr, false),
			CidrIpv6:        cidrIf(r.Cidr, true),
			Tags:            e.tagged(fmt.Sprintf("in-%d", r.Port)),
		}, parent)
		if err != nil {
			return nil, err
		}
	}
	// Out: HTTPS only (package repositories, S3, SSM, InfluxData's
	// repository). DNS and NTP go to the VPC resolver and the Amazon Time
	// Sync link-local address, which security groups do not filter.
	for _, dst := range []string{"0.0.0.0/0", "::/0"} {
		_, err := vpc.NewSecurityGroupEgressRule(ctx, fmt.Sprintf("%s-out-443-%s", name, cidrName(dst)), &vpc.SecurityGroupEgressRuleArgs{
			SecurityGroupId: sg.ID(),
			Description:     pulumi.String("HTTPS to AWS APIs and package repositories"),
			IpProtocol:      pulumi.String("tcp"),
			FromPort:        pulumi.Int(443),
			ToPort:          pulumi.Int(443),
			CidrIpv4:        cidrIf(dst, false),
			CidrIpv6:        cidrIf(dst, true),
			Tags:            e.tagged("out-443"),
		}, parent)
		if err != nil {
			return nil, err
		}
	}
	err = ctx.RegisterResourceOutputs(n, pulumi.Map{
		"securityGroupId": sg.ID(),
		"subnetId":        pulumi.String(n.SubnetID),
	})
	return n, err
}

// locate resolves the VPC, subnet and availability zone: the configured
// ones, or the default VPC's default subnets, first by id so the choice is
// stable between runs.
func (n *Network) locate(ctx *pulumi.Context, c Config) error {
	if c.SubnetID != "" {
		s, err := ec2.LookupSubnet(ctx, &ec2.LookupSubnetArgs{Id: pulumi.StringRef(c.SubnetID)})
		if err != nil {
			return fmt.Errorf("subnetId %s: %w", c.SubnetID, err)
		}
		if c.VpcID != "" && c.VpcID != s.VpcId {
			return fmt.Errorf("subnetId %s is in %s, not in vpcId %s", c.SubnetID, s.VpcId, c.VpcID)
		}
		n.VpcID, n.SubnetID, n.AvailabilityZone = s.VpcId, s.Id, s.AvailabilityZone
		return nil
	}
	vpcID := c.VpcID
	if vpcID == "" {
		v, err := ec2.LookupVpc(ctx, &ec2.LookupVpcArgs{Default: pulumi.BoolRef(true)})
		if err != nil {
			return fmt.Errorf("no default VPC in this region; set vpcId and subnetId: %w", err)
		}
		vpcID = v.Id
	}
	filters := []ec2.GetSubnetsFilter{{Name: "vpc-id", Values: []string{vpcID}}}
	if c.VpcID == "" {
		filters = append(filters, ec2.GetSubnetsFilter{Name: "default-for-az", Values: []string{"true"}})
	}
	subnets, err := ec2.GetSubnets(ctx, &ec2.GetSubnetsArgs{Filters: filters})
	if err != nil {
		return fmt.Errorf("list subnets of %s: %w", vpcID, err)
	}
	if len(subnets.Ids) == 0 {
		return fmt.Errorf("vpc %s has no subnet to use; set subnetId", vpcID)
	}
	ids := append([]string(nil), subnets.Ids...)
	sort.Strings(ids)
	s, err := ec2.LookupSubnet(ctx, &ec2.LookupSubnetArgs{Id: pulumi.StringRef(ids[0])})
	if err != nil {
		return fmt.Errorf("subnet %s: %w", ids[0], err)
	}
	n.VpcID, n.SubnetID, n.AvailabilityZone = vpcID, s.Id, s.AvailabilityZone
	return nil
}

// tooBroad: /0, or broader than /8 (IPv6 /32), since 0.0.0.0/1 plus
// 128.0.0.0/1 is the internet too.
func tooBroad(p netip.Prefix) bool {
	if p.Addr().Is4() {
		return p.Bits() < 8
	}
	return p.Bits() < 32
}

func cidrIf(cidr string, v6 bool) pulumi.StringPtrInput {
	p := netip.MustParsePrefix(cidr)
	if p.Addr().Is6() != v6 {
		return nil
	}
	return pulumi.String(cidr)
}

// cidrName makes a CIDR usable in a resource name.
func cidrName(cidr string) string {
	out := []byte(cidr)
	for i, b := range out {
		if b == '/' || b == ':' || b == '.' {
			out[i] = '-'
		}
	}
	return string(out)
}
