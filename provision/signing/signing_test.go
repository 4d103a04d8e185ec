package signing

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestOpenSSLInterop: a key made by `openssl genpkey` signs here, and
// `openssl pkeyutl -verify -rawin` (the host's check) accepts the
// signature with the public key written here, and refuses a changed file.
func TestOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not found (Debian package openssl)")
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.pem")
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	keyPEM, _ := os.ReadFile(keyFile)
	priv, err := ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := PublicKeyPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	want, err := exec.Command(openssl, "pkey", "-in", keyFile, "-pubout").Output()
	if err != nil || !bytes.Equal(pub, want) {
		t.Errorf("public key:\n%s\nopenssl says:\n%s (%v)", pub, want, err)
	}
	pubFile, data, sigFile := filepath.Join(dir, "pub.pem"), filepath.Join(dir, "artifact"), filepath.Join(dir, "artifact.sig")
	content := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1<<16)
	sig := Sign(priv, content)
	for _, f := range []struct {
		name string
		b    []byte
	}{{pubFile, pub}, {data, content}, {sigFile, sig}} {
		if err := os.WriteFile(f.name, f.b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func() error {
		return exec.Command(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pubFile, "-rawin", "-in", data, "-sigfile", sigFile).Run()
	}
	if err := verify(); err != nil {
		t.Errorf("openssl refuses the signature: %v", err)
	}
	p, err := ParsePublicKey(pub)
	if err != nil || Verify(p, content, sig) != nil {
		t.Errorf("Verify refuses its own signature: %v", err)
	}
	content[100] ^= 1
	if err := os.WriteFile(data, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if verify() == nil || Verify(p, content, sig) == nil {
		t.Error("a changed file verifies")
	}
}

func TestParseErrors(t *testing.T) {
	k, _ := GenerateKey()
	if _, err := ParsePublicKey(k); err == nil {
		t.Error("a private key parsed as a public key")
	}
	if _, err := ParsePrivateKey([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")); err == nil {
		t.Error("a public key parsed as a private key")
	}
	priv, _ := ParsePrivateKey(k)
	pub, _ := PublicKeyPEM(priv)
	if _, err := ParsePublicKey(append(pub, "trailing"...)); err == nil {
		t.Error("text after the PEM block accepted")
	}
	p, _ := ParsePublicKey(pub)
	if err := Verify(p, []byte("x"), []byte("short")); err == nil {
		t.Error("short signature accepted")
	}
}
