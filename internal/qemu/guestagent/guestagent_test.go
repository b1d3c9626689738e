package guestagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeAgent answers like qemu-guest-agent: guest-sync-delimited after a
// 0xff marker, then freeze/thaw counts.
func fakeAgent(t *testing.T, answer bool) string {
	t.Helper()
	dir, _ := os.MkdirTemp("", "qga")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qga.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if !answer {
			time.Sleep(5 * time.Second)
			return
		}
		_, _ = conn.Write([]byte("{\"return\": 99}\n")) // stale output the sync must skip
		r := bufio.NewReader(conn)
		frozen := false
		for {
			b, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			for len(b) > 0 && b[0] == 0xff {
				b = b[1:]
			}
			var req struct {
				Execute   string         `json:"execute"`
				Arguments map[string]any `json:"arguments"`
			}
			if json.Unmarshal(b, &req) != nil {
				continue
			}
			switch req.Execute {
			case "guest-sync-delimited":
				out, _ := json.Marshal(map[string]any{"return": req.Arguments["id"]})
				_, _ = conn.Write(append([]byte{0xff}, append(out, '\n')...))
			case "guest-fsfreeze-freeze":
				if frozen {
					_, _ = conn.Write([]byte(`{"error":{"class":"GenericError","desc":"already frozen"}}` + "\n"))
					continue
				}
				frozen = true
				_, _ = conn.Write([]byte(`{"return": 2}` + "\n"))
			case "guest-fsfreeze-thaw":
				frozen = false
				_, _ = conn.Write([]byte(`{"return": 2}` + "\n"))
			}
		}
	}()
	return sock
}

func TestFreezeThaw(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fakeAgent(t, true))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, err := c.Freeze(ctx); err != nil || n != 2 {
		t.Fatalf("freeze: %d %v", n, err)
	}
	if _, err := c.Freeze(ctx); err == nil {
		t.Fatal("second freeze did not report the agent's error")
	}
	if n, err := c.Thaw(ctx); err != nil || n != 2 {
		t.Fatalf("thaw: %d %v", n, err)
	}
}

func TestNoAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, fakeAgent(t, false))
	if !errors.Is(err, ErrNoAgent) {
		t.Fatalf("silent guest: %v, want ErrNoAgent", err)
	}
}
