package cli_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/cli"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// TestRunReloadsEditedConfig edits the config file of a running agent: a
// new subscription starts receiving without a restart, an invalid edit is
// rejected while delivery goes on, and a removed subscription stops.
func TestRunReloadsEditedConfig(t *testing.T) {
	first := warrentest.NewReceiver(t, nil)
	second := warrentest.NewReceiver(t, nil)
	base := expand(t, header) + `defaults:
  retry: {delays: [100ms]}
subscriptions:
`
	firstSub := "  - {name: first, url: " + first.URL + ", events: [\"a.*\"]}\n"
	secondSub := "  - {name: second, url: " + second.URL + ", events: [\"b.#\"]}\n"
	path := writeFile(t, "warren.yaml", base+firstSub)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	both, err := config.Parse(path, []byte(base+firstSub+secondSub), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	warrentest.CleanupLater(t, both)

	var stderr syncBuffer
	reload := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cli.Execute(ctx, cli.Env{
			Args:   []string{"run", "-c", path, "--log-format", "json"},
			Stdin:  strings.NewReader(""),
			Stdout: &stderr, Stderr: &stderr, Reload: reload,
		})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("run exited %d, want 0\n%s", code, stderr.String())
		}
	}()

	waitQueue(t, both.WorkQueue(both.Subscriptions[0]))
	warrentest.Publish(t, cfg, "a.1", warrentest.JSON("evt_a1", `{}`))
	first.WaitFor(t, 10*time.Second, "the first event", func(r []warrentest.Request) bool { return len(r) == 1 })

	// Add a subscription by rewriting the file.
	rewrite(t, path, base+firstSub+secondSub)
	waitQueue(t, both.WorkQueue(both.Subscriptions[1]))
	waitLog(t, &stderr, "config reloaded")
	warrentest.Publish(t, cfg, "b.x", warrentest.JSON("evt_b1", `{}`))
	second.WaitFor(t, 10*time.Second, "the new subscription's event", func(r []warrentest.Request) bool { return len(r) == 1 })

	// An invalid edit is rejected with its problem, and delivery goes on.
	rewrite(t, path, base+firstSub+secondSub+"  - {name: Bad!}\n")
	waitLog(t, &stderr, "config reload rejected")
	if !strings.Contains(stderr.String(), "subscriptions[2].name") {
		t.Errorf("rejected reload does not name the bad key:\n%s", stderr.String())
	}
	warrentest.Publish(t, cfg, "a.2", warrentest.JSON("evt_a2", `{}`))
	first.WaitFor(t, 10*time.Second, "delivery after a rejected edit", func(r []warrentest.Request) bool { return len(r) == 2 })

	// Remove the first subscription; SIGHUP reloads at once.
	if err := os.WriteFile(path, []byte(base+secondSub), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitLog(t, &stderr, "subscription removed")
	warrentest.PublishUnroutable(t, cfg, "a.3", warrentest.JSON("evt_a3", `{}`))
	warrentest.Publish(t, cfg, "b.y", warrentest.JSON("evt_b2", `{}`))
	second.WaitFor(t, 10*time.Second, "delivery after removal", func(r []warrentest.Request) bool { return len(r) == 2 })
	if n := len(first.Requests()); n != 2 {
		t.Errorf("removed subscription's endpoint got %d requests, want 2", n)
	}
	if n := warrentest.Depth(t, both.WorkQueue(both.Subscriptions[0])); n != 0 {
		t.Errorf("removed subscription's queue holds %d, want 0: it is unbound", n)
	}
}

// rewrite replaces the file's content the way an editor or a ConfigMap
// update does: a new file renamed over the old one.
func rewrite(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitQueue(t *testing.T, queue string) {
	t.Helper()
	conn := brokertest.Dial(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		ch.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s was not declared: %v", queue, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitLog(t *testing.T, log *syncBuffer, msg string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(log.String(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q:\n%s", msg, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
