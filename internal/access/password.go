package access

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters of new hashes (OWASP's minimum: 19 MiB, 2 passes,
// one lane); a stored hash carries its own and is verified with them.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Password lengths accepted.
const (
	MinPassword = 8
	MaxPassword = 1024
)

// ErrBadHash: a stored password hash is not one this package wrote.
var ErrBadHash = errors.New("not an argon2id hash")

// CheckPassword refuses a password too short or too long, or not UTF-8.
func CheckPassword(field, pw string) error {
	switch {
	case utf8.RuneCountInString(pw) < MinPassword:
		return fieldErr(field, "at least %d characters", MinPassword)
	case len(pw) > MaxPassword:
		return fieldErr(field, "at most %d bytes", MaxPassword)
	case !utf8.ValidString(pw):
		return fieldErr(field, "not UTF-8")
	}
	return nil
}

// HashPassword returns the PHC string of pw's argon2id hash:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash> (unpadded base64).
func HashPassword(pw string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// argonParams of a stored hash.
type argonParams struct {
	memory     uint32
	time       uint32
	threads    uint8
	salt, hash []byte
}

// parseHash reads a PHC argon2id string, with bounds: a record that asks
// for a gigabyte of memory is refused, not computed.
func parseHash(s string) (argonParams, error) {
	var p argonParams
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, ErrBadHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return p, fmt.Errorf("%w: version %q", ErrBadHash, parts[2])
	}
	var m, t, th uint32
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &th); err != nil || n != 3 {
		return p, fmt.Errorf("%w: parameters %q", ErrBadHash, parts[3])
	}
	if m < 8*1024 || m > 256*1024 || t < 1 || t > 10 || th < 1 || th > 16 {
		return p, fmt.Errorf("%w: parameters %q out of bounds", ErrBadHash, parts[3])
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 || len(salt) > 64 {
		return p, fmt.Errorf("%w: salt", ErrBadHash)
	}
	hash, err := b64.DecodeString(parts[5])
	if err != nil || len(hash) < 16 || len(hash) > 64 {
		return p, fmt.Errorf("%w: hash", ErrBadHash)
	}
	return argonParams{memory: m, time: t, threads: uint8(th), salt: salt, hash: hash}, nil
}

// VerifyPassword reports whether pw matches the stored hash (compared in
// constant time).
func VerifyPassword(hash, pw string) (bool, error) {
	p, err := parseHash(hash)
	if err != nil {
		return false, err
	}
	key := argon2.IDKey([]byte(pw), p.salt, p.time, p.memory, p.threads, uint32(len(p.hash)))
	return subtle.ConstantTimeCompare(key, p.hash) == 1, nil
}

// dummyHash is verified against when a login names no user, so that an
// unknown user takes as long as a wrong password.
var dummyHash = sync.OnceValue(func() string {
	h, err := HashPassword("no such user, no such password")
	if err != nil {
		panic(err)
	}
	return h
})
