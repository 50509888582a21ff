package cli_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

// TestKill9DuringRetryStorm kills warren while half of all attempts fail,
// so copies are moving between the work queue, the tiers and the dead
// queue. Afterwards every published event must be delivered or parked.
func TestKill9DuringRetryStorm(t *testing.T) {
	const total = 1000
	ids := make([]string, total)
	want := map[string]bool{}
	for i := range ids {
		ids[i] = fmt.Sprintf("evt_storm_%04d", i)
		want[ids[i]] = true
	}
	var (
		mu        sync.Mutex
		delivered = map[string]bool{}
		unknown   []string
	)
	third := make(chan struct{})
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		id := r.Header.Get("webhook-id")
		mu.Lock()
		defer mu.Unlock()
		if !want[id] {
			unknown = append(unknown, id)
			return http.StatusBadRequest
		}
		if rand.IntN(2) == 0 {
			return http.StatusServiceUnavailable
		}
		if !delivered[id] {
			delivered[id] = true
			if len(delivered) == total/3 {
				close(third)
			}
		}
		return http.StatusOK
	})
	// Three attempts: an event is parked with probability 1/8.
	path, cfg := configFile(t, header+`defaults:
  concurrency: 16
  retry:
    delays: [100ms, 200ms]
subscriptions:
  - name: storm
    url: `+rc.URL+`
    events: ["order.*"]
`)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)
	publish(t, conn, cfg.Broker.Exchange, ids)

	first := startWarren(t, "run", "-c", path, "--log-format", "json")
	select {
	case <-third:
	case <-time.After(60 * time.Second):
		t.Fatal("a third of the events not delivered after 60s")
	}
	first.signal(t, syscall.SIGKILL)
	first.wait(t, 10*time.Second)

	second := startWarren(t, "run", "-c", path, "--log-format", "json")
	s := cfg.Subscriptions[0]
	moving := []string{cfg.WorkQueue(s)}
	for _, d := range s.Tiers() {
		moving = append(moving, cfg.RetryQueue(d))
	}
	waitStaysEmpty(t, moving, 60*time.Second)
	second.signal(t, syscall.SIGTERM)
	if code := second.wait(t, 30*time.Second); code != 0 {
		t.Errorf("second warren exited %d after SIGTERM, want 0", code)
	}

	parked := map[string]bool{}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for {
		d, ok, err := ch.Get(cfg.DeadQueue(s), true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		parked[d.MessageId] = true
	}
	ch.Close()

	mu.Lock()
	defer mu.Unlock()
	settled := 0
	for _, id := range ids {
		if delivered[id] || parked[id] {
			settled++
		} else {
			t.Errorf("event %s neither delivered nor parked", id)
		}
	}
	if len(unknown) > 0 {
		t.Errorf("receiver got unknown webhook-ids, e.g. %q", unknown[0])
	}
	t.Logf("%d published: %d delivered, %d parked, %d delivered or parked", total, len(delivered), len(parked), settled)
	if settled != total {
		t.Errorf("delivered or parked: %d unique events, want %d", settled, total)
	}
}
