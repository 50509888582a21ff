package engine_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

// accountEvent is event seq of account, as the ordered tests publish it.
func accountEvent(account string, seq int) amqp.Publishing {
	return warrentest.JSON(fmt.Sprintf("evt_%s_%03d", account, seq), fmt.Sprintf(`{"account_id": %q, "seq": %d}`, account, seq))
}

// checkOrder fails the test if, for account, a request for event n+1
// came before event n's first 2xx, an event was never delivered, or one
// was sent with another type than it was published with.
func checkOrder(t *testing.T, reqs []warrentest.Request, account string, n int) {
	t.Helper()
	delivered := -1 // highest seq whose first 2xx came, in order
	var seqs []int
	for _, r := range reqs {
		var env struct {
			Type string
			Data struct {
				Account string `json:"account_id"`
				Seq     int    `json:"seq"`
			}
		}
		if json.Unmarshal(r.Body, &env) != nil || env.Data.Account != account {
			continue
		}
		if env.Type != "account.updated" {
			t.Errorf("account %s: event %d sent as type %q, want account.updated", account, env.Data.Seq, env.Type)
		}
		seqs = append(seqs, env.Data.Seq)
		if env.Data.Seq > delivered+1 {
			t.Errorf("account %s: event %d sent before event %d was delivered (requests %v)", account, env.Data.Seq, delivered+1, seqs)
			return
		}
		if r.Status < 300 && env.Data.Seq == delivered+1 {
			delivered++
		}
	}
	if delivered != n-1 {
		t.Errorf("account %s: delivered up to %d, want %d (requests %v)", account, delivered, n-1, seqs)
	}
}

func orderedSub(url string) config.Subscription {
	s := config.Subscription{Name: "ledger", URL: url, Events: []string{"account.#"}}
	s.Ordering.Key = "data.account_id"
	s.Retry.Delays = []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second}
	return s
}

// TestOrderPerKeyThroughRetries publishes interleaved events of four
// accounts; the endpoint fails the first attempt of every third event.
// Each account's events arrive in order, retries included.
func TestOrderPerKeyThroughRetries(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		id := r.Header.Get("Webhook-Id")
		mu.Lock()
		tries[id]++
		first := tries[id] == 1
		mu.Unlock()
		var seq int
		fmt.Sscanf(id[len(id)-3:], "%d", &seq)
		return map[bool]int{true: http.StatusServiceUnavailable, false: http.StatusOK}[first && seq%3 == 1]
	})
	cfg := warrentest.Config(t, orderedSub(rc.URL))
	start(t, cfg)
	warrentest.Apply(t, cfg)
	const n = 15
	accounts := []string{"a", "b", "c", "d"}
	var msgs []amqp.Publishing
	for seq := range n {
		for _, a := range accounts {
			msgs = append(msgs, accountEvent(a, seq))
		}
	}
	warrentest.Publish(t, cfg, "account.updated", msgs...)
	warrentest.WaitSettled(t, cfg, 60*time.Second)
	for _, a := range accounts {
		checkOrder(t, rc.Requests(), a, n)
	}
	if d := warrentest.Depth(t, cfg.DeadQueue(cfg.Subscriptions[0])); d != 0 {
		t.Errorf("%d events parked, want none", d)
	}
}

// TestFailingKeyHoldsOnlyItself: every event of one account fails until
// parked; the other accounts are delivered meanwhile, at full pace, and
// the failing account's events are parked in order.
func TestFailingKeyHoldsOnlyItself(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		if r.Header.Get("X-Account") == "bad" {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	sub := orderedSub(rc.URL)
	sub.ForwardHeaders = []string{"X-Account"}
	cfg := warrentest.Config(t, sub)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	const n = 10
	var msgs []amqp.Publishing
	for seq := range n {
		for _, a := range []string{"bad", "good1", "good2"} {
			m := accountEvent(a, seq)
			m.Headers = amqp.Table{"X-Account": a}
			msgs = append(msgs, m)
		}
	}
	warrentest.Publish(t, cfg, "account.updated", msgs...)
	// Every bad event takes 1.4 s of retries: the good ones must not wait.
	rc.WaitFor(t, 5*time.Second, "the good accounts", func(reqs []warrentest.Request) bool {
		good := 0
		for _, r := range reqs {
			if r.Header.Get("X-Account") != "bad" {
				good++
			}
		}
		return good == 2*n
	})
	checkOrder(t, rc.Requests(), "good1", n)
	checkOrder(t, rc.Requests(), "good2", n)

	dead := cfg.DeadQueue(cfg.Subscriptions[0])
	warrentest.WaitDepth(t, dead, n, 60*time.Second)
	conn := brokertest.Dial(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for seq := range n {
		d, ok, err := ch.Get(dead, true)
		if err != nil || !ok {
			t.Fatalf("get parked %d: %v", seq, err)
		}
		if want := fmt.Sprintf("evt_bad_%03d", seq); d.MessageId != want {
			t.Errorf("parked #%d is %s, want %s: a key's events are parked in order", seq, d.MessageId, want)
		}
		if p := event.ReadParked(&d); p.Attempts != 4 {
			t.Errorf("parked %s after %d attempts, want 4", d.MessageId, p.Attempts)
		}
	}
	warrentest.WaitSettled(t, cfg, 10*time.Second)
}

// TestOrderingKeyFailureParks: an event without the key's field is parked
// with the expression's error; the others are delivered.
func TestOrderingKeyFailureParks(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, orderedSub(rc.URL))
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "account.updated", warrentest.JSON("evt_nokey", `{"other": 1}`), accountEvent("a", 0))
	rc.WaitFor(t, 10*time.Second, "the keyed event", func(r []warrentest.Request) bool { return len(r) == 1 })
	dead := cfg.DeadQueue(cfg.Subscriptions[0])
	warrentest.WaitDepth(t, dead, 1, 10*time.Second)
	p := event.ReadParked(ptr(warrentest.Get(t, dead)))
	if p.ID != "evt_nokey" || p.LastError != "ordering.key: no such key: account_id" {
		t.Errorf("parked %s with %q, want evt_nokey with the key's error", p.ID, p.LastError)
	}
}

// TestEmptyOrderingKeyIsAKeyLikeAnother: events whose key is "" keep
// flowing (in order) and do not stall the other keys.
func TestEmptyOrderingKeyIsAKeyLikeAnother(t *testing.T) {
	rc := warrentest.NewReceiver(t, nil)
	cfg := warrentest.Config(t, orderedSub(rc.URL))
	start(t, cfg)
	warrentest.Apply(t, cfg)
	var msgs []amqp.Publishing
	for seq := range 5 {
		msgs = append(msgs, accountEvent("", seq), accountEvent("a", seq))
	}
	warrentest.Publish(t, cfg, "account.updated", msgs...)
	reqs := rc.WaitFor(t, 10*time.Second, "every event", func(r []warrentest.Request) bool { return len(r) == 10 })
	checkOrder(t, reqs, "", 5)
	checkOrder(t, reqs, "a", 5)
}

// TestForgedKeyHeadWaitsItsTurn: while account a's first event waits for
// its retry, the application publishes the next one with warren's
// warren-key-head header set. The header proves nothing: the key's record
// names its head, so the event waits in the held queue like any later one.
func TestForgedKeyHeadWaitsItsTurn(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		id := r.Header.Get("Webhook-Id")
		tries[id]++
		if id == "evt_a_000" && tries[id] == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	sub := orderedSub(rc.URL)
	sub.Retry.Delays = []time.Duration{time.Second}
	cfg := warrentest.Config(t, sub)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	forged := accountEvent("a", 1)
	forged.Headers = amqp.Table{event.HeaderKeyHead: true}
	forgedKey := accountEvent("a", 2) // heads, it says, a key nothing holds
	forgedKey.Headers = amqp.Table{}
	event.MarkHead(forgedKey.Headers, "b")
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), forged, forgedKey, accountEvent("a", 3))
	reqs := rc.WaitFor(t, 15*time.Second, "every event of a", func(r []warrentest.Request) bool { return len(r) == 5 })
	checkOrder(t, reqs, "a", 4)
	waitReleased(t, cfg)
}

// TestEventsWithoutIDOfAHeldKey: the later events of a held key carry no
// message_id, and two of them are equal publishes (same body, same
// timestamp). Each gets an id of its own as it is moved aside, so the two
// stay two events. Each is delivered once, in order, and the key is
// released at the end.
func TestEventsWithoutIDOfAHeldKey(t *testing.T) {
	rc := failsFirstAttempt(t, "evt_a_000")
	cfg := warrentest.Config(t, orderedSub(rc.URL))
	start(t, cfg)
	warrentest.Apply(t, cfg)
	msgs := []amqp.Publishing{accountEvent("a", 0)}
	for seq := 1; seq <= 3; seq++ {
		m := accountEvent("a", seq)
		m.MessageId = ""
		msgs = append(msgs, m)
		if seq == 1 {
			msgs = append(msgs, m)
		}
	}
	warrentest.Publish(t, cfg, "account.updated", msgs...)
	reqs := rc.WaitFor(t, 15*time.Second, "every event of a", func(r []warrentest.Request) bool { return len(r) == 6 })
	checkOrder(t, reqs, "a", 4)
	waitReleased(t, cfg)
	if n := len(rc.Requests()); n != 6 {
		t.Errorf("%d requests, want 6: one failed attempt and one delivery of each of the 5 events", n)
	}
}

// failsFirstAttempt is a receiver that answers 503 to the first attempt of
// event id, which holds its key, and 200 to everything else.
func failsFirstAttempt(t *testing.T, id string) *warrentest.Receiver {
	var failed atomic.Bool
	return warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		if r.Header.Get("Webhook-Id") == id && !failed.Swap(true) {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
}

// waitReleased waits until every key is released: no message left and no
// held queue or head record.
func waitReleased(t *testing.T, cfg *config.Config) {
	t.Helper()
	warrentest.WaitSettled(t, cfg, 10*time.Second)
	waitNoHeldQueue(t, cfg)
}

// waitNoHeldQueue waits until no key's held queue or head record is left.
func waitNoHeldQueue(t *testing.T, cfg *config.Config) {
	t.Helper()
	warrentest.WaitUntil(t, 10*time.Second, "every key's held queue deleted", func() bool {
		for name := range warrentest.Messages(t, cfg.Broker.QueuePrefix+".") {
			if strings.Contains(name, ".held.") {
				return false
			}
		}
		return true
	})
}

// TestDeletedHeldQueueDoesNotHoldItsKey: an operator deletes a held key's
// queue, and the event in it, while the head waits for a retry. The next
// event of the key is moved into the queue declared again, and goes out
// after the head: three requests, in order.
func TestDeletedHeldQueueDoesNotHoldItsKey(t *testing.T) {
	rc, cfg := startHeldKey(t, 6*time.Second)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), accountEvent("a", 1))
	deleteHeld(t, waitHeld(t, cfg, "a", 1), 1)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 2))
	waitHeld(t, cfg, "a", 1)
	reqs := rc.WaitFor(t, 20*time.Second, "a's head and its last event", func(r []warrentest.Request) bool { return len(r) == 3 })
	var ids []string
	for _, r := range reqs {
		ids = append(ids, r.Header.Get("Webhook-Id"))
	}
	if fmt.Sprint(ids) != "[evt_a_000 evt_a_000 evt_a_002]" {
		t.Errorf("requests %v, want evt_a_000 twice (503, 200), then evt_a_002", ids)
	}
	waitReleased(t, cfg)
}

// startHeldKey starts an ordered subscription whose endpoint fails the
// first attempt of evt_a_000, which then holds account a for 6 s while it
// waits for its retry: long enough for the tests that delete a held key's
// queues to do so, and move events after it, while the key is held.
func startHeldKey(t *testing.T, delay time.Duration) (*warrentest.Receiver, *config.Config) {
	rc := failsFirstAttempt(t, "evt_a_000")
	sub := orderedSub(rc.URL)
	sub.Retry.Delays = []time.Duration{delay}
	cfg := warrentest.Config(t, sub)
	start(t, cfg)
	warrentest.Apply(t, cfg)
	return rc, cfg
}

// deleteHeld deletes queue, which must hold n messages: the key is still
// held.
func deleteHeld(t *testing.T, queue string, n int) {
	t.Helper()
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	deleted, err := ch.QueueDelete(queue, false, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if deleted != n {
		t.Fatalf("deleted %s with %d messages, want %d: the key was released before", queue, deleted, n)
	}
}

// waitHeld waits until n events of key wait in its held queue, in cfg's
// one subscription, and returns the queue's name.
func waitHeld(t *testing.T, cfg *config.Config, key string, n int) string {
	t.Helper()
	sum := sha256.Sum256([]byte(key))
	held := cfg.WorkQueue(cfg.Subscriptions[0]) + ".held." + hex.EncodeToString(sum[:8])
	warrentest.WaitUntil(t, 10*time.Second, fmt.Sprintf("%d events in %s", n, held), func() bool {
		return warrentest.Messages(t, held)[held] == n
	})
	return held
}

// waitInOrderAndReleased waits until account a's three events reached
// the endpoint in order, the first after one failed attempt, and its key
// was released, with no request more; it returns the requests.
func waitInOrderAndReleased(t *testing.T, rc *warrentest.Receiver, cfg *config.Config, timeout time.Duration) []warrentest.Request {
	t.Helper()
	reqs := rc.WaitFor(t, timeout, "every event of a", func(r []warrentest.Request) bool { return len(r) == 4 })
	checkOrder(t, reqs, "a", 3)
	waitReleased(t, cfg)
	if n := len(rc.Requests()); n != 4 {
		t.Errorf("%d requests, want 4: one failed attempt and one delivery of each event", n)
	}
	return reqs
}

// TestDeletedHeadRecordDoesNotHoldItsKey: an operator deletes a held key's
// head record while its head waits for a retry. The head is still sent
// when it comes back, and it releases the events behind it, in order.
func TestDeletedHeadRecordDoesNotHoldItsKey(t *testing.T) {
	rc, cfg := startHeldKey(t, 6*time.Second)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), accountEvent("a", 1), accountEvent("a", 2))
	deleteHeld(t, waitHeld(t, cfg, "a", 2)+".head", 1)
	waitInOrderAndReleased(t, rc, cfg, 20*time.Second)
}

// TestLateHeadIsReported: a held key's head leaves the subscription's
// queues without an outcome (an operator purges its retry tier). The key
// stays held. An event of the key moved aside while the head could still
// come back (its retry, then the grace) logs nothing; once it is late, one
// warning names the head, and the next events within the grace add none.
func TestLateHeadIsReported(t *testing.T) {
	// Its retries may take 2 × 4s (a Retry-After can pick the longest
	// tier each time), not 3s + 4s.
	grace, delay := 2*time.Second, 3*time.Second
	retries := 8 * time.Second
	engine.SetHeadLate(t, grace)
	rc := failsFirstAttempt(t, "evt_a_000")
	sub := orderedSub(rc.URL)
	sub.Retry.Delays = []time.Duration{delay, 4 * time.Second}
	cfg := warrentest.Config(t, sub)
	h := hdStart(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0))
	tier := cfg.RetryQueue(delay)
	warrentest.WaitDepth(t, tier, 1, 10*time.Second)
	heldAt := time.Now()
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ch.QueuePurge(tier, false); err != nil || n != 1 {
		t.Fatalf("purge the head from %s: %d messages, %v", tier, n, err)
	}

	const warning = "head is late"
	moveAside := func(seq int, at time.Duration) {
		t.Helper()
		time.Sleep(time.Until(heldAt.Add(at)))
		warrentest.Publish(t, cfg, "account.updated", accountEvent("a", seq))
		waitHeld(t, cfg, "a", seq)
	}
	moveAside(1, 0)               // in its retries
	moveAside(2, retries+grace/2) // in the grace
	if n := strings.Count(h.logs.String(), warning); n != 0 {
		t.Fatalf("warned while the head could still come back:\n%s", h.logs.String())
	}
	moveAside(3, retries+grace+500*time.Millisecond) // late
	moveAside(4, retries+grace+time.Second)          // late, within the grace of the warning
	logs := h.logs.String()
	if n := strings.Count(logs, warning); n != 1 || !strings.Contains(logs, "head=evt_a_000") {
		t.Errorf("%d warnings naming the head, want 1:\n%s", n, logs)
	}
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("%d requests, want 1 (the failed attempt): the key stays held", n)
	}
}

// TestDeadLetteredHeadReplayedReleasesItsKey: a held key's head leaves
// without an outcome: the broker dead-letters it to the dead queue (as at a
// quorum queue's delivery limit, x-death and all), and an operator replays
// it as `dead replay` does. It is still the key's recorded head: it is
// sent, and releases the events behind it, in order.
func TestDeadLetteredHeadReplayedReleasesItsKey(t *testing.T) {
	rc, cfg := startHeldKey(t, time.Minute)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), accountEvent("a", 1), accountEvent("a", 2))
	waitHeld(t, cfg, "a", 2)
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	sub := cfg.Subscriptions[0]
	tier, dead, work := cfg.RetryQueue(time.Minute), cfg.DeadQueue(sub), cfg.WorkQueue(sub)
	// What the broker puts in the dead queue.
	head, ok, err := ch.Get(tier, false)
	if err != nil || !ok {
		t.Fatalf("take the head from %s: %v, %v", tier, ok, err)
	}
	head.Headers["x-death"] = []any{amqp.Table{"queue": work, "reason": "delivery_limit", "count": int64(1), "routing-keys": []any{work}}}
	if err := ch.Publish("", dead, false, false, amqp.Publishing{
		MessageId: head.MessageId, ContentType: head.ContentType, Timestamp: head.Timestamp, DeliveryMode: amqp.Persistent,
		Headers: head.Headers, Body: head.Body,
	}); err != nil {
		t.Fatal(err)
	}
	if err := head.Ack(false); err != nil {
		t.Fatal(err)
	}
	// What dead replay does with it.
	warrentest.WaitDepth(t, dead, 1, 5*time.Second)
	parked, ok, err := ch.Get(dead, false)
	if err != nil || !ok {
		t.Fatalf("take the head from %s: %v, %v", dead, ok, err)
	}
	if err := ch.Publish("", work, false, false, event.Replay(&parked, event.FromDelivery(&parked, time.Now()))); err != nil {
		t.Fatal(err)
	}
	if err := parked.Ack(false); err != nil {
		t.Fatal(err)
	}
	waitInOrderAndReleased(t, rc, cfg, 10*time.Second)
}

// reloadHeldKey holds account a's key behind its first event, which
// fails once and waits 5 s for its retry, with two events behind it; then
// reloads the subscription with the ordering key expression key.
func reloadHeldKey(t *testing.T, key string) (*warrentest.Receiver, *config.Config, *hdEngine) {
	t.Helper()
	rc := failsFirstAttempt(t, "evt_a_000")
	sub := orderedSub(rc.URL)
	sub.Retry.Delays = []time.Duration{5 * time.Second}
	cfg := warrentest.Config(t, sub)
	e := hdStart(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), accountEvent("a", 1), accountEvent("a", 2))
	waitHeld(t, cfg, "a", 2)

	next := *cfg
	reloaded := cfg.Subscriptions[0]
	reloaded.Ordering.Key = key
	next.Subscriptions = []config.Subscription{reloaded}
	e.Reload(&next)
	success := map[string]string{"result": "success"}
	warrentest.WaitUntil(t, 10*time.Second, "the reload", func() bool { return e.metric(t, "warren_config_reloads_total", success) == 1 })
	return rc, cfg, e
}

// TestReloadKeepsTheKeyOfAHead: a reload changes the ordering key
// expression while a key is held. Its head comes back under the new
// expression, which names another key; it still heads the key it was held
// under, and releases the events behind it, in order.
func TestReloadKeepsTheKeyOfAHead(t *testing.T) {
	rc, cfg, e := reloadHeldKey(t, `"account-" + data.account_id`)
	waitState(t, e.Engine, cfg.Subscriptions[0].Name, engine.StateConsuming)
	reloaded := time.Now()

	reqs := waitInOrderAndReleased(t, rc, cfg, 15*time.Second)
	if reqs[1].At.Before(reloaded) {
		t.Errorf("the head came back at %s, before the reload took effect at %s: nothing was tested", reqs[1].At, reloaded)
	}
}

// TestHeadRecordIsNotRedelivered: a head that fails again and again keeps
// its key held. Its record is rewritten at each retry and known to the
// session, not read and requeued: on a quorum queue each requeue is one
// more delivery of the record, which RabbitMQ drops past its delivery
// limit. (It counts on RabbitMQ 3.x, where a requeue raises
// x-delivery-count; from 4.3 a nack no longer does, and it would pass
// either way.)
func TestHeadRecordIsNotRedelivered(t *testing.T) {
	const failures = 5
	var tries atomic.Int32
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		if r.Header.Get("Webhook-Id") == "evt_a_000" && tries.Add(1) <= failures {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	sub := orderedSub(rc.URL)
	last := 30 * time.Second
	sub.Retry.Delays = []time.Duration{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, last}
	cfg := warrentest.Config(t, sub)
	cfg.Broker.QueueType = config.QueueQuorum
	start(t, cfg)
	warrentest.Apply(t, cfg)
	warrentest.Publish(t, cfg, "account.updated", accountEvent("a", 0), accountEvent("a", 1))
	record := waitHeld(t, cfg, "a", 1) + ".head"
	warrentest.WaitDepth(t, cfg.RetryQueue(last), 1, 10*time.Second) // failed 5 times, held for 30s

	if n := deliveryCount(t, warrentest.Get(t, record)); n > 1 {
		t.Errorf("the head record was delivered %d times before, over %d failures of its head: want at most 1", n, failures)
	}
}

// deliveryCount is a quorum queue's x-delivery-count of d.
func deliveryCount(t *testing.T, d amqp.Delivery) int64 {
	t.Helper()
	switch n := d.Headers["x-delivery-count"].(type) {
	case nil:
		return 0 // never delivered before
	case int64:
		return n
	case int32:
		return int64(n)
	case int16:
		return int64(n)
	case int8:
		return int64(n)
	}
	t.Fatalf("x-delivery-count %#v", d.Headers["x-delivery-count"])
	return 0
}

// TestFailingKeyExpressionReleasesTheKeyOfAHead: a reload changes the
// ordering key expression to one that fails for the events of a held key.
// Its head comes back and is parked with the reason, which releases the
// key: the events behind it come back one at a time and are parked too,
// and none is left in the held queue.
func TestFailingKeyExpressionReleasesTheKeyOfAHead(t *testing.T) {
	rc, cfg, _ := reloadHeldKey(t, "data.ledger_id") // no such field: the expression fails
	warrentest.WaitDepth(t, cfg.DeadQueue(cfg.Subscriptions[0]), 3, 20*time.Second)
	waitNoHeldQueue(t, cfg)
	if n := len(rc.Requests()); n != 1 {
		t.Errorf("%d requests, want 1 (the failed attempt): the others cannot be ordered and are parked", n)
	}
}
