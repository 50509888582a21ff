package cli_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

// The real binary, built once for the process tests.
var (
	binDir   string
	buildBin = sync.OnceValues(func() (string, error) {
		bin := filepath.Join(binDir, "warren")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/warren-hq/warren").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
		return bin, nil
	})
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "warren-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func warrenBinary(t *testing.T) string {
	t.Helper()
	bin, err := buildBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// proc is one warren process; its stderr goes to a file.
type proc struct {
	cmd    *exec.Cmd
	stderr string // path
	done   chan struct{}
	err    error
}

// startWarren starts the binary with args; it is killed when the test ends
// if still running.
func startWarren(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(warrenBinary(t), args...), done: make(chan struct{})}
	p.stderr = filepath.Join(t.TempDir(), "stderr")
	f, err := os.Create(p.stderr)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = f
	p.cmd.Stderr = f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code (-1 when a
// signal ended it).
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("warren still running %s later; output:\n%s", timeout, p.output(t))
	}
	var exit *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exit) {
		t.Fatalf("wait: %v", p.err)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

func (p *proc) output(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(p.stderr)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// logLines parses the JSON log lines of the process.
func (p *proc) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.output(t)))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		lines = append(lines, m)
	}
	return lines
}

func TestInvalidConfigExit2(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "bad.yaml", `subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
    colour: blue
`)
	p := startWarren(t, "run", "-c", path, "--log-format", "json")
	if code := p.wait(t, 30*time.Second); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	out := p.output(t)
	if !strings.Contains(out, path+":5") || !strings.Contains(out, "colour") {
		t.Errorf("stderr %q, want FILE:LINE (%s:5) and the unknown key", out, path)
	}
	if strings.Contains(out, "Usage:") {
		t.Errorf("usage text printed: %q", out)
	}
}

// TestKill9LosesNothing publishes 2,000 events, some before and some while
// warren runs, SIGKILLs warren a third of the way through, starts another
// one and checks that every event arrived and nothing is left anywhere.
//
// The receiver answers the first attempt of every tenth event with 500 and
// everything else with 200: retries go through the tier queues (and survive
// the kill there) but never run out, so nothing may be parked.
func TestKill9LosesNothing(t *testing.T) {
	const total = 2000
	var (
		mu        sync.Mutex
		attempts  = map[string]int{} // requests per id
		delivered = map[string]int{} // 2xx answers per id
		unknown   []string
	)
	ids := make([]string, total)
	want := map[string]bool{}
	for i := range ids {
		ids[i] = fmt.Sprintf("evt_k9_%04d", i)
		want[ids[i]] = true
	}
	var deliveredCount atomic.Int64 // distinct ids answered 2xx
	third := make(chan struct{})    // closed when a third is delivered
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		id := r.Header.Get("webhook-id")
		mu.Lock()
		defer mu.Unlock()
		if !want[id] {
			unknown = append(unknown, id)
			return http.StatusBadRequest
		}
		attempts[id]++
		if attempts[id] == 1 && strings.HasSuffix(id, "0") {
			return http.StatusInternalServerError
		}
		delivered[id]++
		if delivered[id] == 1 && deliveredCount.Add(1) == total/3 {
			close(third)
		}
		return http.StatusOK
	})
	path, cfg := configFile(t, header+`defaults:
  timeout: 5s
  concurrency: 16
  retry:
    delays: [100ms, 200ms, 400ms]
subscriptions:
  - name: orders
    url: `+rc.URL+`
    events: ["order.*"]
`)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)

	// Half before warren starts, half while it runs (and while it is down).
	publish(t, conn, cfg.Broker.Exchange, ids[:total/2])
	published := make(chan error, 1)
	go func() { published <- publishErr(conn, cfg.Broker.Exchange, ids[total/2:]) }()

	first := startWarren(t, "run", "-c", path, "--log-format", "json")
	select {
	case <-third:
	case <-time.After(60 * time.Second):
		t.Fatalf("a third of the events not delivered after 60s (%d)", deliveredCount.Load())
	}
	first.signal(t, syscall.SIGKILL)
	first.wait(t, 10*time.Second)
	killedAt := deliveredCount.Load()

	second := startWarren(t, "run", "-c", path, "--log-format", "json")
	if err := <-published; err != nil {
		t.Fatalf("publish: %v", err)
	}
	warrentest.WaitUntil(t, 60*time.Second, "every event delivered", func() bool { return deliveredCount.Load() == total })

	// Let stragglers (redelivered duplicates, retry copies of events
	// delivered meanwhile) drain: every queue empty for longer than the
	// longest tier.
	queues := allQueues(cfg)
	waitStaysEmpty(t, queues, 30*time.Second)
	second.signal(t, syscall.SIGTERM)
	if code := second.wait(t, 30*time.Second); code != 0 {
		t.Errorf("second warren exited %d after SIGTERM, want 0", code)
	}
	for _, q := range queues {
		if n := warrentest.DepthOn(t, conn, q); n != 0 {
			t.Errorf("queue %s holds %d messages after the run, want 0", q, n)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(unknown) > 0 {
		t.Errorf("receiver got %d requests with unknown webhook-ids, e.g. %q", len(unknown), unknown[0])
	}
	requests, deliveries := 0, 0
	for _, id := range ids {
		requests += attempts[id]
		deliveries += delivered[id]
		if delivered[id] == 0 {
			t.Errorf("event %s never delivered", id)
		}
	}
	t.Logf("killed after %d of %d events delivered; %d requests, %d deliveries, %d duplicate deliveries",
		killedAt, total, requests, deliveries, deliveries-total)
	if n := len(rc.Requests()); n != requests+len(unknown) {
		t.Errorf("receiver recorded %d requests, handler counted %d", n, requests+len(unknown))
	}
}

// TestSIGTERMFinishesInFlight stops warren while four slow requests are in
// flight: they finish and are acked, everything else stays in the work
// queue, and warren exits 0.
func TestSIGTERMFinishesInFlight(t *testing.T) {
	// Each request is held until SIGTERM was sent, then 1.5s more: all four
	// are surely in flight when the signal arrives, however slow the host.
	const hold = 1500 * time.Millisecond
	var started, completed atomic.Int32
	sigterm := make(chan struct{})
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int {
		started.Add(1)
		select {
		case <-sigterm:
		case <-time.After(30 * time.Second):
		}
		time.Sleep(hold)
		completed.Add(1)
		return http.StatusOK
	})
	release := sync.OnceFunc(func() { close(sigterm) })
	t.Cleanup(release)
	path, cfg := configFile(t, header+`defaults:
  timeout: 10s
  concurrency: 4
  prefetch: 8
  retry:
    delays: [100ms, 200ms]
subscriptions:
  - name: slow
    url: `+rc.URL+`
    events: ["#"]
`)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)
	ids := make([]string, 12)
	for i := range ids {
		ids[i] = fmt.Sprintf("evt_term_%02d", i)
	}
	publish(t, conn, cfg.Broker.Exchange, ids)

	p := startWarren(t, "run", "-c", path, "--log-format", "json")
	warrentest.WaitUntil(t, 30*time.Second, "four requests in flight", func() bool { return started.Load() >= 4 })
	p.signal(t, syscall.SIGTERM)
	release()
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; output:\n%s", code, p.output(t))
	}
	if s, c := started.Load(), completed.Load(); s != 4 || c != 4 {
		t.Errorf("%d requests started and %d completed, want the 4 in flight at SIGTERM and no more", s, c)
	}
	if n := len(rc.Requests()); n != 4 {
		t.Errorf("receiver got %d requests, want 4", n)
	}
	s := cfg.Subscriptions[0]
	warrentest.WaitDepth(t, cfg.WorkQueue(s), len(ids)-4, 10*time.Second)
	for _, q := range allQueues(cfg) {
		if q == cfg.WorkQueue(s) {
			continue
		}
		if n := warrentest.DepthOn(t, conn, q); n != 0 {
			t.Errorf("queue %s holds %d messages, want 0", q, n)
		}
	}

	var delivered, stopped int
	for _, l := range p.logLines(t) {
		switch l["msg"] {
		case "delivered":
			delivered++
		case "stopped":
			stopped++
		}
	}
	if delivered != 4 || stopped != 1 {
		t.Errorf("log has %d delivered and %d stopped lines, want 4 and 1:\n%s", delivered, stopped, p.output(t))
	}
}

// TestSIGTERMGraceExpiredRequeues stops warren while requests hang longer
// than server.shutdown_grace: they are cut short and their messages go
// back to the work queue, not to a retry tier or the dead queue.
func TestSIGTERMGraceExpiredRequeues(t *testing.T) {
	t.Parallel()
	var started atomic.Int32
	rc := warrentest.NewReceiver(t, func(_ int, r *http.Request) int {
		started.Add(1)
		select {
		case <-r.Context().Done(): // warren gave up
		case <-time.After(20 * time.Second):
		}
		return http.StatusOK
	})
	path, cfg := configFile(t, strings.Replace(header, "shutdown_grace: 10s", "shutdown_grace: 300ms", 1)+`defaults:
  timeout: 30s
  concurrency: 2
  retry:
    delays: [100ms]
subscriptions:
  - name: hung
    url: `+rc.URL+`
    events: ["#"]
`)
	warrentest.Apply(t, cfg)
	conn := brokertest.Dial(t)
	ids := []string{"evt_hung_0", "evt_hung_1", "evt_hung_2", "evt_hung_3", "evt_hung_4"}
	publish(t, conn, cfg.Broker.Exchange, ids)

	p := startWarren(t, "run", "-c", path, "--log-format", "json")
	warrentest.WaitUntil(t, 30*time.Second, "two requests in flight", func() bool { return started.Load() >= 2 })
	sent := time.Now()
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; output:\n%s", code, p.output(t))
	}
	if took := time.Since(sent); took < 300*time.Millisecond {
		t.Errorf("exited %s after SIGTERM, before the 300ms grace was over", took)
	}
	s := cfg.Subscriptions[0]
	warrentest.WaitDepth(t, cfg.WorkQueue(s), len(ids), 10*time.Second)
	for _, q := range allQueues(cfg) {
		if q == cfg.WorkQueue(s) {
			continue
		}
		if n := warrentest.DepthOn(t, conn, q); n != 0 {
			t.Errorf("queue %s holds %d messages, want 0: a cut attempt is not a failure", q, n)
		}
	}
	if n := started.Load(); n != 2 {
		t.Errorf("receiver got %d requests, want the 2 in flight at SIGTERM", n)
	}
}

// publish publishes one persistent JSON event per id to exchange with the
// key order.created, waiting for every confirm.
func publish(t *testing.T, conn *amqp.Connection, exchange string, ids []string) {
	t.Helper()
	if err := publishErr(conn, exchange, ids); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func publishErr(conn *amqp.Connection, exchange string, ids []string) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, len(ids)))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const batch = 100
	for start := 0; start < len(ids); start += batch {
		var confirms []*amqp.DeferredConfirmation
		for _, id := range ids[start:min(start+batch, len(ids))] {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "order.created", true, false, amqp.Publishing{
				MessageId:    id,
				ContentType:  "application/json",
				DeliveryMode: amqp.Persistent,
				Timestamp:    time.Now(),
				Body:         fmt.Appendf(nil, `{"id":%q}`, id),
			})
			if err != nil {
				return err
			}
			confirms = append(confirms, dc)
		}
		for _, dc := range confirms {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("not confirmed: ok=%v err=%v", ok, err)
			}
		}
	}
	select {
	case r := <-returns:
		return fmt.Errorf("event %s returned unroutable", r.MessageId)
	default:
	}
	return nil
}

// waitStaysEmpty waits until every queue has been empty for five polls
// and half a second in a row (longer than the tests' longest retry tier),
// so no retry copy is still on its way back.
func waitStaysEmpty(t *testing.T, queues []string, timeout time.Duration) {
	t.Helper()
	// Ready and unacked both: a message a consumer holds is not settled.
	var polls int
	var since time.Time
	warrentest.WaitUntil(t, timeout, fmt.Sprintf("%v to stay empty", queues), func() bool {
		held := warrentest.Messages(t, "")
		for _, q := range queues {
			if held[q] != 0 {
				polls = 0
				return false
			}
		}
		if polls++; polls == 1 {
			since = time.Now()
		}
		return polls >= 5 && time.Since(since) >= 500*time.Millisecond
	})
}
