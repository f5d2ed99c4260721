package e2e

import (
	"context"
	"fmt"
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

// checkDashboard loads a live control plane's dashboard in headless
// Chromium: the graph shows the services, a click on one opens its page
// with charts, and the browser logs no error. The topology page's
// screenshot is kept in $VERGE_ARTIFACTS_DIR.
func checkDashboard(t *testing.T, c *cp, services []string, open string) {
	t.Helper()
	ctx, consoleErrors := newBrowser(t)
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
		saveArtifact(t, "topology.png", shot)
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
		saveArtifact(t, "service.png", shot)
	}
	if errs := consoleErrors(); len(errs) > 0 {
		t.Errorf("the browser reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

// newBrowser starts headless Chromium with a fresh profile; the func lists
// the error-level console messages, exceptions and log entries so far.
func newBrowser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("headless Chromium is needed at %s (%v): scripts/test.sh installs it (apt-get install -y chromium)", chromiumPath, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
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
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(bcancel)
	var mu sync.Mutex
	var errs []string
	record := func(s string) { mu.Lock(); errs = append(errs, s); mu.Unlock() }
	if err := chromedp.Listen(bctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, a.Description+string(a.Value))
				}
				record("console: " + strings.Join(parts, " "))
			}
		case *runtime.EventExceptionThrown:
			record(fmt.Sprintf("exception at %s:%d: %s", ev.ExceptionDetails.URL, ev.ExceptionDetails.LineNumber, ev.ExceptionDetails.Text))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				record("log: " + ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(bctx, log.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enable the log domain: %v", err)
	}
	return bctx, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), errs...) }
}

// saveArtifact keeps a file for a person to look at after the run.
func saveArtifact(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := os.Getenv("VERGE_ARTIFACTS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts dir: %v", err)
	}
	p := filepath.Join(dir, "e2e-"+strings.ReplaceAll(t.Name(), "/", "_")+"-"+name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatalf("save %s: %v", name, err)
	}
	t.Logf("artifact: %s", p)
}
