package export

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/iot-gateway/iot-gateway/provision/dashboards"
)

// InfluxDB 2 cannot run here (building it needs Rust), so the dashboards
// client is tested against an httptest server that answers with responses
// written to follow InfluxDB 2's OpenAPI spec (influxdata/openapi):
// GET /api/v2/orgs -> Organizations, POST /api/v2/templates/export
// (TemplateExportByID) -> Template, POST /api/v2/templates/apply
// (TemplateApply) -> TemplateSummary, errors -> Error {code, message}. Like
// the real server it keeps what was applied per org and renames every
// resource's metadata.name on export. These are not responses captured
// from a running server.

const testToken = "test-token"

type fakeInflux2 struct {
	t      *testing.T
	mu     sync.Mutex
	orgs   map[string]string          // name -> id
	stored map[string][]TemplateEntry // org id -> applied resources
	n      int
}

func startInflux2(t *testing.T, orgs ...string) (*fakeInflux2, string) {
	f := &fakeInflux2{t: t, orgs: map[string]string{}, stored: map[string][]TemplateEntry{}}
	for i, o := range orgs {
		f.orgs[o] = fmt.Sprintf("%016x", 0x0a1b2c3d00000000+int64(i))
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func influxError(w http.ResponseWriter, code int, c, msg string) {
	writeJSON(w, code, map[string]string{"code": c, "message": msg})
}

func (f *fakeInflux2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Token "+testToken {
		influxError(w, http.StatusUnauthorized, "unauthorized", "unauthorized access")
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/api/v2/orgs":
		name := r.URL.Query().Get("org")
		id, ok := f.orgs[name]
		if !ok {
			influxError(w, http.StatusNotFound, "not found", fmt.Sprintf("organization name %q not found", name))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"links": map[string]string{"self": "/api/v2/orgs"},
			"orgs": []map[string]any{{
				"links": map[string]string{"self": "/api/v2/orgs/" + id, "dashboards": "/api/v2/dashboards?org=" + name},
				"id":    id, "name": name, "description": "", "createdAt": "2026-01-05T10:00:00Z", "updatedAt": "2026-01-05T10:00:00Z",
			}},
		})
	case r.Method == http.MethodPost && r.URL.Path == "/api/v2/templates/export":
		var req struct {
			OrgIDs []struct {
				OrgID           string `json:"orgID"`
				ResourceFilters struct {
					ByResourceKind []string `json:"byResourceKind"`
				} `json:"resourceFilters"`
			} `json:"orgIDs"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.OrgIDs) != 1 {
			influxError(w, http.StatusBadRequest, "invalid", "bad export request")
			return
		}
		kinds := map[string]bool{}
		for _, k := range req.OrgIDs[0].ResourceFilters.ByResourceKind {
			kinds[k] = true
		}
		if !kinds["Dashboard"] || !kinds["Variable"] {
			f.t.Errorf("export asked for kinds %v, want Dashboard and Variable", req.OrgIDs[0].ResourceFilters.ByResourceKind)
		}
		out := []TemplateEntry{}
		for _, e := range f.stored[req.OrgIDs[0].OrgID] {
			f.n++
			e.Metadata.Name = fmt.Sprintf("vigilant-hodgkin-%05x", f.n) // the server names exported resources
			out = append(out, e)
		}
		writeJSON(w, http.StatusOK, out)
	case r.Method == http.MethodPost && r.URL.Path == "/api/v2/templates/apply":
		var req struct {
			OrgID    string `json:"orgID"`
			Template struct {
				ContentType string          `json:"contentType"`
				Contents    []TemplateEntry `json:"contents"`
			} `json:"template"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			influxError(w, http.StatusUnprocessableEntity, "unprocessable entity", "unable to unmarshal json: "+err.Error())
			return
		}
		f.stored[req.OrgID] = append(f.stored[req.OrgID], req.Template.Contents...)
		summary := map[string][]map[string]any{"dashboards": {}, "variables": {}, "labels": {}}
		for _, e := range req.Template.Contents {
			var spec struct {
				Name string `json:"name"`
			}
			json.Unmarshal(e.Spec, &spec)
			key := strings.ToLower(e.Kind) + "s"
			summary[key] = append(summary[key], map[string]any{"kind": e.Kind, "templateMetaName": e.Metadata.Name, "orgID": req.OrgID, "name": spec.Name})
		}
		writeJSON(w, http.StatusCreated, map[string]any{"sources": []string{}, "stackID": "0c0ffee000000001", "diff": map[string]any{}, "summary": summary})
	default:
		influxError(w, http.StatusNotFound, "not found", "path not found")
	}
}

func sensorsTemplate(t *testing.T) []byte {
	t.Helper()
	b, err := dashboards.FS.ReadFile("sensors.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// resources maps kind/spec.name to the spec, normalised: what makes two
// dashboards the same, whatever the server named the template entries.
func resources(t *testing.T, b []byte) map[string]string {
	t.Helper()
	var entries []TemplateEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		var spec map[string]any
		if err := json.Unmarshal(e.Spec, &spec); err != nil {
			t.Fatal(err)
		}
		norm, _ := json.Marshal(spec) // map keys sorted
		out[e.Kind+"/"+fmt.Sprint(spec["name"])] = string(norm)
	}
	return out
}

func TestSensorsDashboardIsAValidTemplate(t *testing.T) {
	b := sensorsTemplate(t)
	if err := CheckTemplate(b); err != nil {
		t.Fatal(err)
	}
	r := resources(t, b)
	if _, ok := r["Dashboard/Sensors"]; !ok {
		t.Errorf("no Sensors dashboard in %v", r)
	}
	// The charts read the bucket variable the template defines.
	if _, ok := r["Variable/bucket"]; !ok || !strings.Contains(r["Dashboard/Sensors"], "from(bucket: v.bucket)") {
		t.Errorf("the dashboard's queries and the bucket variable do not match")
	}
}

func TestDashboardsRoundTrip(t *testing.T) {
	_, url := startInflux2(t, "iot", "empty")
	ctx := context.Background()
	src := NewDashboards(Influx{URL: url, Token: testToken, Org: "iot"})
	dst := NewDashboards(Influx{URL: url, Token: testToken, Org: "empty"})

	// Provisioning applies the dashboard as code.
	names, err := src.Apply(ctx, sensorsTemplate(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "Sensors" {
		t.Errorf("applied dashboards %q, want [Sensors]", names)
	}

	// The daily export writes it as dashboards.json.
	dir := t.TempDir()
	lw, err := newLocalWriter(dir, testDay)
	if err != nil {
		t.Fatal(err)
	}
	defer lw.discard()
	tmpl, err := src.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckTemplate(tmpl); err != nil {
		t.Fatalf("exported template: %v", err)
	}
	if _, err := lw.writeFile(DashboardsName, tmpl); err != nil {
		t.Fatal(err)
	}
	if err := lw.commit(&Manifest{}); err != nil {
		t.Fatal(err)
	}
	exported, err := os.ReadFile(filepath.Join(dir, "2026/03/14", DashboardsName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exported, tmpl) {
		t.Error("dashboards.json differs from the export")
	}

	// Applying the export to an empty org gives the same dashboard.
	if _, err := dst.Apply(ctx, exported); err != nil {
		t.Fatal(err)
	}
	again, err := dst.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, got := resources(t, sensorsTemplate(t)), resources(t, again)
	if len(got) != len(want) {
		t.Errorf("round trip has %d resources, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s changed in the round trip:\n got %s\nwant %s", k, got[k], w)
		}
	}
}

func TestDashboardsErrors(t *testing.T) {
	_, url := startInflux2(t, "iot")
	ctx := context.Background()
	cases := []struct {
		name string
		in   Influx
		want string
	}{
		{"wrong token", Influx{URL: url, Token: "nope", Org: "iot"}, "401 Unauthorized: unauthorized access"},
		{"unknown org", Influx{URL: url, Token: testToken, Org: "other"}, `organization name "other" not found`},
		{"unreachable", Influx{URL: "http://127.0.0.1:1", Token: testToken, Org: "iot"}, "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewDashboards(c.in).Export(ctx)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error with %q", err, c.want)
			}
		})
	}
	t.Run("bad template", func(t *testing.T) {
		_, err := NewDashboards(Influx{URL: url, Token: testToken, Org: "iot"}).Apply(ctx, []byte(`[{"apiVersion":"influxdata.com/v2alpha1","kind":"Dashboard","metadata":{"name":"x"},"spec":{"name":"X","charts":[{"kind":"Xy","name":"c","width":13,"height":1,"queries":[{"query":"q"}]}]}}]`))
		if err == nil || !strings.Contains(err.Error(), "12-column grid") {
			t.Errorf("got %v", err)
		}
	})
}
