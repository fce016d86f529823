package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/huskvm/husk/internal/devenv"
)

// templateCmd is "husk template build [NAME]": it builds the template's
// image with this husk's agent, or finds it in the cache, showing progress
// on stderr, and prints the image's path.
func templateCmd(args []string) error {
	if len(args) == 0 || args[0] != "build" || len(args) > 2 {
		usage()
		return errUsage
	}
	name := "base"
	if len(args) == 2 {
		name = args[1]
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	agent := filepath.Join(filepath.Dir(exe), "husk-agent")
	if _, err := os.Stat(agent); err != nil {
		return fmt.Errorf("husk-agent is not next to husk (%w): run make build", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	img, err := devenv.AgentRootfs(ctx, name, agent, os.Stderr)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return errors.New("interrupted")
		}
		return err
	}
	fmt.Println(img)
	return nil
}
