package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/atomicfile"
	"verge.dev/verge/internal/telemetry"
)

// maxProfileBytes bounds a downloaded profile.
const maxProfileBytes = 256 << 20

func newProfileCommand(e *env) *cobra.Command {
	var (
		seconds int
		out     string
	)
	cmd := &cobra.Command{
		Use:   "profile PROXY",
		Short: "Fetch CPU and heap profiles from a proxy",
		Long: `Find PROXY (its node id NAME.NAMESPACE, or its workload NAMESPACE/NAME) among
the proxies reporting to the control plane, then fetch a CPU profile of
--seconds and a heap profile from its admin listener's pprof endpoint into
--out as cpu.pprof and heap.pprof. Read them with go tool pprof.`,
		Example: `  verge profile web-1.default
  verge profile default/web-1 --seconds 30 --out /tmp/web-1`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if seconds < 1 || seconds > 300 {
				return usageError("--seconds %d: want 1 to 300", seconds)
			}
			ctx, cancel := withTimeout(cmd)
			var procs []telemetry.ProxyProcess
			err := e.getJSON(ctx, telemetry.ProxiesPath, nil, &procs)
			cancel()
			if err != nil {
				return err
			}
			var p *telemetry.ProxyProcess
			for i := range procs {
				if procs[i].Proxy == args[0] || procs[i].Workload == args[0] {
					p = &procs[i]
					break
				}
			}
			switch {
			case p == nil:
				return fmt.Errorf("proxy %q has not reported to the control plane recently: see verge proxy-status", args[0])
			case p.AdminAddress == "":
				return fmt.Errorf("proxy %s did not report its admin address", p.Proxy)
			}
			base := "http://" + p.AdminAddress
			// The CPU profile takes --seconds on the proxy; allow for that.
			pctx, cancel := context.WithTimeout(cmd.Context(), time.Duration(seconds)*time.Second+requestTimeout)
			defer cancel()
			fmt.Fprintf(e.errOut, "Profiling %s at %s for %ds...\n", p.Proxy, p.AdminAddress, seconds)
			for _, f := range []struct{ path, file string }{
				{"/debug/pprof/profile?seconds=" + strconv.Itoa(seconds), "cpu.pprof"},
				{"/debug/pprof/heap", "heap.pprof"},
			} {
				dst := filepath.Join(out, f.file)
				if err := fetchProfile(pctx, base+f.path, dst); err != nil {
					return fmt.Errorf("profile %s: %w", p.Proxy, err)
				}
				fmt.Fprintln(e.out, dst)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&seconds, "seconds", 10, "length of the CPU profile")
	f.StringVar(&out, "out", ".", "directory to write cpu.pprof and heap.pprof to (created if missing)")
	return cmd
}

// fetchProfile GETs a pprof endpoint into dst. The admin listener is plain
// HTTP on the proxy's host; it carries no credentials.
func fetchProfile(ctx context.Context, url, dst string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxProfileBytes+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body[:min(len(body), 512)])))
	}
	if len(body) > maxProfileBytes {
		return fmt.Errorf("GET %s: profile exceeds %d bytes", url, maxProfileBytes)
	}
	return atomicfile.Write(dst, body, 0o644, 0o755)
}
