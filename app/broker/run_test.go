package broker

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRunBadConfigIsConfigError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.toml")
	if err := os.WriteFile(path, []byte("nope = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), path, io.Discard)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("Run: %v, want a *ConfigError", err)
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("gateway:::"+testHash(t, "pw")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "broker.toml")
	conf := "data_dir = \"" + filepath.Join(dir, "data") + "\"\nusers_file = \"" + users + "\"\n" +
		"gateway_users = [\"gateway\"]\n[plain]\naddr = \"127.0.0.1:0\"\n[tls]\naddr = \"\"\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, path, io.Discard, func(b *Broker) { addr <- b.Addr("plain") }) }()
	select {
	case a := <-addr:
		mustConnect(t, clientConf{url: "tcp://" + a, user: "gateway", pass: "pw"})
	case err := <-done:
		t.Fatalf("run: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(DefaultCloseTimeout + 5*time.Second):
		t.Fatal("run did not return after cancel")
	}
}
