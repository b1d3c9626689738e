package join

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "hangar/api/v1"
	"hangar/internal/pki"
)

// StateFile is the name, in the data dir, of the file that remembers a
// host's place in its pool. It is written last when a host joins, so a
// restart with the same --join and --token does not join again.
const StateFile = "pool.json"

// State is what <data-dir>/pool.json holds.
type State struct {
	Pool string `json:"pool,omitempty"`
	// Role is member, client or external (a member's learner phase is
	// etcd's; the host is a member from its join on).
	Role string `json:"role"`
	// JoinedVia is the --join address ("" for the first host).
	JoinedVia string    `json:"joinedVia,omitempty"`
	Joined    time.Time `json:"joined"`
	// MemberID (hex) and InitialCluster of a member that joined: its first
	// start uses them with cluster state "existing".
	MemberID       string `json:"memberID,omitempty"`
	InitialCluster string `json:"initialCluster,omitempty"`
	// Endpoints are etcd client URLs of the members (role client, and the
	// members a joining member promotes itself through).
	Endpoints []string `json:"endpoints,omitempty"`
}

// LoadState reads <dataDir>/pool.json; nil without one.
func LoadState(dataDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pool state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("pool state %s: %w", filepath.Join(dataDir, StateFile), err)
	}
	switch s.Role {
	case v1.RoleMember, v1.RoleClient, v1.RoleExternal:
	default:
		return nil, fmt.Errorf("pool state %s: unknown role %q", filepath.Join(dataDir, StateFile), s.Role)
	}
	return &s, nil
}

// WriteState writes <dataDir>/pool.json (0600, replaced atomically).
func WriteState(dataDir string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dataDir, StateFile), append(b, '\n'))
}

// Files of a host's identity inside its data dir.
func pkiDir(dataDir string) string { return filepath.Join(dataDir, "pki") }

// HostCertFile and HostKeyFile are the host's certificate and key.
func HostCertFile(dataDir string) string { return filepath.Join(pkiDir(dataDir), "host.crt") }
func HostKeyFile(dataDir string) string  { return filepath.Join(pkiDir(dataDir), "host.key") }

// SecretsKeyFile is internal/secrets' key file.
func SecretsKeyFile(dataDir string) string { return filepath.Join(dataDir, "secrets.key") }

// Fresh refuses a data dir that already belongs to a pool (or to a
// standalone host): a joining host starts with a fresh --data-dir.
func Fresh(dataDir string) error {
	for _, p := range []string{filepath.Join(pkiDir(dataDir), pki.CACertFile), filepath.Join(pkiDir(dataDir), pki.CAKeyFile),
		HostCertFile(dataDir), SecretsKeyFile(dataDir), filepath.Join(dataDir, "etcd"), filepath.Join(dataDir, StateFile)} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("--join: %s exists: this data dir already belongs to a pool (or a standalone host); join with a fresh --data-dir", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--join: %w", err)
		}
	}
	return nil
}

// Install writes what a join answer gave the host, after CheckAnswer: the
// CA (and its key for a manager host), the host certificate and key, the
// secrets key and, last, pool.json. It returns a function that removes
// them again (for a join that fails later, e.g. when the etcd member does
// not start); a failure half-way removes what it wrote.
func Install(dataDir, via string, ans v1.JoinAnswer, keyPEM []byte) (undo func(), err error) {
	var written []string
	undo = func() {
		for i := len(written) - 1; i >= 0; i-- {
			_ = os.Remove(written[i])
		}
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	secretsKey, err := SecretsKeyOK(ans.SecretsKey)
	if err != nil {
		return nil, err
	}
	var caKey []byte
	if ans.CAKey != "" {
		caKey = []byte(ans.CAKey)
	}
	for _, d := range []string{dataDir, pkiDir(dataDir)} {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			written = append(written, d) // removed again only while empty
		}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dataDir, err)
	}
	if err := pki.InstallCA(pkiDir(dataDir), []byte(ans.CACert), caKey); err != nil {
		return nil, err
	}
	written = append(written, filepath.Join(pkiDir(dataDir), pki.CACertFile))
	if caKey != nil {
		written = append(written, filepath.Join(pkiDir(dataDir), pki.CAKeyFile))
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{{HostKeyFile(dataDir), keyPEM}, {HostCertFile(dataDir), []byte(ans.HostCert)}, {SecretsKeyFile(dataDir), secretsKey}} {
		if err := writeAtomic(f.path, f.b); err != nil {
			return nil, err
		}
		written = append(written, f.path)
	}
	st := State{Pool: ans.Pool, Role: ans.Role, JoinedVia: via, Joined: time.Now().UTC(), MemberID: ans.MemberID,
		InitialCluster: ans.InitialCluster, Endpoints: ans.Endpoints}
	if err := WriteState(dataDir, st); err != nil {
		return nil, err
	}
	written = append(written, filepath.Join(dataDir, StateFile))
	return undo, nil
}

// writeAtomic replaces path with a 0600 file holding b (fsync'd).
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
