package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hangar-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTCPOnlyWithTLS: --listen without a key pair is refused; with one the
// API answers over TLS and not over plain HTTP; the unix socket is 0660.
func TestTCPOnlyWithTLS(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): hangar serve cannot start")
	}
	ctx := context.Background()
	if _, err := Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}); err == nil {
		t.Fatal("TCP listening without TLS was accepted")
	}
	dir := t.TempDir()
	run, err := os.MkdirTemp("", "hgd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cert, key, pool := selfSigned(t, dir)
	d, err := Start(ctx, Config{DataDir: filepath.Join(dir, "data"), RunDir: run, Host: "tls", Listen: addr, TLSCert: cert, TLSKey: key, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := os.Stat(d.Socket)
	if err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	resp, err := hc.Get("https://" + addr + "/api/v1/hosts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("TLS GET: %s", resp.Status)
	}
	resp, err = (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/api/v1/hosts")
	if err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered on the TLS port")
	}
	if err == nil {
		resp.Body.Close()
	}
}
