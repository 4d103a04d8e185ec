// Package testsvc starts the real services that integration tests run
// against — mosquitto and InfluxDB OSS 1.8 with its v2-compatible API — as
// child processes on free loopback ports with throw-away data, and stops
// them when the test ends.
//
// Binaries are looked up in this order: the IOTGW_MOSQUITTO / IOTGW_INFLUXD
// environment variables, $PATH, /usr/sbin (mosquitto), and the repository's
// git-ignored .tools/bin (influxd, built by scripts/services.sh). When a
// binary is missing the test is skipped with a message saying how to get it,
// unless CI=true, where a missing service fails the run.
package testsvc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// readyTimeout bounds how long a service may take to accept connections.
const readyTimeout = 30 * time.Second

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// binary finds an executable or skips (fails under CI) the test.
func binary(t testing.TB, envVar, name string, extra ...string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range extra {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	msg := fmt.Sprintf("testsvc: %s not found (set %s, or run scripts/services.sh install)", name, envVar)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// repoTools returns <repository root>/.tools/bin, found by walking up to go.mod.
func repoTools() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".tools", "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// launch starts bin, logging to logPath, and polls ready until it answers
// true; if the process exits first or timeout passes, the test fails with
// the end of the log.
func launch(t testing.TB, what, logPath string, timeout time.Duration, ready func() bool, bin string, args ...string) *proc {
	t.Helper()
	p, err := startProc(t, logPath, bin, args...)
	if err != nil {
		t.Fatalf("testsvc: %s: %v", what, err)
	}
	deadline := time.Now().Add(timeout)
	for !ready() {
		var why string
		select {
		case <-p.exited:
			why = "process exited before it was ready"
		case <-time.After(20 * time.Millisecond): // poll interval of a readiness check
			if time.Now().Before(deadline) {
				continue
			}
			why = fmt.Sprintf("not ready after %s", timeout)
		}
		p.stop(nil)
		t.Fatalf("testsvc: %s: %s\n%s", what, why, tail(logPath))
	}
	return p
}

// acceptsTCP is a readiness check: addr accepts a connection.
func acceptsTCP(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

// proc is one running child process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startProc(t testing.TB, logPath string, name string, args ...string) (*proc, error) {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// pid is the process id (0 when there is no process).
func (p *proc) pid() int {
	if p == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// stop sends sig (nil = SIGKILL) and waits for the process to exit.
func (p *proc) stop(sig os.Signal) {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	if sig == nil {
		_ = p.cmd.Process.Kill()
	} else {
		_ = p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
