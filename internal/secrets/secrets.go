// Package secrets seals small secrets — cloud-init user-data, which often
// holds passwords — before they go into the state store, with a key that
// only the hosts hold (never etcd). A copy of etcd (a snapshot, a backup, an
// external cluster's operators) then holds only ciphertext.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KeySize is the size of a key: AES-256.
const KeySize = 32

// prefix marks (and versions) sealed values.
const prefix = "sealed:v1:"

// ErrOpen: a sealed value that this key cannot open (another key, or
// tampered with).
var ErrOpen = errors.New("cannot open sealed value")

// Box seals and opens values with one key (AES-256-GCM).
type Box struct{ aead cipher.AEAD }

// New returns a Box for a KeySize-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secrets: key of %d bytes, want %d", len(key), KeySize)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	return &Box{aead: aead}, nil
}

// LoadOrCreate reads the key file at path, or makes one (mode 0600) when
// there is none. A key file readable by others than its owner is refused.
func LoadOrCreate(path string) (*Box, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, KeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("secrets: create key: %w", err)
		}
		_, err = f.Write(key)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(path)
			return nil, fmt.Errorf("secrets: write key %s: %w", path, err)
		}
		return New(key)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: read key: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets: key file %s has mode %v: only its owner may read it (chmod 600)", path, st.Mode().Perm())
	}
	return New(key)
}

// purpose binds sealed values to what they are (additional data).
const purpose = "hangar cloud-init user-data"

// Seal returns plaintext sealed, as text ("sealed:v1:" + base64).
func (b *Box) Seal(plaintext string) string {
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic("secrets: no randomness: " + err.Error()) // crypto/rand does not fail on Linux
	}
	ct := b.aead.Seal(nonce, nonce, []byte(plaintext), []byte(purpose))
	return prefix + base64.StdEncoding.EncodeToString(ct)
}

// IsSealed reports whether s looks like a sealed value.
func IsSealed(s string) bool { return strings.HasPrefix(s, prefix) }

// Open returns the plaintext of a sealed value.
func (b *Box) Open(sealed string) (string, error) {
	raw, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return "", fmt.Errorf("%w: not a sealed value", ErrOpen)
	}
	ct, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || len(ct) < b.aead.NonceSize() {
		return "", fmt.Errorf("%w: malformed", ErrOpen)
	}
	n := b.aead.NonceSize()
	pt, err := b.aead.Open(nil, ct[:n], ct[n:], []byte(purpose))
	if err != nil {
		return "", fmt.Errorf("%w: wrong key or altered", ErrOpen)
	}
	return string(pt), nil
}
