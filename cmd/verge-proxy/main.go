// Command verge-proxy is Verge's data plane alone, for small devices: the
// `verge proxy` role without the control plane, the store or the Kubernetes
// and Gateway API types (checked by TestProxyDependencies).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"verge.dev/verge/internal/proxy/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The environment is read here, not in the command: VERGE_SERVER only
	// supplies the --server default, VERGE_JOIN_TOKEN the join token when
	// no flag gives one.
	cmd := agent.NewCommandEnv(agent.Env{Server: os.Getenv("VERGE_SERVER"), JoinToken: os.Getenv("VERGE_JOIN_TOKEN")})
	cmd.Use = "verge-proxy"
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	go func() {
		// A second signal exits at once instead of waiting for the drain.
		<-ctx.Done()
		stop()
	}()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
