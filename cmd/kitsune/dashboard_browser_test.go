package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

// dashboardBrowser starts headless Chromium for the dashboard tests, closed
// when the test ends. noPageErrors fails the test if the page logged an
// error or threw: the dashboard must run clean under its CSP.
func dashboardBrowser(t *testing.T, ctx context.Context) (bctx context.Context, noPageErrors func()) {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, // Chromium runs as root only without its sandbox
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })

	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(bctx)
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			if msg.IsException() || msg.Type == "error" {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s:%d %s", msg.URL, msg.Line+1, msg))
				mu.Unlock()
			}
		}
	}()
	return bctx, func() {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(problems) > 0 {
			t.Fatalf("the page logged errors:\n%s", strings.Join(problems, "\n"))
		}
	}
}
