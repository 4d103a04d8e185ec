// Package signing signs the gateway artifact and checks its signature.
//
// The format is what OpenSSL 3 verifies on the host without anything else
// installed: an Ed25519 key pair (private key PKCS #8 PEM, public key
// SubjectPublicKeyInfo PEM, the same files `openssl genpkey -algorithm
// ed25519` and `openssl pkey -pubout` write) and a raw 64-byte PureEdDSA
// signature (RFC 8032) over the artifact's bytes, so
//
//	openssl pkeyutl -verify -pubin -inkey signing.pub -rawin -in iotgw -sigfile iotgw.sig
//
// checks it. Amazon Linux 2023 ships OpenSSL 3 but no minisign or signify,
// and the host must check the binary before it has one of its own.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// SignatureSize is the length of a signature file.
const SignatureSize = ed25519.SignatureSize

// GenerateKey returns a new private key as PKCS #8 PEM.
func GenerateKey() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads a PKCS #8 PEM Ed25519 private key.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("signing key: not a PEM \"PRIVATE KEY\" block (PKCS #8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key: %T, want an Ed25519 key", k)
	}
	return priv, nil
}

// PublicKeyPEM returns the public half of priv as SubjectPublicKeyInfo PEM.
func PublicKeyPEM(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey reads a SubjectPublicKeyInfo PEM Ed25519 public key.
// Nothing may follow the PEM block but white space.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("public key: not a PEM \"PUBLIC KEY\" block")
	}
	for _, c := range rest {
		if c != '\n' && c != '\r' && c != ' ' && c != '\t' {
			return nil, errors.New("public key: text after the PEM block")
		}
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key: %T, want an Ed25519 key", k)
	}
	return pub, nil
}

// Sign returns the signature of data.
func Sign(priv ed25519.PrivateKey, data []byte) []byte { return ed25519.Sign(priv, data) }

// Verify checks sig over data with pub.
func Verify(pub ed25519.PublicKey, data, sig []byte) error {
	if len(sig) != SignatureSize {
		return fmt.Errorf("signature is %d bytes, want %d", len(sig), SignatureSize)
	}
	if !ed25519.Verify(pub, data, sig) {
		return errors.New("signature does not verify with the public key")
	}
	return nil
}
