package stack

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/route53"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/vpc"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// InterfaceEndpoints are the AWS services the gateway slots reach through
// interface VPC endpoints (private DNS on): the SSM agent's three. IoT
// Core's data endpoint is one too, with its own private zone (IoT Core
// does not offer private DNS), and S3 a gateway endpoint. There is no NAT
// and no internet gateway: nothing in the VPC reaches the internet.
var InterfaceEndpoints = []string{"ssm", "ssmmessages", "ec2messages"}

// ScaleNetwork is the scale topology's own VPC: one private subnet per
// availability zone, no route out of the VPC but the endpoints, and the
// security groups of the slots, the endpoints and the database.
type ScaleNetwork struct {
	pulumi.ResourceState

	Vpc         *ec2.Vpc
	Zones       []string      // availability zones, in slot order
	Subnets     []*ec2.Subnet // one per zone
	GatewaySG   *ec2.SecurityGroup
	EndpointSG  *ec2.SecurityGroup
	DatabaseSG  *ec2.SecurityGroup
	IoTEndpoint string // the account's ATS endpoint, resolved to the VPC endpoint inside the VPC
}

// subnetCidr is the i-th sixteenth of the VPC's range.
func subnetCidr(vpcCidr string, i int) (string, error) {
	p, err := netip.ParsePrefix(vpcCidr)
	if err != nil {
		return "", err
	}
	bits := p.Bits() + 4
	base := p.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(i) << (32 - bits)
	a := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return netip.PrefixFrom(a, bits).String(), nil
}

// NewScaleNetwork declares the VPC, its subnets, endpoints and security
// groups.
func NewScaleNetwork(ctx *pulumi.Context, name string, e env, c Config, iotEndpoint string, opts ...pulumi.ResourceOption) (*ScaleNetwork, error) {
	n := &ScaleNetwork{IoTEndpoint: iotEndpoint}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:ScaleNetwork", name, n, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(n)
	azs, err := aws.GetAvailabilityZones(ctx, &aws.GetAvailabilityZonesArgs{State: pulumi.StringRef("available")})
	if err != nil {
		return nil, fmt.Errorf("list availability zones: %w", err)
	}
	zones := append([]string(nil), azs.Names...)
	sort.Strings(zones)
	if len(zones) < c.AvailabilityZones {
		return nil, fmt.Errorf("availabilityZones: %d wanted, the region has %d available", c.AvailabilityZones, len(zones))
	}
	n.Zones = zones[:c.AvailabilityZones]

	n.Vpc, err = ec2.NewVpc(ctx, name, &ec2.VpcArgs{
		CidrBlock: pulumi.String(c.VpcCidr),
		// The endpoints' private DNS and the IoT zone need both.
		EnableDnsHostnames: pulumi.Bool(true),
		EnableDnsSupport:   pulumi.Bool(true),
		Tags:               e.tagged("vpc"),
	}, parent)
	if err != nil {
		return nil, err
	}
	// The default security group allows all traffic between its members;
	// nothing uses it, so it allows nothing.
	_, err = ec2.NewDefaultSecurityGroup(ctx, name+"-default-sg", &ec2.DefaultSecurityGroupArgs{
		VpcId: n.Vpc.ID(),
		Tags:  e.tagged("default-sg"),
	}, parent)
	if err != nil {
		return nil, err
	}
	rt, err := ec2.NewRouteTable(ctx, name+"-private", &ec2.RouteTableArgs{
		VpcId: n.Vpc.ID(),
		Tags:  e.tagged("private"),
	}, parent)
	if err != nil {
		return nil, err
	}
	var subnetIDs pulumi.StringArray
	for i, az := range n.Zones {
		cidr, err := subnetCidr(c.VpcCidr, i)
		if err != nil {
			return nil, fmt.Errorf("vpcCidr: %w", err)
		}
		sn, err := ec2.NewSubnet(ctx, fmt.Sprintf("%s-private-%d", name, i), &ec2.SubnetArgs{
			VpcId:               n.Vpc.ID(),
			CidrBlock:           pulumi.String(cidr),
			AvailabilityZone:    pulumi.String(az),
			MapPublicIpOnLaunch: pulumi.Bool(false),
			Tags:                e.tagged(fmt.Sprintf("private-%d", i)),
		}, parent)
		if err != nil {
			return nil, err
		}
		_, err = ec2.NewRouteTableAssociation(ctx, fmt.Sprintf("%s-private-%d", name, i), &ec2.RouteTableAssociationArgs{
			RouteTableId: rt.ID(),
			SubnetId:     sn.ID(),
		}, parent)
		if err != nil {
			return nil, err
		}
		n.Subnets = append(n.Subnets, sn)
		subnetIDs = append(subnetIDs, sn.ID())
	}

	sg := func(id, what string) (*ec2.SecurityGroup, error) {
		return ec2.NewSecurityGroup(ctx, name+"-"+id+"-sg", &ec2.SecurityGroupArgs{
			Description: pulumi.String(fmt.Sprintf("iot-gateway %s %s", e.stack, what)),
			VpcId:       n.Vpc.ID(),
			Tags:        e.tagged(id),
		}, parent)
	}
	if n.GatewaySG, err = sg("gateway", "gateway slots"); err != nil {
		return nil, err
	}
	if n.EndpointSG, err = sg("endpoints", "VPC endpoints"); err != nil {
		return nil, err
	}
	if n.DatabaseSG, err = sg("database", "Timestream for InfluxDB"); err != nil {
		return nil, err
	}

	s3ep, err := ec2.NewVpcEndpoint(ctx, name+"-s3", &ec2.VpcEndpointArgs{
		VpcId:           n.Vpc.ID(),
		ServiceName:     pulumi.Sprintf("com.amazonaws.%s.s3", e.region),
		VpcEndpointType: pulumi.String("Gateway"),
		RouteTableIds:   pulumi.StringArray{rt.ID()},
		Tags:            e.tagged("s3"),
	}, parent)
	if err != nil {
		return nil, err
	}
	for _, svc := range InterfaceEndpoints {
		_, err := ec2.NewVpcEndpoint(ctx, name+"-"+svc, &ec2.VpcEndpointArgs{
			VpcId:             n.Vpc.ID(),
			ServiceName:       pulumi.Sprintf("com.amazonaws.%s.%s", e.region, svc),
			VpcEndpointType:   pulumi.String("Interface"),
			PrivateDnsEnabled: pulumi.Bool(true),
			SubnetIds:         subnetIDs,
			SecurityGroupIds:  pulumi.StringArray{n.EndpointSG.ID()},
			Tags:              e.tagged(svc),
		}, parent)
		if err != nil {
			return nil, err
		}
	}
	iotep, err := ec2.NewVpcEndpoint(ctx, name+"-iot-data", &ec2.VpcEndpointArgs{
		VpcId:             n.Vpc.ID(),
		ServiceName:       pulumi.Sprintf("com.amazonaws.%s.iot.data", e.region),
		VpcEndpointType:   pulumi.String("Interface"),
		PrivateDnsEnabled: pulumi.Bool(false),
		SubnetIds:         subnetIDs,
		SecurityGroupIds:  pulumi.StringArray{n.EndpointSG.ID()},
		Tags:              e.tagged("iot-data"),
	}, parent)
	if err != nil {
		return nil, err
	}
	// IoT Core's data endpoint has no private DNS of its own: a private
	// zone for the account's ATS name points it at the VPC endpoint, so the
	// gateways verify IoT Core's certificate under its usual name.
	zone, err := route53.NewZone(ctx, name+"-iot-zone", &route53.ZoneArgs{
		Name:    pulumi.String(iotEndpoint),
		Comment: pulumi.String("IoT Core data endpoint inside the iot-gateway " + e.stack + " VPC"),
		Vpcs:    route53.ZoneVpcArray{&route53.ZoneVpcArgs{VpcId: n.Vpc.ID()}},
		Tags:    e.tagged("iot-zone"),
	}, parent)
	if err != nil {
		return nil, err
	}
	entry := iotep.DnsEntries.Index(pulumi.Int(0))
	_, err = route53.NewRecord(ctx, name+"-iot-record", &route53.RecordArgs{
		ZoneId: zone.ZoneId,
		Name:   pulumi.String(iotEndpoint),
		Type:   pulumi.String("A"),
		Aliases: route53.RecordAliasArray{&route53.RecordAliasArgs{
			Name:                 entry.DnsName().Elem(),
			ZoneId:               entry.HostedZoneId().Elem(),
			EvaluateTargetHealth: pulumi.Bool(true),
		}},
	}, parent)
	if err != nil {
		return nil, err
	}

	for _, r := range ScaleRules() {
		args := r.args(n, s3ep)
		if r.Egress {
			_, err = vpc.NewSecurityGroupEgressRule(ctx, name+"-"+r.Name, &vpc.SecurityGroupEgressRuleArgs{
				SecurityGroupId:           args.from,
				Description:               pulumi.String(r.Description),
				IpProtocol:                pulumi.String("tcp"),
				FromPort:                  pulumi.Int(r.Port),
				ToPort:                    pulumi.Int(r.Port),
				ReferencedSecurityGroupId: args.peerSG,
				PrefixListId:              args.prefixList,
				Tags:                      e.tagged(r.Name),
			}, parent)
		} else {
			_, err = vpc.NewSecurityGroupIngressRule(ctx, name+"-"+r.Name, &vpc.SecurityGroupIngressRuleArgs{
				SecurityGroupId:           args.from,
				Description:               pulumi.String(r.Description),
				IpProtocol:                pulumi.String("tcp"),
				FromPort:                  pulumi.Int(r.Port),
				ToPort:                    pulumi.Int(r.Port),
				ReferencedSecurityGroupId: args.peerSG,
				Tags:                      e.tagged(r.Name),
			}, parent)
		}
		if err != nil {
			return nil, err
		}
	}
	err = ctx.RegisterResourceOutputs(n, pulumi.Map{"vpcId": n.Vpc.ID()})
	return n, err
}

// ScaleRule is one security group rule of the scale topology: Group lets
// Port in from Peer (ingress) or out to Peer (egress). Peers are other
// security groups or the S3 prefix list, never a CIDR block.
type ScaleRule struct {
	Name        string
	Group       string // gateway, endpoints, database
	Egress      bool
	Port        int
	Peer        string // a group above, or "s3" (the S3 gateway endpoint's prefix list)
	Description string
}

// ScaleRules lists every rule: the slots reach the endpoints (HTTPS, MQTT
// over TLS), S3 and the database; the endpoints and the database accept
// only the slots. Nothing accepts anything from outside the VPC.
func ScaleRules() []ScaleRule {
	return []ScaleRule{
		{"gw-out-443-endpoints", "gateway", true, 443, "endpoints", "HTTPS to the SSM endpoints"},
		{"gw-out-8883-endpoints", "gateway", true, PortMQTTTLS, "endpoints", "MQTT over TLS to IoT Core's VPC endpoint"},
		{"gw-out-443-s3", "gateway", true, 443, "s3", "HTTPS to S3 (artifact, exports, packages) through the gateway endpoint"},
		{"gw-out-8086-database", "gateway", true, PortInflux, "database", "InfluxDB API of Timestream for InfluxDB"},
		{"endpoints-in-443-gw", "endpoints", false, 443, "gateway", "HTTPS from the gateway slots"},
		{"endpoints-in-8883-gw", "endpoints", false, PortMQTTTLS, "gateway", "MQTT over TLS from the gateway slots"},
		{"database-in-8086-gw", "database", false, PortInflux, "gateway", "InfluxDB API from the gateway slots only"},
	}
}

type ruleArgs struct {
	from       pulumi.StringInput
	peerSG     pulumi.StringPtrInput
	prefixList pulumi.StringPtrInput
}

func (r ScaleRule) args(n *ScaleNetwork, s3ep *ec2.VpcEndpoint) ruleArgs {
	group := map[string]*ec2.SecurityGroup{"gateway": n.GatewaySG, "endpoints": n.EndpointSG, "database": n.DatabaseSG}
	a := ruleArgs{from: group[r.Group].ID()}
	if r.Peer == "s3" {
		a.prefixList = s3ep.PrefixListId
	} else {
		a.peerSG = group[r.Peer].ID()
	}
	return a
}
