package cli_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

const deadConfig = header + `defaults:
  timeout: 2s
  concurrency: 4
  retry:
    delays: [100ms, 200ms]
subscriptions:
  - name: orders
    url: {{.Receiver}}
    events: ["order.*"]
`

func TestDeadListReplayPurge(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	status.Store(http.StatusInternalServerError)
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return int(status.Load()) })
	path, cfg := configFile(t, strings.ReplaceAll(deadConfig, "{{.Receiver}}", rc.URL))
	s := cfg.Subscriptions[0]
	work, dead := cfg.WorkQueue(s), cfg.DeadQueue(s)
	conn := brokertest.Dial(t)

	// Park three events: every attempt answers 500.
	const n = 3
	ids := make([]string, n)
	stop := startEngine(t, cfg)
	warrentest.Apply(t, cfg)
	for i := range ids {
		ids[i] = fmt.Sprintf("evt_dead_%d", i)
		warrentest.Publish(t, cfg, "order.created", warrentest.JSON(ids[i], fmt.Sprintf(`{"n":%d}`, i)))
	}
	warrentest.WaitDepth(t, dead, n, 20*time.Second)
	stop()
	if got := len(rc.Requests()); got != n*3 {
		t.Errorf("receiver got %d requests, want %d (3 attempts each)", got, n*3)
	}

	// list shows each without consuming it.
	r := execute(t, nil, "dead", "list", "-c", path, "orders")
	r.wantCode(t, 0)
	var listed []string
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], "evt_dead_") {
			continue
		}
		listed = append(listed, f[0])
		if f[1] != "order.created" || f[2] != "3" || f[3] != "500" {
			t.Errorf("listed %q, want type order.created, 3 attempts, last status 500", line)
		}
		if at, err := time.Parse(time.RFC3339Nano, f[4]); err != nil || time.Since(at) > time.Minute || time.Until(at) > time.Second {
			t.Errorf("listed %q, want the time it was parked (%v)", line, err)
		}
		if lastErr := strings.Join(f[5:], " "); lastErr != "retries exhausted: HTTP 500" {
			t.Errorf("listed last error %q, want %q", lastErr, "retries exhausted: HTTP 500")
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(listed)), ids) {
		t.Fatalf("listed ids %q, want %q", listed, ids)
	}
	// Parking order depends on the workers; list and replay go oldest first.
	oldest := listed[0]
	if !strings.Contains(r.stdout, fmt.Sprintf("%d parked message(s)", n)) {
		t.Errorf("stdout lacks the count of %d", n)
	}
	warrentest.WaitDepth(t, dead, n, 10*time.Second)
	if got := warrentest.DepthOn(t, conn, work); got != 0 {
		t.Errorf("work queue holds %d after list, want 0", got)
	}

	// --limit bounds list too.
	r = execute(t, nil, "dead", "list", "-c", path, "--limit", "1", "orders")
	r.wantCode(t, 0)
	if strings.Count(r.stdout, "evt_dead_") != 1 {
		t.Errorf("list --limit 1 showed %d events, want 1", strings.Count(r.stdout, "evt_dead_"))
	}
	warrentest.WaitDepth(t, dead, n, 10*time.Second)

	// replay --limit 1 moves exactly the oldest back, attempts reset.
	status.Store(http.StatusOK)
	r = execute(t, nil, "dead", "replay", "-c", path, "--limit", "1", "orders")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "replayed 1 message(s)") {
		t.Errorf("stdout = %q, want replayed 1 message(s)", r.stdout)
	}
	warrentest.WaitDepth(t, dead, n-1, 10*time.Second)
	warrentest.WaitDepth(t, work, 1, 10*time.Second)
	d := peek(t, conn, work)
	if d.MessageId != oldest {
		t.Errorf("replayed message_id = %q, want the oldest parked %q", d.MessageId, oldest)
	}
	for _, h := range []string{event.HeaderAttempt, event.HeaderLastStatus, event.HeaderParkedAt} {
		if v, ok := d.Headers[h]; ok {
			t.Errorf("replayed copy still has %s = %v", h, v)
		}
	}
	if d.Headers[event.HeaderRoutingKey] != "order.created" {
		t.Errorf("replayed copy %s = %v, want the original key", event.HeaderRoutingKey, d.Headers[event.HeaderRoutingKey])
	}
	warrentest.WaitDepth(t, work, 1, 10*time.Second)

	// An engine delivers it once, with the same webhook-id.
	before := len(rc.Requests())
	stop = startEngine(t, cfg)
	reqs := rc.WaitFor(t, 10*time.Second, "the replayed event", func(r []warrentest.Request) bool { return len(r) > before })
	if id := reqs[before].Header.Get("webhook-id"); id != oldest {
		t.Errorf("replayed event delivered with webhook-id %q, want %q", id, oldest)
	}
	warrentest.WaitDepth(t, work, 0, 10*time.Second)
	stop()
	if got := len(rc.Requests()) - before; got != 1 {
		t.Errorf("receiver got %d requests after replay, want 1", got)
	}
	if got := warrentest.DepthOn(t, conn, dead); got != n-1 {
		t.Errorf("dead queue holds %d, want %d", got, n-1)
	}

	// purge drops the rest.
	r = execute(t, nil, "dead", "purge", "-c", path, "orders")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, fmt.Sprintf("purged %d message(s)", n-1)) {
		t.Errorf("stdout = %q, want purged %d message(s)", r.stdout, n-1)
	}
	warrentest.WaitDepth(t, dead, 0, 10*time.Second)
	if got := warrentest.DepthOn(t, conn, work); got != 0 {
		t.Errorf("work queue holds %d after purge, want 0", got)
	}
}

func TestDeadBadUsage(t *testing.T) {
	t.Parallel()
	path, _ := configFile(t, strings.ReplaceAll(deadConfig, "{{.Receiver}}", "http://127.0.0.1:1/"))
	for name, args := range map[string][]string{
		"unknown subscription": {"dead", "list", "-c", path, "nosuch"},
		"negative limit":       {"dead", "purge", "-c", path, "--limit", "-1", "orders"},
		"no subscription":      {"dead", "replay", "-c", path},
	} {
		t.Run(name, func(t *testing.T) {
			r := execute(t, nil, args...)
			r.wantCode(t, 2)
			r.noUsage(t)
		})
	}
}

// dead commands on a queue that was never declared fail with a hint.
func TestDeadQueueMissing(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, strings.ReplaceAll(deadConfig, "{{.Receiver}}", "http://127.0.0.1:1/"))
	dead := cfg.DeadQueue(cfg.Subscriptions[0])
	for _, cmd := range []string{"list", "replay", "purge"} {
		t.Run(cmd, func(t *testing.T) {
			r := execute(t, nil, "dead", cmd, "-c", path, "orders")
			r.wantCode(t, 1)
			r.noUsage(t)
			if !strings.Contains(r.stderr, dead) || !strings.Contains(r.stderr, "topology --apply") {
				t.Errorf("stderr = %q, want the queue %s and a hint to declare it", r.stderr, dead)
			}
		})
	}
}
