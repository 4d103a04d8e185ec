package provision

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzRender: whatever stack values come in, either Validate refuses them
// or the host files are well-formed with each value in place and nothing
// injected (no extra lines in host.env, the same files, valid YAML after the
// round trip through the host parameters and a cloud-config document).
func FuzzRender(f *testing.F) {
	f.Add("iot", "sensors", "sensors/#", "exports/", "bucket-1")
	f.Add("a'b", "x\ny", "$SYS/#", "e x/", `b"c`)
	f.Add("org", "b", "s/+/t", "p/", "'; curl evil #")
	f.Fuzz(func(t *testing.T, org, bucket, topic, prefix, exportBucket string) {
		p := baseParams()
		p.InfluxOrg, p.InfluxBucket, p.MQTTTopics, p.ExportPrefix, p.ExportBucket = org, bucket, []string{topic}, prefix, exportBucket
		hp, err := HostParams(p)
		if err != nil {
			return
		}
		back, err := ParseHostParams(hp, p.SigningPublicKey)
		if err != nil {
			t.Fatalf("host parameters do not parse back: %v", err)
		}
		fl, err := Files(back)
		if err != nil {
			t.Fatal(err)
		}
		ud, err := yaml.Marshal(map[string]any{"write_files": fl})
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
		}
		if err := yaml.Unmarshal(ud, &doc); err != nil {
			t.Fatalf("user-data is not YAML for %q: %v", []string{org, bucket, topic, prefix, exportBucket}, err)
		}
		def, _ := Files(baseParams())
		if len(doc.WriteFiles) != len(def) {
			t.Fatalf("%d files, want %d", len(doc.WriteFiles), len(def))
		}
		for i, f := range doc.WriteFiles {
			if f.Path != def[i].Path {
				t.Fatalf("file %d is %s, want %s", i, f.Path, def[i].Path)
			}
			if strings.Count(f.Content, "\n") != strings.Count(def[i].Content, "\n") && strings.HasSuffix(f.Path, "host.env") {
				t.Fatalf("host.env has extra lines")
			}
			if strings.HasSuffix(f.Path, "host.env") && !strings.Contains(f.Content, "INFLUX_ORG='"+org+"'\n") {
				t.Fatalf("org not rendered verbatim")
			}
		}
	})
}
