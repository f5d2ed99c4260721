package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/apiclient"
)

// xdsTypes are the proxy-status columns: the short name of each xDS type
// and its type URL.
var xdsTypes = []struct{ short, url string }{
	{"LDS", "type.googleapis.com/envoy.config.listener.v3.Listener"},
	{"RDS", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"},
	{"CDS", "type.googleapis.com/envoy.config.cluster.v3.Cluster"},
	{"EDS", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"},
}

func newProxyStatusCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "proxy-status",
		Short: "Show every proxy's connection and the xDS versions it acknowledged",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			ps, err := e.client().ProxyStatus(ctx)
			if err != nil {
				return err
			}
			if len(ps) == 0 {
				fmt.Fprintln(e.errOut, "No proxies known.")
				return nil
			}
			slices.SortFunc(ps, func(a, b apiclient.ProxyStatus) int { return strings.Compare(a.ID, b.ID) })
			tw := tabwriter.NewWriter(e.out, 0, 8, 3, ' ', 0)
			head := []string{"PROXY", "NAMESPACE", "CONNECTED"}
			for _, t := range xdsTypes {
				head = append(head, t.short)
			}
			fmt.Fprintln(tw, strings.Join(head, "\t"))
			var nacks []string
			for _, p := range ps {
				connected := "no"
				if p.Connected {
					connected = "yes"
				}
				row := []string{p.ID, p.Namespace, connected}
				for _, t := range xdsTypes {
					st, ok := p.Types[t.url]
					cell := "-"
					if ok && st.AckedVersion != "" {
						cell = st.AckedVersion
					}
					if ok && st.Nack != "" {
						cell += " NACK"
						nacks = append(nacks, fmt.Sprintf("%s %s NACK of version %s: %s", p.ID, t.short, orNone(st.SentVersion), st.Nack))
					}
					row = append(row, cell)
				}
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(nacks) > 0 {
				fmt.Fprintln(e.out)
				for _, n := range nacks {
					fmt.Fprintln(e.out, n)
				}
			}
			return nil
		},
	}
}

// serverVersionTimeout is short: version is what people run to check
// whether the control plane is up at all.
const serverVersionTimeout = 5 * time.Second

func newVersionCommand(e *env, version string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the client's version and, if reachable, the control plane's",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(e.out, "Client Version: %s\n", version)
			ctx, cancel := context.WithTimeout(cmd.Context(), serverVersionTimeout)
			defer cancel()
			v, err := e.client().ServerVersion(ctx)
			if err != nil {
				fmt.Fprintf(e.out, "Server Version: unavailable (%v)\n", err)
				return nil
			}
			fmt.Fprintf(e.out, "Server Version: %s\n", v)
			return nil
		},
	}
}
