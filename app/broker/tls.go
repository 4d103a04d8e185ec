package broker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Validity of generated certificates. Server certificates stay within the
// 825 days some TLS clients accept and are reissued on start when less than
// serverRenewBefore is left.
const (
	caValidity        = 10 * 365 * 24 * time.Hour
	serverValidity    = 825 * 24 * time.Hour
	serverRenewBefore = 30 * 24 * time.Hour
)

// GeneratedTLS names the files EnsureCertificates keeps in its directory.
type GeneratedTLS struct {
	CAFile    string // CA certificate (PEM): what clients must trust
	CAKeyFile string // CA private key (PEM, 0600)
	CertFile  string // server certificate (PEM)
	KeyFile   string // server private key (PEM, 0600)
}

// EnsureCertificates makes sure dir holds an ECDSA P-256 CA and a server
// certificate signed by it for hosts (DNS names or IP addresses; localhost,
// 127.0.0.1 and ::1 are always added so local health checks verify). An
// existing CA is reused, so clients that trust it keep working; an existing
// server certificate is reused unless it does not cover hosts, was not signed
// by the CA, or expires within 30 days.
func EnsureCertificates(dir string, hosts []string, now time.Time) (GeneratedTLS, error) {
	g := GeneratedTLS{
		CAFile:    filepath.Join(dir, "ca.pem"),
		CAKeyFile: filepath.Join(dir, "ca.key"),
		CertFile:  filepath.Join(dir, "server.pem"),
		KeyFile:   filepath.Join(dir, "server.key"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return g, err
	}
	hosts = withLocalHosts(hosts)

	ca, caKey, err := loadCA(g.CAFile, g.CAKeyFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		ca, caKey, err = createCA(g.CAFile, g.CAKeyFile, now)
		if err != nil {
			return g, fmt.Errorf("create CA in %s: %w", dir, err)
		}
	case err != nil:
		return g, err
	}

	if serverCertUsable(g.CertFile, g.KeyFile, ca, hosts, now) {
		return g, nil
	}
	if err := createServerCert(g.CertFile, g.KeyFile, ca, caKey, hosts, now); err != nil {
		return g, fmt.Errorf("create server certificate in %s: %w", dir, err)
	}
	return g, nil
}

func withLocalHosts(hosts []string) []string {
	out := slices.Clone(hosts)
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

func loadCA(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	if !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s and %s are not a matching CA certificate and key", certFile, keyFile)
	}
	return cert, key, nil
}

func createCA(certFile, keyFile string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, serial, err := newKeyAndSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "iot-gateway broker CA", Organization: []string{"iot-gateway"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeKeyAndCert(keyFile, key, certFile, der); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func serverCertUsable(certFile, keyFile string, ca *x509.Certificate, hosts []string, now time.Time) bool {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil || pair.Leaf == nil {
		return false
	}
	leaf := pair.Leaf
	if leaf.CheckSignatureFrom(ca) != nil || now.Add(serverRenewBefore).After(leaf.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func createServerCert(certFile, keyFile string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, now time.Time) error {
	key, serial, err := newKeyAndSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"iot-gateway"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writeKeyAndCert(keyFile, key, certFile, der)
}

// newKeyAndSerial makes the ECDSA P-256 key and the random 128-bit serial
// of a new certificate.
func newKeyAndSerial() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	return key, serial, nil
}

// encodeKeyAndCert returns a key (PKCS #8) and a certificate as PEM.
func encodeKeyAndCert(key *ecdsa.PrivateKey, der []byte) (keyPEM, certPEM []byte, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func writeKeyAndCert(keyFile string, key *ecdsa.PrivateKey, certFile string, der []byte) error {
	keyPEM, certPEM, err := encodeKeyAndCert(key, der)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certFile, certPEM, 0o644)
}

// writeFileAtomic writes via a temporary file and rename so a crash never
// leaves a half-written key or certificate behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || !bytes.HasSuffix([]byte(block.Type), []byte("PRIVATE KEY")) {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("CA key is %T, want ECDSA", k)
	}
	return ek, nil
}

// aeadSuites are the TLS 1.2 cipher suites the broker accepts: forward
// secret and authenticated encryption only (no CBC, no RSA key exchange).
// TLS 1.3 suites are all AEAD and not configurable in Go.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// hardenTLS returns a copy of c with TLS 1.2 as the minimum and, unless c
// names its own, only AEAD suites for TLS 1.2.
func hardenTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	if c.CipherSuites == nil {
		c.CipherSuites = aeadSuites
	}
	return c
}

// requireClientCerts makes tc verify client certificates against the CA
// certificates in caFile: always (require) or when one is presented.
func requireClientCerts(tc *tls.Config, caFile string, require bool) error {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("%s: no PEM certificate", caFile)
	}
	tc.ClientCAs = pool
	tc.ClientAuth = tls.VerifyClientCertIfGiven
	if require {
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return nil
}

// clientValidity is how long an issued device certificate is valid.
const clientValidity = 825 * 24 * time.Hour

// IssueClientCert issues a client certificate for username from the CA
// that EnsureCertificates keeps in dir: ECDSA P-256, the user name as its
// common name (the broker takes the identity from it), client
// authentication only. It returns the certificate and key as PEM.
func IssueClientCert(dir, username string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if err := validUsername(username); err != nil {
		return nil, nil, fmt.Errorf("user name: %w", err)
	}
	ca, caKey, err := loadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, err
	}
	key, serial, err := newKeyAndSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: username, Organization: []string{"iot-gateway device"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(clientValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, certPEM, err = encodeKeyAndCert(key, der)
	return certPEM, keyPEM, err
}

// ServerTLSConfig loads a certificate and key from files into a server
// tls.Config with TLS 1.2 as the minimum version.
func ServerTLSConfig(certFile, keyFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}
