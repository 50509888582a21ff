package cli_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/cli"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// withServer is header with the operations server on a free port.
var withServer = strings.Replace(header, `listen: ""`, `listen: 127.0.0.1:0`, 1)

// runInProcess runs `warren args...` in-process until the returned stop
// cancels it (also when the test ends); stop fails the test unless it
// exited 0.
func runInProcess(t *testing.T, stderr io.Writer, reload chan struct{}, args ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cli.Execute(ctx, cli.Env{Args: args, Stdin: strings.NewReader(""), Stdout: stderr, Stderr: stderr, Reload: reload})
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("warren %s exited %d, want 0", strings.Join(args, " "), code)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("warren %s still running 20s after it was stopped", strings.Join(args, " "))
		}
	}
	t.Cleanup(stop)
	return stop
}

// servingAddr waits for the JSON log line that names the operations
// server's address.
func servingAddr(t *testing.T, log *syncBuffer) string {
	t.Helper()
	waitLog(t, log, "serving /metrics")
	for _, line := range strings.Split(log.String(), "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && strings.HasPrefix(rec.Msg, "serving /metrics") {
			return rec.Addr
		}
	}
	t.Fatalf("no JSON line with the server's address:\n%s", log.String())
	return ""
}

// metricValue reads one series from /metrics at addr ("" when absent).
func metricValue(t *testing.T, addr, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	return ""
}

// TestRunCountsRejectedReloads: an invalid edit of the config file of a
// running warren counts as warren_config_reloads_total{result="failure"},
// and the running config goes on.
func TestRunCountsRejectedReloads(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	path, cfg, data, addr, stderr := runWatched(t, rc.URL)
	failure, success := `warren_config_reloads_total{result="failure"}`, `warren_config_reloads_total{result="success"}`

	rewrite(t, path, data+"  - {name: Bad!}\n")
	waitLog(t, stderr, "config reload rejected")
	if v := metricValue(t, addr, failure); v != "1" {
		t.Errorf("%s = %q after an invalid edit, want 1", failure, v)
	}
	if v := metricValue(t, addr, success); v != "" && v != "0" {
		t.Errorf("%s = %q after an invalid edit, want 0", success, v)
	}
	warrentest.Publish(t, cfg, "a", warrentest.JSON("evt_after_rejected", `{}`))
	rc.WaitFor(t, 10*time.Second, "delivery after the rejected edit", func(r []warrentest.Request) bool { return len(r) == 1 })
}

// TestRunCountsEachReloadOnce: a valid edit of the config file of a
// running warren is one reload: warren_config_reloads_total{result="success"}
// goes up by one.
func TestRunCountsEachReloadOnce(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	path, _, data, addr, stderr := runWatched(t, rc.URL)
	success := `warren_config_reloads_total{result="success"}`
	// The same config with a comment: valid.
	rewrite(t, path, data+"# edited\n")
	waitLog(t, stderr, "config reloaded")
	if v := metricValue(t, addr, success); v != "1" {
		t.Errorf("%s = %q after one valid edit, want 1", success, v)
	}
}

// runWatched runs `warren run` in-process on a config with one
// subscription "first" on key "a" and the operations server on a free
// port. It returns the config's path, the config, its text, the server's
// address and the log.
func runWatched(t *testing.T, url string) (path string, cfg *config.Config, data, addr string, stderr *syncBuffer) {
	t.Helper()
	path, cfg = configFile(t, withServer+"subscriptions:\n  - {name: first, url: "+url+", events: [\"a\"]}\n")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stderr = &syncBuffer{}
	runInProcess(t, stderr, nil, "run", "-c", path, "--log-format", "json")
	addr = servingAddr(t, stderr)
	waitQueue(t, cfg.WorkQueue(cfg.Subscriptions[0]))
	return path, cfg, string(text), addr, stderr
}

// TestLogFormats: --log-format text writes text lines, and auto writes
// JSON when stderr is a file rather than a terminal.
func TestLogFormats(t *testing.T) {
	path, _ := configFile(t, withServer+"subscriptions:\n  - {name: logs, url: http://127.0.0.1:9/, events: [\"a\"]}\n")

	var text syncBuffer
	stop := runInProcess(t, &text, nil, "run", "-c", path, "--log-format", "text")
	waitLog(t, &text, "serving /metrics")
	stop()
	lines := nonEmpty(text.String())
	textLine := regexp.MustCompile(`^\d\d:\d\d:\d\d(\.\d+)? (DBG|INF|WRN|ERR) `)
	for _, l := range lines {
		if !textLine.MatchString(l) {
			t.Errorf("--log-format text wrote %q, want a text line (time, level, message)", l)
		}
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop = runInProcess(t, f, nil, "run", "-c", path) // --log-format auto
	deadline := time.Now().Add(15 * time.Second)
	for {
		data, _ := os.ReadFile(f.Name())
		if strings.Contains(string(data), "serving /metrics") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q:\n%s", "serving /metrics", data)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	data, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	lines = nonEmpty(string(data))
	if len(lines) < 2 {
		t.Fatalf("auto wrote %d lines, want the startup lines:\n%s", len(lines), data)
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil {
			t.Errorf("--log-format auto to a file wrote %q, want a JSON record with msg and level", l)
		}
	}
}

func nonEmpty(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestConfigMapSymlinkSwapReloads: the config path is a ConfigMap volume's
// symlink chain (warren.yaml -> ..data/warren.yaml, ..data -> ..<ts>);
// swapping ..data to a new directory, as the kubelet does, reloads.
func TestConfigMapSymlinkSwapReloads(t *testing.T) {
	first := warrentest.NewReceiver(t, nil)
	second := warrentest.NewReceiver(t, nil)
	base := expand(t, header) + "defaults:\n  retry: {delays: [100ms]}\nsubscriptions:\n" +
		"  - {name: first, url: " + first.URL + ", events: [\"a\"]}\n"
	both := base + "  - {name: second, url: " + second.URL + ", events: [\"b\"]}\n"

	dir := t.TempDir()
	write := func(ts, data string) {
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ts, "warren.yaml"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("..2026_01_01_00_00_00.1", base)
	if err := os.Symlink("..2026_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "warren.yaml")
	if err := os.Symlink(filepath.Join("..data", "warren.yaml"), path); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(path, []byte(both), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	warrentest.CleanupLater(t, cfg)

	var stderr syncBuffer
	runInProcess(t, &stderr, nil, "run", "-c", path, "--log-format", "json")
	waitQueue(t, cfg.WorkQueue(cfg.Subscriptions[0]))
	warrentest.Publish(t, cfg, "a", warrentest.JSON("evt_cm_a", `{}`))
	first.WaitFor(t, 10*time.Second, "the first event", func(r []warrentest.Request) bool { return len(r) == 1 })

	// The kubelet's update: a new timestamped directory, a new ..data link
	// renamed over the old one, the old directory removed. The path warren
	// reads is never touched.
	write("..2026_01_01_00_01_00.2", both)
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..2026_01_01_00_01_00.2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &stderr, "config reloaded")
	waitQueue(t, cfg.WorkQueue(cfg.Subscriptions[1]))
	warrentest.Publish(t, cfg, "b", warrentest.JSON("evt_cm_b", `{}`))
	second.WaitFor(t, 10*time.Second, "the new subscription's event", func(r []warrentest.Request) bool { return len(r) == 1 })
	if strings.Contains(stderr.String(), "config reload rejected") {
		t.Errorf("the swap was read half-done:\n%s", stderr.String())
	}
}

// TestRunCountsRefusedReloadAsFailure: a valid file whose new queue the
// broker refuses (declared already with other arguments) is a rejected
// reload: one failure, no success.
func TestRunCountsRefusedReloadAsFailure(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	path, cfg, data, addr, stderr := runWatched(t, rc.URL)
	edited := data + "  - {name: second, url: " + rc.URL + ", events: [\"b\"]}\n"
	next, err := config.Parse(path, []byte(edited), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	warrentest.CleanupLater(t, next)
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(next.WorkQueue(next.Subscriptions[1]), true, false, false, false, amqp.Table{"x-max-length": int32(1)}); err != nil {
		t.Fatal(err)
	}

	rewrite(t, path, edited)
	waitLog(t, stderr, "config reload rejected")
	failure, success := `warren_config_reloads_total{result="failure"}`, `warren_config_reloads_total{result="success"}`
	if v := metricValue(t, addr, failure); v != "1" {
		t.Errorf("%s = %q after a refused reload, want 1", failure, v)
	}
	if v := metricValue(t, addr, success); v != "" && v != "0" {
		t.Errorf("%s = %q after a refused reload, want 0", success, v)
	}
	warrentest.Publish(t, cfg, "a", warrentest.JSON("evt_after_refused", `{}`))
	rc.WaitFor(t, 10*time.Second, "delivery after the refused reload", func(r []warrentest.Request) bool { return len(r) == 1 })
}
