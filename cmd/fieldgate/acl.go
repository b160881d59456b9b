package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/fieldgate/fieldgate/localbroker"
)

// cmdACL answers "may this client do this?" from an ACL file, with the
// rule that decided: for an operator checking a change before a SIGHUP.
func cmdACL(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "test" {
		fmt.Fprintln(stderr, "usage: fieldgate acl test --acl FILE [--user U] [--client-id C] --topic T --access read|write|subscribe")
		return 2
	}
	fs := flag.NewFlagSet("acl test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("acl", "", "ACL `file`")
	user := fs.String("user", "", "username; empty for an anonymous client")
	id := fs.String("client-id", "", "client id")
	topic := fs.String("topic", "", "topic (a filter for subscribe)")
	access := fs.String("access", "read", "read, write or subscribe")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *file == "" || *topic == "" {
		fmt.Fprintln(stderr, "fieldgate acl test: --acl and --topic are required")
		return 2
	}
	acl, err := localbroker.LoadACL(*file)
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate acl test: %v\n", err)
		return 1
	}
	var ok bool
	var rule string
	switch *access {
	case "read":
		ok, rule = acl.Check(*user, *id, *topic, localbroker.AccessRead)
	case "write":
		ok, rule = acl.Check(*user, *id, *topic, localbroker.AccessWrite)
	case "subscribe":
		ok, rule = acl.CheckSubscribe(*user, *id, *topic)
	default:
		fmt.Fprintf(stderr, "fieldgate acl test: --access %q: want read, write or subscribe\n", *access)
		return 2
	}
	verdict := "denied"
	if ok {
		verdict = "allowed"
	}
	fmt.Fprintf(stdout, "%s: %s\n", verdict, rule)
	if !ok {
		return 1
	}
	return 0
}
