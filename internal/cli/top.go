package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/telemetry"
)

// topSorts orders services (and edges) for `verge top`: the busiest, the
// least successful or the slowest first, or by name.
var topSorts = map[string]func(a, b telemetry.Golden) int{
	"rps": func(a, b telemetry.Golden) int { return cmp.Compare(b.RequestRate, a.RequestRate) },
	// Least successful first; without requests there is no rate, and
	// such rows go last rather than pass for 0%.
	"success": func(a, b telemetry.Golden) int {
		return cmp.Or(cmp.Compare(min(b.Requests, 1), min(a.Requests, 1)), cmp.Compare(a.SuccessRate, b.SuccessRate))
	},
	"p50":  func(a, b telemetry.Golden) int { return cmp.Compare(b.P50, a.P50) },
	"p99":  func(a, b telemetry.Golden) int { return cmp.Compare(b.P99, a.P99) },
	"name": func(telemetry.Golden, telemetry.Golden) int { return 0 },
}

// clearScreen moves the cursor home and clears the terminal, so that each
// refresh of `verge top` replaces the previous one.
const clearScreen = "\x1b[H\x1b[2J"

func newTopCommand(e *env) *cobra.Command {
	var (
		window, interval time.Duration
		sortBy           string
		once, edges      bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show the mesh's services live: request rate, success rate, p50/p99 latency",
		Long: `Show the control plane's service graph as a table that refreshes in place
until interrupted: per service the requests per second it served, the
share that succeeded, its median and 99th percentile latency and how many
of its proxies report; with --edges also every caller → callee edge as the
caller saw it (CROSS marks edges between zones).

Keys re-sort the live table: r by request rate, s by success rate, 5 by
p50, 9 by p99, n by name; e shows or hides the edges, space refreshes now,
q quits.`,
		Example: `  verge top
  verge top --sort success --edges
  verge top --once --window 5m`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, ok := topSorts[sortBy]; !ok {
				return usageError("--sort %q: want rps, success, p50, p99 or name", sortBy)
			}
			if window <= 0 || interval <= 0 {
				return usageError("--window and --interval must be positive")
			}
			q := url.Values{"window": {window.String()}}
			fetch := func() (telemetry.Topology, error) {
				var topo telemetry.Topology
				ctx, cancel := withTimeout(cmd)
				defer cancel()
				return topo, e.getJSON(ctx, telemetry.TopologyPath, q, &topo)
			}
			if once {
				topo, err := fetch()
				if err != nil {
					return err
				}
				return printTop(e.out, topo, sortBy, edges)
			}
			var keys <-chan byte
			if e.in != nil {
				restore := keyMode(e.in)
				defer restore()
				stop := make(chan struct{})
				defer close(stop)
				keys = readKeys(e.in, stop)
			}
			v := topView{sortBy: sortBy, edges: edges}
			refresh := time.NewTimer(0)
			defer refresh.Stop()
			for {
				// Keys wait for the first table: there is nothing to
				// re-sort before it.
				ks := keys
				if !v.fetched {
					ks = nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-refresh.C:
					topo, err := fetch()
					if err != nil {
						return err
					}
					v.topo, v.fetched = topo, true
					refresh.Reset(interval)
				case k, ok := <-ks:
					if !ok {
						keys = nil // stdin ended: no more keys, keep refreshing
						continue
					}
					switch v.key(k) {
					case keyQuit:
						return nil
					case keyRefresh:
						refresh.Reset(0)
						continue
					case keyNone:
						continue
					}
				}
				if err := v.draw(e.out); err != nil {
					return err
				}
			}
		},
	}
	f := cmd.Flags()
	f.DurationVar(&window, "window", time.Minute, "time window the rates and latencies cover")
	f.StringVar(&sortBy, "sort", "rps", "order of rows: rps, success, p50, p99 or name")
	f.BoolVar(&once, "once", false, "print one table and exit")
	f.DurationVar(&interval, "interval", 2*time.Second, "time between refreshes")
	f.BoolVar(&edges, "edges", false, "also show caller → callee edges")
	return cmd
}

// topView is what the live `verge top` shows; keys change it between
// refreshes.
type topView struct {
	topo    telemetry.Topology
	fetched bool
	sortBy  string
	edges   bool
}

type keyAction int

const (
	keyNone    keyAction = iota // not a key of top's
	keyRedraw                   // the view changed
	keyRefresh                  // fetch now
	keyQuit
)

// topKeys are the sort keys, as top(1) and htop let a user re-sort
// without restarting: the first letter of the column, 5 and 9 for the
// percentiles.
var topKeys = map[byte]string{'r': "rps", 's': "success", '5': "p50", '9': "p99", 'n': "name"}

func (v *topView) key(k byte) keyAction {
	if by, ok := topKeys[k]; ok {
		v.sortBy = by
		return keyRedraw
	}
	switch k {
	case 'e':
		v.edges = !v.edges
		return keyRedraw
	case ' ', '\n', '\r':
		return keyRefresh
	case 'q', 'Q':
		return keyQuit
	}
	return keyNone
}

func (v *topView) draw(w io.Writer) error {
	if !v.fetched {
		return nil
	}
	fmt.Fprint(w, clearScreen)
	fmt.Fprintf(w, "verge top: %d services, %d edges over %s, by %s, at %s\n"+
		"keys: r rps · s success · 5 p50 · 9 p99 · n name · e edges · space refresh · q quit\n\n",
		len(v.topo.Nodes), len(v.topo.Edges), v.topo.Window, v.sortBy, v.topo.Generated.Local().Format(time.TimeOnly))
	return printTop(w, v.topo, v.sortBy, v.edges)
}

// readKeys delivers the bytes read from in, one at a time, until in ends
// or fails, or stop is closed. A goroutine blocked reading a terminal
// outlives the command; the process exits soon after.
func readKeys(in io.Reader, stop <-chan struct{}) <-chan byte {
	ch := make(chan byte, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 64)
		for {
			n, err := in.Read(buf)
			for _, b := range buf[:n] {
				select {
				case ch <- b:
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func printTop(w io.Writer, topo telemetry.Topology, sortBy string, edges bool) error {
	by := topSorts[sortBy]
	nodes := slices.Clone(topo.Nodes)
	slices.SortStableFunc(nodes, func(a, b telemetry.Node) int {
		return cmp.Or(by(a.Golden, b.Golden), strings.Compare(a.Service, b.Service))
	})
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tRPS\tSUCCESS\tP50\tP99\tWORKLOADS\tZONES")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Service, rps(n.Golden), success(n.Golden),
			latency(n.Requests, n.P50), latency(n.Requests, n.P99), n.Workloads, orDash(strings.Join(n.Zones, ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !edges {
		return nil
	}
	es := slices.Clone(topo.Edges)
	slices.SortStableFunc(es, func(a, b telemetry.Edge) int {
		return cmp.Or(by(a.Golden, b.Golden), strings.Compare(a.Source, b.Source), strings.Compare(a.Destination, b.Destination))
	})
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tPROTOCOL\tRPS\tSUCCESS\tP50\tP99\tZONES")
	for _, ed := range es {
		zones := ""
		if ed.SourceZone != "" || ed.DestinationZone != "" {
			zones = orDash(ed.SourceZone) + "→" + orDash(ed.DestinationZone)
			if ed.CrossZone {
				zones += " CROSS"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ed.Source, ed.Destination, ed.Protocol, rps(ed.Golden),
			success(ed.Golden), latency(ed.Requests, ed.P50), latency(ed.Requests, ed.P99), orDash(zones))
	}
	return tw.Flush()
}

func rps(g telemetry.Golden) string { return fmt.Sprintf("%.2f", g.RequestRate) }

func success(g telemetry.Golden) string {
	if g.Requests == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", g.SuccessRate*100)
}

// latency formats seconds for a table: "-" without requests.
func latency(requests uint64, s float64) string {
	if requests == 0 {
		return "-"
	}
	return fmtDuration(time.Duration(s * float64(time.Second)))
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// getJSON GETs path with q from the control plane and decodes the JSON
// answer into v.
func (e *env) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := e.get(ctx, e.httpClient(), path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode answer: %w", path, err)
	}
	return nil
}

// get sends a GET with the credentials and returns a 200 response; any
// other status becomes an error with the server's message.
func (e *env) get(ctx context.Context, hc *http.Client, path string, q url.Values) (*http.Response, error) {
	u := strings.TrimRight(e.server, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if e.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+e.bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st struct {
		Kind, Message string
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		msg = st.Message
	}
	return nil, errors.New("GET " + path + ": " + resp.Status + ": " + msg)
}

// streamClient is the server's HTTP client without the per-request
// timeout, for answers that last as long as the user wants (taps) or as
// long as the server takes (profiles); the command's context bounds them.
func (e *env) streamClient() *http.Client {
	hc := *e.httpClient()
	hc.Timeout = 0
	return &hc
}
