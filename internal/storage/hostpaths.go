package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// SourceKind says what a host path named in a request (or read from a
// record) is for.
type SourceKind string

// Kinds of host files a VM's disks are made from.
const (
	// SourceImage is a disk image a new disk is layered on (brought into
	// the pool's images/ first when it lives outside).
	SourceImage SourceKind = "image"
	// SourceISO is a cdrom medium, opened read-only by QEMU.
	SourceISO SourceKind = "iso"
	// SourceImport is a foreign disk or appliance converted into the pool
	// (V2V), or a whole block device (P2V).
	SourceImport SourceKind = "import"
)

// Limits of path names; longer ones are refused before any system call.
const (
	maxPathLen = 4096
	maxElemLen = 255
)

// systemDirs are directories that are never a pool or an import
// directory themselves; systemTrees are never one anywhere below them
// either. /dev is a tree here, but an import directory may be /dev or lie
// inside it: only block devices are taken from there (P2V).
var (
	systemDirs = []string{"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
		"/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
		"/var", "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/run", "/var/spool", "/var/tmp"}
	systemTrees = []string{"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
		"/root", "/sbin", "/sys", "/usr", "/var/log"}
	// deviceTrees hold device and kernel files: only block devices (for an
	// import) are ever taken from inside them.
	deviceTrees = []string{"/dev", "/proc", "/sys"}
)

// HostPaths is the one policy for host paths: which files outside Hangar's
// own naming a request may make a VM use, and where a pool may be.
//
//   - Files that VMs use come from storage pools. A file outside every pool
//     is accepted only inside an import directory the administrator
//     configured (hangar serve --import-dir), and only as an image, ISO or
//     import source. Symlinks are resolved first: what counts is where a
//     path leads.
//   - Only regular files are accepted, except a whole block device as an
//     import source (P2V), and only when the device itself or a directory
//     holding it (such as /dev) is an import directory. Character devices,
//     FIFOs, sockets and anything else under /proc or /sys never are.
//   - Inside a pool, files under vms/ (other VMs' disks, seeds and state
//     files), hidden and temporary (.part) files are not sources.
//   - A pool's directory must exist, must not be /, a system directory or
//     inside one of /etc, /proc, /sys, /dev, /boot, /usr…, must not be
//     inside or contain Hangar's data or run directory, an import directory
//     or another pool.
//
// Paths must be absolute, clean (no "..", ".", "//" or trailing "/"),
// without NUL, at most 4096 bytes with elements of at most 255.
type HostPaths struct {
	importDirs []string // symlinks resolved: directories or block devices
	reserved   []string // symlinks resolved: Hangar's data and run directories
}

// NewHostPaths checks the configured import directories (each must exist
// and be a directory or a block device, and not be a system directory or
// overlap Hangar's own directories) and returns the policy. reserved are
// Hangar's data and run directories; they must exist.
func NewHostPaths(importDirs, reserved []string) (*HostPaths, error) {
	h := &HostPaths{}
	for _, r := range reserved {
		real, err := filepath.EvalSymlinks(r)
		if err != nil {
			return nil, fmt.Errorf("hangar directory %s: %w", r, err)
		}
		h.reserved = append(h.reserved, real)
	}
	for _, d := range importDirs {
		real, err := h.checkImportDir(d)
		if err != nil {
			return nil, fmt.Errorf("import directory %q: %w", d, err)
		}
		h.importDirs = append(h.importDirs, real)
	}
	return h, nil
}

// ImportDirs are the import directories, symlinks resolved.
func (h *HostPaths) ImportDirs() []string { return append([]string(nil), h.importDirs...) }

func (h *HostPaths) checkImportDir(d string) (string, error) {
	if err := checkPathName(d); err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(d)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	isBlock := st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0
	switch {
	case !st.IsDir() && !isBlock:
		return "", fmt.Errorf("%s is neither a directory nor a block device: %w", real, ErrInvalid)
	case real == "/dev" || isBlock || underAny(real, []string{"/dev"}):
		// P2V: block devices only are taken from here.
	case isSystemDir(real) || underAny(real, systemTrees):
		return "", fmt.Errorf("%s is a system directory: %w", real, ErrInvalid)
	}
	for _, r := range h.reserved {
		if within(r, real) || within(real, r) {
			return "", fmt.Errorf("%s overlaps hangar's own directory %s: %w", real, r, ErrInvalid)
		}
	}
	return real, nil
}

// HostFile is a host path the policy accepted.
type HostFile struct {
	Path   string // symlinks resolved: the file to open
	Pool   *Pool  // the pool it is in, nil for a file in an import directory
	Name   string // its name in Pool
	Device bool   // a block device (P2V)
}

// Source checks a host path given as the source of kind: it must lead into
// one of pools or into an import directory (see HostPaths). The error
// wraps ErrOutsidePool for a path outside, ErrInvalid for a malformed
// name or a file of the wrong type, ErrNoImage for a missing file.
func (h *HostPaths) Source(path string, kind SourceKind, pools []*Pool) (HostFile, error) {
	f, err := h.source(path, kind, pools)
	if err != nil {
		return HostFile{}, fmt.Errorf("%s %q: %w", kind, path, err)
	}
	return f, nil
}

func (h *HostPaths) source(path string, kind SourceKind, pools []*Pool) (HostFile, error) {
	switch kind {
	case SourceImage, SourceISO, SourceImport:
	default:
		return HostFile{}, fmt.Errorf("unknown source kind: %w", ErrInvalid)
	}
	if err := checkPathName(path); err != nil {
		return HostFile{}, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
			return HostFile{}, fmt.Errorf("no such file: %w", ErrNoImage)
		}
		return HostFile{}, err
	}
	st, err := os.Stat(real)
	if err != nil {
		return HostFile{}, fmt.Errorf("%w: %w", err, ErrNoImage)
	}
	mode := st.Mode()
	isBlock := mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0
	for _, p := range pools {
		root, err := p.root()
		if err != nil || !within(root, real) {
			continue
		}
		rel, _ := filepath.Rel(root, real)
		rel = filepath.ToSlash(rel)
		if rel == "." || !mode.IsRegular() {
			return HostFile{}, fmt.Errorf("%s in pool %s is not a regular file: %w", rel, p.Name, ErrInvalid)
		}
		for e := range strings.SplitSeq(rel, "/") {
			if !nameElem.MatchString(e) || strings.HasSuffix(e, ".part") {
				return HostFile{}, fmt.Errorf("%s in pool %s is a hidden or temporary file: %w", rel, p.Name, ErrInvalid)
			}
		}
		if strings.HasPrefix(rel, "vms/") {
			return HostFile{}, fmt.Errorf("%s in pool %s belongs to a vm: use its volume (clone) instead: %w", rel, p.Name, ErrOutsidePool)
		}
		return HostFile{Path: real, Pool: p, Name: rel}, nil
	}
	for _, r := range h.reserved {
		if within(r, real) {
			return HostFile{}, fmt.Errorf("leads into hangar's own directory %s: %w", r, ErrOutsidePool)
		}
	}
	inImportDir := false
	for _, d := range h.importDirs {
		inImportDir = inImportDir || within(d, real)
	}
	if !inImportDir {
		return HostFile{}, fmt.Errorf("leads to %s, outside every storage pool and import directory (hangar serve --import-dir): %w", real, ErrOutsidePool)
	}
	switch {
	case isBlock && kind == SourceImport:
		return HostFile{Path: real, Device: true}, nil
	case isBlock:
		return HostFile{}, fmt.Errorf("%s is a block device: only an import reads devices: %w", real, ErrInvalid)
	case mode.IsDir() && kind == SourceImport && !slices.Contains(h.importDirs, real) && !underAny(real, deviceTrees):
		return HostFile{Path: real}, nil // a plain OVF directory below an import directory; its files are checked one by one
	case !mode.IsRegular():
		return HostFile{}, fmt.Errorf("%s is not a regular file (%s): %w", real, mode.Type(), ErrInvalid)
	case underAny(real, deviceTrees):
		return HostFile{}, fmt.Errorf("%s: only block devices are taken from %s: %w", real, filepath.Dir(real), ErrInvalid)
	}
	return HostFile{Path: real}, nil
}

// PoolDir checks the directory of a new pool (see HostPaths) against the
// pools there are (a pool named like the new one is skipped: a recorded
// pool is checked again when it is opened) and returns it with symlinks
// resolved.
func (h *HostPaths) PoolDir(name, path string, pools []*Pool) (string, error) {
	real, err := h.poolDir(name, path, pools)
	if err != nil {
		return "", fmt.Errorf("pool %s: path %q: %w", name, path, err)
	}
	return real, nil
}

func (h *HostPaths) poolDir(name, path string, pools []*Pool) (string, error) {
	if err := checkPathName(path); err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("no such directory (create or mount it first): %w", ErrInvalid)
	case errors.Is(err, errNotDir):
		return "", fmt.Errorf("not a directory: %w", ErrInvalid)
	case err != nil:
		return "", err
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s is not a directory: %w", real, ErrInvalid)
	}
	if isSystemDir(real) || underAny(real, systemTrees) {
		return "", fmt.Errorf("%s is a system directory: %w", real, ErrInvalid)
	}
	for _, r := range h.reserved {
		if within(r, real) || within(real, r) {
			return "", fmt.Errorf("%s overlaps hangar's own directory %s: %w", real, r, ErrInvalid)
		}
	}
	for _, d := range h.importDirs {
		if within(d, real) || within(real, d) {
			return "", fmt.Errorf("%s overlaps the import directory %s: %w", real, d, ErrInvalid)
		}
	}
	for _, p := range pools {
		if p.Name == name {
			continue
		}
		root, err := p.root()
		if err != nil {
			continue
		}
		switch {
		case within(root, real):
			return "", fmt.Errorf("%s is inside pool %s: %w", real, p.Name, ErrInvalid)
		case within(real, root):
			return "", fmt.Errorf("%s contains pool %s: %w", real, p.Name, ErrInvalid)
		}
	}
	return real, nil
}

// checkPathName checks the form of an absolute host path name.
func checkPathName(path string) error {
	switch {
	case path == "":
		return fmt.Errorf("empty path: %w", ErrInvalid)
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("path contains a NUL byte: %w", ErrInvalid)
	case len(path) > maxPathLen:
		return fmt.Errorf("path longer than %d bytes: %w", maxPathLen, ErrInvalid)
	case !strings.HasPrefix(path, "/"):
		if hasProtocol(path) {
			return fmt.Errorf("a protocol name (%s), not a file: %w", path[:strings.IndexByte(path, ':')+1], ErrInvalid)
		}
		return fmt.Errorf("must be an absolute path: %w", ErrInvalid)
	case path != "/" && filepath.Clean(path) != path:
		return fmt.Errorf("must be a clean path (no '..', '.', '//' or trailing '/'): %w", ErrInvalid)
	}
	for e := range strings.SplitSeq(path, "/") {
		if len(e) > maxElemLen {
			return fmt.Errorf("path element longer than %d bytes: %w", maxElemLen, ErrInvalid)
		}
	}
	return nil
}

func isSystemDir(p string) bool {
	for _, d := range systemDirs {
		if p == d {
			return true
		}
	}
	return false
}

// underAny reports whether p is one of dirs or below one.
func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if within(d, p) {
			return true
		}
	}
	return false
}
