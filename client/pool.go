package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "hangar/api/v1"
)

// JoinToken asks for a join token valid for ttl (0: the server's default,
// 10 minutes).
func (c *Client) JoinToken(ctx context.Context, ttl time.Duration) (v1.JoinToken, error) {
	var t v1.JoinToken
	_, err := c.do(ctx, "POST", "/pool/join-tokens", nil, v1.JoinTokenRequest{TTLSeconds: int(ttl / time.Second)}, &t)
	return t, err
}

// Credentials asks a manager host for a client certificate named name.
func (c *Client) Credentials(ctx context.Context, name string) (v1.Credentials, error) {
	var cr v1.Credentials
	_, err := c.do(ctx, "POST", "/pool/credentials", nil, v1.CredentialsRequest{Name: name}, &cr)
	return cr, err
}

// PoolInfo describes the pool: name, CA fingerprint, etcd members.
func (c *Client) PoolInfo(ctx context.Context) (v1.PoolInfo, error) {
	var p v1.PoolInfo
	_, err := c.do(ctx, "GET", "/pool", nil, nil, &p)
	return p, err
}

// RemoveHost takes a host out of the pool, evacuating it first: while the
// host is alive and not evacuated it returns the evacuation the server
// recorded (or the one under way) and removes nothing; follow it and ask
// again. nil: the host was removed.
func (c *Client) RemoveHost(ctx context.Context, name string) (*v1.Operation, error) {
	var op v1.Operation
	code, err := c.do(ctx, "DELETE", "/hosts/"+name, nil, nil, &op)
	if err != nil || code == http.StatusNoContent {
		return nil, err
	}
	return &op, nil
}

// Files of a credentials bundle (hangar pool credentials --out DIR).
const (
	CredentialsCA   = "ca.crt"
	CredentialsCert = "client.crt"
	CredentialsKey  = "client.key"
)

// CredentialsOptions are the TLSOptions of a credentials bundle directory.
func CredentialsOptions(dir string) (TLSOptions, error) {
	o := TLSOptions{CAFile: filepath.Join(dir, CredentialsCA), CertFile: filepath.Join(dir, CredentialsCert), KeyFile: filepath.Join(dir, CredentialsKey)}
	for _, f := range []string{o.CAFile, o.CertFile, o.KeyFile} {
		if _, err := os.Stat(f); err != nil {
			return TLSOptions{}, fmt.Errorf("credentials %s: %w (want %s, %s and %s from hangar pool credentials)", dir, err,
				CredentialsCA, CredentialsCert, CredentialsKey)
		}
	}
	return o, nil
}

// WriteCredentials writes a bundle into dir (created 0700): ca.crt,
// client.crt and client.key, all 0600. Existing files are not replaced.
func WriteCredentials(dir string, c v1.Credentials) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := []struct{ name, data string }{{CredentialsCA, c.CACert}, {CredentialsCert, c.Cert}, {CredentialsKey, c.Key}}
	for _, f := range files {
		if _, err := os.Lstat(filepath.Join(dir, f.name)); err == nil {
			return fmt.Errorf("%s exists: give another --out or remove it", filepath.Join(dir, f.name))
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.data), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// PoolSettings reads the pool's admission settings in force.
func (c *Client) PoolSettings(ctx context.Context) (v1.PoolSettings, error) {
	var p v1.PoolSettings
	_, err := c.do(ctx, "GET", "/pool/settings", nil, nil, &p)
	return p, err
}

// SetPoolSettings replaces them and returns what is in force after.
func (c *Client) SetPoolSettings(ctx context.Context, ps v1.PoolSettings) (v1.PoolSettings, error) {
	var p v1.PoolSettings
	_, err := c.do(ctx, "PUT", "/pool/settings", nil, ps, &p)
	return p, err
}
