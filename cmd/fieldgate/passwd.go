package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/fieldgate/fieldgate/internal/atomicfile"

	"github.com/fieldgate/fieldgate/localbroker"
)

const passwdUsage = `usage: fieldgate passwd [-H sha512-pbkdf2|sha512] [-I iterations] [-c | -D] FILE USER
       fieldgate passwd [-H ...] [-I iterations] [-c] -b FILE USER PASSWORD
       fieldgate passwd -U FILE

Manages a Mosquitto password file, as mosquitto_passwd does:
  -c   create FILE (overwriting it) with USER
  -D   delete USER
  -b   take the password from the command line (it shows in ps and history)
  -U   hash every plain-text "user:password" line of FILE
  -H   hash: sha512-pbkdf2 (the default, Mosquitto 2) or sha512 (Mosquitto 1.x)
  -I   PBKDF2 iterations (default 101)
Without -b the password is asked twice on the terminal, or read as one line
from standard input when that is not a terminal. FILE is written atomically,
mode 0600.
`

func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, passwdUsage) }
	create := fs.Bool("c", false, "")
	del := fs.Bool("D", false, "")
	batch := fs.Bool("b", false, "")
	update := fs.Bool("U", false, "")
	hashKind := fs.String("H", "sha512-pbkdf2", "")
	iterations := fs.Int("I", localbroker.DefaultIterations, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a := fs.Args()
	want := 2
	switch {
	case *update:
		want = 1
	case *batch:
		want = 3
	}
	if len(a) != want || (*create && *del) || (*update && (*create || *del || *batch)) || (*del && *batch) {
		fmt.Fprint(stderr, passwdUsage)
		return 2
	}
	hash := func(pw []byte) (string, error) {
		switch *hashKind {
		case "sha512-pbkdf2":
			if *iterations < 1 {
				return "", fmt.Errorf("-I %d: want at least 1", *iterations)
			}
			return localbroker.HashPassword(pw, *iterations)
		case "sha512":
			return localbroker.HashPasswordSHA512(pw)
		}
		return "", fmt.Errorf("-H %q: want sha512-pbkdf2 or sha512", *hashKind)
	}
	if _, err := hash([]byte("x")); err != nil {
		fmt.Fprintf(stderr, "fieldgate passwd: %v\n", err)
		return 2
	}

	file := a[0]
	var lines []string
	if !*create {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintf(stderr, "fieldgate passwd: %v\n", err)
			return 1
		}
		lines = strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) == 1 && lines[0] == "" {
			lines = nil
		}
	}

	var err error
	switch {
	case *update:
		lines, err = hashPlainLines(lines, hash)
	case *del:
		var found bool
		lines, found = removeUser(lines, a[1])
		if !found {
			err = fmt.Errorf("user %s not found in %s", a[1], file)
		}
	default:
		user := a[1]
		if strings.ContainsAny(user, ":") || user == "" {
			err = fmt.Errorf("username %q: must not be empty or contain ':'", user)
			break
		}
		var pw []byte
		if *batch {
			pw = []byte(a[2])
		} else if pw, err = readPassword(stdin, stderr); err != nil {
			break
		}
		var h string
		if h, err = hash(pw); err == nil {
			lines = setUser(lines, user, h)
		}
	}
	if err == nil {
		// What is written must parse: the gateway refuses a bad file.
		if _, err = localbroker.ParsePasswordFile(file, []byte(strings.Join(lines, "\n")+"\n")); err == nil {
			err = atomicfile.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate passwd: %v\n", err)
		return 1
	}
	return 0
}

// setUser replaces user's line where it is, or appends one.
func setUser(lines []string, user, hash string) []string {
	for i, l := range lines {
		if u, _, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "#") && strings.TrimSpace(u) == user {
			lines[i] = user + ":" + hash
			return lines
		}
	}
	return append(lines, user+":"+hash)
}

// removeUser drops user's line and reports whether there was one.
func removeUser(lines []string, user string) ([]string, bool) {
	out := lines[:0:0]
	found := false
	for _, l := range lines {
		if u, _, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "#") && strings.TrimSpace(u) == user {
			found = true
			continue
		}
		out = append(out, l)
	}
	return out, found
}

// hashPlainLines hashes the password of every "user:password" line that is
// not hashed yet, as mosquitto_passwd -U does.
func hashPlainLines(lines []string, hash func([]byte) (string, error)) ([]string, error) {
	out := make([]string, 0, len(lines))
	for i, l := range lines {
		u, pw, ok := strings.Cut(l, ":")
		if !ok || strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" || strings.HasPrefix(pw, "$6$") || strings.HasPrefix(pw, "$7$") {
			out = append(out, l)
			continue
		}
		h, err := hash([]byte(pw))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		out = append(out, u+":"+h)
	}
	return out, nil
}

func readPassword(stdin io.Reader, stderr io.Writer) ([]byte, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		pw, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, err
		}
		fmt.Fprint(stderr, "Reenter password: ")
		again, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, err
		}
		if string(pw) != string(again) {
			return nil, errors.New("passwords do not match")
		}
		return pw, nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		return nil, errors.New("no password on standard input")
	}
	return []byte(strings.TrimRight(line, "\r\n")), nil
}
