package stack

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Values the mocks answer with.
const (
	mockRegion  = "eu-central-1"
	mockAccount = "123456789012"
	mockBucket  = "iot-gateway-dev-0a1b2c3d"
	mockVolume  = "vol-0123456789abcdef0"
	mockSubnetA = "subnet-0aaa"
	mockSubnetB = "subnet-0bbb"
	mockVPC     = "vpc-0def"
	mockAZ      = "eu-central-1a"

	mockIoTEndpoint    = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"
	mockInfluxEndpoint = "abc123xyz-3kx9.eu-central-1.timestream-influxdb.amazonaws.com"
	mockIoTCert        = "-----BEGIN CERTIFICATE-----\nMIIBmockCERT\n-----END CERTIFICATE-----\n"
	mockIoTKey         = "-----BEGIN RSA PRIVATE KEY-----\nMIIEmockKEY-5be1\n-----END RSA PRIVATE KEY-----\n"
)

// mockZones are the region's availability zones, unsorted as the API may
// return them.
var mockZones = []string{"eu-central-1b", "eu-central-1a", "eu-central-1c"}

func mockAMI(arch string) string { return "ami-" + strings.ReplaceAll(arch, "_", "") + "0001" }

// recorded is one resource the program registered.
type recorded struct {
	Type, Name string
	Inputs     resource.PropertyMap
	ID         string
	Deps       []string // URNs it depends on

	URN, Parent                                  string
	Protect, RetainOnDelete, DeleteBeforeReplace bool
	IgnoreChanges                                []string
}

// mocks answers the provider calls and records every resource.
type mocks struct {
	mu        sync.Mutex
	resources []recorded
	calls     []pulumi.MockCallArgs
}

func (m *mocks) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	outs := args.Inputs.Copy()
	id := args.Name + "-id"
	switch args.TypeToken {
	case "aws:s3/bucketV2:BucketV2":
		outs["bucket"] = resource.NewStringProperty(mockBucket)
		outs["arn"] = resource.NewStringProperty("arn:aws:s3:::" + mockBucket)
		id = mockBucket
	case "aws:ebs/volume:Volume":
		id = mockVolume
	case "aws:ec2/instance:Instance":
		id = "i-0123456789abcdef0"
		outs["publicIp"] = resource.NewStringProperty("198.51.100.7")
		outs["publicDns"] = resource.NewStringProperty("ec2-198-51-100-7.eu-central-1.compute.amazonaws.com")
	case "aws:ec2/eip:Eip":
		outs["publicIp"] = resource.NewStringProperty("203.0.113.9")
		outs["publicDns"] = resource.NewStringProperty("ec2-203-0-113-9.eu-central-1.compute.amazonaws.com")
	case "aws:iam/role:Role":
		outs["name"] = resource.NewStringProperty(args.Name)
		outs["arn"] = resource.NewStringProperty("arn:aws:iam::" + mockAccount + ":role/" + args.Name)
	case "aws:iam/instanceProfile:InstanceProfile":
		outs["name"] = resource.NewStringProperty(args.Name)
	case "aws:ec2/keyPair:KeyPair":
		outs["keyName"] = resource.NewStringProperty(args.Name)
	case "aws:ec2/vpcEndpoint:VpcEndpoint":
		outs["prefixListId"] = resource.NewStringProperty("pl-6ea54007")
		outs["dnsEntries"] = resource.NewArrayProperty([]resource.PropertyValue{resource.NewObjectProperty(resource.PropertyMap{
			"dnsName":      resource.NewStringProperty("vpce-0abc-" + args.Name + ".vpce-svc.eu-central-1.vpce.amazonaws.com"),
			"hostedZoneId": resource.NewStringProperty("Z273ZU8SZ5RJPC"),
		})})
	case "aws:route53/zone:Zone":
		outs["zoneId"] = resource.NewStringProperty("Z0PRIVATE" + args.Name)
	case "aws:timestreaminfluxdb/dbInstance:DbInstance":
		outs["endpoint"] = resource.NewStringProperty(mockInfluxEndpoint)
	case "aws:iot/certificate:Certificate":
		outs["arn"] = resource.NewStringProperty("arn:aws:iot:" + mockRegion + ":" + mockAccount + ":cert/0f1e2d")
		outs["certificatePem"] = resource.NewStringProperty(mockIoTCert)
		outs["privateKey"] = resource.NewStringProperty(mockIoTKey)
	case "aws:iot/policy:Policy", "aws:iot/thingGroup:ThingGroup", "aws:iot/thingType:ThingType":
		if n, ok := args.Inputs["name"]; ok {
			outs["name"] = n
		}
	}
	if args.TypeToken == "aws:ebs/volume:Volume" && strings.HasPrefix(args.Name, "gw-") {
		// One id per slot.
		id = "vol-0" + strings.TrimSuffix(strings.TrimPrefix(args.Name, "gw-"), "-data") + "5107"
	}
	if args.TypeToken == "aws:ec2/instance:Instance" && strings.HasPrefix(args.Name, "gw-") {
		id = "i-0" + strings.TrimSuffix(strings.TrimPrefix(args.Name, "gw-"), "-instance") + "5107"
		delete(outs, "publicIp")
		delete(outs, "publicDns")
	}
	m.mu.Lock()
	rec := recorded{Type: args.TypeToken, Name: args.Name, Inputs: args.Inputs, ID: id}
	if rpc := args.RegisterRPC; rpc != nil {
		rec.Deps = rpc.GetDependencies()
		rec.Parent = rpc.GetParent()
		rec.Protect = rpc.GetProtect()
		rec.RetainOnDelete = rpc.GetRetainOnDelete()
		rec.DeleteBeforeReplace = rpc.GetDeleteBeforeReplace()
		rec.IgnoreChanges = rpc.GetIgnoreChanges()
	}
	rec.URN = urnOf(rec.Parent, args.TypeToken, args.Name)
	m.resources = append(m.resources, rec)
	m.mu.Unlock()
	return id, outs, nil
}

// urnOf builds a resource's URN the way the engine does: the parent's type
// chain, then the resource's type and name.
func urnOf(parent, typ, name string) string {
	if parent == "" {
		return "urn:pulumi:dev::" + Project + "::" + typ + "::" + name
	}
	// urn:pulumi:<stack>::<project>::<type chain>::<name>
	parts := strings.SplitN(parent, "::", 4)
	chain := typ
	if len(parts) == 4 {
		chain = parts[2] + "$" + typ
	}
	return "urn:pulumi:dev::" + Project + "::" + chain + "::" + name
}

func (m *mocks) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	m.mu.Lock()
	m.calls = append(m.calls, args)
	m.mu.Unlock()
	str := resource.NewStringProperty
	switch args.Token {
	case "aws:index/getRegion:getRegion":
		return resource.PropertyMap{"name": str(mockRegion), "id": str(mockRegion)}, nil
	case "aws:index/getCallerIdentity:getCallerIdentity":
		return resource.PropertyMap{"accountId": str(mockAccount), "arn": str("arn:aws:iam::" + mockAccount + ":user/ci"), "id": str(mockAccount), "userId": str("AIDA")}, nil
	case "aws:index/getPartition:getPartition":
		return resource.PropertyMap{"partition": str("aws"), "dnsSuffix": str("amazonaws.com"), "id": str("aws")}, nil
	case "aws:ssm/getParameter:getParameter":
		name := args.Args["name"].StringValue()
		arch := name[strings.LastIndex(name, "-")+1:]
		if !strings.HasPrefix(name, "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-") {
			return nil, fmt.Errorf("unexpected parameter %s", name)
		}
		return resource.PropertyMap{"name": str(name), "value": str(mockAMI(arch)), "type": str("String"), "id": str(name)}, nil
	case "aws:index/getAvailabilityZones:getAvailabilityZones":
		var names []resource.PropertyValue
		for _, z := range mockZones {
			names = append(names, str(z))
		}
		return resource.PropertyMap{"names": resource.NewArrayProperty(names), "id": str(mockRegion)}, nil
	case "aws:iot/getEndpoint:getEndpoint":
		if args.Args["endpointType"].StringValue() != "iot:Data-ATS" {
			return nil, fmt.Errorf("mocks: endpoint type %v, the gateways verify the ATS endpoint", args.Args["endpointType"])
		}
		return resource.PropertyMap{"endpointAddress": str(mockIoTEndpoint), "endpointType": str("iot:Data-ATS"), "id": str(mockIoTEndpoint)}, nil
	case "aws:ec2/getVpc:getVpc":
		return resource.PropertyMap{"id": str(mockVPC), "default": resource.NewBoolProperty(true)}, nil
	case "aws:ec2/getSubnets:getSubnets":
		return resource.PropertyMap{"ids": resource.NewArrayProperty([]resource.PropertyValue{str(mockSubnetB), str(mockSubnetA)}), "id": str(mockVPC)}, nil
	case "aws:ec2/getSubnet:getSubnet":
		id := args.Args["id"].StringValue()
		return resource.PropertyMap{"id": str(id), "vpcId": str(mockVPC), "availabilityZone": str(mockAZ)}, nil
	}
	return nil, fmt.Errorf("mocks: unexpected call %s", args.Token)
}

// byType returns the recorded resources of one type.
func (m *mocks) byType(typ string) []recorded {
	var out []recorded
	for _, r := range m.resources {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// one returns the only resource of a type, failing otherwise.
func (m *mocks) one(t *testing.T, typ string) recorded {
	t.Helper()
	rs := m.byType(typ)
	if len(rs) != 1 {
		t.Fatalf("want one %s, got %d", typ, len(rs))
	}
	return rs[0]
}

func (m *mocks) callsOf(token string) []pulumi.MockCallArgs {
	var out []pulumi.MockCallArgs
	for _, c := range m.calls {
		if c.Token == token {
			out = append(out, c)
		}
	}
	return out
}

// plain unwraps secrets and returns the property as a Go value
// (string, bool, float64, []any, map[string]any).
func plain(v resource.PropertyValue) any {
	switch {
	case v.IsSecret():
		return plain(v.SecretValue().Element)
	case v.IsNull():
		return nil
	case v.IsString():
		return v.StringValue()
	case v.IsBool():
		return v.BoolValue()
	case v.IsNumber():
		return v.NumberValue()
	case v.IsArray():
		var out []any
		for _, e := range v.ArrayValue() {
			out = append(out, plain(e))
		}
		return out
	case v.IsObject():
		out := map[string]any{}
		for k, e := range v.ObjectValue() {
			out[string(k)] = plain(e)
		}
		return out
	case v.IsAsset():
		return v.AssetValue().Path
	}
	return v.String()
}

// get follows a dotted path through the inputs: "metadataOptions.httpTokens".
func get(r recorded, path string) any {
	var cur any = plain(resource.NewObjectProperty(r.Inputs))
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// plainStrings returns every string in v that is not inside a secret.
func plainStrings(v resource.PropertyValue) []string {
	switch {
	case v.IsSecret():
		return nil
	case v.IsString():
		return []string{v.StringValue()}
	case v.IsArray():
		var out []string
		for _, e := range v.ArrayValue() {
			out = append(out, plainStrings(e)...)
		}
		return out
	case v.IsObject():
		var out []string
		for _, e := range v.ObjectValue() {
			out = append(out, plainStrings(e)...)
		}
		return out
	}
	return nil
}
