package agent

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/inventory"
	"hangar/internal/storage"
)

// TestPlantedHostFilesAreRefused: a spec in etcd is input too. Specs that
// the API would refuse — an image, ISO or import source outside the pools
// and import directories, a recorded pool at / — planted straight into the
// store make the agent's create fail on the host path policy, and nothing
// of the file they name reaches the pool.
func TestPlantedHostFilesAreRefused(t *testing.T) {
	imports := t.TempDir()
	ta := startAgent(t, func(a *Agent) {
		hp, err := storage.NewHostPaths([]string{imports}, []string{a.cfg.DataDir})
		if err != nil {
			t.Fatal(err)
		}
		a.cfg.HostPaths = hp
	})
	poolDir := ta.a.cfg.Pool.Path
	canary := filepath.Join(ta.base, "victimdir", "canary.qcow2")
	if err := os.WriteFile(canary, bytes.Repeat([]byte("CANARY-hostfiles\n"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	inData := filepath.Join(ta.a.cfg.DataDir, "secret.qcow2")
	if err := os.WriteFile(inData, bytes.Repeat([]byte("CANARY-hostfiles\n"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(canary, filepath.Join(imports, "link.iso")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		disk v1.Disk
		want string
	}{
		{"image outside", v1.Disk{Name: "disk0", Media: "disk", Bus: "virtio", Image: canary}, "outside every storage pool"},
		{"image /etc/shadow", v1.Disk{Name: "disk0", Media: "disk", Bus: "virtio", Image: "/etc/shadow"}, "outside every storage pool"},
		{"image in hangar's data dir", v1.Disk{Name: "disk0", Media: "disk", Bus: "virtio", Image: inData}, "hangar's own directory"},
		{"iso outside", v1.Disk{Name: "cd0", Media: "cdrom", Bus: "sata", Image: canary}, "outside every storage pool"},
		{"iso through a symlink in the import dir", v1.Disk{Name: "cd0", Media: "cdrom", Bus: "sata", Image: filepath.Join(imports, "link.iso")}, "outside every storage pool"},
		{"import outside", v1.Disk{Name: "disk0", Media: "disk", Bus: "virtio", Import: &v1.ImportSource{Path: canary, Format: "raw"}}, "outside every storage pool"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := "planted" + string(rune('a'+i))
			spec := validSpec(name)
			spec.Disks = []v1.Disk{c.disk}
			ta.put(t, inventory.VMKey(name), spec)
			op := ta.plantOp(t, v1.Operation{Kind: "create", Target: name})
			if op.State != v1.OpFailed || op.Error == nil || !strings.Contains(op.Error.Message, c.want) {
				t.Fatalf("create with %+v: %s %+v; want failed with %q", c.disk, op.State, op.Error, c.want)
			}
			if op.Error.Code != v1.CodeInvalidArgument || !strings.HasPrefix(op.Error.Field, "disks[0]") {
				t.Fatalf("create with %+v: error %+v, want invalid_argument on disks[0]", c.disk, op.Error)
			}
		})
	}
	err := filepath.WalkDir(poolDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && p != inData {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte("CANARY-hostfiles")) {
				t.Errorf("the canary's content reached the pool: %s", p)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}

	// Pool records at system or Hangar directories (planted, never through
	// the API) are not opened.
	for i, dir := range []string{"/", "/etc", "/proc/sys", ta.a.cfg.DataDir, filepath.Join(ta.a.cfg.DataDir, "pools")} {
		name := "planted-pool" + string(rune('a'+i))
		ta.put(t, inventory.PoolKey(name), v1.StoragePool{Name: name, Type: storage.TypeDir, Path: dir})
		if _, err := ta.a.pool(t.Context(), name); err == nil {
			t.Errorf("planted pool at %s opened", dir)
		}
		if _, err := ta.a.VolumeInfo(t.Context(), name+"/shadow.raw"); err == nil {
			t.Errorf("volume info through a planted pool at %s answered", dir)
		}
	}
}
