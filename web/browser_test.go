package web

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"verge.dev/verge/internal/browsertest"
)

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
			ctx, consoleErrors := browsertest.New(t, browserTimeout)

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
			browsertest.SaveArtifact(t, "", tc.shot, shot)

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
				browsertest.SaveArtifact(t, "", "service.png", shot)
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
					browsertest.SaveArtifact(t, "", page.shot, shot)
				}
			}
			if errs := consoleErrors(); len(errs) > 0 {
				t.Errorf("browser reported errors:\n%s", strings.Join(errs, "\n"))
			}
		})
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
