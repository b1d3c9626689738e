package imports

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"time"
)

// qemuImg is the qemu-img binary.
const qemuImg = "qemu-img"

// infoTimeout bounds `qemu-img info`: it only reads headers and tables.
const infoTimeout = time.Minute

// qemuInfo is the part of `qemu-img info --output=json` used here.
type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// blockdevSpec is the json: filename qemu-img opens src with. The format
// driver is always named, the file is always opened by the file (or
// host_device) protocol driver, so neither the image nor its name can choose
// how it is read; "backing": null forbids a backing file even if one slipped
// through; a disk inside an OVA is reached through a raw offset/size node.
func blockdevSpec(src Source) (string, error) {
	return blockdevSpecBacking(src, nil)
}

// blockdevSpecBacking is blockdevSpec with backing as the node's backing
// (nil: none).
func blockdevSpecBacking(src Source, backing map[string]any) (string, error) {
	proto := "file"
	if fi, err := os.Stat(src.Path); err == nil && fi.Mode()&fs.ModeDevice != 0 {
		proto = "host_device"
	}
	file := map[string]any{"driver": proto, "filename": src.Path}
	node := map[string]any{"driver": src.Format, "file": file, "backing": backing}
	if src.Offset != 0 || src.Size != 0 {
		if src.Format == "raw" {
			node["offset"], node["size"] = src.Offset, src.Size
		} else {
			node["file"] = map[string]any{"driver": "raw", "offset": src.Offset, "size": src.Size, "file": file}
		}
	}
	b, err := json.Marshal(node)
	if err != nil {
		return "", err
	}
	return "json:" + string(b), nil
}

// virtualSize asks qemu-img for the virtual size of a disk whose headers
// were already checked, and refuses a backing (but for a delta, which is
// never opened with its own) or an external data file it reports.
func virtualSize(ctx context.Context, src Source, delta bool) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	spec, err := blockdevSpec(src)
	if err != nil {
		return 0, err
	}
	out, err := runQemuImg(ctx, "info", "--output=json", "-f", src.Format, spec)
	var qe *qemuImgError
	if errors.As(err, &qe) {
		// qemu-img refused a file the checks accepted: the file is to blame.
		return 0, malformed("%v", qe)
	}
	if err != nil {
		return 0, err
	}
	var info qemuInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info: %w", err)
	}
	switch {
	case info.BackingFilename != "" && !delta:
		return 0, malformed("%s has a backing file", src.Format)
	case info.FormatSpecific.Data.DataFile != "":
		return 0, malformed("%s has an external data file", src.Format)
	case info.VirtualSize <= 0:
		return 0, malformed("%s: virtual size %d", src.Format, info.VirtualSize)
	}
	return info.VirtualSize, nil
}

// qemuImgError is qemu-img exiting with an error.
type qemuImgError struct{ op, msg string }

func (e *qemuImgError) Error() string { return "qemu-img " + e.op + ": " + e.msg }

// runQemuImg runs qemu-img and returns its stdout; when qemu-img fails, the
// error is a *qemuImgError with the reason it printed.
func runQemuImg(ctx context.Context, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, qemuImg, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return nil, &qemuImgError{op: args[0], msg: lastLine(stderr.String())}
	}
	if err != nil {
		return nil, fmt.Errorf("qemu-img %s: %w", args[0], err)
	}
	return stdout.Bytes(), nil
}

// lastLine is the last non-empty line of qemu-img's stderr, where it puts
// the reason it failed.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimPrefix(lines[len(lines)-1], "qemu-img: ")
}
