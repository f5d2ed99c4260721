// Command verge is Verge's one binary: the CLI, and through subcommands the
// control plane (`verge control-plane`), the proxy (`verge proxy`) and the
// local demo (`verge demo`). Each role lives in its own package; this file
// only assembles the commands and maps errors to exit codes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"verge.dev/verge/internal/cli"
	"verge.dev/verge/internal/demo"
	"verge.dev/verge/internal/proxy/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal the default handling returns, so a second
		// one exits at once instead of waiting for a drain.
		<-ctx.Done()
		stop()
	}()
	root := cli.NewRootCommand(version, os.Stdout, os.Stderr, os.Stdin)
	root.AddCommand(controlPlaneCommand(version), agent.NewCommandEnv(agent.Env{Server: os.Getenv("VERGE_SERVER"), JoinToken: os.Getenv("VERGE_JOIN_TOKEN")}), demo.NewCommand(), demo.NewAppCommand())
	err := root.ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	fmt.Fprint(os.Stderr, cli.FormatError(err))
	os.Exit(cli.ExitCode(err))
}
