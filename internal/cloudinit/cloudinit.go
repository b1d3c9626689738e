// Package cloudinit builds NoCloud seed ISOs (volume label "cidata" with
// user-data and meta-data) for guests that run cloud-init.
package cloudinit

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "hangar/api/v1"
)

// Seed writes the seed ISO for a VM to path (atomically). Without
// meta-data, one naming the instance and host is made.
func Seed(ctx context.Context, path, vmName string, ci v1.CloudInit) error {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		return fmt.Errorf("cloud-init seed: genisoimage not installed (apt-get install genisoimage): %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".seed-")
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	defer os.RemoveAll(dir)
	meta := ci.MetaData
	if meta == "" {
		meta = fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", vmName, vmName)
	}
	for name, content := range map[string]string{"user-data": ci.UserData, "meta-data": meta} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return fmt.Errorf("cloud-init seed: %w", err)
		}
	}
	// The seed often holds passwords: only its owner (and QEMU running as
	// it) reads it. Made 0600 before genisoimage writes into it, so it is
	// never readable by others, not even while it is written.
	tmp := path + ".part"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "genisoimage", "-quiet", "-output", tmp, "-volid", "cidata", "-joliet", "-rock",
		filepath.Join(dir, "user-data"), filepath.Join(dir, "meta-data")).CombinedOutput()
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("cloud-init seed: genisoimage: %s", strings.TrimSpace(string(out)))
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	return nil
}
