package engine

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// depthsPerSecond caps the passive declares the sampler sends: with
// thousands of subscriptions a round takes longer instead of loading the
// broker.
const depthsPerSecond = 200

// sampleDepths reads the depth of every work, dead and tier queue with
// passive declares on a channel of its own until ctx ends. A work queue
// whose consumer is up and holds nothing has nothing ready: it is not
// asked, which at thousands of idle subscriptions halves the declares.
func (e *Engine) sampleDepths(ctx context.Context) {
	var ch *amqp.Channel
	var release func()
	drop := func() {
		if ch != nil {
			ch.Close()
			release()
			ch = nil
		}
	}
	defer drop()
	pace := time.NewTicker(time.Second / depthsPerSecond)
	defer pace.Stop()
	depth := func(queue string) (int, bool) {
		select {
		case <-ctx.Done():
			return 0, false
		case <-pace.C:
		}
		e.mu.Lock()
		l := e.links
		e.mu.Unlock()
		if ch == nil || ch.IsClosed() {
			drop()
			if l == nil || !l.up() {
				return 0, false
			}
			var err error
			if ch, release, err = l.channel(ctx); err != nil {
				ch = nil
				return 0, false
			}
		}
		// A missing queue closes the channel; the next call reopens it.
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return 0, false
		}
		return q.Messages, true
	}
	for {
		cfg, subs := e.current()
		for _, s := range subs {
			if s.empty.Load() {
				s.metrics.WorkMessages.Set(0)
			} else if n, ok := depth(s.work); ok {
				s.metrics.WorkMessages.Set(float64(n))
			}
			if n, ok := depth(s.dead); ok {
				s.metrics.DeadMessages.Set(float64(n))
			}
		}
		for _, d := range cfg.Tiers() {
			q := cfg.RetryQueue(d)
			if n, ok := depth(q); ok {
				e.metrics.TierMessages(q).Set(float64(n))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(e.SampleEvery):
		}
	}
}
