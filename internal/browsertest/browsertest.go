// Package browsertest starts Debian's headless Chromium for tests (the
// dashboard's, in web and test/e2e) through chromedp, collects what the
// page logs at error level, and keeps screenshots as test artifacts. It is
// for tests only.
package browsertest

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

// ChromiumPath is Debian's chromium, which scripts/test.sh installs.
const ChromiumPath = "/usr/bin/chromium"

// New starts headless Chromium with a fresh profile, bounded by timeout,
// and returns its tab's context and a func listing the error-level console
// messages, uncaught exceptions and log entries seen so far. It fails the
// test when Chromium is missing.
func New(t testing.TB, timeout time.Duration) (context.Context, func() []string) {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		t.Fatalf("headless Chromium is needed at %s (%v): scripts/test.sh installs it with apt-get install -y chromium", ChromiumPath, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	// The flags this machine's closed network needs (no background
	// connections, no QUIC, no component updates).
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(ChromiumPath),
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
		t.Fatalf("enable the log domain: %v", err)
	}
	return bctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), errs...)
	}
}

// SaveArtifact writes a file for a person to look at after the run to
// $VERGE_ARTIFACTS_DIR (scripts/test.sh sets it), else to a temporary
// directory, and logs where. prefix tells the tests' files apart.
func SaveArtifact(t testing.TB, prefix, name string, data []byte) {
	t.Helper()
	dir := os.Getenv("VERGE_ARTIFACTS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts dir: %v", err)
	}
	p := filepath.Join(dir, prefix+strings.ReplaceAll(t.Name(), "/", "_")+"-"+name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatalf("save %s: %v", name, err)
	}
	t.Logf("artifact: %s (%d bytes)", p, len(data))
}
