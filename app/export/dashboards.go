package export

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Dashboards talks to InfluxDB 2's organizations and templates API. It
// exports dashboards the way `influx export` does: POST
// /api/v2/templates/export returns an InfluxDB template (apiVersion
// influxdata.com/v2alpha1, one entry per dashboard with its charts), which
// `influx apply` and POST /api/v2/templates/apply accept as is. Building
// the template from /api/v2/dashboards cells and views instead would mean
// re-implementing the server's view-to-chart conversion for every chart
// kind; asking the server keeps the export exactly what the CLI writes.
type Dashboards struct {
	base   string
	token  string
	org    string
	client *http.Client
}

// TemplateKinds are the resource kinds exported with the dashboards:
// the variables their queries use and the labels attached to them.
var TemplateKinds = []string{"Dashboard", "Variable", "Label"}

// NewDashboards returns a client for the org named in in.
func NewDashboards(in Influx) *Dashboards {
	return &Dashboards{base: strings.TrimRight(in.URL, "/"), token: in.Token, org: in.Org, client: newHTTPClient()}
}

// OrgID resolves the organization name (GET /api/v2/orgs?org=NAME).
func (d *Dashboards) OrgID(ctx context.Context) (string, error) {
	var resp struct {
		Orgs []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"orgs"`
	}
	if err := d.do(ctx, http.MethodGet, "/api/v2/orgs?org="+url.QueryEscape(d.org), nil, &resp); err != nil {
		return "", fmt.Errorf("find organization %q: %w", d.org, err)
	}
	for _, o := range resp.Orgs {
		if o.Name == d.org {
			return o.ID, nil
		}
	}
	return "", fmt.Errorf("find organization %q: not found", d.org)
}

// Export returns the org's dashboards, variables and labels as an InfluxDB
// template: a JSON array of entries, indented as `influx export` writes it.
func (d *Dashboards) Export(ctx context.Context) ([]byte, error) {
	orgID, err := d.OrgID(ctx)
	if err != nil {
		return nil, err
	}
	type filters struct {
		ByResourceKind []string `json:"byResourceKind"`
	}
	type orgOpt struct {
		OrgID           string  `json:"orgID"`
		ResourceFilters filters `json:"resourceFilters"`
	}
	req := struct {
		OrgIDs []orgOpt `json:"orgIDs"`
	}{OrgIDs: []orgOpt{{OrgID: orgID, ResourceFilters: filters{ByResourceKind: TemplateKinds}}}}
	var raw json.RawMessage
	if err := d.do(ctx, http.MethodPost, "/api/v2/templates/export", req, &raw); err != nil {
		return nil, fmt.Errorf("export dashboards of organization %q: %w", d.org, err)
	}
	var entries []TemplateEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("export dashboards of organization %q: response is not a template: %w", d.org, err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "\t"); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// Apply installs a template (such as provision/dashboards/sensors.json or
// an exported dashboards.json) in the org through POST
// /api/v2/templates/apply, and returns the names of the dashboards the
// server reports.
func (d *Dashboards) Apply(ctx context.Context, template []byte) ([]string, error) {
	if err := CheckTemplate(template); err != nil {
		return nil, fmt.Errorf("apply dashboards: %w", err)
	}
	orgID, err := d.OrgID(ctx)
	if err != nil {
		return nil, err
	}
	req := struct {
		OrgID    string `json:"orgID"`
		Template struct {
			ContentType string          `json:"contentType"`
			Contents    json.RawMessage `json:"contents"`
		} `json:"template"`
	}{OrgID: orgID}
	req.Template.ContentType = "json"
	req.Template.Contents = template
	var resp struct {
		Summary struct {
			Dashboards []struct {
				Name string `json:"name"`
			} `json:"dashboards"`
		} `json:"summary"`
		Errors []struct {
			Kind    string   `json:"kind"`
			Reason  string   `json:"reason"`
			Fields  []string `json:"fields"`
			Indexes []*int   `json:"indexes"`
		} `json:"errors"`
	}
	if err := d.do(ctx, http.MethodPost, "/api/v2/templates/apply", req, &resp); err != nil {
		return nil, fmt.Errorf("apply dashboards to organization %q: %w", d.org, err)
	}
	if len(resp.Errors) > 0 {
		e := resp.Errors[0]
		return nil, fmt.Errorf("apply dashboards to organization %q: %s %s: %s", d.org, e.Kind, strings.Join(e.Fields, "."), e.Reason)
	}
	var names []string
	for _, db := range resp.Summary.Dashboards {
		names = append(names, db.Name)
	}
	return names, nil
}

// do sends body as JSON and decodes a 2xx answer into out; other answers
// become an error with InfluxDB's message.
func (d *Dashboards) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Token "+d.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s %s: %s: %s", method, pathOnly(path), resp.Status, e.Message)
		}
		if resp.StatusCode == http.StatusNotFound {
			// InfluxDB 1.8 serves the query API but not this one.
			return fmt.Errorf("%s %s: %s: the server has no InfluxDB 2 API here (InfluxDB 1.x? set export.skip_dashboards)", method, pathOnly(path), resp.Status)
		}
		return fmt.Errorf("%s %s: %s", method, pathOnly(path), resp.Status)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, pathOnly(path), err)
	}
	return nil
}

func pathOnly(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

// TemplateEntry is one resource of an InfluxDB template. Spec stays raw:
// the export passes it through untouched.
type TemplateEntry struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

// Chart kinds an InfluxDB 2 dashboard template may hold (as the pkger
// parser spells them; it ignores case).
var chartKinds = map[string]bool{
	"band": true, "gauge": true, "geo": true, "heatmap": true, "histogram": true,
	"markdown": true, "mosaic": true, "scatter": true, "single_stat": true,
	"single_stat_plus_line": true, "table": true, "xy": true,
}

// CheckTemplate checks that b is an InfluxDB template of the shape `influx
// export` writes and `influx apply` reads: entries with apiVersion
// influxdata.com/v2alpha1, a kind, a unique metadata.name, and for
// dashboards a name and charts that have a kind, fit the 12-column grid and
// (except Markdown notes) carry a query.
func CheckTemplate(b []byte) error {
	var entries []TemplateEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return fmt.Errorf("not an InfluxDB template (a JSON array of resources): %w", err)
	}
	seen := map[string]bool{}
	for i, e := range entries {
		where := fmt.Sprintf("template[%d] (%s %q)", i, e.Kind, e.Metadata.Name)
		if e.APIVersion != "influxdata.com/v2alpha1" {
			return fmt.Errorf("%s: apiVersion %q, want influxdata.com/v2alpha1", where, e.APIVersion)
		}
		if e.Kind == "" || e.Metadata.Name == "" {
			return fmt.Errorf("%s: kind and metadata.name are required", where)
		}
		if seen[e.Kind+"/"+e.Metadata.Name] {
			return fmt.Errorf("%s: metadata.name used twice", where)
		}
		seen[e.Kind+"/"+e.Metadata.Name] = true
		if !strings.EqualFold(e.Kind, "Dashboard") {
			continue
		}
		var spec struct {
			Name   string `json:"name"`
			Charts []struct {
				Kind    string `json:"kind"`
				Name    string `json:"name"`
				XPos    int    `json:"xPos"`
				YPos    int    `json:"yPos"`
				Width   int    `json:"width"`
				Height  int    `json:"height"`
				Queries []struct {
					Query string `json:"query"`
				} `json:"queries"`
			} `json:"charts"`
		}
		if err := json.Unmarshal(e.Spec, &spec); err != nil {
			return fmt.Errorf("%s: spec: %w", where, err)
		}
		if spec.Name == "" {
			return fmt.Errorf("%s: spec.name is required", where)
		}
		for j, c := range spec.Charts {
			cw := fmt.Sprintf("%s chart[%d] %q", where, j, c.Name)
			if !chartKinds[strings.ToLower(c.Kind)] {
				return fmt.Errorf("%s: unknown chart kind %q", cw, c.Kind)
			}
			if c.Width <= 0 || c.Height <= 0 || c.XPos < 0 || c.YPos < 0 || c.XPos+c.Width > 12 {
				return fmt.Errorf("%s: position %d,%d size %dx%d does not fit the 12-column grid", cw, c.XPos, c.YPos, c.Width, c.Height)
			}
			if !strings.EqualFold(c.Kind, "markdown") && (len(c.Queries) == 0 || strings.TrimSpace(c.Queries[0].Query) == "") {
				return fmt.Errorf("%s: no query", cw)
			}
		}
	}
	return nil
}
