package imports

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// image is a disk image being checked: a whole file or a member of an OVA.
type image struct {
	r    io.ReaderAt
	size int64
	name string // for messages
	// delta: a delta disk (OVF ovf:parentRef) whose backing Hangar always
	// gives qemu itself, so a parent it names (parentFileNameHint) is never
	// opened and is allowed.
	delta bool
	// parts name the package files whose bytes follow this image's (a VMDK
	// descriptor's further FLAT extents), "" for none.
	parts []string
}

// read returns the n bytes at off; bytes past the end make the image
// truncated, which is the input's fault.
func (im image) read(off int64, n int64) ([]byte, error) {
	if err := im.need(off, n); err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if got, err := im.r.ReadAt(buf, off); got < len(buf) {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, malformed("%s: truncated at offset %d", im.name, off+int64(got))
		}
		return nil, fmt.Errorf("%s: read at %d: %w", im.name, off, err)
	}
	return buf, nil
}

// need checks that the n bytes at off are inside the image, without reading them.
func (im image) need(off, n int64) error {
	if off < 0 || n < 0 || off > im.size || n > im.size-off {
		return malformed("%s: truncated: needs %d bytes at offset %d, has %d bytes", im.name, n, off, im.size)
	}
	return nil
}

// head returns up to n bytes from the start.
func (im image) head(n int64) ([]byte, error) { return im.read(0, min(n, im.size)) }

// Magic numbers.
const (
	magicVMDK     = "KDMV"
	magicVMDK3    = "COWD"
	magicQcow2    = "QFI\xfb"
	magicVHDX     = "vhdxfile"
	magicVHD      = "conectix"
	vmdkDescStart = "# Disk DescriptorFile"
)

// other formats qemu-img could read but this package does not import; a file
// starting with one of these is refused rather than taken as raw.
var unsupportedMagic = []struct{ magic, what string }{
	{magicVMDK3, "VMDK3 (COWD) sparse disk"},
	{"QED\x00", "QED image"},
	{"\x1f\x8b", "gzip-compressed file"},
	{"\xfd7zXZ\x00", "xz-compressed file"},
	{"BZh", "bzip2-compressed file"},
	{"\x28\xb5\x2f\xfd", "zstd-compressed file"},
	{"PK\x03\x04", "zip archive"},
	{"<<< ", "VirtualBox VDI image"},
	{"WithoutFreeSpace", "Parallels image"},
	{"WithouFreSpacExt", "Parallels image"},
}

// diskExt is the driver a file extension promises.
var diskExt = map[string]string{".vmdk": "vmdk", ".vhd": "vpc", ".vpc": "vpc", ".vhdx": "vhdx", ".qcow2": "qcow2", ".qcow": "qcow2"}

// detectContainer tells an appliance ("ova", "ovf") from a disk ("").
func detectContainer(im image) (string, error) {
	head, err := im.head(512)
	if err != nil {
		return "", err
	}
	ext := strings.ToLower(filepath.Ext(im.name))
	switch {
	case ext == ".ova" && !isTar(head):
		return "", malformed("%s: an .ova must be a tar archive", im.name)
	case ext == ".ova" || isTar(head):
		return "ova", nil
	case ext == ".ovf" || looksLikeOVF(head):
		return "ovf", nil
	}
	return "", nil
}

func isTar(head []byte) bool { return len(head) >= 263 && string(head[257:262]) == "ustar" }

func looksLikeOVF(head []byte) bool {
	h := bytes.TrimSpace(bytes.TrimPrefix(head, []byte("\xef\xbb\xbf")))
	return bytes.HasPrefix(h, []byte("<")) && (bytes.Contains(head, []byte("schemas.dmtf.org/ovf/envelope")) || bytes.Contains(head, []byte(ovfNS09)))
}

// detectDisk returns the qemu-img driver of a disk image from its magic
// numbers; ext (the file's extension, lower-case, "" inside an OVA) only
// refuses a file that has no header of the format its name promises.
func detectDisk(im image, ext string) (string, error) {
	if im.size == 0 {
		return "", malformed("%s: empty", im.name)
	}
	head, err := im.head(4096)
	if err != nil {
		return "", err
	}
	if format := diskMagic(im, head, ext); format != "" {
		return format, nil
	}
	if what := unsupported(head); what != "" {
		return "", malformed("%s: %s: not supported", im.name, what)
	}
	if want, ok := diskExt[ext]; ok {
		return "", malformed("%s: no %s header", im.name, want)
	}
	if im.size%512 != 0 {
		return "", malformed("%s: not a known disk image, and its size %d is not a multiple of 512 for a raw disk", im.name, im.size)
	}
	return "raw", nil
}

// diskMagic recognizes the formats this package imports.
func diskMagic(im image, head []byte, ext string) string {
	switch {
	case bytes.HasPrefix(head, []byte(magicVMDK)), isVMDKDescriptor(im, head, ext):
		return "vmdk"
	case bytes.HasPrefix(head, []byte(magicQcow2)):
		return "qcow2"
	case bytes.HasPrefix(head, []byte(magicVHDX)):
		return "vhdx"
	case bytes.HasPrefix(head, []byte(magicVHD)):
		return "vpc"
	}
	if im.size >= 512 {
		if tail, err := im.read(im.size-512, 8); err == nil && string(tail) == magicVHD {
			return "vpc"
		}
	}
	return ""
}

// isVMDKDescriptor recognizes a VMDK text descriptor: the usual first line,
// or, for a small text file named .vmdk, a createType line.
func isVMDKDescriptor(im image, head []byte, ext string) bool {
	h := bytes.TrimLeft(bytes.TrimPrefix(head, []byte("\xef\xbb\xbf")), " \t\r\n")
	if bytes.HasPrefix(h, []byte(vmdkDescStart)) {
		return true
	}
	return ext == ".vmdk" && im.size <= maxDescriptor && bytes.IndexByte(head, 0) < 0 &&
		bytes.Contains(head, []byte("createType"))
}

func unsupported(head []byte) string {
	for _, m := range unsupportedMagic {
		if bytes.HasPrefix(head, []byte(m.magic)) {
			return m.what
		}
	}
	if len(head) >= 0x44 && string(head[0x40:0x44]) == "\x7f\x10\xda\xbe" {
		return "VirtualBox VDI image"
	}
	return ""
}

// checkDisk validates the structure of a disk image of the given driver
// before any qemu-img opens it. dir is the directory a VMDK descriptor's
// extents must stay in; "" (inside an archive) refuses descriptors.
func checkDisk(im image, format, dir string) error {
	switch format {
	case "vmdk":
		return checkVMDK(im, dir)
	case "qcow2":
		return checkQcow2(im)
	case "vpc":
		return checkVHD(im)
	case "vhdx":
		return checkVHDX(im)
	case "raw":
		if im.size%512 != 0 {
			return malformed("%s: raw disk size %d is not a multiple of 512", im.name, im.size)
		}
		return nil
	}
	return malformed("%s: unknown format %q", im.name, format)
}
