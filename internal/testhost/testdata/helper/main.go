// Command helper is the static program the testhost tests run inside the
// test host (built by GoBuild onto an artifact disk). It performs its
// arguments in order:
//
//	cat           copy stdin to stdout
//	out:TEXT      write TEXT to stdout
//	err:TEXT      write TEXT to stderr
//	exit:N        exit with status N
//	sleep:D       sleep for duration D
//	env           print the working directory and the environment
//	kvm           run a real-mode guest to HLT on /dev/kvm
//	ls:DIR        list DIR
//	head:PATH     print the first 16 bytes of PATH in hex
package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	for _, op := range os.Args[1:] {
		verb, arg, _ := strings.Cut(op, ":")
		if err := do(verb, arg); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", op, err)
			os.Exit(1)
		}
	}
}

func do(verb, arg string) error {
	switch verb {
	case "cat":
		_, err := io.Copy(os.Stdout, os.Stdin)
		return err
	case "out":
		_, err := os.Stdout.WriteString(arg)
		return err
	case "err":
		_, err := os.Stderr.WriteString(arg)
		return err
	case "exit":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return err
		}
		os.Exit(n)
	case "sleep":
		d, err := time.ParseDuration(arg)
		if err != nil {
			return err
		}
		time.Sleep(d)
	case "env":
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		fmt.Println("wd=" + wd)
		for _, e := range os.Environ() {
			fmt.Println(e)
		}
	case "kvm":
		return kvmSmoke()
	case "ls":
		ents, err := os.ReadDir(arg)
		if err != nil {
			return err
		}
		for _, e := range ents {
			fmt.Println(e.Name())
		}
	case "head":
		f, err := os.Open(arg)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 16)
		if _, err := io.ReadFull(f, b); err != nil {
			return err
		}
		fmt.Printf("head=%x\n", b)
	default:
		return fmt.Errorf("unknown operation")
	}
	return nil
}
