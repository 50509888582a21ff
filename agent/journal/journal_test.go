package journal_test

import (
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/journal"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// stream declares a stream for one test and deletes it afterwards.
func stream(t *testing.T, conn *amqp.Connection) string {
	t.Helper()
	name := brokertest.Unique(t) + ".attempts"
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	args := topology.StreamArgs(config.Journal{MaxAge: time.Hour, MaxBytes: config.MiB})
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDelete(name, false, false, false)
			ch.Close()
		}
		if err != nil {
			t.Errorf("delete stream %s: %v", name, err)
		}
	})
	return name
}

func readAttempts(t *testing.T, conn *amqp.Connection, name string) []journal.Attempt {
	t.Helper()
	var got []journal.Attempt
	err := journal.Read(t.Context(), conn, name, journal.Window{}, func(d *amqp.Delivery) error {
		records := journal.Attempts(d)
		if len(records) == 0 {
			t.Errorf("message %q holds no record", d.Body)
		}
		got = append(got, records...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// A broker slower than delivery costs the oldest records, never a block.
func TestRecorderDropsOldestWhenFull(t *testing.T) {
	t.Parallel()
	conn := brokertest.Dial(t)
	name := stream(t, conn)
	rec := journal.NewRecorder(name, journal.RecorderOptions{BufferSize: 3, BatchSize: 2})
	for i := 1; i <= 5; i++ {
		rec.Record(journal.Attempt{EventID: "evt", Attempt: i}) // no Run yet: nothing drains
	}
	if rec.Dropped() != 2 || rec.Pending() != 3 {
		t.Fatalf("dropped %d, pending %d; want 2, 3", rec.Dropped(), rec.Pending())
	}
	done := make(chan error, 1)
	go func() { done <- rec.Run(t.Context(), conn) }()
	rec.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rec.Record(journal.Attempt{EventID: "evt", Attempt: 6}) // after Close: dropped
	var attempts []int
	for _, a := range readAttempts(t, conn, name) {
		attempts = append(attempts, a.Attempt)
	}
	if !slices.Equal(attempts, []int{3, 4, 5}) || rec.Recorded() != 3 || rec.Dropped() != 3 {
		t.Errorf("stream holds attempts %v, recorded %d, dropped %d; want [3 4 5], 3, 3", attempts, rec.Recorded(), rec.Dropped())
	}
}

// Read of an empty stream ends at once: the marker it writes is its end,
// and an earlier reader's marker is skipped.
func TestReadEmptyStreamEnds(t *testing.T) {
	t.Parallel()
	conn := brokertest.Dial(t)
	name := stream(t, conn)
	for range 2 {
		if got := readAttempts(t, conn, name); len(got) != 0 {
			t.Errorf("read %d records from an empty stream", len(got))
		}
	}
	err := journal.Read(t.Context(), conn, brokertest.Unique(t)+".missing", journal.Window{}, func(*amqp.Delivery) error { return nil })
	if err == nil {
		t.Error("read of a missing stream succeeded")
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2h":                        now.Add(-2 * time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
		"2026-01-01T10:00:00Z":      time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC),
		"2026-01-01T10:00:00+02:00": time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC),
	} {
		got, err := journal.ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-2h", "yesterday", "2026-01-01", "2026-01-01 10:00"} {
		if got, err := journal.ParseTime(in, now); err == nil {
			t.Errorf("ParseTime(%q) = %v, want an error", in, got)
		}
	}
}

// TestReplayMessageHeadsNothing: a journaled event is the event as it was
// published; replayed, it is a new delivery of it, never a key's head, even
// when the publisher set the head mark.
func TestReplayMessageHeadsNothing(t *testing.T) {
	d := &amqp.Delivery{MessageId: "evt_1", RoutingKey: "account.updated", Body: []byte(`{}`),
		Headers: amqp.Table{event.HeaderKeyHead: true, event.HeaderHeldKey: "acct_1", "x-death": []any{amqp.Table{"reason": "expired"}}}}
	p := journal.ReplayMessage(d, "rpl_1", time.Now())
	if event.IsKeyHead(&amqp.Delivery{Headers: p.Headers}) {
		t.Error("a replayed journal entry is marked as its key's head")
	}
	if p.Headers[event.HeaderReplay] != "rpl_1" || p.MessageId != "evt_1" {
		t.Errorf("replay headers %v, id %q; want the replay id and evt_1", p.Headers, p.MessageId)
	}
}
