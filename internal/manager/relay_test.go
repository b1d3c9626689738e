package manager

import (
	"bytes"
	"io"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestRelaySlowClient: a console client that stops reading does not stall
// the guest: the relay keeps reading the console (what the guest writes
// goes through at once), holds up to its backlog for the client and, when
// the client reads again, gives it the backlog and the count of what it
// dropped — together, every byte the guest wrote.
func TestRelaySlowClient(t *testing.T) {
	guest, cons := net.Pipe() // synchronous: the guest's write waits for the relay to read
	defer guest.Close()
	inR, inW := io.Pipe() // the client types nothing
	defer inW.Close()
	outR, outW := io.Pipe() // the client reads nothing, until it does
	go func() {
		relay(cons, inR, outW)
		_ = outW.Close()
	}()
	const total = 4 * consoleBacklog
	wrote := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("x"), 1024)
		for i := 0; i < total/len(chunk); i++ {
			if _, err := guest.Write(chunk); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the guest's console writes stalled behind a client that does not read")
	}
	_ = guest.Close() // the console ends: the relay flushes what it holds, then ends
	got, err := io.ReadAll(outR)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\[hangar: (\d+) bytes of console output dropped`).FindSubmatch(got)
	if m == nil {
		t.Fatalf("no drop notice in %d bytes", len(got))
	}
	dropped, _ := strconv.Atoi(string(m[1]))
	kept := bytes.Count(got, []byte("x"))
	if kept+dropped != total || kept < consoleBacklog-32<<10 {
		t.Errorf("the client got %d bytes and a notice of %d dropped, want %d in all with at least the backlog", kept, dropped, total)
	}
}
