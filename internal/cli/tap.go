package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/telemetry"
)

func newTapCommand(e *env) *cobra.Command {
	var (
		namespace, output string
		maxEvents, rate   int
	)
	cmd := &cobra.Command{
		Use:   "tap SERVICE",
		Short: "Stream sampled live requests to and from a service",
		Long: `Stream requests the proxies sample to or from SERVICE (NAME, or NAME.NAMESPACE),
one line each: time, direction, source → destination, method, path,
status and latency, until interrupted or --max events. Each proxy sends at
most --rate samples per second; lines may be missing when the terminal is
slower than the traffic.`,
		Example: `  verge tap web
  verge tap api.shop --max 20 -o json`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError("unknown output format %q: want text or json", output)
			}
			if maxEvents < 0 || rate < 1 {
				return usageError("--max must be at least 0 and --rate at least 1")
			}
			service := args[0]
			if !strings.Contains(service, ".") {
				service += "." + namespace
			}
			q := url.Values{"service": {service}, "rate": {strconv.Itoa(rate)}}
			if maxEvents > 0 {
				q.Set("max", strconv.Itoa(maxEvents))
			}
			resp, err := e.get(cmd.Context(), e.streamClient(), telemetry.TapPath, q)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			fmt.Fprintf(e.errOut, "Tapping %s (Ctrl-C to stop)\n", service)
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if output == "json" {
					fmt.Fprintln(e.out, sc.Text())
					continue
				}
				var ev telemetry.TapEvent
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					return fmt.Errorf("tap %s: decode event: %w", service, err)
				}
				fmt.Fprintln(e.out, tapLine(ev))
			}
			if err := sc.Err(); err != nil && cmd.Context().Err() == nil {
				return fmt.Errorf("tap %s: %w", service, err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&namespace, "namespace", "n", "default", "namespace of SERVICE when it does not name one")
	f.IntVar(&maxEvents, "max", 0, "stop after this many events (0: until interrupted)")
	f.IntVar(&rate, "rate", 10, "samples per second each proxy may send")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json (one event per line)")
	return cmd
}

// tapLine is one event as `verge tap` prints it.
func tapLine(ev telemetry.TapEvent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-8s %s → %s", ev.Time.UTC().Format("15:04:05.000"), ev.Direction, ev.Source, ev.Destination)
	if ev.Method != "" {
		b.WriteString(" " + ev.Method)
	}
	if ev.Path != "" {
		// Quoted only when it holds what a terminal would interpret.
		p := strconv.QuoteToGraphic(ev.Path)
		if p[1:len(p)-1] == ev.Path {
			p = ev.Path
		}
		b.WriteString(" " + p)
	}
	status := strconv.Itoa(ev.Status)
	if ev.Status == 0 {
		status = "no-response"
	}
	b.WriteString(" " + status)
	if ev.GRPCStatus >= 0 && ev.Protocol == "grpc" {
		fmt.Fprintf(&b, " grpc=%d", ev.GRPCStatus)
	}
	b.WriteString(" " + fmtDuration(ev.Duration.Round(time.Microsecond)))
	if ev.Flags != "" {
		b.WriteString(" " + ev.Flags)
	}
	return b.String()
}
