// Command husk runs code in hardware-isolated microVMs.
//
//	husk run [flags] -- CMD [ARGS...]    run a command in a fresh microVM
//	husk template build [NAME]           build (or find) a template's image
//
// husk starts husk-vmm, the separate VMM binary, for every VM; it never links
// KVM or device code itself (test/deps checks). It finds husk-vmm and
// husk-agent next to its own executable, as `make build` puts them in bin/.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runCmd(os.Args[2:]))
	case "template":
		if err := templateCmd(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "husk template: %v\n", err)
			os.Exit(1)
		}
	case "-h", "-help", "--help", "help":
		usage()
	default:
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  husk run [--cpus N] [--mem MiB] [--template T] [--timeout D] [-i] [-t] [-e K=V] [-w DIR] [--user U] -- CMD [ARGS...]
      run CMD in a fresh microVM; see "husk run -h"
  husk template build [NAME]
      build the template NAME (default "base") with the agent, or find it cached
`)
}

// exitHusk is the status when husk itself or the VM failed, as docker run
// does (the command's own statuses are passed through).
const exitHusk = 125

// exitTimeout is the status when --timeout ended the run, as timeout(1).
const exitTimeout = 124

// errUsage marks a bad command line.
var errUsage = errors.New("usage")
