package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	v1 "hangar/api/v1"
)

// Whoami says who the server takes the caller for.
func (c *Client) Whoami(ctx context.Context) (v1.Whoami, error) {
	var w v1.Whoami
	_, err := c.do(ctx, "GET", "/whoami", nil, nil, &w)
	return w, err
}

// Users lists the local users.
func (c *Client) Users(ctx context.Context) ([]v1.User, error) {
	var us []v1.User
	_, err := c.do(ctx, "GET", "/users", nil, nil, &us)
	return us, err
}

// AddUser creates a local user.
func (c *Client) AddUser(ctx context.Context, req v1.UserRequest) (v1.User, error) {
	var u v1.User
	_, err := c.do(ctx, "POST", "/users", nil, req, &u)
	return u, err
}

// DeleteUser deletes a user with its tokens and sessions.
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/users/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// SetPassword sets a user's password.
func (c *Client) SetPassword(ctx context.Context, name, password string) error {
	_, err := c.do(ctx, "PUT", "/users/"+url.PathEscape(name)+"/password", nil, v1.PasswordRequest{Password: password}, nil)
	return err
}

// Grant gives a user a role on a scope.
func (c *Client) Grant(ctx context.Context, user string, g v1.Grant) (v1.User, error) {
	var u v1.User
	_, err := c.do(ctx, "POST", "/users/"+url.PathEscape(user)+"/grants", nil, g, &u)
	return u, err
}

// Revoke takes a grant away.
func (c *Client) Revoke(ctx context.Context, user string, g v1.Grant) (v1.User, error) {
	var u v1.User
	_, err := c.do(ctx, "DELETE", "/users/"+url.PathEscape(user)+"/grants", url.Values{"role": {g.Role}, "scope": {g.Scope}}, nil, &u)
	return u, err
}

// Tokens lists the caller's API tokens (all: everyone's).
func (c *Client) Tokens(ctx context.Context, all bool) ([]v1.Token, error) {
	var ts []v1.Token
	q := url.Values{}
	if all {
		q.Set("all", "true")
	}
	_, err := c.do(ctx, "GET", "/tokens", q, nil, &ts)
	return ts, err
}

// CreateToken makes an API token for the caller's user.
func (c *Client) CreateToken(ctx context.Context, req v1.TokenRequest) (v1.NewToken, error) {
	var t v1.NewToken
	_, err := c.do(ctx, "POST", "/tokens", nil, req, &t)
	return t, err
}

// RevokeToken deletes an API token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	_, err := c.do(ctx, "DELETE", "/tokens/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// ConsoleTicket gets a single-use ticket for a VM's console.
func (c *Client) ConsoleTicket(ctx context.Context, name string) (v1.ConsoleTicket, error) {
	var t v1.ConsoleTicket
	_, err := c.do(ctx, "POST", "/vms/"+url.PathEscape(name)+"/console/ticket", nil, nil, &t)
	return t, err
}

// Audit lists audit records, newest first (vm, user: filters; limit 0:
// the server's default).
func (c *Client) Audit(ctx context.Context, vm, user string, limit int) ([]v1.AuditRecord, error) {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	if user != "" {
		q.Set("user", user)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var recs []v1.AuditRecord
	_, err := c.do(ctx, "GET", "/audit", q, nil, &recs)
	return recs, err
}

// sessionCookie is the server's session cookie name (internal/access).
const sessionCookie = "__Host-hangar_session"

// LoginToken logs in with a user's password and makes an API token of it
// (name, ttl 0: the server's default): a session is opened, used once with
// its CSRF token and closed again.
func (c *Client) LoginToken(ctx context.Context, user, password, name string, ttl time.Duration) (v1.NewToken, error) {
	var sess v1.Session
	_, hdr, err := c.doHeaders(ctx, "POST", "/login", nil, nil, v1.LoginRequest{User: user, Password: password}, &sess)
	if err != nil {
		return v1.NewToken{}, err
	}
	var cookie *http.Cookie
	for _, ck := range (&http.Response{Header: hdr}).Cookies() {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	if cookie == nil {
		return v1.NewToken{}, fmt.Errorf("login: the server set no session cookie")
	}
	h := http.Header{"Cookie": {cookie.Name + "=" + cookie.Value}, "X-Csrf-Token": {sess.CSRFToken}}
	var t v1.NewToken
	_, _, err = c.doHeaders(ctx, "POST", "/tokens", nil, h, v1.TokenRequest{Name: name, TTLSeconds: int64(ttl / time.Second)}, &t)
	_, _, _ = c.doHeaders(ctx, "POST", "/logout", nil, h, nil, nil)
	return t, err
}
