package join

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/pki"
)

// ErrFingerprint: the server does not prove it is the pool of the token.
var ErrFingerprint = errors.New("the server is not the pool this token is for")

// maxAnswer bounds the join answer read from the server.
const maxAnswer = 1 << 20

// pinnedTLS trusts only a server whose chain holds a CA certificate with
// fingerprint fp and whose leaf verifies against that CA for serverAuth.
// A server of any other CA (a man in the middle) fails the handshake and
// is sent nothing.
func pinnedTLS(fp [32]byte, addr string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is checked by VerifyConnection against the pinned CA
		// instead of system roots.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: %s presented no certificate", ErrFingerprint, addr)
			}
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates[1:] {
				if sha256.Sum256(c.Raw) == fp && c.IsCA {
					ca = c
				}
			}
			if ca == nil {
				return fmt.Errorf("%w: %s presented no CA certificate with the token's fingerprint %x (a server of another pool, or someone in between)", ErrFingerprint, addr, fp[:8])
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("%w: %s: its certificate is not issued by the pool CA: %v", ErrFingerprint, addr, err)
			}
			return nil
		},
	}
}

// Request sends req to the pool host at addr (host:port of its --listen)
// and returns its answer, checked against the token and key (see
// CheckAnswer). It writes nothing.
func Request(ctx context.Context, addr string, tok Token, req v1.JoinRequest, keyPEM []byte) (v1.JoinAnswer, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("--join %q: want HOST:PORT of a pool host's --listen: %w", addr, err)
	}
	req.Token = tok.String()
	body, _ := json.Marshal(req)
	tr := &http.Transport{TLSClientConfig: pinnedTLS(tok.CAFingerprint, addr), ForceAttemptHTTP2: false}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+"/api/v1/pool/join", bytes.NewReader(body))
	if err != nil {
		return v1.JoinAnswer{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hr)
	if err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: %w", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: read answer: %w", addr, err)
	}
	if len(b) > maxAnswer {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: answer over %d bytes", addr, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		var er v1.ErrorResponse
		if json.Unmarshal(b, &er) == nil && er.Error != nil {
			return v1.JoinAnswer{}, fmt.Errorf("join %s refused: %w", addr, er.Error)
		}
		return v1.JoinAnswer{}, fmt.Errorf("join %s: %s", addr, resp.Status)
	}
	var ans v1.JoinAnswer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ans); err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: answer: %w", addr, err)
	}
	if err := CheckAnswer(ans, tok, req, keyPEM); err != nil {
		return v1.JoinAnswer{}, fmt.Errorf("join %s: %w", addr, err)
	}
	return ans, nil
}

// CheckAnswer checks a join answer before anything of it is written: the
// CA has the token's fingerprint, the host certificate is the CA's, for
// this host, for this key, for serverAuth and clientAuth; a CA key matches
// the CA; the secrets key has its size; the role and its etcd settings are
// well formed.
func CheckAnswer(ans v1.JoinAnswer, tok Token, req v1.JoinRequest, keyPEM []byte) error {
	ca, err := pki.ParseCACert([]byte(ans.CACert))
	if err != nil {
		return fmt.Errorf("answer: CA certificate: %w", err)
	}
	if sha256.Sum256(ca.Raw) != tok.CAFingerprint {
		return fmt.Errorf("answer: %w: its CA certificate has another fingerprint", ErrFingerprint)
	}
	cert, err := pki.ParseCert([]byte(ans.HostCert))
	if err != nil {
		return fmt.Errorf("answer: host certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return fmt.Errorf("answer: host certificate: %w", err)
		}
	}
	if cert.Subject.CommonName != req.Host || !pki.KeyMatches(keyPEM, cert) {
		return errors.New("answer: the host certificate is not for this host's name and key")
	}
	if ans.CAKey != "" && !pki.KeyMatches([]byte(ans.CAKey), ca) {
		return errors.New("answer: the CA key does not match the CA certificate")
	}
	if _, err := SecretsKeyOK(ans.SecretsKey); err != nil {
		return err
	}
	for _, e := range ans.Endpoints {
		if u, err := url.Parse(e); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("answer: etcd endpoint %q: want https://HOST:PORT", e)
		}
	}
	switch ans.Role {
	case v1.RoleMember:
		if ans.CAKey == "" {
			return errors.New("answer: a manager host needs the CA key")
		}
		if _, err := strconv.ParseUint(ans.MemberID, 16, 64); err != nil {
			return fmt.Errorf("answer: member id %q", ans.MemberID)
		}
		if !slices.Contains(strings.Split(ans.InitialCluster, ","), req.Host+"="+req.PeerURL) {
			return fmt.Errorf("answer: initial cluster %q does not name this host's peer URL", ans.InitialCluster)
		}
		if len(ans.Endpoints) == 0 {
			return errors.New("answer: no etcd endpoints")
		}
	case v1.RoleClient:
		if ans.CAKey != "" {
			return errors.New("answer: a CA key for a host that is not a manager host")
		}
		if len(ans.Endpoints) == 0 {
			return errors.New("answer: no etcd endpoints")
		}
	case v1.RoleExternal:
		if !req.External {
			return errors.New("answer: role external for a host without --etcd-endpoints")
		}
	default:
		return fmt.Errorf("answer: unknown role %q", ans.Role)
	}
	return nil
}
