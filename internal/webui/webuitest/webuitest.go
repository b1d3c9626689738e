// Package webuitest drives a headless Chromium (Debian's chromium package)
// with chromedp against Hangar's web UI, for the browser tests of
// integration/ and integration/pool/.
package webuitest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
)

// Browser is one Chromium tab on the UI at URL.
type Browser struct {
	t         testing.TB
	URL       string // https://host:port of the UI
	ctx       context.Context
	artifacts string
}

// Chromium is the browser's path; the test skips when it is not installed
// (CI installs it: .ci/run).
func Chromium(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium): the browser tests cannot run")
	}
	return p
}

// New starts a Chromium for the UI at url (certificate errors ignored: the
// servers use test CAs). Screenshots go to $HANGAR_ARTIFACTS, else to
// artifacts/ in the test's directory (gitignored).
func New(t testing.TB, url string) *Browser {
	t.Helper()
	chromium := Chromium(t)
	dir := os.Getenv("HANGAR_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox, // root needs it
		chromedp.Flag("ignore-certificate-errors", true), chromedp.DisableGPU, chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(t.TempDir()))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(acancel)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return &Browser{t: t, URL: url, ctx: ctx, artifacts: dir}
}

// Run runs actions with a deadline (size it for a loaded machine); a
// failure saves a screenshot and fails the test.
func (b *Browser) Run(what string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.Shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Shot saves a PNG of the whole page as <test>-<name>.png.
func (b *Browser) Shot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.artifacts, strings.ReplaceAll(b.t.Name(), "/", "-")+"-"+name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// Login logs in through the form and waits for the overview's hosts.
func (b *Browser) Login(user, password string) {
	b.t.Helper()
	b.Run("login "+user, 2*time.Minute,
		chromedp.Navigate("about:blank"), // a new document, not a hash change
		chromedp.Navigate(b.URL+"/#/login"),
		chromedp.WaitVisible(chromedp.CSS(`#login input[name=user]`)),
		chromedp.SendKeys(chromedp.CSS(`#login input[name=user]`), user),
		chromedp.SendKeys(chromedp.CSS(`#login input[name=password]`), password),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#hosts tr[data-host]`)))
}

// Page changes the hash (no reload: chromedp's Navigate would wait for a
// load that a fragment change never has) and waits for sel.
func (b *Browser) Page(hash, sel string) {
	b.t.Helper()
	b.Run("page "+hash, 2*time.Minute, chromedp.Evaluate[chromedp.Void](fmt.Sprintf("void (location.hash = %q)", hash)),
		chromedp.WaitVisible(chromedp.CSS(sel)))
}

// WaitJS polls a JS expression until it is true.
func (b *Browser) WaitJS(what string, d time.Duration, expr string) {
	b.t.Helper()
	b.Run(what, d, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(250*time.Millisecond), chromedp.WithPollingTimeout(d)))
}

// TypeInto types s into the element as a keyboard does: one keyDown (with
// its text, so that Chrome makes the keypress) and one keyUp per key, and
// Enter for '\r'. (chromedp's SendKeys adds a char event to each keyDown,
// which a terminal reads as a second keypress.)
func (b *Browser) TypeInto(sel, s string) {
	b.t.Helper()
	steps := []chromedp.Action[chromedp.Void]{chromedp.Focus(chromedp.CSS(sel))}
	for _, r := range s {
		down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Text: string(r), Key: string(r)}
		up := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp, Key: string(r)}
		if r == '\r' {
			down = input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeRawKeyDown, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13}
			up = input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13}
		}
		for _, p := range []input.DispatchKeyEventParams{down, up} {
			steps = append(steps, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
				_, err := chromedp.Call(ctx, input.DispatchKeyEvent, p)
				return err
			}))
		}
	}
	b.Run("type "+s, 2*time.Minute, steps...)
}

// Click clicks the element sel matches, waiting until there is one. It
// finds and clicks in one evaluation inside the page: a live page
// re-renders (an event, a poll) and replaces its nodes, so a node found by
// one DevTools call may be gone by the next (chromedp.Click's "could not
// find node").
func (b *Browser) Click(sel string) {
	b.t.Helper()
	b.WaitJS("click "+sel, 2*time.Minute, `(() => { const e = document.querySelector(`+strconv.Quote(sel)+`); if (!e) return false; e.click(); return true; })()`)
}

// Submit sets the named fields of the form sel (waiting until there is
// one) and submits it as its submit button would, in one evaluation (as
// Click, for a page that re-renders).
func (b *Browser) Submit(sel string, fields map[string]string) {
	b.t.Helper()
	js, err := json.Marshal(fields)
	if err != nil {
		b.t.Fatal(err)
	}
	b.WaitJS("submit "+sel, 2*time.Minute, `(() => { const f = document.querySelector(`+strconv.Quote(sel)+`); if (!f) return false;
		for (const [k, v] of Object.entries(`+string(js)+`)) f.elements[k].value = v;
		f.requestSubmit(); return true; })()`)
}

// Eval evaluates a JS expression (a promise is awaited) and returns its value.
func Eval[T any](b *Browser, what, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.Shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

// Text is the trimmed text content of the first element sel matches.
func (b *Browser) Text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(Eval[string](b, "read "+sel, `document.querySelector(`+strconv.Quote(sel)+`)?.textContent ?? ''`))
}
