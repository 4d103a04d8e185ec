package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
)

// The one logger honours log.format and log.level.
func TestNewLogger(t *testing.T) {
	var b bytes.Buffer
	log := newLogger(&b, config.Log{Level: "warn", Format: "json"})
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["msg"] != "shown" || rec["k"] != "v" {
		t.Fatalf("json log %q: %v", b.String(), err)
	}
	b.Reset()
	newLogger(&b, config.Log{Level: "info", Format: "text"}).Info("line", "k", "v")
	if !strings.Contains(b.String(), "msg=line k=v") {
		t.Fatalf("text log %q", b.String())
	}
}
