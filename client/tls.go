package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// TLSOptions say how to reach and authenticate to an API served over TCP
// (`hangar serve --listen`). Give a client certificate (CertFile and
// KeyFile), a Token, or both.
type TLSOptions struct {
	// CAFile is a PEM file of CAs that verify the server's certificate;
	// empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key (PEM),
	// for a server started with --client-ca.
	CertFile, KeyFile string
	// Token is a bearer token of the server's --tokens-file.
	Token string
	// ServerName overrides the name the server certificate is checked
	// against (default: the URL's host).
	ServerName string
}

// NewTLS returns a client of the API at rawURL (https://host:port) over TLS.
func NewTLS(rawURL string, o TLSOptions) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("api url %q: %w", rawURL, err)
	}
	if u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("api url %q: want https://host:port (the API is served over TCP only with TLS)", rawURL)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("client certificate: give both the certificate and the key file")
	}
	if strings.ContainsAny(o.Token, "\r\n") {
		return nil, errors.New("token: contains a line break")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		b, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("server CA %s: no PEM certificates", o.CAFile)
		}
		tc.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		d := tls.Dialer{Config: tc.Clone()}
		return d.DialContext(ctx, "tcp", host)
	}
	tr := &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 4, ForceAttemptHTTP2: false}
	var rt http.RoundTripper = tr
	if o.Token != "" {
		rt = bearer{token: o.Token, next: tr}
	}
	root := "https://" + u.Host
	return &Client{hc: &http.Client{Transport: rt}, root: root, base: root + "/api/v1", endpoint: root, dial: dial, token: o.Token}, nil
}

// FromEnv returns a client of $HANGAR_URL (or its alias $HANGAR_SERVER)
// over TLS when it is set, with the credentials bundle $HANGAR_CREDENTIALS
// (hangar pool credentials) or $HANGAR_CA, $HANGAR_CERT, $HANGAR_KEY, and
// $HANGAR_TOKEN; else of the unix socket $HANGAR_SOCKET (default
// /run/hangar/hangar.sock).
func FromEnv() (*Client, error) {
	u := ServerFromEnv()
	if u == "" {
		return New(SocketFromEnv()), nil
	}
	o, err := OptionsFromEnv(os.Getenv("HANGAR_CREDENTIALS"))
	if err != nil {
		return nil, err
	}
	return NewTLS(u, o)
}

// ServerFromEnv is $HANGAR_URL, else $HANGAR_SERVER.
func ServerFromEnv() string {
	if u := os.Getenv("HANGAR_URL"); u != "" {
		return u
	}
	return os.Getenv("HANGAR_SERVER")
}

// OptionsFromEnv are the TLS options of a credentials bundle dir (if not
// "") with $HANGAR_CA, $HANGAR_CERT, $HANGAR_KEY (each overriding the
// bundle's file when set) and $HANGAR_TOKEN.
func OptionsFromEnv(credentials string) (TLSOptions, error) {
	var o TLSOptions
	if credentials != "" {
		var err error
		if o, err = CredentialsOptions(credentials); err != nil {
			return TLSOptions{}, err
		}
	}
	for _, e := range []struct {
		env string
		to  *string
	}{{"HANGAR_CA", &o.CAFile}, {"HANGAR_CERT", &o.CertFile}, {"HANGAR_KEY", &o.KeyFile}, {"HANGAR_TOKEN", &o.Token}} {
		if v := os.Getenv(e.env); v != "" {
			*e.to = v
		}
	}
	return o, nil
}

// bearer adds the Authorization header to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
