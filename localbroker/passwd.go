package localbroker

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// PasswordFile is a Mosquitto password file (mosquitto_passwd's output):
// one "user:hash" line per user, the hash either "$7$ITER$SALT$HASH"
// (PBKDF2-HMAC-SHA512, Mosquitto 2.x) or "$6$SALT$HASH" (SHA-512 of the
// password and the salt, Mosquitto 1.x), salt and hash in base64.
type PasswordFile struct {
	users map[string]pwHash
}

type pwHash struct {
	iterations int // 0 for $6$
	salt, hash []byte
}

// Mosquitto's sizes: a 12-byte salt and a 64-byte SHA-512 hash.
const (
	saltLen = 12
	hashLen = 64
	// DefaultIterations is mosquitto_passwd 2.0's PBKDF2 iteration count.
	DefaultIterations = 101
)

// LoadPasswordFile reads a password file.
func LoadPasswordFile(path string) (*PasswordFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("localbroker: password file: %w", err)
	}
	return ParsePasswordFile(path, data)
}

// ParsePasswordFile parses a password file's contents; name is used in
// errors, which read "NAME:LINE: reason". Blank lines and lines starting
// with '#' are skipped.
func ParsePasswordFile(name string, data []byte) (*PasswordFile, error) {
	p := &PasswordFile{users: map[string]pwHash{}}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		user = strings.TrimSpace(user)
		if !ok || user == "" {
			return nil, fmt.Errorf("localbroker: %s:%d: want user:hash", name, i+1)
		}
		if _, dup := p.users[user]; dup {
			return nil, fmt.Errorf("localbroker: %s:%d: user %q is listed twice", name, i+1, user)
		}
		h, err := parseHash(strings.TrimSpace(hash))
		if err != nil {
			return nil, fmt.Errorf("localbroker: %s:%d: user %q: %v", name, i+1, user, err)
		}
		p.users[user] = h
	}
	return p, nil
}

func parseHash(s string) (pwHash, error) {
	parts := strings.Split(s, "$")
	var h pwHash
	switch {
	case len(parts) == 4 && parts[0] == "" && parts[1] == "6":
		parts = parts[2:]
	case len(parts) == 5 && parts[0] == "" && parts[1] == "7":
		n, err := strconv.Atoi(parts[2])
		if err != nil || n < 1 {
			return h, fmt.Errorf("bad iteration count %q", parts[2])
		}
		h.iterations = n
		parts = parts[3:]
	default:
		return h, fmt.Errorf("not a $6$ or $7$ hash (make it with mosquitto_passwd or fieldgate passwd)")
	}
	var err error
	if h.salt, err = base64.StdEncoding.DecodeString(parts[0]); err != nil || len(h.salt) != saltLen {
		return h, fmt.Errorf("bad salt: want %d bytes in base64", saltLen)
	}
	if h.hash, err = base64.StdEncoding.DecodeString(parts[1]); err != nil || len(h.hash) != hashLen {
		return h, fmt.Errorf("bad hash: want %d bytes in base64", hashLen)
	}
	return h, nil
}

// dummy is what an unknown user's password is checked against, so that a
// wrong user name takes as long as a wrong password.
var dummy = pwHash{iterations: DefaultIterations, salt: make([]byte, saltLen), hash: make([]byte, hashLen)}

// Verify reports whether password is user's, in constant time.
func (p *PasswordFile) Verify(user string, password []byte) bool {
	h, ok := p.users[user]
	if !ok {
		h = dummy
	}
	got := h.digest(password)
	return subtle.ConstantTimeCompare(got, h.hash) == 1 && ok
}

func (h pwHash) digest(password []byte) []byte {
	if h.iterations == 0 {
		d := sha512.New()
		d.Write(password)
		d.Write(h.salt)
		return d.Sum(nil)
	}
	k, err := pbkdf2.Key(sha512.New, string(password), h.salt, h.iterations, hashLen)
	if err != nil {
		return nil
	}
	return k
}

// Users returns the users in the file, sorted.
func (p *PasswordFile) Users() []string {
	us := make([]string, 0, len(p.users))
	for u := range p.users {
		us = append(us, u)
	}
	sort.Strings(us)
	return us
}

// HashPasswordSHA512 returns password hashed as Mosquitto 1.x did (and
// mosquitto_passwd -H sha512 still does): "$6$SALT$HASH", SHA-512 of the
// password and a random 12-byte salt. Prefer HashPassword.
func HashPasswordSHA512(password []byte) (string, error) {
	h := pwHash{salt: make([]byte, saltLen)}
	if _, err := rand.Read(h.salt); err != nil {
		return "", err
	}
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("$6$%s$%s", enc(h.salt), enc(h.digest(password))), nil
}

// HashPassword returns password hashed as mosquitto_passwd 2.0 does:
// "$7$ITER$SALT$HASH", PBKDF2-HMAC-SHA512 with a random 12-byte salt.
func HashPassword(password []byte, iterations int) (string, error) {
	if iterations < 1 {
		iterations = DefaultIterations
	}
	h := pwHash{iterations: iterations, salt: make([]byte, saltLen)}
	if _, err := rand.Read(h.salt); err != nil {
		return "", err
	}
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("$7$%d$%s$%s", iterations, enc(h.salt), enc(h.digest(password))), nil
}
