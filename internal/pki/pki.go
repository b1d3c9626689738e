// Package pki is the pool's certificate authority: one ECDSA P-256 CA kept
// in a 0700 directory, and the certificates it issues to hosts. Embedded
// etcd peers authenticate each other with these host certificates (mutual
// TLS); join tokens and the host-to-host API build on the same CA.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // SubjectKeyId as RFC 5280 4.2.1.2 (1) describes; not a security use
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names inside a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	hostValidity = 365 * 24 * time.Hour
	// renewBefore: a host certificate with less validity left than this is
	// issued again by EnsureHost.
	renewBefore = 30 * 24 * time.Hour
	// backdate tolerates clocks of other hosts that are a little behind.
	backdate = time.Hour
)

// ErrInsecureFile is returned for a private key that users other than its
// owner can read or write.
var ErrInsecureFile = errors.New("file is accessible to other users")

// CA is a loaded certificate authority.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	dir     string
}

// LoadOrCreateCA loads the CA in dir (ca.crt, ca.key) or, when neither file
// exists, creates one. dir is created 0700 and both files are written 0600.
// A key readable by group or others, or only one of the two files, is an
// error: the CA is never silently replaced.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := secureDir(dir); err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	_, cerr := os.Lstat(certPath)
	_, kerr := os.Lstat(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		return loadCA(dir)
	case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
		return createCA(dir)
	case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
		return nil, fmt.Errorf("pki: stat %s: %w", certPath, cerr)
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return nil, fmt.Errorf("pki: stat %s: %w", keyPath, kerr)
	default:
		return nil, fmt.Errorf("pki: %s holds only one of %s and %s: restore the other or remove both to create a new CA",
			dir, CACertFile, CAKeyFile)
	}
}

func createCA(dir string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "hangar pool CA", Organization: []string{"hangar"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a crash in between leaves a key without a certificate,
	// which LoadOrCreateCA reports instead of replacing.
	if err := writeFile(filepath.Join(dir, CAKeyFile), keyPEM); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, CACertFile), certPEM); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	return &CA{cert: cert, certPEM: certPEM, key: key, dir: dir}, nil
}

func loadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", certPath, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", keyPath, certPath)
	}
	return &CA{cert: cert, certPEM: certPEM, key: key, dir: dir}, nil
}

// Dir is the directory the CA was loaded from.
func (ca *CA) Dir() string { return ca.dir }

// CertFile is the path of the CA certificate (PEM), e.g. for etcd's
// TrustedCAFile.
func (ca *CA) CertFile() string { return filepath.Join(ca.dir, CACertFile) }

// Cert returns the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Pool returns a certificate pool holding only this CA, for RootCAs and
// ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// KeyPair is an issued certificate and its private key.
type KeyPair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// TLSCertificate returns the pair for tls.Config.Certificates.
func (kp *KeyPair) TLSCertificate() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: key pair: %w", err)
	}
	return c, nil
}

// WriteFiles writes the certificate and the key, both 0600, each replaced
// atomically.
func (kp *KeyPair) WriteFiles(certFile, keyFile string) error {
	if err := writeFile(keyFile, kp.KeyPEM); err != nil {
		return err
	}
	return writeFile(certFile, kp.CertPEM)
}

// IssueHost issues a certificate for host name, usable both as TLS server
// and as TLS client (serverAuth + clientAuth), with name and dns as DNS SANs
// and ips as IP SANs. It is valid for a year.
func (ca *CA) IssueHost(name string, ips []net.IP, dns []string) (*KeyPair, error) {
	if name == "" {
		return nil, errors.New("pki: issue host certificate: empty host name")
	}
	return ca.issue(name, ips, dns, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// IssueClient issues a client-only certificate (clientAuth, no SANs) with
// common name name, e.g. for a user of the TCP API. It is valid for a year.
func (ca *CA) IssueClient(name string) (*KeyPair, error) {
	if name == "" {
		return nil, errors.New("pki: issue client certificate: empty name")
	}
	return ca.issue(name, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func (ca *CA) issue(name string, ips []net.IP, dns []string, usage []x509.ExtKeyUsage) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key for %q: %w", name, err)
	}
	cert, certPEM, err := ca.sign(&key.PublicKey, name, ips, dns, usage)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// sign issues a certificate for pub.
func (ca *CA) sign(pub crypto.PublicKey, name string, ips []net.IP, dns []string, usage []x509.ExtKeyUsage) (*x509.Certificate, []byte, error) {
	if ca.key == nil {
		return nil, nil, fmt.Errorf("pki: issue certificate for %q: %w", name, ErrNoCAKey)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := keyID(pub)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	if slices.Contains(usage, x509.ExtKeyUsageServerAuth) {
		names = append(names, name)
	}
	for _, d := range dns {
		if d != "" && !slices.Contains(names, d) {
			names = append(names, d)
		}
	}
	now := time.Now()
	notAfter := now.Add(hostValidity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: name, Organization: []string{"hangar"}},
		NotBefore:      now.Add(-backdate),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    usage,
		DNSNames:       names,
		IPAddresses:    slices.Clone(ips),
		SubjectKeyId:   ski,
		AuthorityKeyId: ca.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue certificate for %q: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse certificate of %q: %w", name, err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// Verify checks that cert was issued by this CA for usage (e.g.
// x509.ExtKeyUsageClientAuth) and is valid now.
func (ca *CA) Verify(cert *x509.Certificate, usage x509.ExtKeyUsage) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return fmt.Errorf("pki: verify %q: %w", cert.Subject.CommonName, err)
	}
	return nil
}

// EnsureHost returns the host key pair stored as certFile/keyFile, issuing
// and writing a new one when the files are missing, were not issued by this
// CA, lack one of the names or IPs, or expire within 30 days.
func (ca *CA) EnsureHost(certFile, keyFile, name string, ips []net.IP, dns []string) (*KeyPair, error) {
	if kp, err := ca.loadHost(certFile, keyFile); err == nil && kp.covers(name, ips, dns) &&
		time.Until(kp.Cert.NotAfter) > renewBefore && ca.Verify(kp.Cert, x509.ExtKeyUsageServerAuth) == nil &&
		ca.Verify(kp.Cert, x509.ExtKeyUsageClientAuth) == nil {
		return kp, nil
	}
	if ca.key == nil {
		kp, err := ca.loadHost(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("pki: host certificate %s: %w (and this host holds no CA key to issue another)", certFile, err)
		}
		if err := ca.Verify(kp.Cert, x509.ExtKeyUsageServerAuth); err != nil {
			return nil, err
		}
		if !kp.covers(name, ips, dns) {
			return nil, fmt.Errorf("pki: host certificate %s was issued for %q %v %v, not for %q %v %v, and this host holds no CA key to issue another: use the addresses it joined with",
				certFile, kp.Cert.Subject.CommonName, kp.Cert.DNSNames, kp.Cert.IPAddresses, name, dns, ips)
		}
		return kp, nil
	}
	kp, err := ca.IssueHost(name, ips, dns)
	if err != nil {
		return nil, err
	}
	if err := kp.WriteFiles(certFile, keyFile); err != nil {
		return nil, err
	}
	return kp, nil
}

func (ca *CA) loadHost(certFile, keyFile string) (*KeyPair, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := readKey(keyFile)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("key does not match certificate")
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

func (kp *KeyPair) covers(name string, ips []net.IP, dns []string) bool {
	if kp.Cert.Subject.CommonName != name || !slices.Contains(kp.Cert.DNSNames, name) {
		return false
	}
	for _, d := range dns {
		if d != "" && !slices.Contains(kp.Cert.DNSNames, d) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(kp.Cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// secureDir creates dir 0700 (parents as needed) and makes sure it is a
// directory of this user that nobody else can enter.
func secureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("pki: stat %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("pki: %s is not a directory", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pki: chmod %s: %w", dir, err)
	}
	return nil
}

// writeFile replaces path atomically with a 0600 file holding b.
func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("pki: stat key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("pki: %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pki: %s (mode %v): %w; chmod 600 it", path, st.Mode().Perm(), ErrInsecureFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("pki: %s: no PEM block", path)
	}
	var k any
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("pki: %s: unexpected PEM block %q", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: %s: not an ECDSA key", path)
	}
	return ek, nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	b, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal public key: %w", err)
	}
	h := sha1.Sum(der) //nolint:gosec // identifier only
	return h[:], nil
}
