// Command husk-dev is the developer tooling of the husk repository: it builds
// the guest kernel and test initrds, and runs commands inside the throwaway
// test host. Each subcommand lives in its own file and registers itself in
// commands from an init function.
package main

import (
	"fmt"
	"os"
	"sort"
)

// commands maps a subcommand name to its entry point; args excludes the name.
var commands = map[string]func(args []string) error{}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: husk-dev <command> [args]\ncommands: %v\n", names)
		os.Exit(2)
	}
	if err := commands[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "husk-dev %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
