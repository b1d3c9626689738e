package authn_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/authn"
	"hangar/internal/errdefs"
	"hangar/internal/pki"
)

const tok = "0123456789abcdef-token"

func TestParseTokens(t *testing.T) {
	good := "# comment\n\n" + tok + "\nci: " + "ci-token-0123456789abc" + "\n"
	ts, err := authn.ParseTokens(strings.NewReader(good))
	if err != nil || ts.Len() != 2 {
		t.Fatalf("ParseTokens: %v, %v", ts, err)
	}
	for name, in := range map[string]string{
		"empty":        "# nothing\n",
		"short":        "short\n",
		"no name":      ":" + tok + "\n",
		"space inside": "a:" + tok + " x\n",
		"dup name":     "a:" + tok + "\na:" + tok + "x\n",
		"dup token":    "a:" + tok + "\nb:" + tok + "\n",
	} {
		if _, err := authn.ParseTokens(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadTokensMode(t *testing.T) {
	dir := t.TempDir()
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o640: true, 0o400: true, 0o644: false, 0o604: false, 0o620: false, 0o602: false} {
		p := filepath.Join(dir, "tokens")
		os.Remove(p)
		if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		_, err := authn.LoadTokens(p)
		if (err == nil) != ok {
			t.Errorf("mode %v: err = %v, want ok=%v", mode, err, ok)
		}
	}
	if _, err := authn.LoadTokens(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestTokensAuthenticate(t *testing.T) {
	ts, err := authn.ParseTokens(strings.NewReader("ci:" + tok + "\n" + "other-token-0123456789\n"))
	if err != nil {
		t.Fatal(err)
	}
	for hdr, want := range map[string]string{
		"Bearer " + tok:                 "ci",
		"bearer " + tok:                 "ci",
		"Bearer other-token-0123456789": "line-2",
		"":                              "",
		"Bearer " + tok + "x":           "",
		"Bearer " + tok[:len(tok)-1]:    "",
		"Basic " + tok:                  "",
		"Bearer":                        "",
		tok:                             "",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		if hdr != "" {
			r.Header.Set("Authorization", hdr)
		}
		id, err := ts.Authenticate(r)
		switch {
		case want == "" && err == nil:
			t.Errorf("%q: accepted as %v", hdr, id)
		case want == "" && !errors.Is(err, errdefs.ErrUnauthenticated):
			t.Errorf("%q: err %v is not unauthenticated", hdr, err)
		case want != "" && (err != nil || id.Name != want || id.Method != authn.MethodToken):
			t.Errorf("%q: %v %v, want %s", hdr, id, err, want)
		}
	}
}

// TestRequire: a real TLS server asking for client certificates of one CA
// with a token as the other way in. A good certificate or token gets
// through with its identity; anything else is 401 JSON.
func TestRequire(t *testing.T) {
	dir := t.TempDir()
	srvCA, _ := pki.LoadOrCreateCA(filepath.Join(dir, "s"))
	cliCA, _ := pki.LoadOrCreateCA(filepath.Join(dir, "c"))
	otherCA, _ := pki.LoadOrCreateCA(filepath.Join(dir, "o"))
	ts, _ := authn.ParseTokens(strings.NewReader("ci:" + tok + "\n"))
	h := authn.Require(authn.AnyOf{authn.ClientCert{Roots: cliCA.Pool()}, ts}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := authn.FromContext(r.Context())
		if !ok {
			t.Error("no identity in the context")
		}
		_, _ = w.Write([]byte(id.Method + ":" + id.Name))
	}))
	srv := httptest.NewUnstartedServer(h)
	skp, _ := srvCA.IssueHost("srv", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	sc, _ := skp.TLSCertificate()
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: cliCA.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	defer srv.Close()

	do := func(ca *pki.CA, token string) (int, string, *v1.ErrorResponse) {
		tc := &tls.Config{RootCAs: srvCA.Pool()}
		if ca != nil {
			kp, _ := ca.IssueHost("alice", nil, nil)
			c, _ := kp.TLSCertificate()
			tc.Certificates = []tls.Certificate{c}
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		req, _ := http.NewRequest("GET", srv.URL+"/x", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error(), nil
		}
		defer resp.Body.Close()
		if resp.StatusCode == 401 {
			var er v1.ErrorResponse
			if err := json.NewDecoder(resp.Body).Decode(&er); err != nil || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 body: %v, WWW-Authenticate %q", err, resp.Header.Get("WWW-Authenticate"))
			}
			return 401, "", &er
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, _ := do(cliCA, ""); code != 200 || body != "certificate:alice" {
		t.Errorf("good certificate: %d %q", code, body)
	}
	if code, body, _ := do(nil, tok); code != 200 || body != "tokens-file:ci" {
		t.Errorf("good token: %d %q", code, body)
	}
	if code, body, _ := do(otherCA, ""); code != 0 {
		t.Errorf("certificate of another CA: %d %q, want a refused handshake", code, body)
	}
	for name, token := range map[string]string{"nothing": "", "bad token": "bad-token-0123456789xx"} {
		code, _, er := do(nil, token)
		if code != 401 || er == nil || er.Error == nil || er.Error.Code != v1.CodeUnauthenticated || er.Error.Message == "" {
			t.Errorf("%s: %d %+v, want 401 unauthenticated", name, code, er)
		}
	}
	// ClientCert alone does not trust a handshake it did not configure: a
	// certificate of another CA on a listener that accepts any is refused.
	r := httptest.NewRequest("GET", "/", nil)
	kp, _ := otherCA.IssueHost("mallory", nil, nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{kp.Cert}}
	if _, err := (authn.ClientCert{Roots: cliCA.Pool()}).Authenticate(r); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("foreign certificate: err = %v", err)
	}
}
