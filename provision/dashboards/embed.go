// Package dashboards holds the InfluxDB dashboards as code: InfluxDB
// templates in the JSON form `influx export` writes, applied to the org at
// provisioning (`influx apply` or POST /api/v2/templates/apply).
package dashboards

import "embed"

// FS holds every *.json template of this folder.
//
//go:embed *.json
var FS embed.FS
