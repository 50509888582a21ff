package journal

import (
	"context"
	"crypto/rand"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/rules"
	"github.com/warren-hq/warren/agent/topic"
	"github.com/warren-hq/warren/config"
)

// replayWindow is how many replayed messages await their confirms at once.
const replayWindow = 256

// Replay is one run of `warren replay`.
type Replay struct {
	Stream       string // P.journal
	WorkQueue    string // P.S
	Subscription config.Subscription
	// Rules are the subscription's filter and api_version, and the
	// replay's own --filter, all of which an event must pass; nil: none.
	Rules  []*rules.Program
	Window Window
	DryRun bool // count, publish nothing
	// Progress, when set, is called after each message read.
	Progress func(read, matched int)
}

// ReplayResult counts what a replay read and sent.
type ReplayResult struct {
	ID      string // the warren-replay header value
	Read    int    // events read from the journal in the window
	Matched int    // of those, events the subscription would have received
	Sent    int    // of those, events confirmed on the work queue (0 on a dry run)
}

// Run reads the window and publishes every event the subscription would
// have received to its work queue, in journal order, each confirmed, with
// its original id.
func (r Replay) Run(ctx context.Context, conn *amqp.Connection) (ReplayResult, error) {
	res := ReplayResult{ID: "rpl_" + rand.Text()}
	var pub *confirmer
	if !r.DryRun {
		var err error
		if pub, err = newConfirmer(conn, replayWindow); err != nil {
			return res, err
		}
		defer pub.close()
	}
	inFlight := 0
	flush := func() error {
		if err := pub.wait(ctx); err != nil {
			return err
		}
		res.Sent += inFlight
		inFlight = 0
		return nil
	}
	err := Read(ctx, conn, r.Stream, r.Window, func(d *amqp.Delivery) error {
		res.Read++
		defer func() {
			if r.Progress != nil {
				r.Progress(res.Read, res.Matched)
			}
		}()
		if !Receives(r.Subscription, r.Rules, d) {
			return nil
		}
		res.Matched++
		if r.DryRun {
			return nil
		}
		if pub.full() {
			if err := flush(); err != nil {
				return err
			}
		}
		if err := pub.publish(ctx, "", r.WorkQueue, ReplayMessage(d, res.ID, time.Now())); err != nil {
			return err
		}
		inFlight++
		return nil
	})
	if err == nil && inFlight > 0 {
		err = flush()
	}
	return res, err
}

// Receives reports whether subscription s would have received the journaled
// message d: one of its topic patterns matches, and every program (its
// filter and api_version, the replay's --filter) wants it. An event on
// which an expression fails is not replayed: the engine would park it.
// This is the one place that decides what a replay sends.
func Receives(s config.Subscription, programs []*rules.Program, d *amqp.Delivery) bool {
	if !slices.ContainsFunc(s.Events, func(p string) bool { return topic.Match(p, d.RoutingKey) }) {
		return false
	}
	in := rules.NewInput(event.FromDelivery(d, time.Now()), d.Headers)
	for _, p := range programs {
		if ok, err := p.Wants(in); !ok || err != nil {
			return false
		}
	}
	return true
}

// ReplayMessage builds the copy of journaled message d that a replay puts on
// a work queue: the body, properties and publisher headers, the original
// event id as message_id (the one event.FromDelivery gives the original,
// so an id-less message keeps its derived id), the original routing key in
// warren-routing-key, and the replay id in warren-replay. What only fits the
// stream or warren's earlier copies is dropped: the stream offset, attempt
// headers and user_id (a publish under warren's login may not carry
// another user's).
func ReplayMessage(d *amqp.Delivery, replayID string, now time.Time) amqp.Publishing {
	ev := event.FromDelivery(d, now)
	p := event.Replay(d, ev)
	delete(p.Headers, headerOffset)
	delete(p.Headers, event.HeaderFirstAttemptAt)
	event.Unmark(p.Headers)                  // the event as published heads nothing
	p.Headers[event.HeaderReplay] = replayID // the dedup window lets it through
	p.UserId = ""
	return p
}
