package engine

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// frames records what an acker sends to the channel, in order.
type frames struct {
	mu   sync.Mutex
	sent []string
}

func (f *frames) add(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, fmt.Sprintf(format, args...))
	return nil
}

func (f *frames) Ack(tag uint64, multiple bool) error { return f.add("ack %d %v", tag, multiple) }
func (f *frames) Nack(tag uint64, multiple, requeue bool) error {
	return f.add("nack %d %v", tag, multiple)
}
func (f *frames) Reject(tag uint64, requeue bool) error { return f.add("reject %d", tag) }

func (f *frames) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sent
	f.sent = nil
	return s
}

func tracked(a *acker, n int) []amqp.Delivery {
	ds := make([]amqp.Delivery, n)
	for i := range ds {
		ds[i].DeliveryTag = uint64(i + 1)
		a.track(&ds[i])
	}
	return ds
}

func expectFrames(t *testing.T, f *frames, want ...string) {
	t.Helper()
	if got := f.take(); !slices.Equal(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
}

// slowAcks stops the acker's timer from firing within a test: due is
// called by hand.
func slowAcks(t *testing.T, delay, straggle time.Duration) {
	d, s := ackDelay, ackStraggle
	t.Cleanup(func() { ackDelay, ackStraggle = d, s })
	ackDelay, ackStraggle = delay, straggle
}

func TestAckerCoalescesARunOfSettledDeliveries(t *testing.T) {
	slowAcks(t, time.Hour, time.Hour)
	f := &frames{}
	a := newAcker(f)
	ds := tracked(a, 6)

	ds[2].Ack(false)
	ds[1].Ack(false)
	a.due()
	expectFrames(t, f) // 1 is still open: nothing may cover 2 and 3 yet
	ds[0].Ack(false)
	expectFrames(t, f) // acks wait for the timer
	a.due()
	expectFrames(t, f, "ack 3 true")
	ds[5].Ack(false)
	ds[4].Ack(false)
	ds[3].Nack(false, true) // a nack goes at once
	expectFrames(t, f, "nack 4 false")
	a.due()
	expectFrames(t, f, "ack 6 true")

	more := tracked(newAcker(f), 1)
	more[0].Ack(false) // twice: a second ack of a tag closes the channel
	more[0].Ack(false)
	more[0].Acknowledger.(*acker).flush()
	expectFrames(t, f, "ack 1 false")
}

func TestAckerAcksStragglersOnTheirOwnAfterAWhile(t *testing.T) {
	slowAcks(t, time.Millisecond, 10*time.Millisecond)
	f := &frames{}
	a := newAcker(f)
	ds := tracked(a, 4)

	ds[1].Ack(false)
	ds[3].Ack(false)
	deadline := time.Now().Add(5 * time.Second)
	var got []string
	for len(got) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		got = append(got, f.take()...)
	}
	// Delivery 1 hangs: 2 and 4 are acked one by one, never with multiple,
	// which would ack 1 (and 3) too.
	if !slices.Equal(got, []string{"ack 2 false", "ack 4 false"}) {
		t.Fatalf("frames %q, want the stragglers acked on their own", got)
	}
	ds[0].Ack(false)
	ds[2].Ack(false)
	a.flush()
	expectFrames(t, f, "ack 3 true")
}

// TestAckerNeverAcksAnOpenDelivery settles deliveries in random order
// from many goroutines, nacking some, and checks what a broker would make
// of the frames: every delivery settled once, as its attempt said, and
// none acked by a multiple ack before its attempt settled it.
func TestAckerNeverAcksAnOpenDelivery(t *testing.T) {
	slowAcks(t, 100*time.Microsecond, 200*time.Microsecond)
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		b := &brokerModel{t: t, outcome: map[uint64]string{}, wanted: map[uint64]string{}}
		a := newAcker(b)
		const n = 300
		ds := make([]amqp.Delivery, n)
		for i := range ds {
			ds[i].DeliveryTag = uint64(i + 1)
		}
		var wg sync.WaitGroup
		for i := range ds {
			a.track(&ds[i])
			want := "ack"
			if rng.IntN(10) == 0 {
				want = "nack"
			}
			pause := time.Duration(rng.IntN(300)) * time.Microsecond
			b.want(ds[i].DeliveryTag, want)
			wg.Go(func() {
				time.Sleep(pause)
				b.settle(ds[i].DeliveryTag)
				if want == "ack" {
					ds[i].Ack(false)
				} else {
					ds[i].Nack(false, true)
				}
			})
		}
		wg.Wait()
		a.flush()
		b.check(n)
	}
}

// brokerModel holds what the broker knows of a channel's deliveries.
type brokerModel struct {
	t       *testing.T
	mu      sync.Mutex
	wanted  map[uint64]string // what each attempt decides
	done    []uint64          // attempts that have decided
	outcome map[uint64]string
}

func (b *brokerModel) want(tag uint64, what string) {
	b.mu.Lock()
	b.wanted[tag] = what
	b.mu.Unlock()
}

func (b *brokerModel) settle(tag uint64) {
	b.mu.Lock()
	b.done = append(b.done, tag)
	b.mu.Unlock()
}

func (b *brokerModel) apply(tag uint64, what string) {
	if prev, ok := b.outcome[tag]; ok {
		b.t.Errorf("delivery %d: %s after %s", tag, what, prev)
		return
	}
	if !slices.Contains(b.done, tag) {
		b.t.Errorf("delivery %d: %s before its attempt settled it", tag, what)
	}
	if b.wanted[tag] != what {
		b.t.Errorf("delivery %d: %s, its attempt said %s", tag, what, b.wanted[tag])
	}
	b.outcome[tag] = what
}

func (b *brokerModel) Ack(tag uint64, multiple bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !multiple {
		b.apply(tag, "ack")
		return nil
	}
	for t := range b.wanted {
		if _, ok := b.outcome[t]; !ok && t <= tag {
			b.apply(t, "ack")
		}
	}
	return nil
}

func (b *brokerModel) Nack(tag uint64, multiple, requeue bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.apply(tag, "nack")
	return nil
}

func (b *brokerModel) Reject(tag uint64, requeue bool) error { return b.Nack(tag, false, requeue) }

func (b *brokerModel) check(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.outcome) != n {
		b.t.Fatalf("%d of %d deliveries settled on the broker", len(b.outcome), n)
	}
}
