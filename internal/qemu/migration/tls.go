// Package migration drives QEMU live migration over QMP: the TLS
// credentials both ends use, the target's listening side (an incoming
// migration and, for local disks, an NBD server exporting the empty target
// volumes), and the source's side (a blockdev-mirror of every local disk to
// those exports, then the RAM and device state), with progress, a progress
// timeout and the clean-up that leaves the source running when anything
// fails.
//
// The package decides nothing about who owns the VM: Migrate returns with
// the source paused and its disks synchronised, and the caller (the agent,
// told by the master) either resumes the target (Resume) once the owner
// record names it, or resumes the source (ResumeSource) and kills the
// target.
package migration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"hangar/internal/qemu/qmp"
)

// CredsID is the QOM id of the tls-creds-x509 object on both ends.
const CredsID = "hangar-mig-tls"

// File names QEMU's tls-creds-x509 reads from its directory.
const (
	caCertFile     = "ca-cert.pem"
	serverCertFile = "server-cert.pem"
	serverKeyFile  = "server-key.pem"
	clientCertFile = "client-cert.pem"
	clientKeyFile  = "client-key.pem"
)

// Endpoint is which side of the TLS handshake a QEMU is.
type Endpoint string

// The two endpoints: the target listens (server), the source connects
// (client).
const (
	Server Endpoint = "server"
	Client Endpoint = "client"
)

// WriteCreds writes a tls-creds-x509 directory: the pool CA and the host's
// certificate and key, as both server and client pair (a host certificate
// is good for serverAuth and clientAuth). dir is created 0700 and the files
// 0600, all owned by uid:gid (the VM's unprivileged QEMU must read them;
// no other user may). A file already there is replaced; a symlink in its
// place is not followed.
func WriteCreds(dir string, caPEM, certPEM, keyPEM []byte, uid, gid int) error {
	if len(caPEM) == 0 || len(certPEM) == 0 || len(keyPEM) == 0 {
		return errors.New("write migration tls creds: empty ca, certificate or key")
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("write migration tls creds: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("write migration tls creds: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("write migration tls creds: %s is not a directory", dir)
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("write migration tls creds: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("write migration tls creds: %w", err)
	}
	files := []struct {
		name string
		b    []byte
	}{
		{caCertFile, caPEM}, {serverCertFile, certPEM}, {serverKeyFile, keyPEM},
		{clientCertFile, certPEM}, {clientKeyFile, keyPEM},
	}
	for _, f := range files {
		if err := writeOwned(filepath.Join(dir, f.name), f.b, uid, gid); err != nil {
			return fmt.Errorf("write migration tls creds: %w", err)
		}
	}
	return nil
}

// writeOwned replaces path by a new 0600 file of uid:gid holding b.
func writeOwned(path string, b []byte, uid, gid int) error {
	tmp := path + ".new"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chown(tmp, uid, gid)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
	}
	return werr
}

// AddCreds adds the tls-creds-x509 object CredsID reading dir, with peer
// verification on: the server asks the client for a certificate of the
// same CA, the client checks the server's against the CA and tls-hostname.
// An object left by an earlier attempt is replaced.
func AddCreds(ctx context.Context, mon *qmp.Client, dir string, ep Endpoint) error {
	if ep != Server && ep != Client {
		return fmt.Errorf("add migration tls creds: endpoint %q", ep)
	}
	_ = DelCreds(ctx, mon)
	args := map[string]any{"qom-type": "tls-creds-x509", "id": CredsID, "dir": dir,
		"endpoint": string(ep), "verify-peer": true}
	if err := mon.Execute(ctx, "object-add", args, nil); err != nil {
		return fmt.Errorf("add migration tls creds: %w", err)
	}
	return nil
}

// InstallCreds writes dir (WriteCreds), adds the object reading it
// (AddCreds), then removes dir again: QEMU loads the files when the object
// is created, so the host key copied for the VM's QEMU stays on disk only
// for that moment.
func InstallCreds(ctx context.Context, mon *qmp.Client, dir string, caPEM, certPEM, keyPEM []byte, uid, gid int, ep Endpoint) error {
	defer os.RemoveAll(dir)
	if err := WriteCreds(dir, caPEM, certPEM, keyPEM, uid, gid); err != nil {
		return err
	}
	return AddCreds(ctx, mon, dir, ep)
}

// DelCreds removes the object CredsID; it is not an error when it is gone.
func DelCreds(ctx context.Context, mon *qmp.Client) error {
	err := mon.Execute(ctx, "object-del", map[string]string{"id": CredsID}, nil)
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return nil // not there
	}
	return err
}
