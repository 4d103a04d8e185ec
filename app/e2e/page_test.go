package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

// chromium finds Debian's chromium (or Google Chrome, which GitHub's
// Ubuntu runners carry; Ubuntu's chromium package is a snap stub): outside
// CI a missing one skips the test, in CI it fails it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("IOTGW_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found (apt-get install -y chromium, or set IOTGW_CHROMIUM)")
	}
	t.Skip("chromium not found: apt-get install -y chromium (or set IOTGW_CHROMIUM)")
	return ""
}

// artifacts is where screenshots go: $IOTGW_ARTIFACTS when set (CI keeps
// it), else the test's temporary directory.
func artifacts(t *testing.T) string {
	if d := os.Getenv("IOTGW_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// The live page in headless Chromium: it loads, its numbers move while
// the simulator publishes, and a command sent from it is answered by a
// simulated device. Screenshots (desktop and phone widths) are written as
// artefacts.
func TestLivePage(t *testing.T) {
	bin := chromium(t)
	in := testsvc.StartInflux(t)
	mq := testsvc.StartMosquitto(t, testsvc.MosquittoOptions{MaxInflight: 1000})
	g := newGateway(t, mq.URL(), in.URL(), "IOTGW_COMMANDS_TOKEN="+testToken)
	g.start("--config", writeConfig(t, "[fleet]\nsilent_factor = 3.0\nmin_silence = \"2s\"\nsweep_interval = \"200ms\"\n"))
	startFleet(t, mq.URL(), 12, 4)
	pub := newPublisher(t, mq.URL())
	// A thirteenth device that falls silent after a few readings.
	for range 4 {
		pub.publishRaw(t, "sensors/site-02/dev-0099/environment", []byte(`{"temperature":20.5}`))
		time.Sleep(100 * time.Millisecond) // the device's pace, which sets its habit
	}
	g.waitFor("13 devices known", 30*time.Second, func() bool { return g.metric("iotgw_devices_tracked") == 13 })
	pub.publishRaw(t, "sensors/site-01/dev-0003/environment", []byte(`{"temperature":`))

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	defer cancelT()

	base := "http://" + g.httpAddr + "/"
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"#token="+testToken),
		chromedp.WaitVisible(chromedp.CSS("#conn.live")),
	); err != nil {
		t.Fatalf("page did not go live: %v\n%s", err, g.logs())
	}

	// Numbers move: the received count grows while the fleet publishes.
	received := func() int {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#received")))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.NewReplacer(",", "", ".", "", " ", "", "\u00a0", "").Replace(s))
		return n
	}
	first := received()
	waitFor(t, "the page's received count to grow", 20*time.Second, func() bool { return received() > first+20 }, g.logs)
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`#devices tr td span.mono`)),
		chromedp.WaitVisible(chromedp.CSS(`#deadletters code`)),
	); err != nil {
		t.Fatal(err)
	}
	devices, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dev-count")))
	dead, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#deadletters")))
	if !strings.HasPrefix(devices, "13 ") || !strings.Contains(dead, "not_json") || !strings.Contains(dead, `{"temperature":`) {
		t.Errorf("devices %q, dead letters %q: want 13 devices and the not_json letter with its payload", devices, dead)
	}
	// The silent device is flagged and listed first.
	waitFor(t, "the silent device first on the page", 15*time.Second, func() bool {
		first, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#devices tr:first-child td:first-child")))
		count, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dev-silent")))
		return err == nil && strings.Contains(first, "site-02/dev-0099") && strings.Contains(first, "silent") && strings.HasPrefix(count, "1 ")
	}, g.logs)

	// Search narrows the device list, as the server filters it.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#dev-search"), "dev-0011")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device list to show only dev-0011", 10*time.Second, func() bool {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#devices span.mono").length`))
		txt, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#devices")))
		return err == nil && n == 1 && strings.Contains(txt, "site-01/dev-0011")
	}, g.logs)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`const s = document.getElementById("dev-search"); s.value = ""; s.dispatchEvent(new Event("input")); true`)); err != nil {
		t.Fatal(err)
	}

	// A command sent from the page is answered by the simulated device.
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#cmd-device"), "site-01/dev-0002"),
		chromedp.SetValue(chromedp.CSS("#cmd-name"), "set_relay"),
		chromedp.SendKeys(chromedp.CSS("#cmd-args"), "on=true"),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#cmd-result[data-state="answered"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#commands tr[data-state="answered"]`)),
	); err != nil {
		r, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#cmd-result")))
		t.Fatalf("command from the page: %v (result %q)\n%s", err, r, g.logs())
	}
	result, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#cmd-result")))
	if !strings.Contains(result, `"relay":true`) {
		t.Errorf("command result %q: want the device's state with relay true", result)
	}
	// An unknown device gets a clear error on the page.
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#cmd-device"), "site-01/dev-9999"),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#cmd-result.err`)),
	); err != nil {
		t.Fatal(err)
	}
	refused, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#cmd-result")))
	if !strings.Contains(refused, "has not been heard from") {
		t.Errorf("unknown device on the page: %q", refused)
	}
	// Put the answered command back in the result box for the picture.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("cmd-args").value = ""; true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#cmd-device"), "site-01/dev-0002"),
		chromedp.SetValue(chromedp.CSS("#cmd-name"), "report_state"),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#cmd-result[data-state="answered"]`)),
	); err != nil {
		t.Fatal(err)
	}

	dir := artifacts(t)
	for _, shot := range []struct {
		name string
		w, h int64
	}{{"live-page.png", 1280, 1000}, {"live-page-phone.png", 390, 844}} {
		if err := chromedp.Do(ctx,
			chromedp.EmulateViewport(shot.w, shot.h),
			chromedp.Sleep(1200*time.Millisecond), // one more live update at the new width
		); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 is PNG; below it, JPEG
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, shot.name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
	// On a phone the page does not scroll sideways.
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		t.Error("at 390 px wide the page is wider than the screen")
	}
}
