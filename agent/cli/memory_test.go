package cli_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

// TestBigMessagesStayUnderMemoryLimit sends twenty 20 MB events (400 MB)
// to a slow endpoint through a warren process limited to 300 MiB: every
// event is delivered, and the process's peak RSS (VmHWM) stays within the
// limit plus the runtime's own few tens of MB. Without the budget, the
// default prefetch of 32 takes all twenty at once.
func TestBigMessagesStayUnderMemoryLimit(t *testing.T) {
	const (
		events = 20
		size   = 20 << 20
		limit  = 300 << 20
		slack  = 40 << 20
	)
	var mu sync.Mutex
	got := map[string]int{}
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		// Slow enough that, without a byte budget, every event would be
		// held at once.
		time.Sleep(8 * time.Second)
		mu.Lock()
		if n > size {
			got[r.Header.Get("Webhook-Id")]++
		}
		mu.Unlock()
	}))
	t.Cleanup(rc.Close)
	path, cfg := configFile(t, `broker:
  url: {{.URL}}
  exchange: {{.Unique}}
  queue_prefix: {{.Unique}}
server:
  listen: ""
  shutdown_grace: 10s
  memory_limit: 300MiB
defaults:
  max_body_bytes: 32MiB
subscriptions:
  - name: big
    url: `+rc.URL+`
    events: ["big.#"]
`)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"blob":"` + strings.Repeat("x", size) + `"}`)
	for i := range events {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), cfg.Broker.Exchange, "big.one", true, false,
			amqp.Publishing{MessageId: fmt.Sprintf("evt_big_%02d", i), ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
			t.Fatalf("publish %d not confirmed: %v", i, err)
		}
	}
	body = nil

	p := startWarren(t, "run", "-c", path, "--log-format", "json")
	warrentest.WaitUntil(t, 3*time.Minute, "every big event delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == events
	})
	hwm := peakRSS(t, p.cmd.Process.Pid)
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 30*time.Second)
	if testing.Verbose() {
		t.Log(p.output(t))
	}
	t.Logf("peak RSS %d MiB for %d MiB of events under a %d MiB limit", hwm>>20, events*size>>20, limit>>20)
	if hwm > limit+slack {
		t.Errorf("peak RSS %d MiB, want at most %d MiB (the limit plus %d MiB)", hwm>>20, (limit+slack)>>20, slack>>20)
	}
}

// peakRSS reads a process's VmHWM in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
