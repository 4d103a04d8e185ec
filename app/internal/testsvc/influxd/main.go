// Command influxd starts a throw-away InfluxDB 1.8 for scripts, the way
// the tests do (testsvc.StartInflux): the same configuration and the same
// readiness check, which waits for the meta store and not only /health.
//
//	go run ./app/internal/testsvc/influxd -bin .tools/bin/influxd DIR
//
// It writes DIR/influxd.conf, starts influxd on free loopback ports with
// its data and log (influxd.log) in DIR, creates the bucket "db/rp", prints
// "PID PORT" and exits, leaving influxd running: the caller stops it.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// readyTimeout bounds the start; a first start on a slow disk takes
// seconds.
const readyTimeout = 60 * time.Second

func main() {
	bin := flag.String("bin", "influxd", "the influxd 1.8 binary")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: influxd [-bin path] DIR")
		os.Exit(2)
	}
	pid, port, err := start(*bin, flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "influxd:", err)
		os.Exit(1)
	}
	fmt.Println(pid, port)
}

func start(bin, dir string) (pid, port int, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, err
	}
	if port, err = freePort(); err != nil {
		return 0, 0, err
	}
	rpc, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	conf := filepath.Join(dir, "influxd.conf")
	if err := os.WriteFile(conf, []byte(testsvc.InfluxConfig(dir, port, rpc)), 0o644); err != nil {
		return 0, 0, err
	}
	logPath := filepath.Join(dir, "influxd.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, 0, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-config", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: the caller's Ctrl-C or exit must not take it
	// down before the caller stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(readyTimeout)
	for !testsvc.InfluxReady(base) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			return 0, 0, fmt.Errorf("exited before it was ready (%v):\n%s", err, log)
		case <-time.After(50 * time.Millisecond): // poll interval of the readiness check
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return 0, 0, fmt.Errorf("not ready after %s; log in %s", readyTimeout, logPath)
		}
	}
	if err := testsvc.CreateDatabase(base); err != nil {
		_ = cmd.Process.Kill()
		return 0, 0, fmt.Errorf("create database: %w", err)
	}
	return cmd.Process.Pid, port, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
