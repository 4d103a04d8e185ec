package testsvc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// The throw-away InfluxDB, as the tests (StartInflux) and the scripts
// (scripts/services.sh, through ./app/internal/testsvc/influxd) start it:
// one configuration and one readiness check for both.

// InfluxConfig is influxd 1.8's configuration for throw-away data in dir,
// HTTP (with Flux, the v2 API) on httpPort and its RPC service on rpcPort,
// both on loopback.
func InfluxConfig(dir string, httpPort, rpcPort int) string {
	return fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = "%[2]s/meta"
[data]
  dir = "%[2]s/data"
  wal-dir = "%[2]s/wal"
  query-log-enabled = false
  max-series-per-database = 0
  max-values-per-tag = 0
  trace-logging-enabled = false
[coordinator]
  log-queries-after = "0s"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:%[3]d"
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
  max-body-size = 0
[logging]
  level = "warn"
`, rpcPort, dir, httpPort)
}

// InfluxReady reports whether the influxd at base (http://host:port) can
// take databases and writes. /health answers before the meta store is
// open, so a statement that reads the meta store must succeed too.
func InfluxReady(base string) bool {
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get(base + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK && InfluxExec(base, "SHOW DATABASES") == nil
}

// CreateDatabase creates the throw-away database and retention policy the
// bucket "db/rp" names.
func CreateDatabase(base string) error {
	return InfluxExec(base, "CREATE DATABASE "+Database+" WITH NAME "+RetentionPolicy)
}

// InfluxExec runs an InfluxQL statement (1.8's /query), for setup only.
// 1.8 answers 200 with the error in the body when a statement fails, so the
// body is checked.
func InfluxExec(base, q string) error {
	resp, err := http.PostForm(base+"/query", url.Values{"q": {q}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Error   string `json:"error"`
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	if body.Error != "" {
		return errors.New(body.Error)
	}
	for _, r := range body.Results {
		if r.Error != "" {
			return errors.New(r.Error)
		}
	}
	return nil
}
