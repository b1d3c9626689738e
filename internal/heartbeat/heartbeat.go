// Package heartbeat is the storage half of a host's liveness (issue 10,
// docs/architecture.md "High availability"): every host writes a record
// with a growing counter into each shared storage pool it uses, about once
// a second, and counts a write only once it is synced; the pool master
// reads the records and notes, on its own clock, when a counter last
// changed (ha.Heartbeat.Observe). Nobody compares the writer's clock with
// its own: the time in a record is for people.
//
// A record is one fixed-size block at the start of its file, rewritten in
// place (no rename: a reader on shared storage opens the same file each
// time and sees the last synced write, NFS's close-to-open consistency).
package heartbeat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"hangar/internal/vm"
)

// DirName is the heartbeat directory at the root of a storage pool.
const DirName = ".hangar-heartbeat"

// recordSize is the block a record fills (padded with spaces): one write,
// within one sector's worth of 512-byte writes of any storage.
const recordSize = 512

// Record is what one host writes.
type Record struct {
	Host    string    `json:"host"`
	Counter uint64    `json:"counter"`
	Written time.Time `json:"written"` // the writer's clock: for people only
}

// ErrInvalid: a record that is not one a host wrote (bad JSON, another
// host's name, a name that is no host name).
var ErrInvalid = errors.New("invalid heartbeat record")

// Path is host's heartbeat file in the pool at root.
func Path(root, host string) (string, error) {
	if err := vm.ValidateName("host", host); err != nil {
		return "", fmt.Errorf("heartbeat: %w", err)
	}
	return filepath.Join(root, DirName, host), nil
}

// Writer writes one host's record into one pool.
type Writer struct {
	host    string
	f       *os.File
	counter uint64
	pending chan error // a write Beat stopped waiting for, still going
}

// Open opens (or creates) host's heartbeat file in the pool at root. The
// counter goes on from the record already there, so a restarted agent's
// counter still only grows.
func Open(root, host string) (*Writer, error) {
	path, err := Path(root, host)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	w := &Writer{host: host, f: f}
	if r, err := decode(f, host); err == nil {
		w.counter = r.Counter
	}
	return w, nil
}

// Beat writes the next record and syncs it; the counter moves only when
// both succeeded. ctx bounds the wait for a storage that hangs: the write
// goes on in the background, Beat reports ctx's error, and the next Beat
// waits for that write (at most one is ever in flight) instead of
// starting another.
func (w *Writer) Beat(ctx context.Context) error {
	if w.pending != nil {
		select {
		case err := <-w.pending:
			w.pending = nil
			if err == nil {
				w.counter++ // it did land, late
			}
		case <-ctx.Done():
			return fmt.Errorf("heartbeat %s: an earlier write still hangs: %w", w.f.Name(), ctx.Err())
		}
	}
	b, err := encode(Record{Host: w.host, Counter: w.counter + 1, Written: time.Now().UTC()})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		if _, err := w.f.WriteAt(b, 0); err != nil {
			done <- err
			return
		}
		done <- w.f.Sync()
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("heartbeat %s: %w", w.f.Name(), err)
		}
		w.counter++
		return nil
	case <-ctx.Done():
		w.pending = done
		return fmt.Errorf("heartbeat %s: %w", w.f.Name(), ctx.Err())
	}
}

// Counter is the last counter written and synced.
func (w *Writer) Counter() uint64 { return w.counter }

// Close closes the file.
func (w *Writer) Close() error { return w.f.Close() }

// Read reads host's record in the pool at root, opening the file afresh.
func Read(root, host string) (Record, error) {
	path, err := Path(root, host)
	if err != nil {
		return Record{}, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return Record{}, fmt.Errorf("heartbeat: %w", err)
	}
	defer f.Close()
	r, err := decode(f, host)
	if err != nil {
		return Record{}, fmt.Errorf("heartbeat %s: %w", path, err)
	}
	return r, nil
}

func encode(r Record) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) >= recordSize {
		return nil, fmt.Errorf("heartbeat record of %d bytes: %w", len(b), ErrInvalid)
	}
	out := bytes.Repeat([]byte{' '}, recordSize)
	copy(out, b)
	out[recordSize-1] = '\n'
	return out, nil
}

// decode reads the record at the start of f and checks it is host's.
func decode(f *os.File, host string) (Record, error) {
	b := make([]byte, recordSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Record{}, err
	}
	var r Record
	d := json.NewDecoder(bytes.NewReader(bytes.TrimRight(b[:n], " \n\x00")))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if r.Host != host {
		return Record{}, fmt.Errorf("%w: written for host %q, read as %q's", ErrInvalid, r.Host, host)
	}
	return r, nil
}
