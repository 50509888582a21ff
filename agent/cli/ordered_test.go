package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

// TestOrderSurvivesKill9 runs two warren processes on one ordered
// subscription and kills the active one with -9 midway. Per account, no
// event is sent before the one before it was answered 2xx (a redelivery of
// an event already delivered is allowed), and every event is delivered.
//
// The kill can land between moving a held key's next event back as its
// head and acking the current head: the current head then comes back, and
// must find its key's head record naming the next event, not release the
// key a second time.
func TestOrderSurvivesKill9(t *testing.T) {
	const accounts, perAccount = 5, 40
	type answer struct {
		seq int
		ok  bool
	}
	var (
		mu      sync.Mutex
		seen    = map[string][]answer{}
		tries   = map[string]int{}
		firstOK = map[string]bool{} // event ids answered 2xx
	)
	third := make(chan struct{})
	var once sync.Once
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			ID   string `json:"id"`
			Data struct {
				Account string `json:"account_id"`
				Seq     int    `json:"seq"`
			}
		}
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		tries[env.ID]++
		ok := !(tries[env.ID] == 1 && env.Data.Seq%7 == 3) // some first attempts fail
		seen[env.Data.Account] = append(seen[env.Data.Account], answer{env.Data.Seq, ok})
		if ok {
			firstOK[env.ID] = true
			if len(firstOK) == accounts*perAccount/3 {
				once.Do(func() { close(third) })
			}
		}
		mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(rc.Close)
	path, cfg := configFile(t, header+`defaults:
  timeout: 5s
  retry:
    delays: [200ms, 500ms, 1s]
subscriptions:
  - name: ledger
    url: `+rc.URL+`
    events: ["account.#"]
    ordering:
      key: data.account_id
`)
	warrentest.Apply(t, cfg)

	first := startWarren(t, "run", "-c", path, "--log-format", "json")
	time.Sleep(time.Second) // first to consume: the single active consumer
	second := startWarren(t, "run", "-c", path, "--log-format", "json")

	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for seq := range perAccount {
		for a := range accounts {
			body := fmt.Sprintf(`{"account_id": "acct-%d", "seq": %d}`, a, seq)
			dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), cfg.Broker.Exchange, "account.updated", true, false,
				amqp.Publishing{MessageId: fmt.Sprintf("evt_%d_%03d", a, seq), ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: []byte(body)})
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
				t.Fatalf("publish not confirmed: %v", err)
			}
		}
	}
	select {
	case <-third:
	case <-time.After(60 * time.Second):
		t.Fatal("a third of the events not delivered after 60s")
	}
	first.signal(t, syscall.SIGKILL)
	first.wait(t, 10*time.Second)
	warrentest.WaitUntil(t, 90*time.Second, "every event delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(firstOK) == accounts*perAccount
	})
	second.signal(t, syscall.SIGTERM)
	second.wait(t, 30*time.Second)

	mu.Lock()
	defer mu.Unlock()
	for a := range accounts {
		account := fmt.Sprintf("acct-%d", a)
		delivered := -1 // highest seq delivered, all before it too
		for _, ans := range seen[account] {
			if ans.seq > delivered+1 {
				t.Errorf("%s: event %d sent before event %d was delivered (requests %v)", account, ans.seq, delivered+1, seen[account])
				break
			}
			if ans.ok && ans.seq == delivered+1 {
				delivered++
			}
		}
	}
}
