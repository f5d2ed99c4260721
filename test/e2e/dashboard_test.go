package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"verge.dev/verge/internal/browsertest"
)

// checkDashboard loads a live control plane's dashboard in headless
// Chromium: the graph shows the services, a click on one opens its page
// with charts, and the browser logs no error. The topology page's
// screenshot is kept in $VERGE_ARTIFACTS_DIR.
func checkDashboard(t *testing.T, c *cp, services []string, open string) {
	t.Helper()
	ctx, consoleErrors := browsertest.New(t, 2*time.Minute)
	if _, err := chromedp.Run(ctx, chromedp.Navigate(c.api+"/")); err != nil {
		t.Fatalf("load dashboard: %v", err)
	}
	for _, svc := range services {
		js := fmt.Sprintf(`document.querySelector('#graph g.node[data-id=%q]') !== null && document.querySelectorAll('#graph path.edge').length > 0`, svc)
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(time.Minute))); err != nil {
			t.Fatalf("the graph has no node %s: %v; console: %v", svc, err, consoleErrors())
		}
	}
	if shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
		browsertest.SaveArtifact(t, "e2e-", "topology.png", shot)
	}
	sel := fmt.Sprintf(`#graph g.node[data-id=%q] circle`, open)
	if _, err := chromedp.Run(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatalf("click %s: %v", open, err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](
		`document.querySelectorAll('.chart svg path.line').length >= 4`, chromedp.WithPollingTimeout(time.Minute))); err != nil {
		t.Fatalf("the service page drew no charts: %v; console: %v", err, consoleErrors())
	}
	title, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main h1').textContent`))
	if err != nil || title != open {
		t.Errorf("service page title %q (%v), want %q", title, err, open)
	}
	if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		browsertest.SaveArtifact(t, "e2e-", "service.png", shot)
	}
	if errs := consoleErrors(); len(errs) > 0 {
		t.Errorf("the browser reported errors:\n%s", strings.Join(errs, "\n"))
	}
}
