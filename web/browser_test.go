package web

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's chromium, which scripts/test.sh installs.
const chromiumPath = "/usr/bin/chromium"

// browserTimeout bounds each browser test; every wait inside it is a poll
// for a condition, never a sleep.
const browserTimeout = 2 * time.Minute

// TestBrowser loads the dashboard in headless Chromium: the topology graph
// renders every service, a click on a node opens its page with charts, the
// other pages render, and nothing is logged at error level (script errors,
// failed loads, CSP violations).
func TestBrowser(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mesh      func(time.Time) (*fakeSource, *fakeTelemetry)
		nodes     int
		click     string
		shot      string
		otherTabs bool
	}{
		{name: "shop", mesh: smallMesh, nodes: 11, click: "checkout.shop", shot: "topology.png", otherTabs: true},
		{name: "500 services", mesh: func(now time.Time) (*fakeSource, *fakeTelemetry) { return largeMesh(now, 500, 2) }, nodes: 500, click: "svc-123.ns-3", shot: "topology-500.png"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, tel := tc.mesh(time.Now())
			srv := httptest.NewServer(Handler(src, tel))
			t.Cleanup(srv.Close)
			ctx, consoleErrors := newBrowser(t)

			must(t, "load topology", chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")))
			n, err := chromedp.Run(ctx, chromedp.Poll[int](fmt.Sprintf(
				`document.querySelectorAll('#graph g.node').length === %d && document.querySelectorAll('#graph path.edge').length > 0 && document.querySelectorAll('#graph g.node').length`, tc.nodes),
				chromedp.WithPollingTimeout(time.Minute), chromedp.WithPollingInterval(100*time.Millisecond)))
			if err != nil {
				count, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#graph g.node').length`))
				t.Fatalf("graph did not render %d nodes (has %d): %v; console: %v", tc.nodes, count, err, consoleErrors())
			}
			t.Logf("graph rendered %d nodes", n)
			// Let the polling refresh the graph once, so that the
			// screenshot shows a page that also survived an update.
			must(t, "second refresh", chromedp.Do(ctx, chromedp.Poll[chromedp.Void](
				`document.getElementById('live').dataset.state === 'live'`, chromedp.WithPollingTimeout(time.Minute))))
			shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
			must(t, "screenshot", err)
			saveArtifact(t, tc.shot, shot)

			// Click a node: the service page opens and its charts draw.
			sel := fmt.Sprintf(`#graph g.node[data-id=%q]`, tc.click)
			if tc.nodes > 100 {
				// At the fitted zoom of 500 nodes, zoom in on the node so
				// that the click lands on it and nothing else.
				must(t, "zoom", chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`for (let i = 0; i < 4; i++) document.querySelector('.zoom button').click()`)))
				must(t, "scroll into view", chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
					const svg = document.getElementById('graph'), g = document.querySelector(%q), vp = svg.querySelector('g');
					const r = svg.getBoundingClientRect(), b = g.getBoundingClientRect();
					const m = /translate\(([-\d.]+),([-\d.]+)\) scale\(([\d.]+)\)/.exec(vp.getAttribute('transform'));
					const x = +m[1] + (r.left + r.width / 2) - (b.left + b.width / 2), y = +m[2] + (r.top + r.height / 2) - (b.top + b.height / 2);
					vp.setAttribute('transform', 'translate(' + x + ',' + y + ') scale(' + m[3] + ')');
				})()`, sel))))
			}
			must(t, "click "+tc.click, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel+" circle"))))
			hash, err := chromedp.Run(ctx, chromedp.Poll[string](`location.hash.startsWith('#/service/') && location.hash`, chromedp.WithPollingTimeout(30*time.Second)))
			must(t, "open service page", err)
			if want := "#/service/" + tc.click; hash != want {
				t.Errorf("clicked to %q, want %q", hash, want)
			}
			lines, err := chromedp.Run(ctx, chromedp.Poll[int](
				`document.querySelectorAll('.chart svg path.line').length >= 4 && document.querySelectorAll('.chart svg path.line').length`,
				chromedp.WithPollingTimeout(time.Minute)))
			if err != nil {
				t.Fatalf("charts did not render: %v; console: %v", err, consoleErrors())
			}
			t.Logf("service page drew %d chart lines", lines)
			h1, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main h1').textContent`))
			must(t, "read title", err)
			if h1 != tc.click {
				t.Errorf("service page title %q, want %q", h1, tc.click)
			}
			if tc.name == "shop" {
				shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
				must(t, "service screenshot", err)
				saveArtifact(t, "service.png", shot)
			}

			if tc.otherTabs {
				for _, page := range []struct{ hash, ready, shot string }{
					{"#/workloads", `document.querySelectorAll('main table.data tbody tr').length >= 18 && document.querySelectorAll('.chip.nack').length === 1`, "workloads.png"},
					{"#/policies", `document.querySelectorAll('main table.data tbody tr').length === 5`, "policies.png"},
					{"#/errors", `document.querySelectorAll('main table.data tbody tr').length >= 3`, "errors.png"},
				} {
					must(t, "open "+page.hash, chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`location.hash = '`+page.hash+`'`)))
					if _, err := chromedp.Run(ctx, chromedp.Poll[bool](page.ready, chromedp.WithPollingTimeout(time.Minute))); err != nil {
						t.Fatalf("%s did not render: %v; console: %v", page.hash, err, consoleErrors())
					}
					shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
					must(t, "screenshot "+page.hash, err)
					saveArtifact(t, page.shot, shot)
				}
			}
			if errs := consoleErrors(); len(errs) > 0 {
				t.Errorf("browser reported errors:\n%s", strings.Join(errs, "\n"))
			}
		})
	}
}

// newBrowser starts headless Chromium with a fresh profile and returns its
// tab's context and a func listing the error-level console messages,
// uncaught exceptions and log entries seen so far.
func newBrowser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("headless Chromium is needed at %s (%v): scripts/test.sh installs it with apt-get install -y chromium", chromiumPath, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), browserTimeout)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(bcancel)

	var mu sync.Mutex
	var errs []string
	record := func(s string) {
		mu.Lock()
		errs = append(errs, s)
		mu.Unlock()
	}
	if err := chromedp.Listen(bctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, a.Description+string(a.Value))
				}
				record("console." + string(ev.Type) + ": " + strings.Join(parts, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			record(fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				record("log: " + ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(bctx, log.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enable log domain: %v", err)
	}
	return bctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), errs...)
	}
}

// saveArtifact writes a test artifact to $VERGE_ARTIFACTS_DIR, or to a
// temporary directory, and logs where.
func saveArtifact(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := os.Getenv("VERGE_ARTIFACTS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts dir: %v", err)
	}
	p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatalf("save %s: %v", name, err)
	}
	t.Logf("artifact: %s (%d bytes)", p, len(data))
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
