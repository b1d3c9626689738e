package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
)

// ErrNoCAKey: the CA was loaded without its key (a host that is not a
// manager host), so it can verify certificates but not issue them.
var ErrNoCAKey = errors.New("this host holds no CA key (only manager hosts do)")

// OpenCA loads the CA certificate in dir and, when present, its key. A
// missing certificate is fs.ErrNotExist.
func OpenCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if _, err := os.Lstat(keyPath); err == nil {
		return loadCA(dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("pki: stat %s: %w", keyPath, err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	cert, err := ParseCACert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", certPath, err)
	}
	return &CA{cert: cert, certPEM: certPEM, dir: dir}, nil
}

// ParseCACert parses a PEM CA certificate and checks it is one.
func ParseCACert(certPEM []byte) (*x509.Certificate, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("not a CA certificate")
	}
	return cert, nil
}

// ParseCert parses one PEM certificate.
func ParseCert(certPEM []byte) (*x509.Certificate, error) { return parseCert(certPEM) }

// InstallCA writes a CA received from the pool into dir (0700): the
// certificate and, for manager hosts, the key. It refuses a dir that
// already holds a CA.
func InstallCA(dir string, certPEM, keyPEM []byte) error {
	if err := secureDir(dir); err != nil {
		return err
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("pki: %s already holds %s: a host's data dir belongs to one pool", dir, f)
		}
	}
	cert, err := ParseCACert(certPEM)
	if err != nil {
		return fmt.Errorf("pki: CA certificate: %w", err)
	}
	if keyPEM != nil {
		key, err := parseKey(keyPEM)
		if err != nil {
			return fmt.Errorf("pki: CA key: %w", err)
		}
		if !key.PublicKey.Equal(cert.PublicKey) {
			return errors.New("pki: CA key does not match the CA certificate")
		}
		if err := writeFile(filepath.Join(dir, CAKeyFile), keyPEM); err != nil {
			return err
		}
	}
	return writeFile(filepath.Join(dir, CACertFile), certPEM)
}

// HasKey reports whether this CA can issue certificates.
func (ca *CA) HasKey() bool { return ca.key != nil }

// KeyPEM returns the CA key in PEM form, for handing it to another manager
// host; ErrNoCAKey without one.
func (ca *CA) KeyPEM() ([]byte, error) {
	if ca.key == nil {
		return nil, ErrNoCAKey
	}
	return encodeKey(ca.key)
}

// Fingerprint is the SHA-256 of the CA certificate (DER).
func (ca *CA) Fingerprint() [32]byte { return sha256.Sum256(ca.cert.Raw) }

// FingerprintHex is Fingerprint in lower-case hex.
func (ca *CA) FingerprintHex() string { fp := ca.Fingerprint(); return hex.EncodeToString(fp[:]) }

// SignHost issues a host certificate (serverAuth + clientAuth) for the
// public key of a certificate request that the caller has checked (see
// CheckHostCSR), with the names and addresses given.
func (ca *CA) SignHost(csr *x509.CertificateRequest, name string, ips []net.IP, dns []string) (*x509.Certificate, []byte, error) {
	return ca.sign(csr.PublicKey, name, ips, dns, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// NewHostRequest makes a new ECDSA P-256 key and a certificate request for
// host name with the given names and addresses. The key never leaves the
// host.
func NewHostRequest(name string, ips []net.IP, dns []string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name, Organization: []string{"hangar"}}, DNSNames: dns, IPAddresses: ips}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// KeyMatches reports whether keyPEM is the private key of cert.
func KeyMatches(keyPEM []byte, cert *x509.Certificate) bool {
	k, err := parseKey(keyPEM)
	return err == nil && k.PublicKey.Equal(cert.PublicKey)
}

// LoadKeyPair reads a certificate and its key (0600) from files.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	return (&CA{}).loadHost(certFile, keyFile)
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	var k any
	var err error
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
	}
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an ECDSA key")
	}
	return ek, nil
}
