package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hangar/internal/pki"
)

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{dir: 0o700, ca.CertFile(): 0o600, filepath.Join(dir, pki.CAKeyFile): 0o600} {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	c := ca.Cert()
	if !c.IsCA || c.PublicKeyAlgorithm != x509.ECDSA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate: isCA %v, algo %v, usage %v", c.IsCA, c.PublicKeyAlgorithm, c.KeyUsage)
	}
	// Loading again gives the same CA.
	again, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert().Equal(c) {
		t.Fatal("second LoadOrCreateCA made a new CA")
	}
	// A certificate issued by the first load verifies against the second.
	kp, err := ca.IssueHost("h1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Verify(kp.Cert, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
}

func TestLoadOrCreateCARefuses(t *testing.T) {
	t.Run("key readable by others", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := pki.LoadOrCreateCA(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, pki.CAKeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadOrCreateCA(dir); !errors.Is(err, pki.ErrInsecureFile) {
			t.Fatalf("err = %v, want ErrInsecureFile", err)
		}
	})
	t.Run("only the certificate", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := pki.LoadOrCreateCA(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, pki.CAKeyFile)); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), "only one") {
			t.Fatalf("err = %v, want a refusal to replace half a CA", err)
		}
		if _, err := os.Stat(filepath.Join(dir, pki.CAKeyFile)); err == nil {
			t.Fatal("a new key was written next to the old certificate")
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		a, b := t.TempDir(), t.TempDir()
		for _, d := range []string{a, b} {
			if _, err := pki.LoadOrCreateCA(d); err != nil {
				t.Fatal(err)
			}
		}
		k, _ := os.ReadFile(filepath.Join(b, pki.CAKeyFile))
		if err := os.WriteFile(filepath.Join(a, pki.CAKeyFile), k, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadOrCreateCA(a); err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("err = %v, want mismatch", err)
		}
	})
}

func TestIssueHost(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.7")}
	kp, err := ca.IssueHost("h1", ips, []string{"h1.example", "h1"})
	if err != nil {
		t.Fatal(err)
	}
	c := kp.Cert
	if c.Subject.CommonName != "h1" || len(c.DNSNames) != 2 || len(c.IPAddresses) != 2 {
		t.Fatalf("names: CN %q, DNS %v, IPs %v", c.Subject.CommonName, c.DNSNames, c.IPAddresses)
	}
	if c.IsCA {
		t.Fatal("host certificate is a CA")
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := ca.Verify(c, u); err != nil {
			t.Errorf("usage %v: %v", u, err)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "10.0.0.7"}); err != nil {
		t.Errorf("verify IP SAN: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "h2"}); err == nil {
		t.Error("certificate of h1 verified for h2")
	}
	other, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Verify(c, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("certificate verified against an unrelated CA")
	}
	if _, err := ca.IssueHost("", nil, nil); err == nil {
		t.Error("empty host name accepted")
	}
}

// TestMutualTLS: two host certificates of one CA complete a handshake with
// client-certificate verification; a certificate of another CA is refused.
func TestMutualTLS(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srvKP, _ := ca.IssueHost("srv", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	cliKP, _ := ca.IssueHost("cli", nil, nil)
	other, _ := pki.LoadOrCreateCA(t.TempDir())
	badKP, _ := other.IssueHost("cli", nil, nil)
	srvCert, err := srvKP.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvCert},
		ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = io.WriteString(c, "ok")
				}
			}()
		}
	}()
	dial := func(kp *pki.KeyPair) error {
		cert, err := kp.TLSCertificate()
		if err != nil {
			return err
		}
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c) // TLS 1.3: the server's refusal arrives on the first read
		if err != nil {
			return err
		}
		if string(b) != "ok" {
			return errors.New("no answer")
		}
		return nil
	}
	if err := dial(cliKP); err != nil {
		t.Fatalf("good client certificate: %v", err)
	}
	if err := dial(badKP); err == nil {
		t.Fatal("client certificate of another CA was accepted")
	}
}

func TestEnsureHost(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cf, kf := filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key")
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	a, err := ca.EnsureHost(cf, kf, "h1", ips, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(kf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key: %v %v", st, err)
	}
	b, err := ca.EnsureHost(cf, kf, "h1", ips, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Cert.Equal(b.Cert) {
		t.Fatal("EnsureHost reissued a valid certificate")
	}
	c, err := ca.EnsureHost(cf, kf, "h1", append(ips, net.ParseIP("10.1.2.3")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cert.Equal(a.Cert) || len(c.Cert.IPAddresses) != 2 {
		t.Fatalf("a new IP did not reissue: IPs %v", c.Cert.IPAddresses)
	}
	// A certificate of another CA in the files is replaced.
	other, _ := pki.LoadOrCreateCA(t.TempDir())
	okp, _ := other.IssueHost("h1", ips, nil)
	if err := okp.WriteFiles(cf, kf); err != nil {
		t.Fatal(err)
	}
	d, err := ca.EnsureHost(cf, kf, "h1", ips, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Verify(d.Cert, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatalf("foreign certificate kept: %v", err)
	}
}

func TestIssueClient(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueClient("alice")
	if err != nil {
		t.Fatal(err)
	}
	if kp.Cert.Subject.CommonName != "alice" || len(kp.Cert.DNSNames) != 0 || kp.Cert.IsCA {
		t.Fatalf("client certificate: CN %q DNS %v CA %v", kp.Cert.Subject.CommonName, kp.Cert.DNSNames, kp.Cert.IsCA)
	}
	if err := ca.Verify(kp.Cert, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
	if err := ca.Verify(kp.Cert, x509.ExtKeyUsageServerAuth); err == nil {
		t.Fatal("a client certificate verifies as a server certificate")
	}
	if _, err := ca.IssueClient(""); err == nil {
		t.Fatal("empty name accepted")
	}
}
