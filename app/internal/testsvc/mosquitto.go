package testsvc

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// MosquittoOptions tunes the broker. Zero values keep mosquitto's own
// defaults (20 messages in flight and 1000 queued per client), which is what
// most production brokers look like.
type MosquittoOptions struct {
	MaxInflight int  // max_inflight_messages; 0 = mosquitto default (20)
	MaxQueued   int  // max_queued_messages; 0 = mosquitto default (1000)
	Persistence bool // keep sessions and queued messages across restarts
	// TLS, when set, makes the listener TLS-only with these PEM files.
	TLS *TLSFiles
}

// TLSFiles configure a TLS listener.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	RequireClientCert         bool // mutual TLS: clients must present a certificate signed by CAFile
}

// Mosquitto is a running mosquitto broker owned by one test.
type Mosquitto struct {
	t      testing.TB
	bin    string
	dir    string
	conf   string
	Port   int
	p      *proc
	scheme string
}

// StartMosquitto starts mosquitto on a free loopback port; it is stopped when
// the test ends.
func StartMosquitto(t testing.TB, o MosquittoOptions) *Mosquitto {
	t.Helper()
	bin := binary(t, "IOTGW_MOSQUITTO", "mosquitto", "/usr/sbin", "/usr/local/sbin")
	m := &Mosquitto{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t), scheme: "tcp"}
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nper_listener_settings false\n", m.Port)
	if os.Geteuid() == 0 {
		// Started as root, mosquitto drops to the "mosquitto" user, which
		// cannot read the test's private temp directory.
		conf += "user root\n"
	}
	if o.TLS != nil {
		conf += fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\ntls_version tlsv1.2\n", o.TLS.CAFile, o.TLS.CertFile, o.TLS.KeyFile)
		if o.TLS.RequireClientCert {
			conf += "require_certificate true\n"
		}
		m.scheme = "ssl"
	}
	if o.MaxInflight > 0 {
		conf += fmt.Sprintf("max_inflight_messages %d\n", o.MaxInflight)
	}
	if o.MaxQueued > 0 {
		conf += fmt.Sprintf("max_queued_messages %d\n", o.MaxQueued)
	}
	if o.Persistence {
		conf += fmt.Sprintf("persistence true\npersistence_location %s/\nautosave_interval 1\n", m.dir)
	}
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(func() { m.p.stop(syscall.SIGTERM) })
	return m
}

// URL is the broker's tcp:// address.
func (m *Mosquitto) URL() string { return fmt.Sprintf("%s://127.0.0.1:%d", m.scheme, m.Port) }

// Addr is host:port.
func (m *Mosquitto) Addr() string { return fmt.Sprintf("127.0.0.1:%d", m.Port) }

// Start (re)starts the broker on the same port and data directory and waits
// until it accepts connections.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.p = launch(m.t, "mosquitto", filepath.Join(m.dir, "mosquitto.log"), readyTimeout,
		acceptsTCP(m.Addr()), m.bin, "-c", m.conf)
}

// Pid is the process id of the running broker (it changes on Start).
func (m *Mosquitto) Pid() int { return m.p.pid() }

// Stop shuts the broker down gracefully (it saves its persistence file).
func (m *Mosquitto) Stop() { m.p.stop(syscall.SIGTERM) }

// Kill stops the broker without letting it save anything.
func (m *Mosquitto) Kill() { m.p.stop(nil) }
