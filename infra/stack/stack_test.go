package stack

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/iot-gateway/iot-gateway/provision/signing"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/internals"
)

// Secret values used by the tests: none may appear outside a secret.
const (
	testAdminPassword = "admin-PASSWORD-5f2b9c"
	testToken         = "influx-TOKEN-8d41e7a0"
	testMQTTPassword  = "mqtt-PASSWORD-c3a911"
)

var testSecrets = []string{testAdminPassword, testToken, testMQTTPassword}

func testConfig(t *testing.T) Config {
	t.Helper()
	c := Defaults()
	c.Owner = "team-sensors"
	c.MQTTCidrs = []string{"203.0.113.0/24"}
	c.InfluxAdminPassword = testAdminPassword
	c.InfluxToken = testToken
	c.MQTTPassword = testMQTTPassword
	c.ArtifactPath = signedArtifact(t, []byte("not really a binary\n"))
	c.SigningPublicKey = string(testSigner.pub)
	return c
}

// testKey is a signing key pair as scripts/build.sh makes them.
type testKey struct {
	key, pub []byte
	priv     ed25519.PrivateKey
}

var testSigner = newTestKey()

func newTestKey() testKey {
	k, err := signing.GenerateKey()
	if err != nil {
		panic(err)
	}
	priv, err := signing.ParsePrivateKey(k)
	if err != nil {
		panic(err)
	}
	pub, err := signing.PublicKeyPEM(priv)
	if err != nil {
		panic(err)
	}
	return testKey{key: k, pub: pub, priv: priv}
}

// signedArtifact writes data as an artifact with its signature by
// testSigner beside it (<path>.sig), as scripts/build.sh does.
func signedArtifact(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "iotgw-linux-arm64")
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".sig", signing.Sign(testSigner.priv, data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// deployResult is what a mocked deployment produced.
type deployResult struct {
	m       *mocks
	outputs map[string]internals.UnsafeAwaitOutputResult
}

func deploy(t *testing.T, c Config) deployResult {
	t.Helper()
	m := &mocks{}
	res := deployResult{m: m, outputs: map[string]internals.UnsafeAwaitOutputResult{}}
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		d, err := Deploy(ctx, c)
		if err != nil {
			return err
		}
		for k, v := range d.Outputs(c) {
			r, err := internals.UnsafeAwaitOutput(ctx.Context(), pulumi.ToOutput(v))
			if err != nil {
				return err
			}
			res.outputs[k] = r
		}
		return nil
	}, pulumi.WithMocks(Project, "dev", m))
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	return res
}

func TestDeployDefaults(t *testing.T) {
	c := testConfig(t)
	r := deploy(t, c)
	m := r.m

	// AMI from the public SSM parameter of the instance type's architecture.
	calls := m.callsOf("aws:ssm/getParameter:getParameter")
	if len(calls) != 1 || calls[0].Args["name"].StringValue() != AmiParameter("arm64") {
		t.Errorf("AMI lookup: %v, want one lookup of %s", calls, AmiParameter("arm64"))
	}

	inst := m.one(t, "aws:ec2/instance:Instance")
	for path, want := range map[string]any{
		"ami":                        mockAMI("arm64"),
		"instanceType":               "t4g.small",
		"subnetId":                   mockSubnetA, // first by id, stable between runs
		"metadataOptions.httpTokens": "required",
		"metadataOptions.httpPutResponseHopLimit": 1.0,
		"metadataOptions.httpEndpoint":            "enabled",
		"rootBlockDevice.encrypted":               true,
		"rootBlockDevice.volumeType":              "gp3",
		"rootBlockDevice.volumeSize":              16.0,
		"userDataReplaceOnChange":                 true,
		"creditSpecification.cpuCredits":          "standard",
		"iamInstanceProfile":                      "host-profile",
	} {
		if got := get(inst, path); got != want {
			t.Errorf("instance %s = %v, want %v", path, got, want)
		}
	}
	if got := get(inst, "vpcSecurityGroupIds"); !slices.Equal(toStrings(got), []string{"network-sg-id"}) {
		t.Errorf("instance security groups = %v", got)
	}
	if get(inst, "keyName") != nil {
		t.Errorf("key pair set without sshPublicKey")
	}

	vol := m.one(t, "aws:ebs/volume:Volume")
	for path, want := range map[string]any{
		"encrypted":           true,
		"type":                "gp3",
		"size":                20.0,
		"availabilityZone":    mockAZ,
		"tags.iotgw-snapshot": "iot-gateway-dev",
	} {
		if got := get(vol, path); got != want {
			t.Errorf("data volume %s = %v, want %v", path, got, want)
		}
	}
	att := m.one(t, "aws:ec2/volumeAttachment:VolumeAttachment")
	if get(att, "volumeId") != mockVolume || get(att, "instanceId") != "i-0123456789abcdef0" || get(att, "deviceName") != "/dev/sdf" {
		t.Errorf("attachment = %v", plain(resource.NewObjectProperty(att.Inputs)))
	}

	// Bucket settings.
	if got := get(m.one(t, "aws:s3/bucketVersioningV2:BucketVersioningV2"), "versioningConfiguration.status"); got != "Enabled" {
		t.Errorf("versioning = %v", got)
	}
	enc := get(m.one(t, "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"), "rules").([]any)
	if len(enc) != 1 || enc[0].(map[string]any)["applyServerSideEncryptionByDefault"].(map[string]any)["sseAlgorithm"] != "AES256" {
		t.Errorf("encryption rules = %v", enc)
	}
	pab := m.one(t, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
	for _, k := range []string{"blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"} {
		if get(pab, k) != true {
			t.Errorf("public access block %s = %v", k, get(pab, k))
		}
	}
	var bp policyDoc
	mustJSON(t, get(m.one(t, "aws:s3/bucketPolicy:BucketPolicy"), "policy"), &bp)
	if len(bp.Statement) != 1 || bp.Statement[0].Effect != "Deny" ||
		!slices.Equal(bp.Statement[0].Resource, []string{"arn:aws:s3:::" + mockBucket, "arn:aws:s3:::" + mockBucket + "/*"}) ||
		bp.Statement[0].Condition["Bool"].(map[string]any)["aws:SecureTransport"] != "false" {
		t.Errorf("bucket policy is not TLS-only: %+v", bp)
	}
	rules := get(m.one(t, "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2"), "rules").([]any)
	exp := rules[0].(map[string]any)
	if exp["filter"].(map[string]any)["prefix"] != "exports/" || exp["expiration"].(map[string]any)["days"] != 365.0 {
		t.Errorf("export lifecycle rule = %v", exp)
	}

	// The artifact is named by its sha256.
	sum := sha256.Sum256([]byte("not really a binary\n"))
	sha := hex.EncodeToString(sum[:])
	obj := m.one(t, "aws:s3/bucketObjectv2:BucketObjectv2")
	if get(obj, "key") != "artifacts/iotgw-linux-arm64/"+sha || get(obj, "source") != c.ArtifactPath {
		t.Errorf("artifact key %v source %v", get(obj, "key"), get(obj, "source"))
	}
	if r.outputs["artifactUri"].Value != "s3://"+mockBucket+"/artifacts/iotgw-linux-arm64/"+sha {
		t.Errorf("artifactUri = %v", r.outputs["artifactUri"].Value)
	}

	// IAM: the SSM agent's policy and the scoped inline policy.
	role := findNamed(t, m.byType("aws:iam/role:Role"), "host-role")
	var assume policyDoc
	mustJSON(t, get(role, "assumeRolePolicy"), &assume)
	if assume.Statement[0].Principal.(map[string]any)["Service"] != "ec2.amazonaws.com" {
		t.Errorf("host role trust = %+v", assume)
	}
	for _, a := range m.byType("aws:iam/rolePolicyAttachment:RolePolicyAttachment") {
		if get(a, "role") == "host-role" {
			t.Errorf("host role has the managed policy %v attached", get(a, "policyArn"))
		}
	}
	var agent policyDoc
	mustJSON(t, get(findNamed(t, m.byType("aws:iam/rolePolicy:RolePolicy"), "host-ssm-agent"), "policy"), &agent)
	if len(agent.Statement) != 1 || !slices.Equal(agent.Statement[0].Action, SSMAgentActions) {
		t.Errorf("SSM agent policy = %+v", agent)
	}
	var hp policyDoc
	mustJSON(t, get(findNamed(t, m.byType("aws:iam/rolePolicy:RolePolicy"), "host-policy"), "policy"), &hp)
	params := "arn:aws:ssm:" + mockRegion + ":" + mockAccount + ":parameter/iot-gateway/dev"
	want := map[string]struct {
		effect             string
		actions, resources []string
	}{
		"ReadGatewayArtifact": {"Allow", []string{"s3:GetObject"}, []string{"arn:aws:s3:::" + mockBucket + "/artifacts/iotgw-linux-arm64/" + sha}},
		"AssumeExportRole":    {"Allow", []string{"sts:AssumeRole"}, []string{"arn:aws:iam::" + mockAccount + ":role/host-export-role"}},
		"ReadStackParameters": {"Allow", []string{"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"}, []string{params, params + "/*"}},
		"DenyParametersOutsideStack": {"Deny", []string{"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"},
			[]string{params, params + "/*"}}, // NotResource
		"WriteHostParameters": {"Allow", []string{"ssm:PutParameter"}, []string{params + "/broker-ca", params + "/influx-run-token", params + "/influx-export-token"}},
	}
	if len(hp.Statement) != len(want) {
		t.Errorf("host policy has %d statements, want %d", len(hp.Statement), len(want))
	}
	for _, s := range hp.Statement {
		w, ok := want[s.Sid]
		res := s.Resource
		if s.Effect == "Deny" {
			res = s.NotResource
		}
		if !ok || s.Effect != w.effect || !slices.Equal(s.Action, w.actions) || !slices.Equal(res, w.resources) {
			t.Errorf("host policy statement %+v, want %+v", s, w)
		}
	}
	checkExportPolicy(t, m, "exports/")

	// Secrets: SecureString parameters whose values are secret.
	names := map[string]bool{}
	for _, p := range m.byType("aws:ssm/parameter:Parameter") {
		names[get(p, "name").(string)] = true
		if strings.HasSuffix(get(p, "name").(string), "password") || strings.HasSuffix(get(p, "name").(string), "token") {
			if get(p, "type") != "SecureString" || !p.Inputs["value"].IsSecret() {
				t.Errorf("parameter %v is not a secret SecureString", get(p, "name"))
			}
		}
	}
	for _, n := range []string{"influx-admin-password", "influx-token", "mqtt-password", "broker-ca", "artifact", "influx-run-token", "influx-export-token"} {
		if !names["/iot-gateway/dev/"+n] {
			t.Errorf("no SSM parameter /iot-gateway/dev/%s (have %v)", n, names)
		}
	}
	// The host's side of the contract: the ssm: references in the rendered
	// gateway.toml, and every parameter iotgw-setup reads by name, exist.
	// The operator may add broker-tls-cert/-key and devices/<site>/<device>.
	for _, n := range append(slices.Clone(provision.GatewaySecrets), provision.ExportSecrets...) {
		if !names["/iot-gateway/dev/"+n] {
			t.Errorf("gateway.toml or export.env refers to ssm:/iot-gateway/dev/%s, which the stack does not create", n)
		}
	}
	// The host writes each parameter it may write; the stack declares each.
	for _, n := range HostWritableParams {
		if !names["/iot-gateway/dev/"+n] {
			t.Errorf("the host may write /iot-gateway/dev/%s, which the stack does not create", n)
		}
	}
	// The artifact parameter carries the signature the host checks.
	for _, p := range m.byType("aws:ssm/parameter:Parameter") {
		if get(p, "name") == "/iot-gateway/dev/artifact" {
			f := strings.Fields(get(p, "value").(string))
			sig, _ := base64.StdEncoding.DecodeString(f[len(f)-1])
			if len(f) != 3 || signing.Verify(mustPub(t), []byte("not really a binary\n"), sig) != nil {
				t.Errorf("artifact parameter %q does not carry the binary's signature", get(p, "value"))
			}
		}
	}
	// The IoT Core identity is read only by gateway slots (scale_test.go
	// checks the scale stack creates it).
	optional := map[string]bool{"broker-tls-cert": true, "broker-tls-key": true, "devices": true,
		provision.IoTCertParam: true, provision.IoTKeyParam: true}
	script := string(provision.SetupScriptSource())
	read := regexp.MustCompile(`\$PARAM_PATH/([a-z0-9-]+)|ssm_secret ([a-z0-9-]+)`).FindAllStringSubmatch(script, -1)
	if len(read) < 5 {
		t.Fatalf("found only %d parameter names in setup-host.sh", len(read))
	}
	for _, m := range read {
		n := m[1] + m[2]
		if !optional[n] && !names["/iot-gateway/dev/"+n] {
			t.Errorf("setup-host.sh reads $PARAM_PATH/%s, which the stack does not create", n)
		}
	}

	// Security group: only MQTT over TLS from the configured CIDR.
	ingress := m.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
	if len(ingress) != 1 || get(ingress[0], "fromPort") != 8883.0 || get(ingress[0], "cidrIpv4") != "203.0.113.0/24" {
		t.Errorf("default ingress = %v", ingressSummary(ingress))
	}
	for _, kind := range []string{"aws:ec2/keyPair:KeyPair", "aws:ec2/eip:Eip"} {
		if n := len(m.byType(kind)); n != 0 {
			t.Errorf("%d %s by default, want none", n, kind)
		}
	}
	dlmPolicy := m.one(t, "aws:dlm/lifecyclePolicy:LifecyclePolicy")
	sched := get(dlmPolicy, "policyDetails.schedules").([]any)[0].(map[string]any)
	if get(dlmPolicy, "policyDetails.targetTags.iotgw-snapshot") != "iot-gateway-dev" ||
		sched["createRule"].(map[string]any)["times"] != "04:00" || sched["retainRule"].(map[string]any)["count"] != 7.0 {
		t.Errorf("snapshot policy = %v", plain(resource.NewObjectProperty(dlmPolicy.Inputs)))
	}

	// Rollout: the association reruns the bootstrap for this artifact and
	// these host parameters, after both parameters are updated.
	ro := m.one(t, "aws:ssm/association:Association")
	hostParams := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), "host-params")
	psum := sha256.Sum256([]byte(get(hostParams, "value").(string)))
	if n := len(get(hostParams, "value").(string)); n > ssmStandardMax {
		t.Errorf("host parameters are %d bytes, over a Standard parameter's %d", n, ssmStandardMax)
	}
	cmd, _ := get(ro, "parameters.commands").(string)
	if get(ro, "name") != "AWS-RunShellScript" ||
		!strings.HasSuffix(cmd, "; IOTGW_EXPECT_SHA256="+sha+" IOTGW_EXPECT_PARAMS="+hex.EncodeToString(psum[:])+" /usr/local/sbin/iotgw-bootstrap") ||
		!strings.Contains(cmd, "if [ ! -x /usr/local/sbin/iotgw-bootstrap ]; then IOTGW_EXPECT_SHA256="+sha+" /usr/local/sbin/iotgw-setup; ") ||
		!slices.Equal(toStrings(get(ro, "targets").([]any)[0].(map[string]any)["values"]), []string{"i-0123456789abcdef0"}) {
		t.Errorf("rollout association = %v", plain(resource.NewObjectProperty(ro.Inputs)))
	}
	for _, dep := range []string{"::storage-artifact-ref", "::host-params", "::host-data-attachment"} {
		if !slices.ContainsFunc(ro.Deps, func(u string) bool { return strings.HasSuffix(u, dep) }) {
			t.Errorf("rollout does not wait for %s; depends on %v", dep, ro.Deps)
		}
	}

	// Outputs.
	for _, k := range []string{"instanceId", "publicIp", "publicDns", "mqttEndpoint", "influxUrl", "ssmSessionCommand",
		"influxPortForwardCommand", "artifactUri", "exportUri", "bucketName", "dataVolumeId"} {
		if v, ok := r.outputs[k]; !ok || v.Value == "" {
			t.Errorf("output %s missing", k)
		}
	}
	if got := r.outputs["mqttEndpoint"].Value; got != "mqtts://ec2-198-51-100-7.eu-central-1.compute.amazonaws.com:8883" {
		t.Errorf("mqttEndpoint = %v", got)
	}
	if got := r.outputs["exportUri"].Value; got != "s3://"+mockBucket+"/exports/" {
		t.Errorf("exportUri = %v", got)
	}

	checkPolicies(t, r)
}

func TestDeployX86AndOptions(t *testing.T) {
	c := testConfig(t)
	c.InstanceType = "m7i.large"
	c.MQTTPlaintext = true
	c.AdminCidrs = []string{"198.51.100.0/24"}
	c.SSHCidrs = []string{"192.0.2.10/32", "2001:db8::/64"}
	c.SSHPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB example"
	c.ElasticIP = true
	c.Snapshots = false
	c.DataVolumeRetain = false
	r := deploy(t, c)
	m := r.m

	calls := m.callsOf("aws:ssm/getParameter:getParameter")
	if len(calls) != 1 || calls[0].Args["name"].StringValue() != AmiParameter("x86_64") {
		t.Errorf("AMI lookup for m7i.large: %v", calls)
	}
	inst := m.one(t, "aws:ec2/instance:Instance")
	if get(inst, "ami") != mockAMI("x86_64") || get(inst, "creditSpecification") != nil || get(inst, "keyName") != "host-key" {
		t.Errorf("instance ami %v credits %v key %v", get(inst, "ami"), get(inst, "creditSpecification"), get(inst, "keyName"))
	}
	if k := get(m.one(t, "aws:s3/bucketObjectv2:BucketObjectv2"), "key").(string); !strings.HasPrefix(k, "artifacts/iotgw-linux-amd64/") {
		t.Errorf("artifact key %s is not for amd64", k)
	}
	got := ingressSummary(m.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"))
	want := []string{"1883 203.0.113.0/24", "22 192.0.2.10/32", "22 2001:db8::/64", "8086 198.51.100.0/24", "8883 203.0.113.0/24"}
	if !slices.Equal(got, want) {
		t.Errorf("ingress = %v, want %v", got, want)
	}
	if len(m.byType("aws:ec2/eip:Eip")) != 1 || r.outputs["publicIp"].Value != "203.0.113.9" {
		t.Errorf("elastic IP not used: publicIp %v", r.outputs["publicIp"].Value)
	}
	if len(m.byType("aws:dlm/lifecyclePolicy:LifecyclePolicy")) != 0 {
		t.Errorf("snapshot policy declared with snapshots=false")
	}
	if r.outputs["influxUrl"].Value != "http://ec2-203-0-113-9.eu-central-1.compute.amazonaws.com:8086" {
		t.Errorf("influxUrl = %v", r.outputs["influxUrl"].Value)
	}
	checkPolicies(t, r)
}

// checkPolicies asserts the rules every configuration must keep.
func checkPolicies(t *testing.T, r deployResult) {
	t.Helper()
	m := r.m
	// No 0.0.0.0/0 or ::/0 ingress to SSH, InfluxDB or plain MQTT (nor
	// anything broader than /8, IPv6 /32), whatever the port range.
	for _, in := range m.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule") {
		from, _ := get(in, "fromPort").(float64)
		to, _ := get(in, "toPort").(float64)
		for _, k := range []string{"cidrIpv4", "cidrIpv6"} {
			cidr, _ := get(in, k).(string)
			if cidr == "" {
				continue
			}
			p, err := netip.ParsePrefix(cidr)
			for _, port := range []float64{22, 8086, 1883} {
				if from <= port && port <= to && (err != nil || tooBroad(p)) {
					t.Errorf("policy: port %v open to %s", port, cidr)
				}
			}
		}
		if get(in, "fromPort") != get(in, "toPort") {
			t.Errorf("policy: ingress rule spans ports %v-%v", get(in, "fromPort"), get(in, "toPort"))
		}
	}
	if n := len(m.byType("aws:ec2/securityGroupRule:SecurityGroupRule")); n != 0 {
		t.Errorf("policy: %d legacy security group rules", n)
	}
	for _, sg := range m.byType("aws:ec2/securityGroup:SecurityGroup") {
		if get(sg, "ingress") != nil {
			t.Errorf("policy: inline ingress on %s", sg.Name)
		}
	}
	// IMDSv2 only, one hop.
	for _, inst := range m.byType("aws:ec2/instance:Instance") {
		if get(inst, "metadataOptions.httpTokens") != "required" || get(inst, "metadataOptions.httpPutResponseHopLimit") != 1.0 {
			t.Errorf("policy: instance %s does not require IMDSv2 with hop limit 1", inst.Name)
		}
		if get(inst, "rootBlockDevice.encrypted") != true {
			t.Errorf("policy: instance %s root volume not encrypted", inst.Name)
		}
		for _, bd := range toSlice(get(inst, "ebsBlockDevices")) {
			if bd.(map[string]any)["encrypted"] != true {
				t.Errorf("policy: instance %s has an unencrypted EBS block device", inst.Name)
			}
		}
	}
	for _, v := range m.byType("aws:ebs/volume:Volume") {
		if get(v, "encrypted") != true {
			t.Errorf("policy: volume %s not encrypted", v.Name)
		}
	}
	// Bucket not public.
	buckets := m.byType("aws:s3/bucketV2:BucketV2")
	if len(m.byType("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")) != len(buckets) {
		t.Errorf("policy: not every bucket has a public access block")
	}
	for _, b := range buckets {
		if acl, _ := get(b, "acl").(string); strings.HasPrefix(acl, "public") {
			t.Errorf("policy: bucket %s acl %s", b.Name, acl)
		}
	}
	// IAM: the host role has no managed policy (AmazonSSMManagedInstanceCore
	// allows ssm:GetParameter(s) on "*"); a "*" resource only for the SSM
	// agent's actions, none of which reads a parameter or an object;
	// parameter reads only inside the stack's path, and an explicit Deny
	// of them outside it.
	for _, a := range m.byType("aws:iam/rolePolicyAttachment:RolePolicyAttachment") {
		if get(a, "role") == "host-role" {
			t.Errorf("policy: managed policy %v attached to the host role", get(a, "policyArn"))
		}
	}
	stackParams := []string{"arn:aws:ssm:" + mockRegion + ":" + mockAccount + ":parameter/iot-gateway/dev",
		"arn:aws:ssm:" + mockRegion + ":" + mockAccount + ":parameter/iot-gateway/dev/*"}
	readsParams := func(action string) bool {
		a := strings.ToLower(action)
		return a == "*" || strings.HasPrefix(a, "ssm:getparameter") || (strings.HasPrefix(a, "ssm:") && strings.Contains(a, "*"))
	}
	denied := false
	for _, p := range m.byType("aws:iam/rolePolicy:RolePolicy") {
		var doc policyDoc
		mustJSON(t, get(p, "policy"), &doc)
		for _, s := range doc.Statement {
			if s.Effect == "Deny" && slices.Equal(s.NotResource, stackParams) && get(p, "role") == "host-role" &&
				slices.Contains(s.Action, "ssm:GetParameter") && slices.Contains(s.Action, "ssm:GetParameters") && slices.Contains(s.Action, "ssm:GetParametersByPath") {
				denied = true
			}
			if s.Effect != "Allow" {
				continue
			}
			for _, res := range s.Resource {
				if res == "*" || strings.HasSuffix(res, ":*") {
					for _, a := range s.Action {
						if !slices.Contains(SSMAgentActions, a) || readsParams(a) || strings.Contains(a, "*") {
							t.Errorf("policy: %s allows %s on %s", p.Name, a, res)
						}
					}
				}
				for _, a := range s.Action {
					if readsParams(a) && res != stackParams[0] && !strings.HasPrefix(res, stackParams[0]+"/") {
						t.Errorf("policy: %s allows %s on %s, outside the stack's parameters", p.Name, a, res)
					}
				}
			}
		}
	}
	if !denied {
		t.Error("policy: no explicit Deny of parameter reads outside /iot-gateway/dev")
	}
	checkExportRole(t, m)
	// Tags on everything taggable.
	for _, res := range m.resources {
		if untaggable[res.Type] || strings.HasPrefix(res.Type, "iot-gateway:") {
			continue
		}
		for k, want := range map[string]string{"project": Project, "stack": "dev", "owner": "team-sensors"} {
			if got := get(res, "tags."+k); got != want {
				t.Errorf("policy: %s %s tag %s = %v, want %s", res.Type, res.Name, k, got, want)
			}
		}
	}
	// Secret values only ever inside secrets: not in any plain input (and
	// so not in user-data), not in any output.
	for _, res := range m.resources {
		for _, s := range plainStrings(resource.NewObjectProperty(res.Inputs)) {
			for _, secret := range testSecrets {
				if strings.Contains(s, secret) {
					t.Errorf("policy: secret in plain input of %s %s", res.Type, res.Name)
				}
			}
		}
	}
	inst := m.one(t, "aws:ec2/instance:Instance")
	ud := userData(t, inst)
	if len(ud.gz) > provision.UserDataBudget {
		t.Errorf("policy: user-data is %d bytes, over the budget of %d", len(ud.gz), provision.UserDataBudget)
	}
	t.Logf("user-data: %d bytes rendered, %d gzipped", len(ud.plain), len(ud.gz))
	for _, secret := range testSecrets {
		if bytes.Contains(ud.plain, []byte(secret)) {
			t.Errorf("policy: secret in user-data")
		}
	}
	// The host checks the binary with the stack's public key, which only
	// the user-data brings.
	if b64 := strings.Split(string(testSigner.pub), "\n")[1]; !bytes.Contains(ud.plain, []byte(b64)) {
		t.Errorf("policy: user-data lacks the signing public key")
	}
	if bytes.Contains(ud.plain, []byte("PRIVATE KEY")) || bytes.Contains(ud.plain, []byte(strings.Split(string(testSigner.key), "\n")[1])) {
		t.Errorf("policy: a private key in user-data")
	}
	for k, o := range r.outputs {
		if o.Secret {
			t.Errorf("output %s is secret; outputs should hold nothing secret", k)
		}
		for _, secret := range testSecrets {
			if strings.Contains(toString(o.Value), secret) {
				t.Errorf("policy: secret in output %s", k)
			}
		}
	}
}

// untaggable lists the resource types that take no tags.
var untaggable = map[string]bool{
	"aws:iam/rolePolicy:RolePolicy":                                                              true,
	"aws:iam/rolePolicyAttachment:RolePolicyAttachment":                                          true,
	"aws:ec2/volumeAttachment:VolumeAttachment":                                                  true,
	"aws:s3/bucketPolicy:BucketPolicy":                                                           true,
	"aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":                                     true,
	"aws:s3/bucketVersioningV2:BucketVersioningV2":                                               true,
	"aws:s3/bucketOwnershipControls:BucketOwnershipControls":                                     true,
	"aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2": true,
	"aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2":                       true,
}

type decodedUserData struct{ gz, plain []byte }

func userData(t *testing.T, inst recorded) decodedUserData {
	t.Helper()
	b64, _ := get(inst, "userDataBase64").(string)
	gz, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("userDataBase64: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatalf("user-data is not gzip: %v", err)
	}
	plainUD, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(plainUD, []byte("#cloud-config\n")) {
		t.Errorf("user-data does not start with #cloud-config")
	}
	return decodedUserData{gz: gz, plain: plainUD}
}

func TestPinnedAMI(t *testing.T) {
	c := testConfig(t)
	c.AmiID = "ami-0fixed0000000000"
	r := deploy(t, c)
	if n := len(r.m.callsOf("aws:ssm/getParameter:getParameter")); n != 0 {
		t.Errorf("%d AMI lookups with amiId pinned", n)
	}
	if got := get(r.m.one(t, "aws:ec2/instance:Instance"), "ami"); got != c.AmiID {
		t.Errorf("ami = %v, want %s", got, c.AmiID)
	}
}

// hostFiles renders what iotgw provision-files writes on the host from
// the host parameters the stack stored, with the key from the user-data.
func hostFiles(t *testing.T, m *mocks, paramName string) string {
	t.Helper()
	hp := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), paramName)
	p, err := provision.ParseHostParams([]byte(get(hp, "value").(string)), string(testSigner.pub))
	if err != nil {
		t.Fatalf("%s: %v", paramName, err)
	}
	fl, err := provision.Files(p)
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, f := range fl {
		all.WriteString(f.Content)
	}
	return all.String()
}

func TestUserDataNamesTheVolume(t *testing.T) {
	r := deploy(t, testConfig(t))
	ud := userData(t, r.m.one(t, "aws:ec2/instance:Instance"))
	for _, want := range []string{"PARAM_PATH='/iot-gateway/dev'", "HOST_PARAMS='/iot-gateway/dev/host-params'", "AWS_REGION='" + mockRegion + "'"} {
		if !bytes.Contains(ud.plain, []byte(want)) {
			t.Errorf("user-data lacks %q", want)
		}
	}
	files := hostFiles(t, r.m, "host-params")
	for _, want := range []string{"DATA_VOLUME_ID='" + mockVolume + "'", "PARAM_PATH='/iot-gateway/dev'",
		"bucket = \"" + mockBucket + "\"", "ssm:/iot-gateway/dev/influx-run-token", "AWS_REGION='" + mockRegion + "'"} {
		if !strings.Contains(files, want) {
			t.Errorf("host files lack %q", want)
		}
	}
}

func TestMissingArtifact(t *testing.T) {
	c := testConfig(t)
	c.ArtifactPath = filepath.Join(t.TempDir(), "nope")
	m := &mocks{}
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := Deploy(ctx, c)
		return err
	}, pulumi.WithMocks(Project, "dev", m))
	if err == nil || !strings.Contains(err.Error(), "artifactPath") || !strings.Contains(err.Error(), "scripts/build.sh") {
		t.Errorf("err = %v, want one naming artifactPath and the build script", err)
	}
	if len(m.resources) != 0 {
		t.Errorf("%d resources declared before the error", len(m.resources))
	}
}

func findNamed(t *testing.T, rs []recorded, name string) recorded {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no resource named %s", name)
	return recorded{}
}

func ingressSummary(rs []recorded) []string {
	var out []string
	for _, r := range rs {
		cidr, _ := get(r, "cidrIpv4").(string)
		if cidr == "" {
			cidr, _ = get(r, "cidrIpv6").(string)
		}
		out = append(out, fmt.Sprintf("%d %s", int(get(r, "fromPort").(float64)), cidr))
	}
	slices.Sort(out)
	return out
}

func mustJSON(t *testing.T, v any, dst any) {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("policy is %T, not a JSON string", v)
	}
	if err := json.Unmarshal([]byte(s), dst); err != nil {
		t.Fatalf("policy JSON: %v\n%s", err, s)
	}
}

func toSlice(v any) []any { s, _ := v.([]any); return s }

func toStrings(v any) []string {
	var out []string
	for _, e := range toSlice(v) {
		out = append(out, toString(e))
	}
	return out
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func mustPub(t *testing.T) ed25519.PublicKey {
	t.Helper()
	pub, err := signing.ParsePublicKey(testSigner.pub)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestPlainMQTTNeverToTheInternet: a stack that asks for plain MQTT from the
// whole internet is refused naming mqttPlaintext before anything is
// declared; MQTT over TLS from anywhere deploys, without 1883.
func TestPlainMQTTNeverToTheInternet(t *testing.T) {
	for _, cidrs := range [][]string{{"0.0.0.0/0"}, {"::/0"}, {"203.0.113.0/24", "0.0.0.0/1", "128.0.0.0/1"}, {"2000::/3"}} {
		c := testConfig(t)
		c.MQTTPlaintext, c.MQTTCidrs = true, cidrs
		m := &mocks{}
		err := pulumi.RunErr(func(ctx *pulumi.Context) error {
			_, err := Deploy(ctx, c)
			return err
		}, pulumi.WithMocks(Project, "dev", m))
		if err == nil || !strings.Contains(err.Error(), "mqttPlaintext: ") {
			t.Errorf("mqttPlaintext with mqttCidrs %v: %v", cidrs, err)
		}
		if len(m.resources) != 0 {
			t.Errorf("%d resources declared before the error", len(m.resources))
		}
	}
	c := testConfig(t)
	c.MQTTCidrs = []string{"0.0.0.0/0", "::/0"}
	r := deploy(t, c)
	if got := ingressSummary(r.m.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")); !slices.Equal(got, []string{"8883 0.0.0.0/0", "8883 ::/0"}) {
		t.Errorf("ingress = %v", got)
	}
	checkPolicies(t, r)
}

// TestArtifactSignature: pulumi up refuses a binary the host would refuse,
// before anything is declared.
func TestArtifactSignature(t *testing.T) {
	other := newTestKey()
	for name, edit := range map[string]func(c *Config){
		"no signature": func(c *Config) { _ = os.Remove(c.ArtifactPath + ".sig") },
		"tampered": func(c *Config) {
			_ = os.WriteFile(c.ArtifactPath, []byte("not really a binary either\n"), 0o755)
		},
		"another key": func(c *Config) {
			_ = os.WriteFile(c.ArtifactPath+".sig", signing.Sign(other.priv, []byte("not really a binary\n")), 0o644)
		},
		"pinned to another key": func(c *Config) { c.SigningPublicKey = string(other.pub) },
	} {
		c := testConfig(t)
		edit(&c)
		m := &mocks{}
		err := pulumi.RunErr(func(ctx *pulumi.Context) error {
			_, err := Deploy(ctx, c)
			return err
		}, pulumi.WithMocks(Project, "dev", m))
		if err == nil || !strings.Contains(err.Error(), "artifactPath: ") {
			t.Errorf("%s: %v", name, err)
		}
		if len(m.resources) != 0 {
			t.Errorf("%s: %d resources declared before the error", name, len(m.resources))
		}
	}
}

// TestPreviewWarnsOnSignature: a preview of a binary signed by another key
// (a pull request's build) goes ahead with a warning; up refuses it (above).
func TestPreviewWarnsOnSignature(t *testing.T) {
	c := testConfig(t)
	other := newTestKey()
	if err := os.WriteFile(c.ArtifactPath+".sig", signing.Sign(other.priv, []byte("not really a binary\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &mocks{}
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := Deploy(ctx, c)
		return err
	}, pulumi.WithMocks(Project, "dev", m), func(info *pulumi.RunInfo) { info.DryRun = true })
	if err != nil {
		t.Fatalf("preview: %v", err)
	}
	if len(m.byType("aws:ec2/instance:Instance")) != 1 {
		t.Error("preview declared no instance")
	}
	c.ArtifactPath += "-missing"
	err = pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := Deploy(ctx, c)
		return err
	}, pulumi.WithMocks(Project, "dev", &mocks{}), func(info *pulumi.RunInfo) { info.DryRun = true })
	if err == nil {
		t.Error("preview without a binary went ahead")
	}
}
