// Package guestagent talks to qemu-guest-agent inside a guest over its
// virtio-serial channel (a unix socket chardev on the host): enough to
// freeze and thaw the guest's filesystems around a live copy.
package guestagent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrNoAgent is returned when no agent answers in the guest.
var ErrNoAgent = errors.New("no guest agent answers")

// Client is one connection to a guest agent. It is not safe for
// concurrent use.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
}

// Dial connects to the agent's socket and synchronizes with the agent
// (guest-sync-delimited), which fails with ErrNoAgent when nothing in the
// guest answers before ctx ends.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("guest agent %s: %w", socket, err)
	}
	c := &Client{conn: conn, r: bufio.NewReader(conn)}
	if err := c.sync(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) deadline(ctx context.Context) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	} else {
		_ = c.conn.SetDeadline(time.Time{})
	}
}

// sync flushes stale output: the agent answers a random id after a 0xff
// byte, and everything before that marker is dropped.
func (c *Client) sync(ctx context.Context) error {
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := int64(binary.BigEndian.Uint32(b[:]) >> 1)
	c.deadline(ctx)
	if _, err := c.conn.Write([]byte{0xff}); err != nil {
		return fmt.Errorf("guest agent sync: %w", err)
	}
	if err := c.send("guest-sync-delimited", map[string]any{"id": id}); err != nil {
		return err
	}
	for {
		ch, err := c.r.ReadByte()
		if err != nil {
			return fmt.Errorf("guest agent sync: %w: %v", ErrNoAgent, err)
		}
		if ch == 0xff {
			break
		}
	}
	var got int64
	if err := c.recv(&got); err != nil {
		return fmt.Errorf("guest agent sync: %w: %v", ErrNoAgent, err)
	}
	if got != id {
		return fmt.Errorf("guest agent sync: answered %d, want %d: %w", got, id, ErrNoAgent)
	}
	return nil
}

func (c *Client) send(cmd string, args any) error {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, _ := json.Marshal(msg)
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	return nil
}

func (c *Client) recv(reply any) error {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("decode %q: %w", line, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("%s: %s", resp.Error.Class, resp.Error.Desc)
	}
	if reply != nil {
		return json.Unmarshal(resp.Return, reply)
	}
	return nil
}

// Execute runs one agent command and decodes its return value.
func (c *Client) Execute(ctx context.Context, cmd string, args, reply any) error {
	c.deadline(ctx)
	if err := c.send(cmd, args); err != nil {
		return err
	}
	if err := c.recv(reply); err != nil {
		return fmt.Errorf("guest agent %s: %w", cmd, err)
	}
	return nil
}

// Freeze freezes the guest's filesystems; it returns how many it froze.
func (c *Client) Freeze(ctx context.Context) (int, error) {
	var n int
	err := c.Execute(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// Thaw thaws them again.
func (c *Client) Thaw(ctx context.Context) (int, error) {
	var n int
	err := c.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}
