package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// Sizes of a run; WARREN_BENCH_N and WARREN_BENCH_ROUNDS override the
// first two.
const (
	defaultBacklog = 50_000
	defaultRounds  = 3
	bodySize       = 256
	routingKey     = "bench.event"
	subscription   = "bench"
	concurrency    = 64
	confirmWindow  = 512 // publishes in flight while publishing a backlog
	testSecret     = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
)

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// env is the broker objects, binaries and receiver a benchmark shares.
type env struct {
	b       *testing.B
	dir     string
	amqpURL string
	conn    *amqp.Connection
	admin   *amqp.Channel // purges and depth polls
	pubConn *amqp.Connection
	gone    chan struct{}  // closed when the broker drops conn
	cfg     *config.Config // every queue the runs use, for cleanup
	work    string
	tier    string // the 1h retry tier
	rc      *receiver
	runs    int64
	// brokerPID is the broker's beam.smp, whose CPU time is the cost a
	// subject pushes onto RabbitMQ.
	brokerPID int
	fanCfg    *config.Config // the fan-out subscriptions, once declared
}

// newEnv declares a unique exchange and queues (deleted when b ends) and
// starts the receiver. It fails at once, saying so, when the broker is down.
func newEnv(b *testing.B) *env {
	brokertest.Dial(b) // fails with the reason and the fix
	e := &env{b: b, dir: b.TempDir(), amqpURL: brokertest.URL()}
	unique := brokertest.Unique(b)
	cfg := config.Default()
	cfg.Broker.URL = e.amqpURL
	cfg.Broker.Exchange = unique
	cfg.Broker.QueuePrefix = unique
	// The default delays include 1h, the tier of the retry runs, so this
	// declares every queue any run uses.
	sub := config.Subscription{Name: subscription, Events: []string{"bench.#"}, Options: cfg.Defaults}
	cfg.Subscriptions = []config.Subscription{sub}
	e.cfg = &cfg
	e.work = cfg.WorkQueue(sub)
	e.tier = cfg.RetryQueue(time.Hour)
	b.Cleanup(e.cleanup)
	if err := e.connect(); err != nil {
		b.Fatal(err)
	}
	e.rc = newReceiver(b)
	pid, err := findBroker()
	if err != nil {
		b.Fatal(err)
	}
	e.brokerPID = pid
	return e
}

// connect (re)opens the benchmark's connections and declares the topology.
func (e *env) connect() error {
	for _, c := range []*amqp.Connection{e.conn, e.pubConn} {
		if c != nil {
			c.Close()
		}
	}
	var err error
	if e.conn, err = dial(); err != nil {
		return err
	}
	if e.pubConn, err = dial(); err != nil {
		return err
	}
	if err := topology.Apply(e.conn, topology.For(e.cfg)); err != nil {
		return fmt.Errorf("declare the benchmark's topology: %w", err)
	}
	if e.admin, err = e.conn.Channel(); err != nil {
		return err
	}
	e.gone = make(chan struct{})
	closed := e.conn.NotifyClose(make(chan *amqp.Error, 1))
	go func(gone chan struct{}) {
		<-closed
		close(gone)
	}(e.gone)
	return nil
}

// dial connects to the broker, waiting up to a minute for it to come back
// if something (a fault-injection test) is restarting it.
func dial() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("warren-bench")
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := amqp.DialConfig(brokertest.URL(), amqp.Config{Properties: props, Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil || time.Now().After(deadline) {
			return conn, err
		}
		time.Sleep(time.Second)
	}
}

func (e *env) cleanup() {
	for _, c := range []*amqp.Connection{e.conn, e.pubConn} {
		if c != nil {
			c.Close()
		}
	}
	conn, err := dial()
	if err != nil {
		e.b.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		e.b.Errorf("cleanup: %v", err)
		return
	}
	plans := []topology.Plan{topology.For(e.cfg)}
	if e.fanCfg != nil {
		plans = append(plans, topology.For(e.fanCfg))
	}
	for _, p := range plans {
		for _, q := range append(p.Queues, p.Tiers...) {
			if _, err := ch.QueueDelete(q.Name, false, false, false); err != nil {
				e.b.Errorf("cleanup: delete queue %s: %v", q.Name, err)
				return
			}
		}
		// Each tier queue is fed by a fanout exchange of its name.
		for _, q := range p.Tiers {
			if err := ch.ExchangeDelete(q.Name, false, false); err != nil {
				e.b.Errorf("cleanup: delete exchange %s: %v", q.Name, err)
				return
			}
		}
	}
	if err := ch.ExchangeDelete(e.cfg.Broker.Exchange, false, false); err != nil {
		e.b.Errorf("cleanup: delete exchange: %v", err)
	}
}

// runFailed aborts one run (see measure).
type runFailed struct{ msg string }

// fail aborts the current run, which measure then reports as failed.
func (e *env) fail(format string, args ...any) {
	panic(runFailed{fmt.Sprintf(format, args...)})
}

// measure performs one run. A run that fails (the subject exits, times
// out, delivers twice, leaves messages behind, or the broker drops the
// benchmark's connections) is printed as FAILED and fails the benchmark;
// it is never tried again, so a flaky subject cannot hide behind its
// better attempts. The next run starts on fresh connections.
func (e *env) measure(what string, run func() sample) (sample, bool) {
	s, err := e.try(run)
	if err == nil {
		return s, true
	}
	fmt.Printf("  FAILED %s: %v\n", what, err)
	e.b.Errorf("%s: %v", what, err)
	if e.conn.IsClosed() || e.pubConn.IsClosed() {
		if err := e.connect(); err != nil {
			e.b.Fatalf("reconnect: %v", err)
		}
	}
	return sample{}, false
}

func (e *env) try(run func() sample) (s sample, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(runFailed)
			if !ok {
				panic(r)
			}
			err = errors.New(f.msg)
		}
	}()
	s = run()
	if e.conn.IsClosed() || e.pubConn.IsClosed() {
		return s, errors.New("the broker closed the benchmark's connections during the run")
	}
	return s, nil
}

// warrenConfig writes warren's config file with every feature of SPEC §15
// on: the envelope format, one signing secret, the metrics server on a free
// port (info logs go to a file: see warrenSubject); concurrency 64, so
// prefetch 128. The retry runs have the single delay 1h, so no copy comes
// back during the run. Checked by TestWarrenConfig.
func (e *env) warrenConfig(name string, retry bool) string {
	var y strings.Builder
	e.configHead(&y)
	y.WriteString("subscriptions:\n")
	fmt.Fprintf(&y, "  - name: %s\n    url: %s\n    events: [\"bench.#\"]\n", subscription, e.rc.url)
	fmt.Fprintf(&y, "    secrets: [%s]\n    format: envelope\n    concurrency: %d\n", testSecret, concurrency)
	if retry {
		y.WriteString("    retry:\n      delays: [1h]\n")
	}
	return e.writeConfig(name, y.String())
}

// fanOutConfig is warrenConfig for the fan-out runs: fanOut subscriptions
// of the same events, each POSTing to the receiver with ?s=<index>, with
// default concurrency and the single delay 1h (fewer queues to declare).
func (e *env) fanOutConfig(name string) string {
	var y strings.Builder
	e.configHead(&y)
	y.WriteString("defaults:\n  format: envelope\n  retry:\n    delays: [1h]\n")
	y.WriteString("subscriptions:\n")
	for i := range fanOut {
		fmt.Fprintf(&y, "  - {name: %s, url: %q, events: [\"fan.#\"], secrets: [%s]}\n",
			fanOutName(i), fmt.Sprintf("%s?s=%d", e.rc.url, i), testSecret)
	}
	return e.writeConfig(name, y.String())
}

// configHead writes the broker and server sections and returns the
// address of the metrics server.
func (e *env) configHead(y *strings.Builder) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.b.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	fmt.Fprintf(y, "broker:\n  url: %s\n  exchange: %s\n  queue_prefix: %s\n",
		strconv.Quote(e.amqpURL), e.cfg.Broker.Exchange, e.cfg.Broker.QueuePrefix)
	fmt.Fprintf(y, "server:\n  listen: %s\n", metricsAddr)
	return metricsAddr
}

func (e *env) writeConfig(name, yaml string) string {
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		e.b.Fatal(err)
	}
	return path
}

// purge empties the work queue and the 1h tier between runs.
func (e *env) purge() {
	for _, q := range []string{e.work, e.tier} {
		if _, err := e.admin.QueuePurge(q, false); err != nil {
			e.fail("purge %s: %v", q, err)
		}
	}
}

// queue returns a queue's ready messages and consumers.
func (e *env) queue(name string) (messages, consumers int) {
	q, err := e.admin.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		e.fail("inspect queue %s: %v", name, err)
	}
	return q.Messages, q.Consumers
}

// waitConsumer waits until the work queue has a consumer.
func (e *env) waitConsumer(p *proc, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		if _, c := e.queue(e.work); c > 0 {
			return
		}
		p.check()
		if time.Now().After(deadline) {
			e.fail("no consumer on %s after %s", e.work, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nextRun numbers runs so the receiver ignores anything a previous one left.
func (e *env) nextRun() int64 {
	e.runs++
	return e.runs
}

// body is a 256-byte JSON message carrying its run, seq and publish time.
func body(run int64, seq int, ts time.Time) []byte {
	b := make([]byte, 0, bodySize)
	b = fmt.Appendf(b, `{"run":%d,"seq":%d,"ts":%d,"pad":"`, run, seq, ts.UnixNano())
	for len(b) < bodySize-2 {
		b = append(b, 'x')
	}
	return append(b, '"', '}')
}

// publish sends n persistent messages of run through the exchange with up to
// confirmWindow confirms in flight. With every > 0 message i leaves no
// earlier than i*every after the start (a steady rate); otherwise as fast as
// the broker confirms.
func (e *env) publish(run int64, n int, every time.Duration) { e.publishTo(routingKey, run, n, every) }

// publishTo is publish with a routing key.
func (e *env) publishTo(key string, run int64, n int, every time.Duration) {
	ch, err := e.pubConn.Channel()
	if err != nil {
		e.fail("publish: %v", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		e.fail("publish: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	window := make([]*amqp.DeferredConfirmation, confirmWindow)
	wait := func(dc *amqp.DeferredConfirmation) {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			e.fail("publish not confirmed: ok=%v err=%v", ok, err)
		}
	}
	start := time.Now()
	for i := range n {
		if every > 0 {
			if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
				time.Sleep(d)
			}
		}
		if dc := window[i%confirmWindow]; dc != nil {
			wait(dc)
		}
		now := time.Now()
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, e.cfg.Broker.Exchange, key,
			false, // mandatory
			false, // immediate
			amqp.Publishing{
				DeliveryMode: amqp.Persistent,
				ContentType:  "application/json",
				MessageId:    "bench-" + strconv.FormatInt(run, 10) + "-" + strconv.Itoa(i),
				Timestamp:    now,
				Body:         body(run, i, now),
			})
		if err != nil {
			e.fail("publish: %v", err)
		}
		window[i%confirmWindow] = dc
	}
	for _, dc := range window {
		if dc != nil {
			wait(dc)
		}
	}
}

// build compiles pkg (a package path or directory) into the benchmark's
// directory, the same way for warren and the bridge.
func build(b *testing.B, dir, name, pkg string) string {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// proc is a subject (warren or the bridge) running as a child process, so
// its CPU time and peak RSS are its own.
type proc struct {
	e       *env
	name    string
	cmd     *exec.Cmd
	lines   chan string // stdout, line by line
	log     string
	exited  chan struct{}
	exitErr error // once exited is closed
	started time.Time
}

func (e *env) start(name string, args ...string) *proc {
	log := filepath.Join(e.dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		e.b.Fatal(err)
	}
	defer f.Close()
	p := &proc{e: e, name: name, cmd: exec.Command(args[0], args[1:]...),
		lines: make(chan string, 16), log: log, exited: make(chan struct{})}
	p.cmd.Stderr = f
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		e.b.Fatal(err)
	}
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		e.b.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads this subject's output
			}
		}
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	return p
}

// line waits for the next stdout line starting with prefix and returns the
// rest.
func (p *proc) line(prefix string, timeout time.Duration) string {
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-p.exited:
			p.e.fail("%s exited (%v) before printing %q:\n%s", p.name, p.exitErr, prefix, tail(p.log))
		case <-p.e.gone:
			p.e.fail("the broker closed the benchmark's connection")
		case <-deadline:
			p.e.fail("%s printed no %q within %s", p.name, prefix, timeout)
		}
	}
}

// check fails the run if p exited or the broker dropped the benchmark's
// connection.
func (p *proc) check() {
	select {
	case <-p.exited:
		p.e.fail("%s exited (%v):\n%s", p.name, p.exitErr, tail(p.log))
	case <-p.e.gone:
		p.e.fail("the broker closed the benchmark's connection")
	default:
	}
}

// wait waits for ch, failing the run if p exits, the broker drops the
// benchmark's connection or timeout passes first.
func (p *proc) wait(ch <-chan struct{}, timeout time.Duration, what func() string) {
	select {
	case <-ch:
	case <-p.exited:
		p.e.fail("%s exited (%v) while waiting for %s:\n%s", p.name, p.exitErr, what(), tail(p.log))
	case <-p.e.gone:
		p.e.fail("the broker closed the benchmark's connection while waiting for %s", what())
	case <-time.After(timeout):
		p.e.fail("%s: timed out after %s waiting for %s; see %s:\n%s", p.name, timeout, what(), p.log, tail(p.log))
	}
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on Linux.
const clockTick = 10 * time.Millisecond

// cpu is the process's user+system CPU time so far, all threads.
func (p *proc) cpu() time.Duration {
	d, err := cpuOf(p.cmd.Process.Pid)
	if err != nil {
		p.e.fail("%s: %v", p.name, err)
	}
	return d
}

// brokerCPU is the broker's (beam.smp's) CPU time so far.
func (e *env) brokerCPU() time.Duration {
	d, err := cpuOf(e.brokerPID)
	if err != nil {
		e.fail("broker CPU: %v (did the broker restart?)", err)
	}
	return d
}

func cpuOf(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name: state is field 3, utime
	// and stime are fields 14 and 15.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * clockTick, nil
}

// findBroker returns the OS process id of the broker's Erlang VM, as
// rabbitmqctl status reports it; the broker must run on this machine.
func findBroker() (int, error) {
	out, err := exec.Command("rabbitmqctl", "status").Output()
	if err != nil {
		return 0, fmt.Errorf("rabbitmqctl status: %v (the benchmark reads the broker's CPU time from /proc and its queues with rabbitmqctl: run it where RabbitMQ runs)", err)
	}
	for l := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "OS PID:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("rabbitmqctl status printed no OS PID")
}

// counts is a queue's ready and unacknowledged messages and its consumers,
// as the broker's queue processes report them now.
type counts struct{ ready, unacked, consumers int }

// queueCounts lists every queue of the default vhost with rabbitmqctl: the
// only way to read messages_unacknowledged that is not minutes stale (a
// passive declare returns ready messages only; the management API's
// figures are collected every 5s). It costs about half a second.
func (e *env) queueCounts() map[string]counts {
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "--no-table-headers",
		"name", "messages_ready", "messages_unacknowledged", "consumers").Output()
	if err != nil {
		e.fail("rabbitmqctl list_queues: %v", err)
	}
	m := map[string]counts{}
	for l := range strings.Lines(string(out)) {
		f := strings.Fields(l)
		if len(f) != 4 {
			continue
		}
		var c counts
		var err1, err2, err3 error
		c.ready, err1 = strconv.Atoi(f[1])
		c.unacked, err2 = strconv.Atoi(f[2])
		c.consumers, err3 = strconv.Atoi(f[3])
		if err := errors.Join(err1, err2, err3); err != nil {
			e.fail("rabbitmqctl list_queues: %q: %v", l, err)
		}
		m[f[0]] = c
	}
	return m
}

// peakRSS is VmHWM, the process's peak resident set, in bytes.
func (p *proc) peakRSS() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		p.e.fail("%s: %v", p.name, err)
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	p.e.fail("%s: no VmHWM in /proc/PID/status", p.name)
	return 0
}

// stop sends SIGTERM and waits for p to exit; a run ends with a clean
// stop, and its deferred kill is then a no-op.
func (p *proc) stop() {
	p.kill()
	if p.exitErr != nil {
		p.e.fail("%s exited with %v; see %s:\n%s", p.name, p.exitErr, p.log, tail(p.log))
	}
}

// kill stops p (SIGTERM, then SIGKILL after 40s) if it still runs.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(40 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		p.e.fail("%s did not stop within 40s of SIGTERM", p.name)
	}
}

// tail is the end of a log file, for failure messages.
func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}
