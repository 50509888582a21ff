package cli_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/journal"
)

const journalConfig = `broker:
  url: {{.URL}}
  exchange: {{.Unique}}
  queue_prefix: {{.Unique}}
  journal: {max_age: 1h, max_bytes: 10MiB}
server:
  listen: ""
subscriptions:
  - name: orders
    url: http://127.0.0.1:9/
    events: ["order.*"]
`

// listedIDs returns the first column of the table rows whose first column
// starts with prefix.
func listedIDs(out, prefix string) []string {
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// drain takes every message from queue and returns them.
func drain(t *testing.T, conn *amqp.Connection, queue string) []amqp.Delivery {
	t.Helper()
	var ds []amqp.Delivery
	for warrentest.DepthOn(t, conn, queue) > 0 {
		ds = append(ds, take(t, conn, queue))
	}
	return ds
}

func TestEventsAndReplayByTime(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, journalConfig)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)
	work := cfg.WorkQueue(cfg.Subscriptions[0])

	// Window A: two orders, one id-less, and an event orders does not get.
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_a1", `{"n":1}`))
	warrentest.Publish(t, cfg, "order.paid", amqp.Publishing{ContentType: "application/json", Timestamp: time.Now(), Body: []byte(`{"n":2}`)})
	warrentest.Publish(t, cfg, "user.created", warrentest.JSON("evt_a_user", `{"n":3}`))
	// The id the engine gives the id-less event, read where it reads it.
	var idless string
	for _, d := range drain(t, conn, work) {
		if d.MessageId == "" {
			idless = event.FromDelivery(&d, time.Now()).ID
		}
	}
	if idless == "" {
		t.Fatal("id-less event not found in the work queue")
	}

	// The journal writes times to the second: B starts two seconds later.
	time.Sleep(1100 * time.Millisecond)
	mid := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(mid) + 1100*time.Millisecond)
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_b1", `{"n":4}`), warrentest.JSON("evt_b2", `{"n":5}`))
	drain(t, conn, work)
	midText := mid.Format(time.RFC3339)

	r := execute(t, nil, "events", "-c", path)
	r.wantCode(t, 0)
	want := []string{"evt_a1", idless, "evt_a_user", "evt_b1", "evt_b2"}
	if got := listedIDs(r.stdout, "evt_"); !slices.Equal(got, want) {
		t.Errorf("events listed %v, want %v", got, want)
	}
	if !strings.Contains(r.stdout, "5 event(s) listed") {
		t.Errorf("no count in:\n%s", r.stdout)
	}

	r = execute(t, nil, "events", "-c", path, "--id", "evt_b2")
	r.wantCode(t, 0)
	if got := listedIDs(r.stdout, "evt_"); !slices.Equal(got, []string{"evt_b2"}) || !strings.Contains(r.stdout, "order.created") {
		t.Errorf("events --id evt_b2 listed %v:\n%s", got, r.stdout)
	}
	r = execute(t, nil, "events", "-c", path, "--until", midText)
	if got := listedIDs(r.stdout, "evt_"); !slices.Equal(got, want[:3]) {
		t.Errorf("events --until %s listed %v, want %v", midText, got, want[:3])
	}
	r = execute(t, nil, "events", "-c", path, "--since", midText)
	if got := listedIDs(r.stdout, "evt_"); !slices.Equal(got, want[3:]) {
		t.Errorf("events --since %s listed %v, want %v", midText, got, want[3:])
	}
	r = execute(t, nil, "events", "-c", path, "--type", "user.#", "--limit", "1")
	if got := listedIDs(r.stdout, "evt_"); !slices.Equal(got, []string{"evt_a_user"}) {
		t.Errorf("events --type user.# listed %v", got)
	}

	// A dry run counts and sends nothing.
	r = execute(t, nil, "replay", "-c", path, "orders", "--since", "1h", "--until", midText, "--dry-run")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "would replay 2 of 3 event(s)") {
		t.Errorf("dry run printed:\n%s", r.stdout)
	}
	if n := warrentest.DepthOn(t, conn, work); n != 0 {
		t.Errorf("dry run put %d message(s) on %s", n, work)
	}

	// Window A only, the user.created event left out, ids kept.
	r = execute(t, nil, "replay", "-c", path, "orders", "--since", "1h", "--until", midText)
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "replayed 2 of 3 event(s)") {
		t.Errorf("replay printed:\n%s", r.stdout)
	}
	got := drain(t, conn, work)
	var ids, replays []string
	for _, d := range got {
		ids = append(ids, d.MessageId)
		id, _ := d.Headers[event.HeaderReplay].(string)
		replays = append(replays, id)
		if d.Headers[event.HeaderRoutingKey] != "order.created" && d.Headers[event.HeaderRoutingKey] != "order.paid" {
			t.Errorf("replayed %s has %s %v", d.MessageId, event.HeaderRoutingKey, d.Headers[event.HeaderRoutingKey])
		}
		if _, ok := d.Headers["x-stream-offset"]; ok {
			t.Errorf("replayed %s carries the stream offset", d.MessageId)
		}
	}
	if !slices.Equal(ids, []string{"evt_a1", idless}) {
		t.Errorf("work queue got ids %v, want %v", ids, []string{"evt_a1", idless})
	}
	if len(replays) != 2 || replays[0] == "" || replays[0] != replays[1] || !strings.Contains(r.stdout, replays[0]) {
		t.Errorf("%s headers %v, want one replay id, printed in:\n%s", event.HeaderReplay, replays, r.stdout)
	}

	// A replay of the whole journal sends all four orders, marked anew.
	r = execute(t, nil, "replay", "-c", path, "orders", "--since", "1h")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "replayed 4 of 5 event(s)") {
		t.Errorf("replay printed:\n%s", r.stdout)
	}
	if got := drain(t, conn, work); len(got) != 4 || got[0].Headers[event.HeaderReplay] == replays[0] {
		t.Errorf("second replay put %d message(s) on %s, want 4 with a new replay id", len(got), work)
	}

	// --filter narrows it with a CEL expression over the event.
	r = execute(t, nil, "replay", "-c", path, "orders", "--since", "1h", "--filter", "data.n >= 4")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "replayed 2 of 5 event(s)") {
		t.Errorf("filtered replay printed:\n%s", r.stdout)
	}
	var filtered []string
	for _, d := range drain(t, conn, work) {
		filtered = append(filtered, d.MessageId)
	}
	if !slices.Equal(filtered, []string{"evt_b1", "evt_b2"}) {
		t.Errorf("filtered replay sent %v, want [evt_b1 evt_b2]", filtered)
	}
	r = execute(t, nil, "replay", "-c", path, "orders", "--since", "1h", "--filter", "data.n +")
	r.wantCode(t, 2)
}

func TestAttempts(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, journalConfig)
	warrentest.Apply(t, cfg)

	rec := journal.NewRecorder(cfg.AttemptsStream(), journal.RecorderOptions{FlushInterval: 10 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- rec.Run(t.Context(), brokertest.Dial(t)) }()
	at := time.Now()
	rec.Record(journal.Attempt{Subscription: "orders", EventID: "evt_1", Type: "order.created", Attempt: 1, Status: 503,
		DurationMS: 12, Outcome: "retry", Error: "503 Service Unavailable", At: at})
	rec.Record(journal.Attempt{Subscription: "orders", EventID: "evt_2", Type: "order.created", Attempt: 1, Status: 200,
		DurationMS: 3, Outcome: "delivered", At: at})
	rec.Record(journal.Attempt{Subscription: "orders", EventID: "evt_1", Type: "order.created", Attempt: 2, Status: 200,
		DurationMS: 4, Outcome: "delivered", At: at.Add(5 * time.Second)})
	rec.Close()
	if err := <-done; err != nil {
		t.Fatalf("recorder: %v", err)
	}
	if rec.Recorded() != 3 || rec.Dropped() != 0 {
		t.Fatalf("recorded %d, dropped %d; want 3, 0", rec.Recorded(), rec.Dropped())
	}

	r := execute(t, nil, "attempts", "-c", path, "orders", "--event", "evt_1")
	r.wantCode(t, 0)
	var rows []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "evt_") {
			rows = append(rows, strings.Join(strings.Fields(line)[1:8], " "))
		}
	}
	want := []string{
		"orders evt_1 order.created 1 503 12ms retry",
		"orders evt_1 order.created 2 200 4ms delivered",
	}
	if !slices.Equal(rows, want) {
		t.Errorf("attempts --event evt_1 rows:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(r.stdout, `"503 Service Unavailable"`) {
		t.Errorf("the failed attempt's error is missing:\n%s", r.stdout)
	}

	r = execute(t, nil, "attempts", "-c", path, "--outcome", "delivered")
	if !strings.Contains(r.stdout, "2 attempt(s) listed") {
		t.Errorf("attempts --outcome delivered:\n%s", r.stdout)
	}
}

func TestJournalCommandsNeedAJournal(t *testing.T) {
	t.Parallel()
	path, _ := configFile(t, strings.Replace(journalConfig, "  journal: {max_age: 1h, max_bytes: 10MiB}\n", "", 1))
	for _, args := range [][]string{
		{"events"}, {"replay", "orders", "--since", "1h"}, {"attempts"},
	} {
		r := execute(t, nil, append(args, "-c", path)...)
		r.wantCode(t, 2)
		r.noUsage(t)
		if !strings.Contains(r.stderr, "no broker.journal") {
			t.Errorf("warren %s: stderr %q, want it to say the journal is off", args[0], r.stderr)
		}
	}
	r := execute(t, nil, "replay", "orders", "-c", path)
	r.wantCode(t, 2)
	if !strings.Contains(r.stderr, "--since is required") {
		t.Errorf("replay without --since: %q", r.stderr)
	}
	r = execute(t, nil, "events", "-c", path, "--since", "yesterday")
	r.wantCode(t, 2)
	if !strings.Contains(r.stderr, `invalid time "yesterday"`) {
		t.Errorf("events --since yesterday: %q", r.stderr)
	}
}
