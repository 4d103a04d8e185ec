package stack

import (
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/provision/signing"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/*.golden.json from the current code")

// graphNode is what decides, for one resource, whether an upgrade of an
// existing stack keeps it: its URN (type, name, parent), the options that
// change how it is replaced or deleted, and its inputs.
type graphNode struct {
	URN                 string         `json:"urn"`
	Parent              string         `json:"parent,omitempty"`
	Protect             bool           `json:"protect,omitempty"`
	RetainOnDelete      bool           `json:"retainOnDelete,omitempty"`
	DeleteBeforeReplace bool           `json:"deleteBeforeReplace,omitempty"`
	IgnoreChanges       []string       `json:"ignoreChanges,omitempty"`
	Dependencies        []string       `json:"dependencies,omitempty"`
	Inputs              map[string]any `json:"inputs"`
}

// fixedSigner makes the graph the same on every run: the signature and the
// public key end up in inputs.
func fixedSigner(t *testing.T) testKey {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	pub, err := signing.PublicKeyPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{pub: pub, priv: priv}
}

// graph deploys c and returns its resource graph, sorted by URN. Asset
// paths are reduced to their base names (the artifact is in a temp dir).
func graph(t *testing.T, c Config) []graphNode {
	t.Helper()
	r := deploy(t, c)
	var out []graphNode
	for _, rec := range r.m.resources {
		n := graphNode{URN: rec.URN, Parent: rec.Parent, Protect: rec.Protect, RetainOnDelete: rec.RetainOnDelete,
			DeleteBeforeReplace: rec.DeleteBeforeReplace, IgnoreChanges: rec.IgnoreChanges,
			Inputs: plain(resource.NewObjectProperty(rec.Inputs)).(map[string]any)}
		n.Dependencies = append([]string(nil), rec.Deps...)
		slices.Sort(n.Dependencies)
		if src, ok := n.Inputs["source"].(string); ok {
			n.Inputs["source"] = filepath.Base(src)
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b graphNode) int { return strings.Compare(a.URN, b.URN) })
	// Round-trip through JSON so numbers and nils compare as in the file.
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	var norm []graphNode
	if err := json.Unmarshal(b, &norm); err != nil {
		t.Fatal(err)
	}
	return norm
}

// allInOneConfigs are the stack shapes existing stacks have: the defaults
// and one with every optional resource.
func allInOneConfigs(t *testing.T) map[string]Config {
	signer := fixedSigner(t)
	artifact := func() string {
		path := filepath.Join(t.TempDir(), "iotgw-linux-arm64")
		data := []byte("not really a binary\n")
		if err := os.WriteFile(path, data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+".sig", signing.Sign(signer.priv, data), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	base := func() Config {
		c := testConfig(t)
		c.ArtifactPath = artifact()
		c.SigningPublicKey = string(signer.pub)
		return c
	}
	full := base()
	full.SSHPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGolden golden@example"
	full.SSHCidrs = []string{"198.51.100.0/24"}
	full.AdminCidrs = []string{"198.51.100.0/24"}
	full.MQTTPlaintext = true
	full.ElasticIP = true
	full.DataVolumeProtect = true
	return map[string]Config{"defaults": base(), "options": full}
}

func goldenPath(name string) string {
	return filepath.Join("testdata", "allinone-"+name+".golden.json")
}

// TestAllInOneGraphUnchanged compares the all-in-one stack's resource graph
// with the one recorded from the code before the scale topology existed
// (go test -run TestAllInOneGraphUnchanged -update-golden wrote it). Every
// recorded resource must still be declared with the same URN, the same
// options and the same inputs, so `pulumi up` on an existing stack replaces
// nothing. inPlace lists the inputs that may differ and why that does not
// replace anything.
func TestAllInOneGraphUnchanged(t *testing.T) {
	for name, c := range allInOneConfigs(t) {
		t.Run(name, func(t *testing.T) {
			got := graph(t, c)
			path := goldenPath(name)
			if *updateGolden {
				b, err := json.MarshalIndent(got, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var want []graphNode
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			compareGraphs(t, want, got)
		})
	}
}

// inPlace are the differences from the recorded graph that an existing
// stack takes without replacing anything, by resource name, each with its
// reason. Dependencies only order operations.
var inPlace = map[string]func(n *graphNode){
	// The user-data became the bootstrap; the instance ignores changes to
	// it (asserted below), so the old host keeps its user-data and is
	// converted by the rollout.
	"host-instance": func(n *graphNode) {
		delete(n.Inputs, "userDataBase64")
		n.IgnoreChanges = slices.DeleteFunc(n.IgnoreChanges, func(s string) bool { return s == "userDataBase64" })
		if len(n.IgnoreChanges) == 0 {
			n.IgnoreChanges = nil
		}
		n.Dependencies = nil
	},
	// A role's inline policy is replaced in place (PutRolePolicy). The
	// export's S3 statements moved to the export role, and the host may
	// assume that role: compared without those three statements, the rest
	// must be as recorded.
	"host-policy": func(n *graphNode) {
		var doc policyDoc
		if err := json.Unmarshal([]byte(n.Inputs["policy"].(string)), &doc); err != nil {
			panic(err)
		}
		doc.Statement = slices.DeleteFunc(doc.Statement, func(s statement) bool {
			return s.Sid == "WriteExports" || s.Sid == "ListExports" || s.Sid == "AssumeExportRole"
		})
		b, err := doc.json()
		if err != nil {
			panic(err)
		}
		n.Inputs["policy"] = b
		n.Dependencies = slices.DeleteFunc(n.Dependencies, func(d string) bool { return strings.HasSuffix(d, "::host-export-role") })
	},
	// An association's parameters are updated in place (UpdateAssociation),
	// which runs it again: that is the rollout.
	"host-rollout": func(n *graphNode) {
		delete(n.Inputs, "parameters")
		n.Dependencies = nil
	},
}

// added are the resources an existing all-in-one stack gains.
var added = map[string]string{
	"host-params": "the host parameters the bootstrap reads",
	// The export's own role, assumed by the host role for iotgw export
	// (infra/README.md, "The host's permissions"); nothing else depends on
	// them but the host policy and the host parameters, both updated in
	// place.
	"host-export-role":   "the role iotgw export runs with",
	"host-export-policy": "the export role's S3 prefix and token",
}

func compareGraphs(t *testing.T, want, got []graphNode) {
	t.Helper()
	byURN := map[string]graphNode{}
	for _, n := range got {
		byURN[n.URN] = n
	}
	known := map[string]bool{}
	for _, w := range want {
		known[w.URN] = true
		g, ok := byURN[w.URN]
		if !ok {
			t.Errorf("%s: no longer declared (an existing stack would delete it)", w.URN)
			continue
		}
		name := w.URN[strings.LastIndex(w.URN, "::")+2:]
		if name == "host-instance" && !slices.Contains(g.IgnoreChanges, "userDataBase64") {
			t.Errorf("%s: user-data changes are not ignored: the first upgrade would replace the host", w.URN)
		}
		if norm, ok := inPlace[name]; ok {
			norm(&w)
			norm(&g)
		}
		wj, _ := json.Marshal(w)
		gj, _ := json.Marshal(g)
		if string(wj) != string(gj) {
			t.Errorf("%s changed:\n  was %s\n  now %s", w.URN, wj, gj)
		}
	}
	for _, g := range got {
		name := g.URN[strings.LastIndex(g.URN, "::")+2:]
		if !known[g.URN] && added[name] == "" {
			t.Errorf("%s: new in the all-in-one stack and not listed in added", g.URN)
		}
	}
}
