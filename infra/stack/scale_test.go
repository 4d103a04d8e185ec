package stack

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// scaleConfig is the scale topology with three slots over two zones.
func scaleConfig(t *testing.T) Config {
	c := testConfig(t)
	c.Gateways = 3
	c.Broker = BrokerIoTCore
	c.Database = DatabaseTimestream
	c.MQTTCidrs = nil
	c.InfluxToken, c.MQTTPassword = "", ""
	return c
}

// ssmStandardMax is the largest value of a Standard SSM parameter.
const ssmStandardMax = 4096

func named(m *mocks, typ, name string) (recorded, bool) {
	for _, r := range m.byType(typ) {
		if r.Name == name {
			return r, true
		}
	}
	return recorded{}, false
}

func hasDep(r recorded, name string) bool {
	return slices.ContainsFunc(r.Deps, func(u string) bool { return strings.HasSuffix(u, "::"+name) })
}

func TestScaleDeploy(t *testing.T) {
	c := scaleConfig(t)
	r := deploy(t, c)
	m := r.m

	// Nothing of the all-in-one host, and no way to or from the internet.
	for _, typ := range []string{"aws:ec2/internetGateway:InternetGateway", "aws:ec2/natGateway:NatGateway", "aws:ec2/eip:Eip",
		"aws:ec2/keyPair:KeyPair", "aws:ec2/route:Route", "aws:ec2/egressOnlyInternetGateway:EgressOnlyInternetGateway"} {
		if n := len(m.byType(typ)); n != 0 {
			t.Errorf("%d %s in the scale topology", n, typ)
		}
	}
	if _, ok := named(m, "aws:ec2/instance:Instance", "host-instance"); ok {
		t.Error("the all-in-one host is declared too")
	}
	if get(m.one(t, "aws:ec2/vpc:Vpc"), "cidrBlock") != "10.42.0.0/16" {
		t.Error("VPC CIDR")
	}
	// Private subnets, one per zone, zones sorted.
	subnets := m.byType("aws:ec2/subnet:Subnet")
	if len(subnets) != 2 {
		t.Fatalf("%d subnets, want 2", len(subnets))
	}
	for i, want := range []struct{ az, cidr string }{{"eu-central-1a", "10.42.0.0/20"}, {"eu-central-1b", "10.42.16.0/20"}} {
		s := findNamed(t, subnets, "vpc-private-"+string(rune('0'+i)))
		if get(s, "availabilityZone") != want.az || get(s, "cidrBlock") != want.cidr || get(s, "mapPublicIpOnLaunch") != false {
			t.Errorf("subnet %d = %v", i, plain(resource.NewObjectProperty(s.Inputs)))
		}
	}

	// Endpoints instead of a NAT: S3 (gateway) and the SSM agent's three
	// with private DNS, IoT Core's data endpoint through a private zone.
	eps := map[string]recorded{}
	for _, e := range m.byType("aws:ec2/vpcEndpoint:VpcEndpoint") {
		eps[get(e, "serviceName").(string)] = e
	}
	if len(eps) != 5 || get(eps["com.amazonaws.eu-central-1.s3"], "vpcEndpointType") != "Gateway" {
		t.Errorf("endpoints: %v", eps)
	}
	for _, svc := range InterfaceEndpoints {
		e := eps["com.amazonaws.eu-central-1."+svc]
		if get(e, "vpcEndpointType") != "Interface" || get(e, "privateDnsEnabled") != true || len(toSlice(get(e, "subnetIds"))) != 2 {
			t.Errorf("endpoint %s = %v", svc, plain(resource.NewObjectProperty(e.Inputs)))
		}
	}
	if get(eps["com.amazonaws.eu-central-1.iot.data"], "privateDnsEnabled") != false {
		t.Error("the IoT data endpoint cannot have private DNS; it has a zone")
	}
	zone := m.one(t, "aws:route53/zone:Zone")
	rec := m.one(t, "aws:route53/record:Record")
	if get(zone, "name") != mockIoTEndpoint || len(toSlice(get(zone, "vpcs"))) != 1 || get(rec, "name") != mockIoTEndpoint ||
		!strings.Contains(toString(toSlice(get(rec, "aliases"))[0].(map[string]any)["name"]), "vpc-iot-data") {
		t.Errorf("IoT zone %v, record %v", plain(resource.NewObjectProperty(zone.Inputs)), plain(resource.NewObjectProperty(rec.Inputs)))
	}

	// Security group rules: exactly ScaleRules, peers by group, no CIDR.
	sgID := map[string]string{"gateway": "vpc-gateway-sg-id", "endpoints": "vpc-endpoints-sg-id", "database": "vpc-database-sg-id", "s3": "pl-6ea54007"}
	var got []string
	for _, typ := range []string{"aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"} {
		for _, rr := range m.byType(typ) {
			if get(rr, "cidrIpv4") != nil || get(rr, "cidrIpv6") != nil {
				t.Errorf("rule %s opens a CIDR block", rr.Name)
			}
			peer, _ := get(rr, "referencedSecurityGroupId").(string)
			if pl, ok := get(rr, "prefixListId").(string); ok {
				peer += pl
			}
			got = append(got, strings.Join([]string{strings.Split(typ, ":")[2], toString(get(rr, "securityGroupId")), toString(get(rr, "fromPort")), peer}, " "))
		}
	}
	var want []string
	for _, sr := range ScaleRules() {
		kind := "SecurityGroupIngressRule"
		if sr.Egress {
			kind = "SecurityGroupEgressRule"
		}
		want = append(want, strings.Join([]string{kind, sgID[sr.Group], toString(float64(sr.Port)), sgID[sr.Peer]}, " "))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The database: only the slots reach it.
	var dbIn []string
	for _, rr := range m.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule") {
		if get(rr, "securityGroupId") == sgID["database"] {
			dbIn = append(dbIn, toString(get(rr, "fromPort"))+" from "+toString(get(rr, "referencedSecurityGroupId")))
		}
	}
	if !slices.Equal(dbIn, []string{"8086 from vpc-gateway-sg-id"}) {
		t.Errorf("database ingress = %v", dbIn)
	}
	db := m.one(t, "aws:timestreaminfluxdb/dbInstance:DbInstance")
	if get(db, "publiclyAccessible") != false || !slices.Equal(toStrings(get(db, "vpcSecurityGroupIds")), []string{sgID["database"]}) ||
		!slices.Equal(toStrings(get(db, "vpcSubnetIds")), []string{"vpc-private-0-id", "vpc-private-1-id"}) ||
		get(db, "deploymentType") != "SINGLE_AZ" || get(db, "name") != "iot-gateway-dev" {
		t.Errorf("database = %v", plain(resource.NewObjectProperty(db.Inputs)))
	}
	if !db.Inputs["password"].IsSecret() {
		t.Error("the database password is not a secret input")
	}

	// Slots: across zones, no public IP, their own role, volume and params.
	_, per := IoTConnections(c)
	if per != 5 {
		t.Errorf("1000 msg/s over 3 slots (one down): %d connections per slot, want 5", per)
	}
	for i := 0; i < 3; i++ {
		n := "gw-" + string(rune('0'+i))
		inst := findNamed(t, m.byType("aws:ec2/instance:Instance"), n+"-instance")
		vol := findNamed(t, m.byType("aws:ebs/volume:Volume"), n+"-data")
		att := findNamed(t, m.byType("aws:ec2/volumeAttachment:VolumeAttachment"), n+"-data-attachment")
		ro := findNamed(t, m.byType("aws:ssm/association:Association"), n+"-rollout")
		zone := []string{"eu-central-1a", "eu-central-1b"}[i%2]
		for path, want := range map[string]any{
			"associatePublicIpAddress": false, "monitoring": true, "metadataOptions.httpTokens": "required",
			"rootBlockDevice.encrypted": true, "subnetId": "vpc-private-" + string(rune('0'+i%2)) + "-id",
			"iamInstanceProfile": n + "-profile", "userDataReplaceOnChange": true,
		} {
			if got := get(inst, path); got != want {
				t.Errorf("%s %s = %v, want %v", n, path, got, want)
			}
		}
		if !slices.Equal(toStrings(get(inst, "vpcSecurityGroupIds")), []string{sgID["gateway"]}) {
			t.Errorf("%s security groups %v", n, get(inst, "vpcSecurityGroupIds"))
		}
		if get(vol, "availabilityZone") != zone || get(vol, "encrypted") != true || !vol.RetainOnDelete {
			t.Errorf("%s volume = %v (retain %v)", n, plain(resource.NewObjectProperty(vol.Inputs)), vol.RetainOnDelete)
		}
		// Replacing the instance must not touch the volume.
		if hasDep(vol, n+"-instance") || strings.Contains(toString(plain(resource.NewObjectProperty(vol.Inputs))), "i-0") {
			t.Errorf("%s volume depends on its instance", n)
		}
		if get(att, "volumeId") != vol.ID || get(att, "instanceId") != inst.ID || get(att, "stopInstanceBeforeDetaching") != true {
			t.Errorf("%s attachment = %v", n, plain(resource.NewObjectProperty(att.Inputs)))
		}
		// One slot at a time: this slot waits for the previous one's
		// rollout to succeed; pulumi up waits for each.
		if get(ro, "waitForSuccessTimeoutSeconds") != 1200.0 || get(ro, "maxErrors") != "0" ||
			!slices.Equal(toStrings(get(ro, "targets").([]any)[0].(map[string]any)["values"]), []string{inst.ID}) {
			t.Errorf("%s rollout = %v", n, plain(resource.NewObjectProperty(ro.Inputs)))
		}
		if prev := "gw-" + string(rune('0'+i-1)) + "-rollout"; i > 0 && (!hasDep(ro, prev) || !hasDep(inst, prev)) {
			t.Errorf("%s does not wait for %s: rollout deps %v, instance deps %v", n, prev, ro.Deps, inst.Deps)
		}
		if i == 0 && slices.ContainsFunc(ro.Deps, func(u string) bool { return strings.Contains(u, "-rollout") }) {
			t.Errorf("slot 0 waits for a rollout: %v", ro.Deps)
		}
		for _, d := range []string{"storage-artifact-ref", n + "-params", n + "-data-attachment"} {
			if !hasDep(ro, d) {
				t.Errorf("%s rollout does not wait for %s", n, d)
			}
		}

		// Its host parameters: what provision-files renders on it.
		hp := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), n+"-params")
		if get(hp, "name") != "/iot-gateway/dev/slots/"+string(rune('0'+i))+"/host-params" {
			t.Errorf("%s params name %v", n, get(hp, "name"))
		}
		p, err := provision.ParseHostParams([]byte(get(hp, "value").(string)), string(testSigner.pub))
		if err != nil {
			t.Fatalf("%s params: %v", n, err)
		}
		if v := get(hp, "value").(string); len(v) > ssmStandardMax || get(hp, "tier") != "Standard" {
			t.Errorf("%s params: %d bytes, over a Standard parameter's %d", n, len(v), ssmStandardMax)
		}
		if p.Role != provision.RoleGateway || p.Slot != i || p.MQTTClientID != "iot-gateway-dev-gw-"+string(rune('0'+i)) ||
			p.BrokerURL != "ssl://"+mockIoTEndpoint+":8883" || p.InfluxURL != "https://"+mockInfluxEndpoint+":8086" ||
			p.MQTTConnections != 5 || p.InfluxAdmin != (i == 0) || p.DataVolumeID != vol.ID ||
			!slices.Equal(p.MQTTTopics, []string{"$share/iotgw/sensors/#"}) || p.ExportBucket != mockBucket {
			t.Errorf("%s params = %+v", n, p)
		}
		ud := userData(t, inst)
		if len(ud.gz) > provision.UserDataBudget || !bytes.Contains(ud.plain, []byte("HOST_PARAMS='/iot-gateway/dev/slots/"+string(rune('0'+i))+"/host-params'")) {
			t.Errorf("%s user-data: %d bytes gzipped, budget %d", n, len(ud.gz), provision.UserDataBudget)
		}
		t.Logf("%s user-data: %d bytes, %d gzipped", n, len(ud.plain), len(ud.gz))
	}

	// Secrets: the admin password and the gateways' key only inside
	// secrets; the key parameter is a SecureString.
	for _, res := range m.resources {
		for _, s := range plainStrings(resource.NewObjectProperty(res.Inputs)) {
			for _, secret := range []string{testAdminPassword, "MIIEmockKEY", "PRIVATE KEY"} {
				if strings.Contains(s, secret) {
					t.Errorf("secret %q in a plain input of %s %s", secret, res.Type, res.Name)
				}
			}
		}
	}
	key := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), "secrets-"+provision.IoTKeyParam)
	if get(key, "type") != "SecureString" || !key.Inputs["value"].IsSecret() || get(key, "value") != mockIoTKey {
		t.Errorf("gateway key parameter = %v", key.Inputs)
	}
	for k, o := range r.outputs {
		if o.Secret || strings.Contains(toString(o.Value), "MIIEmockKEY") || strings.Contains(toString(o.Value), testAdminPassword) {
			t.Errorf("output %s holds a secret", k)
		}
	}
	// Tags on everything taggable.
	untaggableScale := map[string]bool{
		"aws:iot/certificate:Certificate": true, "aws:iot/policyAttachment:PolicyAttachment": true,
		"aws:route53/record:Record": true, "aws:ec2/routeTableAssociation:RouteTableAssociation": true,
		"aws:s3/bucketLoggingV2:BucketLoggingV2": true,
	}
	for _, res := range m.resources {
		if untaggable[res.Type] || untaggableScale[res.Type] || strings.HasPrefix(res.Type, "iot-gateway:") {
			continue
		}
		for k, want := range map[string]string{"project": Project, "stack": "dev", "owner": "team-sensors"} {
			if got := get(res, "tags."+k); got != want {
				t.Errorf("%s %s tag %s = %v, want %s", res.Type, res.Name, k, got, want)
			}
		}
	}
	// Every parameter the gateway role's setup reads exists.
	names := map[string]bool{}
	for _, p := range m.byType("aws:ssm/parameter:Parameter") {
		names[toString(get(p, "name"))] = true
	}
	for _, n := range append(append([]string{"artifact"}, SlotReadParams...), SlotAdminParams...) {
		if !names["/iot-gateway/dev/"+n] {
			t.Errorf("slots read /iot-gateway/dev/%s, which the stack does not create", n)
		}
	}
	// The gateways' certificate carries the gateway policy.
	pa := m.one(t, "aws:iot/policyAttachment:PolicyAttachment")
	if get(pa, "policy") != "iot-gateway-dev-gateway" || !strings.Contains(toString(get(pa, "target")), ":cert/") {
		t.Errorf("gateway certificate policy attachment = %v", pa.Inputs)
	}
	if len(m.byType("aws:s3/bucketLoggingV2:BucketLoggingV2")) != 1 {
		t.Error("the bucket has no access logs")
	}
	for _, want := range []string{"mqttEndpoint", "slots", "iotProvisioningTemplate", "deviceAddCommand", "influxEndpoint"} {
		if _, ok := r.outputs[want]; !ok {
			t.Errorf("output %s missing", want)
		}
	}
	// Devices are enrolled with the operators' binary; iotgw answers
	// `device` only with a pointer to it.
	if got, _ := r.outputs["deviceAddCommand"].Value.(string); !strings.HasPrefix(got, "iotgw-admin device add --region ") {
		t.Errorf("deviceAddCommand = %q", got)
	}
	if got := r.outputs["mqttEndpoint"].Value; got != "mqtts://"+mockIoTEndpoint+":8883" {
		t.Errorf("mqttEndpoint = %v", got)
	}
}

// TestSlotPolicies: only slot 0 reads the InfluxDB admin password and
// writes the tokens and the exports; every slot reads its own parameters
// and nothing else.
func TestSlotPolicies(t *testing.T) {
	m := deploy(t, scaleConfig(t)).m
	arn := func(n string) string { return "arn:aws:ssm:eu-central-1:123456789012:parameter/iot-gateway/dev/" + n }
	for i, admin := range []bool{true, false, false} {
		n := "gw-" + string(rune('0'+i))
		var doc policyDoc
		mustJSON(t, get(findNamed(t, m.byType("aws:iam/rolePolicy:RolePolicy"), n+"-policy"), "policy"), &doc)
		allowed := func(action, res string) bool {
			ok := false
			for _, s := range doc.Statement {
				if !slices.Contains(s.Action, action) {
					continue
				}
				if s.Effect == "Deny" && !slices.Contains(s.NotResource, res) {
					return false
				}
				if s.Effect == "Allow" && slices.Contains(s.Resource, res) {
					ok = true
				}
			}
			return ok
		}
		for _, c := range []struct {
			action, res string
			want        bool
		}{
			{"ssm:GetParameter", arn("slots/" + string(rune('0'+i)) + "/host-params"), true},
			{"ssm:GetParameter", arn("slots/9/host-params"), false},
			{"ssm:GetParameter", arn("iot-gateway-key"), true},
			{"ssm:GetParameter", arn("influx-run-token"), true},
			{"ssm:GetParameter", arn("influx-admin-password"), admin},
			{"ssm:GetParameter", arn("mqtt-password"), false},
			{"ssm:PutParameter", arn("influx-run-token"), admin},
			{"ssm:PutParameter", arn("iot-gateway-key"), false},
			{"s3:PutObject", "arn:aws:s3:::" + mockBucket + "/exports/*", admin},
		} {
			if got := allowed(c.action, c.res); got != c.want {
				t.Errorf("%s: %s %s = %v, want %v", n, c.action, c.res, got, c.want)
			}
		}
		for _, s := range doc.Statement {
			if slices.Contains(s.Resource, "*") {
				t.Errorf("%s: statement %s allows *", n, s.Sid)
			}
		}
	}
}

// iotAllowed evaluates an IoT Core policy the way IoT Core does for one
// connection: policy variables replaced by the connection's values (a
// statement whose variable has no value matches nothing), * and ? as
// wildcards in resources, Deny over Allow.
func iotAllowed(t *testing.T, doc string, vars map[string]string, action, res string) bool {
	t.Helper()
	var p iotPolicy
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	varRe := regexp.MustCompile(`\$\{[^}]+\}`)
	allowed := false
	for _, s := range p.Statement {
		if !slices.Contains(s.Action, action) && !slices.Contains(s.Action, "iot:*") {
			continue
		}
		if cond, ok := s.Condition["Bool"].(map[string]any); ok && cond["iot:Connection.Thing.IsAttached"] == "true" && vars["attached"] != "true" {
			continue
		}
		for _, pat := range s.Resource {
			missing := false
			pat = varRe.ReplaceAllStringFunc(pat, func(v string) string {
				val, ok := vars[v]
				if !ok {
					missing = true
				}
				return val
			})
			if missing {
				continue
			}
			re := "^" + strings.NewReplacer(`\*`, ".*", `\?`, ".").Replace(regexp.QuoteMeta(pat)) + "$"
			if regexp.MustCompile(re).MatchString(res) {
				if s.Effect == "Deny" {
					return false
				}
				allowed = true
			}
		}
	}
	return allowed
}

// TestIoTPolicies: a device acts only as itself, the gateways cannot
// forge readings or replies, a claim certificate only provisions.
func TestIoTPolicies(t *testing.T) {
	e := env{stack: "dev", region: mockRegion, account: mockAccount, partition: "aws"}
	c := scaleConfig(t)
	arn := func(kind, rest string) string { return e.iotArn(kind, rest) }
	device, err := DevicePolicy(e)
	if err != nil {
		t.Fatal(err)
	}
	gateway, err := GatewayIoTPolicy(e, c)
	if err != nil {
		t.Fatal(err)
	}
	claim, err := ClaimPolicy(e)
	if err != nil {
		t.Fatal(err)
	}
	d1 := map[string]string{varThing: "d1", varSite: "s1", "attached": "true"}
	detached := map[string]string{varThing: "d1", varSite: "s1"}
	noSite := map[string]string{varThing: "d1", "attached": "true"}
	gw := map[string]string{}
	for _, tc := range []struct {
		what   string
		doc    string
		vars   map[string]string
		action string
		res    string
		want   bool
	}{
		{"device connects as itself", device, d1, "iot:Connect", arn("client", "d1"), true},
		{"device connects as another", device, d1, "iot:Connect", arn("client", "d2"), false},
		{"device without its certificate on the thing", device, detached, "iot:Connect", arn("client", "d1"), false},
		{"device publishes its reading", device, d1, "iot:Publish", arn("topic", "sensors/s1/d1/temperature"), true},
		{"device publishes as another device", device, d1, "iot:Publish", arn("topic", "sensors/s1/d2/temperature"), false},
		{"device publishes as another site", device, d1, "iot:Publish", arn("topic", "sensors/s2/d1/temperature"), false},
		{"device with no site publishes", device, noSite, "iot:Publish", arn("topic", "sensors//d1/temperature"), false},
		{"device replies", device, d1, "iot:Publish", arn("topic", "replies/s1/d1/42"), true},
		{"device replies as another", device, d1, "iot:Publish", arn("topic", "replies/s1/d2/42"), false},
		{"device publishes a command", device, d1, "iot:Publish", arn("topic", "commands/s1/d2/reboot"), false},
		{"device subscribes to its commands", device, d1, "iot:Subscribe", arn("topicfilter", "commands/s1/d1/#"), true},
		{"device subscribes to another's commands", device, d1, "iot:Subscribe", arn("topicfilter", "commands/s1/d2/#"), false},
		{"device subscribes to every command", device, d1, "iot:Subscribe", arn("topicfilter", "commands/#"), false},
		{"device subscribes with a wildcard", device, d1, "iot:Subscribe", arn("topicfilter", "commands/s1/+/#"), false},
		{"device subscribes to readings", device, d1, "iot:Subscribe", arn("topicfilter", "sensors/#"), false},
		{"device receives its command", device, d1, "iot:Receive", arn("topic", "commands/s1/d1/reboot"), true},
		{"device receives another's command", device, d1, "iot:Receive", arn("topic", "commands/s1/d2/reboot"), false},
		{"device retains", device, d1, "iot:RetainPublish", arn("topic", "sensors/s1/d1/t"), false},

		{"gateway connects as a slot", gateway, gw, "iot:Connect", arn("client", "iot-gateway-dev-gw-1-3"), true},
		{"gateway connects as a device", gateway, gw, "iot:Connect", arn("client", "d1"), false},
		{"gateway shares the readings", gateway, gw, "iot:Subscribe", arn("topicfilter", "$share/iotgw/sensors/#"), true},
		{"gateway subscribes unshared", gateway, gw, "iot:Subscribe", arn("topicfilter", "sensors/#"), false},
		{"gateway in another share group", gateway, gw, "iot:Subscribe", arn("topicfilter", "$share/other/sensors/#"), false},
		{"gateway subscribes to replies", gateway, gw, "iot:Subscribe", arn("topicfilter", "replies/#"), true},
		{"gateway subscribes to commands", gateway, gw, "iot:Subscribe", arn("topicfilter", "commands/#"), false},
		{"gateway receives readings", gateway, gw, "iot:Receive", arn("topic", "sensors/s1/d1/t"), true},
		{"gateway publishes a reading", gateway, gw, "iot:Publish", arn("topic", "sensors/s1/d1/t"), false},
		{"gateway publishes a reply", gateway, gw, "iot:Publish", arn("topic", "replies/s1/d1/42"), false},
		{"gateway publishes a command", gateway, gw, "iot:Publish", arn("topic", "commands/s1/d1/reboot"), true},

		{"claim provisions", claim, gw, "iot:Publish", arn("topic", "$aws/provisioning-templates/iot-gateway-dev-fleet/provision/json"), true},
		{"claim publishes a reading", claim, gw, "iot:Publish", arn("topic", "sensors/s1/d1/t"), false},
		{"claim uses another template", claim, gw, "iot:Publish", arn("topic", "$aws/provisioning-templates/other/provision/json"), false},
	} {
		if got := iotAllowed(t, tc.doc, tc.vars, tc.action, tc.res); got != tc.want {
			t.Errorf("%s: %s %s = %v, want %v", tc.what, tc.action, tc.res, got, tc.want)
		}
	}
}

// TestScaleConfigRefused: impossible combinations are refused by Validate
// naming the key and the reason, and Deploy declares nothing for them.
func TestScaleConfigRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		edit      func(*Config)
		key, want string
	}{
		"iot-core on the all-in-one host": {func(c *Config) {
			c.Gateways = 0
			c.Database = DatabaseLocal
			c.InfluxToken, c.MQTTPassword = testToken, testMQTTPassword
			c.MQTTCidrs = []string{"203.0.113.0/24"}
		}, "broker:", "needs gateways >= 1"},
		"timestream on the all-in-one": {func(c *Config) {
			c.Gateways = 0
			c.Broker = BrokerLocal
			c.InfluxToken, c.MQTTPassword = testToken, testMQTTPassword
		}, "database:", "private subnets"},
		"slots with the local broker":   {func(c *Config) { c.Broker = BrokerLocal }, "gateways:", "need broker: iot-core"},
		"slots with the local database": {func(c *Config) { c.Database = DatabaseLocal }, "gateways:", "need database: timestream"},
		"slots with an Elastic IP":      {func(c *Config) { c.ElasticIP = true }, "elasticIp:", "no public IP"},
		"slots with MQTT CIDRs":         {func(c *Config) { c.MQTTCidrs = []string{"203.0.113.0/24"} }, "mqttCidrs:", "all-in-one"},
		"slots with an SSH key":         {func(c *Config) { c.SSHPublicKey = "ssh-ed25519 AAAA x" }, "sshPublicKey:", "all-in-one"},
		"multi-AZ in one zone":          {func(c *Config) { c.TimestreamMultiAZ = true; c.AvailabilityZones = 1 }, "timestreamMultiAz:", "another availability zone"},
		"more than a slot can carry":    {func(c *Config) { c.PeakMessagesPerSecond = 20000 }, "peakMessagesPerSecond:", "set gateways to at least 5"},
		"public VPC range":              {func(c *Config) { c.VpcCidr = "8.8.0.0/16" }, "vpcCidr:", "private"},
		"no readiness gate":             {func(c *Config) { c.RolloutWaitSeconds = 0 }, "rolloutWaitSeconds:", "one at a time"},
		"an operator token":             {func(c *Config) { c.InfluxToken = testToken }, "influxToken:", "unused with gateways"},
		"a broker password":             {func(c *Config) { c.MQTTPassword = testMQTTPassword }, "mqttPassword:", "certificates"},
		"too many slots":                {func(c *Config) { c.Gateways = 40 }, "gateways:", "outside 0..32"},
		"unknown broker":                {func(c *Config) { c.Broker = "emqx" }, "broker:", "not local or iot-core"},
		"a shared filter in mqttTopics": {func(c *Config) { c.MQTTTopics = []string{"$share/g/sensors/#"} }, "mqttTopics:", "without $share/"},
		"bad Timestream type":           {func(c *Config) { c.TimestreamInstanceType = "db.r5.large" }, "timestreamInstanceType:", "db.influx"},
	} {
		c := scaleConfig(t)
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s with %q", name, err, tc.key, tc.want)
			continue
		}
		m := &mocks{}
		runErr := pulumi.RunErr(func(ctx *pulumi.Context) error {
			_, err := Deploy(ctx, c)
			return err
		}, pulumi.WithMocks(Project, "dev", m))
		if runErr == nil || len(m.resources) != 0 {
			t.Errorf("%s: Deploy declared %d resources (err %v)", name, len(m.resources), runErr)
		}
	}
	if err := scaleConfig(t).Validate(); err != nil {
		t.Errorf("the scale test config: %v", err)
	}
}

func TestIoTConnections(t *testing.T) {
	for _, tc := range []struct{ peak, gateways, total, per int }{
		{1, 1, 1, 1}, {100, 1, 1, 1}, {101, 1, 2, 2}, {1000, 3, 10, 5}, {1000, 2, 10, 10}, {6400, 2, 64, 64}, {50000, 9, 500, 63},
	} {
		c := Config{PeakMessagesPerSecond: tc.peak, Gateways: tc.gateways}
		if total, per := IoTConnections(c); total != tc.total || per != tc.per {
			t.Errorf("%d msg/s, %d slots: %d, %d; want %d, %d", tc.peak, tc.gateways, total, per, tc.total, tc.per)
		}
	}
}

// TestLoadScaleConfig reads the scale topology's keys from Pulumi config
// and runs the whole program from them.
func TestLoadScaleConfig(t *testing.T) {
	cfg := map[string]any{
		"signingPublicKey":      string(testSigner.pub),
		"owner":                 "team",
		"artifactPath":          signedArtifact(t, []byte("x")),
		"gateways":              "4",
		"broker":                "iot-core",
		"database":              "timestream",
		"availabilityZones":     "3",
		"timestreamMultiAz":     "true",
		"peakMessagesPerSecond": "3000",
		"sharedGroup":           "gw",
		"vpcCidr":               "10.8.0.0/20",
		KeyInfluxAdminPassword:  testAdminPassword,
	}
	var got Config
	m, err := withConfig(t, cfg, []string{KeyInfluxAdminPassword}, func(ctx *pulumi.Context) error {
		var err error
		if got, err = LoadConfig(ctx); err != nil {
			return err
		}
		return Run(ctx)
	})
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if got.Gateways != 4 || !got.Scale() || got.AvailabilityZones != 3 || !got.TimestreamMultiAZ || got.PeakMessagesPerSecond != 3000 ||
		got.SharedGroup != "gw" || got.VpcCidr != "10.8.0.0/20" {
		t.Errorf("LoadConfig = %+v", got)
	}
	if n := len(m.byType("aws:ec2/instance:Instance")); n != 4 {
		t.Errorf("%d slots, want 4", n)
	}
	db := m.one(t, "aws:timestreaminfluxdb/dbInstance:DbInstance")
	if get(db, "deploymentType") != "WITH_MULTIAZ_STANDBY" || len(toSlice(get(db, "vpcSubnetIds"))) != 3 {
		t.Errorf("multi-AZ database = %v", plain(resource.NewObjectProperty(db.Inputs)))
	}
	s := findNamed(t, m.byType("aws:ec2/subnet:Subnet"), "vpc-private-2")
	if get(s, "cidrBlock") != "10.8.2.0/24" || get(s, "availabilityZone") != "eu-central-1c" {
		t.Errorf("third subnet = %v", plain(resource.NewObjectProperty(s.Inputs)))
	}
	// 3000 msg/s: 30 connections, 10 per slot with one of four down.
	hp := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), "gw-3-params")
	p, err := provision.ParseHostParams([]byte(get(hp, "value").(string)), string(testSigner.pub))
	if err != nil || p.MQTTConnections != 10 || p.MQTTTopics[0] != "$share/gw/sensors/#" {
		t.Errorf("slot 3 params %+v, %v", p, err)
	}
}

// TestScaleAWSGuard holds the scale topology to the AWSGuard rules
// (pulumi/pulumi-policy-aws) that apply to what it declares, asserted on
// the declared inputs: ec2-instance-no-public-ip,
// ec2-instance-detailed-monitoring-enabled, encrypted-volumes (and every
// aws.ebs.Volume and root volume encrypted), s3-bucket-logging-enabled
// (each bucket logs, or is a log target). ec2-volume-inuse is deliberately
// not followed: a slot's spool is a separate volume so that it outlives the
// instance (infra/README.md); the test checks it is attached instead. The
// two config keys that turn rules off do so.
func TestScaleAWSGuard(t *testing.T) {
	check := func(t *testing.T, c Config, monitoring, logging bool) {
		m := deploy(t, c).m
		for _, inst := range m.byType("aws:ec2/instance:Instance") {
			if get(inst, "associatePublicIpAddress") != false {
				t.Errorf("ec2-instance-no-public-ip: %s", inst.Name)
			}
			if get(inst, "monitoring") != monitoring {
				t.Errorf("ec2-instance-detailed-monitoring-enabled: %s monitoring = %v, want %v", inst.Name, get(inst, "monitoring"), monitoring)
			}
			if get(inst, "rootBlockDevice.encrypted") != true {
				t.Errorf("encrypted-volumes: %s root", inst.Name)
			}
			for _, b := range toSlice(get(inst, "ebsBlockDevices")) {
				if b.(map[string]any)["encrypted"] != true {
					t.Errorf("encrypted-volumes: %s block device", inst.Name)
				}
			}
			att := findNamed(t, m.byType("aws:ec2/volumeAttachment:VolumeAttachment"), strings.TrimSuffix(inst.Name, "-instance")+"-data-attachment")
			if get(att, "instanceId") != inst.ID {
				t.Errorf("%s has no data volume attached", inst.Name)
			}
		}
		for _, v := range m.byType("aws:ebs/volume:Volume") {
			if get(v, "encrypted") != true {
				t.Errorf("encrypted-volumes: %s", v.Name)
			}
		}
		buckets := m.byType("aws:s3/bucketV2:BucketV2")
		logs := m.byType("aws:s3/bucketLoggingV2:BucketLoggingV2")
		if !logging {
			if len(logs) != 0 || len(buckets) != 1 {
				t.Errorf("bucketAccessLogs false: %d buckets, %d logging", len(buckets), len(logs))
			}
			return
		}
		if len(buckets) != 2 || len(logs) != 1 || get(logs[0], "bucket") != mockBucket || get(logs[0], "targetBucket") != mockBucket {
			// The mocks give every bucket the same id; the target is the
			// logs bucket by name.
			t.Errorf("s3-bucket-logging-enabled: buckets %d, logging %v", len(buckets), logs)
		}
		if !hasDep(logs[0], "storage-access-logs") {
			t.Errorf("logging does not target the logs bucket: %v", logs[0].Deps)
		}
	}
	t.Run("defaults", func(t *testing.T) { check(t, scaleConfig(t), true, true) })
	t.Run("rules turned off", func(t *testing.T) {
		c := scaleConfig(t)
		c.DetailedMonitoring, c.BucketAccessLogs = false, false
		check(t, c, false, false)
	})
}
