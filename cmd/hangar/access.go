package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	v1 "hangar/api/v1"
	"hangar/client"
)

// Users, tokens, roles, the audit log and logging in (docs/architecture.md
// "Who can use the API").

func newAccessCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{newLogin(g), newLogout(g), newWhoami(g), newUser(g), newToken(g), newRole(g), newAudit(g)}
}

// cliConfig is the CLI's own file: the tokens hangar login stored, by
// server URL. It holds secrets: 0600 in a 0700 directory, refused when
// others may read it.
type cliConfig struct {
	Servers map[string]cliLogin `json:"servers"`
}

type cliLogin struct {
	User    string `json:"user"`
	Token   string `json:"token"`
	TokenID string `json:"tokenId"`
	// CAFile is a copy of the CA that verifies the server.
	CAFile  string    `json:"caFile,omitempty"`
	Expires time.Time `json:"expires"`
}

// cliConfigPath is $HANGAR_CONFIG, else $XDG_CONFIG_HOME/hangar/cli.json,
// else ~/.config/hangar/cli.json.
func cliConfigPath() (string, error) {
	if p := os.Getenv("HANGAR_CONFIG"); p != "" {
		return p, nil
	}
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("CLI config: %w (set HANGAR_CONFIG)", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "hangar", "cli.json"), nil
}

func loadCLIConfig() (cliConfig, string, error) {
	c := cliConfig{Servers: map[string]cliLogin{}}
	p, err := cliConfigPath()
	if err != nil {
		return c, "", err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c, p, nil
	}
	if err != nil {
		return c, p, fmt.Errorf("CLI config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return c, p, fmt.Errorf("CLI config: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return c, p, fmt.Errorf("CLI config %s has mode %v: it holds tokens, others must not read it (chmod 600)", p, st.Mode().Perm())
	}
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, p, fmt.Errorf("CLI config %s: %w", p, err)
	}
	if c.Servers == nil {
		c.Servers = map[string]cliLogin{}
	}
	return c, p, nil
}

func saveCLIConfig(c cliConfig, p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("CLI config: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("CLI config: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("CLI config: %w", err)
	}
	return os.Rename(tmp, p)
}

// serverKey is how a server URL is kept in the config: https://host:port.
func serverKey(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("server %q: want https://host:port", raw)
	}
	host := u.Host
	if u.Port() == "" {
		host += ":443"
	}
	return "https://" + host, nil
}

// storedLogin is the token hangar login stored for server, if any.
func storedLogin(server string) (cliLogin, bool, error) {
	k, err := serverKey(server)
	if err != nil {
		return cliLogin{}, false, err
	}
	c, _, err := loadCLIConfig()
	if err != nil {
		return cliLogin{}, false, err
	}
	l, ok := c.Servers[k]
	return l, ok, nil
}

// readSecret reads a line from stdin; on a terminal it prompts and does
// not echo.
func readSecret(cmd *cobra.Command, in *bufio.Reader, prompt string) (string, error) {
	fd := int(os.Stdin.Fd())
	if cmd.InOrStdin() == os.Stdin && term.IsTerminal(fd) {
		fmt.Fprint(os.Stderr, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		return string(b), err
	}
	return readLine(cmd, in, "")
}

// readLine reads one line of stdin (prompting on a terminal).
func readLine(cmd *cobra.Command, in *bufio.Reader, prompt string) (string, error) {
	if prompt != "" && cmd.InOrStdin() == os.Stdin && term.IsTerminal(int(os.Stdin.Fd())) {
		fmt.Fprint(os.Stderr, prompt)
	}
	s, err := in.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && s != "") {
		return "", fmt.Errorf("read from stdin: %w", err)
	}
	return strings.TrimRight(s, "\r\n"), nil
}

func newLogin(g *globals) *cobra.Command {
	var user, ca, name string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "login https://HOST:PORT",
		Short: "Log in to a pool host's API as a local user and keep a token for the CLI",
		Long: `Log in with a local user's password (asked for, or read from stdin when it is not a
terminal): the server makes an API token for this CLI, which is stored in the CLI config
($HANGAR_CONFIG, else ~/.config/hangar/cli.json, mode 0600) and used from then on by
every command given --server with that URL. --ca is the PEM file of the CA that verifies
the server (a pool's own CA: ca.crt of its data dir or of hangar pool credentials); a copy
is kept with the token. The token expires after --ttl; hangar logout revokes it.`,
		Example: `  hangar login https://h1:8443 --user alice --ca ca.crt
  hangar --server https://h1:8443 vm list
  printf 'alice\nsecret password\n' | hangar login https://h1:8443 --ca ca.crt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[0])
			if err != nil {
				return err
			}
			if ttl < time.Minute || ttl > 366*24*time.Hour {
				return fmt.Errorf("--ttl %s: between 1m and 366 days", ttl)
			}
			if ca == "" {
				ca = os.Getenv("HANGAR_CA")
			}
			in := bufio.NewReader(cmd.InOrStdin())
			if user == "" {
				if user, err = readLine(cmd, in, "user: "); err != nil {
					return err
				}
			}
			pw, err := readSecret(cmd, in, "password for "+user+": ")
			if err != nil {
				return err
			}
			cfg, path, err := loadCLIConfig()
			if err != nil {
				return err
			}
			c, err := client.NewTLS(key, client.TLSOptions{CAFile: ca})
			if err != nil {
				return err
			}
			if name == "" {
				h, _ := os.Hostname()
				name = "cli-" + h
			}
			t, err := c.LoginToken(cmd.Context(), user, pw, name, ttl)
			if err != nil {
				return fmt.Errorf("log in to %s as %s: %w", key, user, err)
			}
			l := cliLogin{User: user, Token: t.Secret, TokenID: t.ID, Expires: t.Expires}
			if ca != "" {
				b, err := os.ReadFile(ca)
				if err != nil {
					return fmt.Errorf("--ca: %w", err)
				}
				l.CAFile = filepath.Join(filepath.Dir(path), strings.NewReplacer("https://", "", ":", "_").Replace(key)+".ca.crt")
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					return err
				}
				if err := os.WriteFile(l.CAFile, b, 0o600); err != nil {
					return fmt.Errorf("keep the CA: %w", err)
				}
			}
			if old, ok := cfg.Servers[key]; ok && old.TokenID != "" && old.TokenID != t.ID {
				// The token this login replaces is revoked (best effort).
				if oc, err := client.NewTLS(key, client.TLSOptions{CAFile: ca, Token: old.Token}); err == nil {
					_ = oc.RevokeToken(cmd.Context(), old.TokenID)
				}
			}
			cfg.Servers[key] = l
			if err := saveCLIConfig(cfg, path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s as %s: token %s (%s) until %s, kept in %s\n", key, user, t.ID, t.Name,
				t.Expires.Local().Format(time.DateTime), path)
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the local user (default: asked, or the first line of stdin)")
	cmd.Flags().StringVar(&ca, "ca", "", "PEM file of the CA that verifies the server (env HANGAR_CA; default: the system's roots)")
	cmd.Flags().StringVar(&name, "token-name", "", "name of the token made (default cli-<this host's name>)")
	cmd.Flags().DurationVar(&ttl, "ttl", 30*24*time.Hour, "how long the token is valid")
	return cmd
}

func newLogout(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logout https://HOST:PORT",
		Short: "Revoke the token hangar login stored for a server and forget it",
		Long: `Revoke the API token that hangar login stored for the server and remove it from the
CLI config. A token the server no longer knows is forgotten all the same.`,
		Example: "  hangar logout https://h1:8443",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[0])
			if err != nil {
				return err
			}
			cfg, path, err := loadCLIConfig()
			if err != nil {
				return err
			}
			l, ok := cfg.Servers[key]
			if !ok {
				return fmt.Errorf("not logged in to %s", key)
			}
			c, err := client.NewTLS(key, client.TLSOptions{CAFile: l.CAFile, Token: l.Token})
			if err != nil {
				return err
			}
			var ae *v1.Error
			if err := c.RevokeToken(cmd.Context(), l.TokenID); err != nil && !(errors.As(err, &ae) && (ae.Code == v1.CodeUnauthenticated || ae.Code == v1.CodeNotFound)) {
				return fmt.Errorf("revoke the token: %w", err)
			}
			delete(cfg.Servers, key)
			if l.CAFile != "" && filepath.Dir(l.CAFile) == filepath.Dir(path) {
				_ = os.Remove(l.CAFile)
			}
			if err := saveCLIConfig(cfg, path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged out of %s (token %s revoked)\n", key, l.TokenID)
			return nil
		},
	}
}

func newWhoami(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "whoami",
		Short:   "Who the server takes this CLI for, and its grants",
		Long:    `Ask the server who the caller is: the unix socket's root, a certificate, a token or a session, the local user it acts for and the grants it has.`,
		Example: "  hangar whoami\n  hangar --server https://h1:8443 whoami -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.client().Whoami(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd, w, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "name:\t%s\nmethod:\t%s\nadmin:\t%t\n", w.Name, w.Method, w.Admin)
				if w.User != "" {
					fmt.Fprintf(tw, "user:\t%s\ngrants:\t%s\n", w.User, grantsText(w.Grants))
				}
				if w.Limit != nil {
					fmt.Fprintf(tw, "token limited to:\t%s\n", grantsText(w.Limit))
				}
			})
		},
	}
	addOutput(cmd, g, false)
	return cmd
}

func grantsText(gs []v1.Grant) string {
	if len(gs) == 0 {
		return "-"
	}
	var out []string
	for _, g := range gs {
		out = append(out, g.Role+"@"+g.Scope)
	}
	return strings.Join(out, ",")
}

// parseGrants reads --role/--scope pairs: roles and scopes in order, one
// scope for all roles, or none (the pool).
func parseGrants(roles, scopes []string) ([]v1.Grant, error) {
	if len(scopes) > 1 && len(scopes) != len(roles) {
		return nil, fmt.Errorf("--scope: give one for all --role or one per --role (%d roles, %d scopes)", len(roles), len(scopes))
	}
	if len(roles) == 0 && len(scopes) > 0 {
		return nil, errors.New("--scope needs --role")
	}
	var gs []v1.Grant
	for i, r := range roles {
		s := v1.ScopePool
		switch {
		case len(scopes) == 1:
			s = scopes[0]
		case len(scopes) > 1:
			s = scopes[i]
		}
		gs = append(gs, v1.Grant{Role: r, Scope: s})
	}
	return gs, nil
}

func newUser(g *globals) *cobra.Command {
	user := &cobra.Command{
		Use:   "user",
		Short: "Local users: add, list, delete, passwd",
		Long: `Local users log in with a password (stored as an argon2id hash in etcd) and act with the
roles granted to them (hangar role grant). Only admins of the pool manage users; root on
the unix socket always is one.`,
		Example: "  hangar user add alice --role admin\n  hangar user list",
	}
	var roles, scopes []string
	var stdin bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a local user",
		Long: `Add a local user. The password is asked for twice on a terminal, else read from the first
line of stdin (--password-stdin says so explicitly). --role gives it roles at once (on the
pool, or on --scope: prefix:web- or tag:web).`,
		Example: "  hangar user add alice --role admin\n  echo 's3cret-password' | hangar user add ci --password-stdin --role operator --scope prefix:ci-",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gs, err := parseGrants(roles, scopes)
			if err != nil {
				return err
			}
			pw, err := newPassword(cmd, stdin)
			if err != nil {
				return err
			}
			u, err := g.client().AddUser(cmd.Context(), v1.UserRequest{Name: args[0], Password: pw, Grants: gs})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s added (%s)\n", u.Name, grantsText(u.Grants))
			return nil
		},
	}
	add.Flags().StringSliceVar(&roles, "role", nil, "role to grant: admin, operator, viewer, console (repeatable)")
	add.Flags().StringSliceVar(&scopes, "scope", nil, "scope of the roles: pool (default), prefix:NAME-START or tag:TAG")
	add.Flags().BoolVar(&stdin, "password-stdin", false, "read the password from the first line of stdin")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List local users and their grants",
		Long:    `List the local users with their grants (role@scope).`,
		Example: "  hangar user list\n  hangar user list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			us, err := g.client().Users(cmd.Context())
			if err != nil {
				return err
			}
			var rows [][]string
			for _, u := range us {
				rows = append(rows, []string{u.Name, grantsText(u.Grants), u.Created.Local().Format(time.DateTime)})
			}
			return g.printList(cmd, us, []string{"NAME", "GRANTS", "CREATED"}, rows)
		},
	}
	addOutput(list, g, false)
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a local user with its tokens and sessions",
		Long:    `Delete a local user; its API tokens and sessions stop working at once.`,
		Example: "  hangar user delete bob",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteUser(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s deleted\n", args[0])
			return nil
		},
	}
	var pstdin bool
	passwd := &cobra.Command{
		Use:   "passwd NAME",
		Short: "Set a user's password",
		Long: `Set a user's password (admins of the pool, or the user itself); its sessions end. The
password is asked for twice on a terminal, else read from the first line of stdin.`,
		Example: "  hangar user passwd alice\n  echo 'new-password' | hangar user passwd alice --password-stdin",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pw, err := newPassword(cmd, pstdin)
			if err != nil {
				return err
			}
			if err := g.client().SetPassword(cmd.Context(), args[0], pw); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of %s set\n", args[0])
			return nil
		},
	}
	passwd.Flags().BoolVar(&pstdin, "password-stdin", false, "read the password from the first line of stdin")
	user.AddCommand(add, list, del, passwd)
	return user
}

// newPassword reads a new password: twice on a terminal, else a line of
// stdin.
func newPassword(cmd *cobra.Command, stdin bool) (string, error) {
	in := bufio.NewReader(cmd.InOrStdin())
	if stdin || cmd.InOrStdin() != os.Stdin || !term.IsTerminal(int(os.Stdin.Fd())) {
		return readLine(cmd, in, "")
	}
	a, err := readSecret(cmd, in, "new password: ")
	if err != nil {
		return "", err
	}
	b, err := readSecret(cmd, in, "again: ")
	if err != nil {
		return "", err
	}
	if a != b {
		return "", errors.New("the passwords differ")
	}
	return a, nil
}

func newToken(g *globals) *cobra.Command {
	tok := &cobra.Command{
		Use:   "token",
		Short: "API tokens of the logged-in user: create, list, revoke",
		Long: `API tokens are for scripts: named, with an expiry, shown once when created and kept only
as a hash. A token acts for the user who made it and never has more rights than that user
has at the time it is used (with --role, fewer).`,
		Example: "  hangar --server https://h1:8443 token create ci --ttl 720h --role viewer\n  hangar token list",
	}
	var ttl time.Duration
	var roles, scopes []string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Make an API token (the secret is printed once, on the last line)",
		Long: `Make an API token for the user this CLI is logged in as (hangar login). --role limits it
to those roles (on the pool or --scope); it cannot ask for more than the user has. The
secret is the last line printed: use it as Authorization: Bearer or HANGAR_TOKEN.`,
		Example: "  tok=$(hangar --server https://h1:8443 token create ci --ttl 24h | tail -n1)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < time.Second || ttl > 366*24*time.Hour {
				return fmt.Errorf("--ttl %s: between 1s and 366 days", ttl)
			}
			gs, err := parseGrants(roles, scopes)
			if err != nil {
				return err
			}
			t, err := g.client().CreateToken(cmd.Context(), v1.TokenRequest{Name: args[0], TTLSeconds: int64(ttl / time.Second), Grants: gs})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token %s (%s) of %s until %s; shown this once:\n", t.ID, t.Name, t.User, t.Expires.Local().Format(time.DateTime))
			fmt.Fprintln(w, t.Secret)
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 30*24*time.Hour, "how long the token is valid")
	create.Flags().StringSliceVar(&roles, "role", nil, "limit the token to these roles (repeatable)")
	create.Flags().StringSliceVar(&scopes, "scope", nil, "scope of the roles: pool (default), prefix:NAME-START or tag:TAG")
	var all bool
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API tokens (never their secrets)",
		Long:    `List the logged-in user's API tokens; --all everyone's (admins of the pool).`,
		Example: "  hangar token list\n  hangar token list --all -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := g.client().Tokens(cmd.Context(), all)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, t := range ts {
				lim := "(the user's)"
				if t.Grants != nil {
					lim = grantsText(t.Grants)
				}
				rows = append(rows, []string{t.ID, t.Name, t.User, lim, t.Expires.Local().Format(time.DateTime)})
			}
			return g.printList(cmd, ts, []string{"ID", "NAME", "USER", "RIGHTS", "EXPIRES"}, rows)
		},
	}
	list.Flags().BoolVar(&all, "all", false, "everyone's tokens (admins of the pool)")
	addOutput(list, g, false)
	revoke := &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke an API token",
		Long:    `Revoke an API token by its id (hangar token list): it is refused from the next request on.`,
		Example: "  hangar token revoke 3f2a9c0d11e4b7a5",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
			return nil
		},
	}
	tok.AddCommand(create, list, revoke)
	return tok
}

func newRole(g *globals) *cobra.Command {
	role := &cobra.Command{
		Use:   "role",
		Short: "Grant and revoke roles: admin, operator, viewer, console",
		Long: `A grant is a role on a scope. Roles: admin (everything), operator (lifecycle, snapshots,
migrate, console), viewer (read only), console (the serial console alone). Scopes: pool
(default), prefix:NAME-START (the VMs whose name starts so) or tag:TAG (the VMs with that
tag, vm create --tag).`,
		Example: "  hangar role grant olga operator --scope prefix:web-\n  hangar role revoke olga operator --scope prefix:web-",
	}
	var scope string
	grant := &cobra.Command{
		Use:     "grant USER ROLE",
		Short:   "Give a user a role on a scope",
		Long:    `Give a user a role on the pool or on --scope. Its tokens and sessions have it from their next request.`,
		Example: "  hangar role grant vera viewer\n  hangar role grant tim operator --scope tag:web",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := g.client().Grant(cmd.Context(), args[0], v1.Grant{Role: args[1], Scope: scope})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", u.Name, grantsText(u.Grants))
			return nil
		},
	}
	grant.Flags().StringVar(&scope, "scope", v1.ScopePool, "pool, prefix:NAME-START or tag:TAG")
	var rscope string
	revoke := &cobra.Command{
		Use:     "revoke USER ROLE",
		Short:   "Take a role on a scope away from a user",
		Long:    `Take a grant away; the user's tokens and sessions lose it from their next request.`,
		Example: "  hangar role revoke tim operator --scope tag:web",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := g.client().Revoke(cmd.Context(), args[0], v1.Grant{Role: args[1], Scope: rscope})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", u.Name, grantsText(u.Grants))
			return nil
		},
	}
	revoke.Flags().StringVar(&rscope, "scope", v1.ScopePool, "pool, prefix:NAME-START or tag:TAG")
	role.AddCommand(grant, revoke)
	return role
}

func newAudit(g *globals) *cobra.Command {
	audit := &cobra.Command{
		Use:   "audit",
		Short: "The audit log of mutating requests",
		Long: `Every request that changes something is recorded in etcd: who, what (method and route),
the target, when, from where and the answer's status; the oldest are pruned (serve
--audit-max-records, --audit-max-age).`,
		Example: "  hangar audit list --vm web1",
	}
	var vm, user string
	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List audit records, newest first",
		Long:    `List audit records, newest first, of one VM (--vm) or one user (--user).`,
		Example: "  hangar audit list\n  hangar audit list --vm web1 --user alice -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := atLeast(cmd, "limit", int64(limit), 1); err != nil {
				return err
			}
			recs, err := g.client().Audit(cmd.Context(), vm, user, limit)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, r := range recs {
				who := r.User
				if who == "" {
					who = "-"
				}
				rows = append(rows, []string{r.Time.Local().Format(time.DateTime), who, r.Method, r.Action, r.Target, r.Source, fmt.Sprint(r.Status)})
			}
			return g.printList(cmd, recs, []string{"TIME", "USER", "AUTH", "ACTION", "TARGET", "SOURCE", "STATUS"}, rows)
		},
	}
	list.Flags().StringVar(&vm, "vm", "", "only requests about this VM")
	list.Flags().StringVar(&user, "user", "", "only requests of this user")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many records")
	addOutput(list, g, false)
	audit.AddCommand(list)
	return audit
}
