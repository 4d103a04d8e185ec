package stack

import (
	"slices"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/provision"
)

// rolePolicies returns the inline policy documents of the role named role.
func rolePolicies(t *testing.T, m *mocks, role string) map[string]policyDoc {
	t.Helper()
	out := map[string]policyDoc{}
	for _, p := range m.byType("aws:iam/rolePolicy:RolePolicy") {
		if get(p, "role") != role {
			continue
		}
		var doc policyDoc
		mustJSON(t, get(p, "policy"), &doc)
		out[p.Name] = doc
	}
	return out
}

// allows reports whether an Allow statement of doc grants an action
// matching one of actions (by prefix when it ends in "*") on a resource
// for which onResource is true.
func allows(doc policyDoc, actions []string, onResource func(string) bool) []statement {
	var out []statement
	for _, s := range doc.Statement {
		if s.Effect != "Allow" {
			continue
		}
		hit := slices.ContainsFunc(s.Action, func(a string) bool {
			a = strings.ToLower(a)
			return a == "*" || slices.ContainsFunc(actions, func(want string) bool {
				want = strings.ToLower(want)
				return a == want || (strings.HasSuffix(a, "*") && strings.HasPrefix(want, strings.TrimSuffix(a, "*")))
			})
		})
		if hit && slices.ContainsFunc(s.Resource, onResource) {
			out = append(out, s)
		}
	}
	return out
}

// checkExportRole asserts, for any all-in-one configuration, the split
// between the host role and the export role: the host role writes and
// lists nothing in S3 and may assume the export role and no other; the
// export role trusts the host role only, and its session reads no
// parameter but the export's token.
func checkExportRole(t *testing.T, m *mocks) {
	t.Helper()
	hostArn := "arn:aws:iam::" + mockAccount + ":role/host-role"
	exportArn := "arn:aws:iam::" + mockAccount + ":role/host-export-role"
	tokenArn := "arn:aws:ssm:" + mockRegion + ":" + mockAccount + ":parameter/iot-gateway/dev/influx-export-token"
	anyRes := func(string) bool { return true }

	host := rolePolicies(t, m, "host-role")
	if len(host) == 0 {
		t.Fatal("policy: no inline policies on host-role")
	}
	for name, doc := range host {
		if bad := allows(doc, []string{"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket", "s3:PutObjectAcl"}, anyRes); len(bad) != 0 {
			t.Errorf("policy: %s lets the host role write or list S3: %+v", name, bad)
		}
		for _, s := range allows(doc, []string{"sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWithSAML"}, anyRes) {
			if !slices.Equal(s.Action, []string{"sts:AssumeRole"}) || !slices.Equal(s.Resource, []string{exportArn}) {
				t.Errorf("policy: %s lets the host role assume %v with %v; only %s", name, s.Resource, s.Action, exportArn)
			}
		}
	}
	if len(allows(host["host-policy"], []string{"sts:AssumeRole"}, func(r string) bool { return r == exportArn })) != 1 {
		t.Errorf("policy: the host role may not assume %s", exportArn)
	}

	// Only the export role writes the export prefix.
	for _, p := range m.byType("aws:iam/rolePolicy:RolePolicy") {
		var doc policyDoc
		mustJSON(t, get(p, "policy"), &doc)
		writes := allows(doc, []string{"s3:PutObject"}, func(r string) bool { return strings.HasPrefix(r, "arn:aws:s3:::"+mockBucket) })
		if len(writes) != 0 && get(p, "role") != "host-export-role" {
			t.Errorf("policy: %s (role %v) writes the bucket", p.Name, get(p, "role"))
		}
	}

	role := findNamed(t, m.byType("aws:iam/role:Role"), "host-export-role")
	var trust policyDoc
	mustJSON(t, get(role, "assumeRolePolicy"), &trust)
	if len(trust.Statement) != 1 {
		t.Fatalf("policy: export role trust has %d statements: %+v", len(trust.Statement), trust)
	}
	st := trust.Statement[0]
	pr, _ := st.Principal.(map[string]any)
	if st.Effect != "Allow" || !slices.Equal(st.Action, []string{"sts:AssumeRole"}) || len(pr) != 1 || pr["AWS"] != hostArn || st.Condition != nil {
		t.Errorf("policy: the export role trusts %+v, want the host role %s only", st, hostArn)
	}
	if get(role, "maxSessionDuration") != 3600.0 {
		t.Errorf("export role maxSessionDuration = %v, want 3600 (the role-chaining limit)", get(role, "maxSessionDuration"))
	}
	for _, a := range m.byType("aws:iam/rolePolicyAttachment:RolePolicyAttachment") {
		if get(a, "role") == "host-export-role" {
			t.Errorf("policy: managed policy %v attached to the export role", get(a, "policyArn"))
		}
	}

	exp := rolePolicies(t, m, "host-export-role")
	if len(exp) != 1 {
		t.Errorf("export role has %d inline policies, want 1", len(exp))
	}
	denied := false
	for name, doc := range exp {
		for _, s := range doc.Statement {
			for _, r := range s.Resource {
				if r == "*" || strings.HasSuffix(r, ":*") {
					t.Errorf("policy: %s allows %v on %s", name, s.Action, r)
				}
			}
			if s.Effect == "Deny" && slices.Equal(s.NotResource, []string{tokenArn}) && slices.Equal(s.Action, parameterReads) {
				denied = true
			}
		}
		if reads := allows(doc, parameterReads, func(r string) bool { return r != tokenArn }); len(reads) != 0 {
			t.Errorf("policy: %s reads parameters other than the export token: %+v", name, reads)
		}
		if bad := allows(doc, []string{"iam:PassRole", "sts:AssumeRole", "ssm:PutParameter", "s3:GetObject", "kms:Decrypt"}, anyRes); len(bad) != 0 {
			t.Errorf("policy: %s allows more than the export needs: %+v", name, bad)
		}
	}
	if !denied {
		t.Error("policy: no explicit Deny of parameter reads other than the export token on the export role")
	}

	// The host is told which role to assume.
	hp := findNamed(t, m.byType("aws:ssm/parameter:Parameter"), "host-params")
	p, err := provision.ParseHostParams([]byte(get(hp, "value").(string)), string(testSigner.pub))
	if err != nil {
		t.Fatalf("host parameters: %v", err)
	}
	if p.ExportRoleArn != exportArn {
		t.Errorf("host parameters name export role %q, want %s", p.ExportRoleArn, exportArn)
	}
}

// checkExportPolicy asserts the export role's statements one by one: what
// iotgw export calls (app/export/s3.go: HeadBucket, ListObjectsV2 under
// its prefix, PutObject with multipart uploads, DeleteObject; its token
// through ssm:GetParameter), held to prefix and parameter.
func checkExportPolicy(t *testing.T, m *mocks, prefix string) {
	t.Helper()
	bucket := "arn:aws:s3:::" + mockBucket
	token := "arn:aws:ssm:" + mockRegion + ":" + mockAccount + ":parameter/iot-gateway/dev/influx-export-token"
	want := map[string]struct {
		effect             string
		actions, resources []string
	}{
		"WriteExports":        {"Allow", []string{"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"}, []string{bucket + "/" + prefix + "*"}},
		"ListExports":         {"Allow", []string{"s3:ListBucket"}, []string{bucket}},
		"ReadExportToken":     {"Allow", []string{"ssm:GetParameter"}, []string{token}},
		"DenyOtherParameters": {"Deny", parameterReads, []string{token}}, // NotResource
	}
	doc := rolePolicies(t, m, "host-export-role")["host-export-policy"]
	if len(doc.Statement) != len(want) {
		t.Errorf("export policy has %d statements, want %d", len(doc.Statement), len(want))
	}
	for _, s := range doc.Statement {
		w, ok := want[s.Sid]
		res := s.Resource
		if s.Effect == "Deny" {
			res = s.NotResource
		}
		if !ok || s.Effect != w.effect || !slices.Equal(s.Action, w.actions) || !slices.Equal(res, w.resources) {
			t.Errorf("export policy statement %+v, want %+v", s, w)
		}
		if s.Sid == "ListExports" {
			if c, _ := s.Condition["StringLikeIfExists"].(map[string]any); c == nil || !slices.Equal(toStrings(c["s3:prefix"]), []string{prefix + "*"}) || len(s.Condition) != 1 {
				t.Errorf("the export's listing is not held to its prefix: %+v", s.Condition)
			}
		} else if s.Condition != nil {
			t.Errorf("export policy statement %s has a condition %v", s.Sid, s.Condition)
		}
	}
	if provision.ExportSecrets[0] != "influx-export-token" || len(provision.ExportSecrets) != 1 {
		t.Errorf("export.env names %v: the export role reads only influx-export-token", provision.ExportSecrets)
	}
}

// TestExportPrefixPolicy: the export role follows exportPrefix.
func TestExportPrefixPolicy(t *testing.T) {
	c := testConfig(t)
	c.ExportPrefix = "daily/"
	r := deploy(t, c)
	checkExportPolicy(t, r.m, "daily/")
	checkExportRole(t, r.m)
}
