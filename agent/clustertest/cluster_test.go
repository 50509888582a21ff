package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/broker"
	"github.com/warren-hq/warren/config"
)

// The stream and its timeline.
const (
	publishEvery = 10 * time.Millisecond // 100 events per second
	flakyEvery   = 7                     // flaky answers 503 to their first attempt
	parkEvery    = 13                    // parks answers 422 (parked at once) to these
	exchange     = "ct-events"
	prefix       = "ct"
)

var subscriptions = []string{"plain", "flaky", "parks"}

const deadQueue = prefix + ".parks.dead"

// probeID marks the message probe publishes to the parking lot.
const probeID = "probe"

func TestCluster(t *testing.T) {
	c := clusterFromEnv(t)
	rcv := newReceiver(t)
	start := time.Now()
	var marks []string
	mark := func(format string, args ...any) {
		m := fmt.Sprintf("%5.1fs  ", time.Since(start).Seconds()) + fmt.Sprintf(format, args...)
		marks = append(marks, m)
		t.Log(m)
	}

	w1 := c.startWarren(t, 1, rcv.addr)
	w2 := c.startWarren(t, 2, rcv.addr)
	w1.awaitReady(t)
	w2.awaitReady(t)
	mark("two warren processes ready")

	pub := &publisher{b: config.Broker{URLs: c.urls}}
	defer pub.close()
	stream := startStream(pub)
	mark("publishing one event every %s", publishEvery)

	time.Sleep(8 * time.Second)
	a, leaders := c.mostLeaders(t)
	queues := c.queueCount(t)
	c.kill(t, a)
	mark("kill -9 %s, leader of %d of %d queues", c.name(a), leaders, queues)

	time.Sleep(8 * time.Second)
	c.startNode(t, a)
	c.awaitMembersOnline(t)
	mark("%s back, every queue has all members online", c.name(a))

	time.Sleep(3 * time.Second)
	b := c.nodeOf(t, w1)
	c.kill(t, b)
	mark("kill -9 %s, the node warren-1 is connected to", c.name(b))

	time.Sleep(8 * time.Second)
	w2.kill(t)
	mark("kill -9 warren-2")

	time.Sleep(8 * time.Second)
	published := stream.stop(t)
	mark("stopped publishing: %d events confirmed, %d publish attempts failed and were repeated", len(published), pub.failures.Load())
	stopped := time.Now()

	want := expected(published)
	if c.awaitSettled(t, rcv, want, 2*time.Minute) {
		mark("every event delivered or parked")
	} else {
		mark("gave up waiting: %d deliveries missing, %d of %d parked", len(rcv.missing(want)), c.depth(t, deadQueue), len(want.parked))
		c.probe(t, deadQueue)
		c.brokerLog(t)
		t.Logf("queues:\n%s", c.run(t, "ctl", strconv.Itoa(c.live()), "list_queues", "name", "messages", "messages_ready", "messages_unacknowledged", "leader", "online"))
	}
	w1.stop(t)
	mark("warren-1 stopped (SIGTERM)")

	// Report before judging, so a failing run still says what it saw.
	report := rcv.report(start, stopped)
	t.Logf("timeline:\n  %s", strings.Join(marks, "\n  "))
	t.Logf("deliveries:\n%s", report)
	for _, w := range []*warren{w1, w2} {
		t.Logf("warren-%d broker link:\n%s", w.n, w.linkLog(t, start))
	}

	for _, miss := range rcv.missing(want) {
		t.Errorf("never delivered: %s", miss)
	}
	c.checkQueues(t, want.parked)
}

// cluster is the set of nodes .ci/cluster-test.sh started.
type cluster struct {
	dir, script, bin string
	urls             []string
	down             map[int]bool
}

func clusterFromEnv(t *testing.T) *cluster {
	dir := os.Getenv("WARREN_CLUSTER_DIR")
	if dir == "" {
		t.Skip("run by make cluster-test (.ci/cluster-test.sh), which starts the cluster")
	}
	return &cluster{
		dir:    dir,
		script: os.Getenv("WARREN_CLUSTER_SCRIPT"),
		bin:    os.Getenv("WARREN_BIN"),
		urls:   strings.Fields(os.Getenv("WARREN_CLUSTER_URLS")),
		down:   map[int]bool{},
	}
}

func (c *cluster) name(n int) string { return fmt.Sprintf("warren-c%d@localhost", n) }

// live is a node that is up, to ask about the cluster.
func (c *cluster) live() int {
	for n := 1; n <= len(c.urls); n++ {
		if !c.down[n] {
			return n
		}
	}
	return 1
}

func (c *cluster) run(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("bash", append([]string{c.script}, args...)...)
	cmd.Env = append(os.Environ(), "DIR="+c.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// kill sends SIGKILL to node n, checking first that the PID is that node's.
func (c *cluster) kill(t *testing.T, n int) {
	t.Helper()
	pid := ownedPID(t, filepath.Join(c.dir, fmt.Sprintf("n%d.pid", n)), "RABBITMQ_NODENAME="+c.name(n))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", c.name(n), err)
	}
	c.down[n] = true
}

func (c *cluster) startNode(t *testing.T, n int) {
	t.Helper()
	c.run(t, "start-node", strconv.Itoa(n))
	c.down[n] = false
}

// ownedPID reads a PID file and checks the process's environment holds mark.
func ownedPID(t *testing.T, file, mark string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil || !slices.Contains(strings.Split(string(env), "\x00"), mark) {
		t.Fatalf("process %d from %s is not ours (%s): %v", pid, file, mark, err)
	}
	return pid
}

type queueInfo struct {
	Name     string   `json:"name"`
	Leader   string   `json:"leader"`
	Online   []string `json:"online"`
	Messages int      `json:"messages"`
}

func (c *cluster) queues(t *testing.T) []queueInfo {
	t.Helper()
	out := c.run(t, "ctl", strconv.Itoa(c.live()), "list_queues", "name", "leader", "online", "messages", "--formatter", "json")
	var all, ours []queueInfo
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatalf("list_queues: %v\n%s", err, out)
	}
	for _, q := range all {
		if strings.HasPrefix(q.Name, prefix+".") {
			ours = append(ours, q)
		}
	}
	return ours
}

func (c *cluster) queueCount(t *testing.T) int { return len(c.queues(t)) }

// mostLeaders is the node leading the most of warren's queues.
func (c *cluster) mostLeaders(t *testing.T) (node, leaders int) {
	t.Helper()
	count := map[string]int{}
	for _, q := range c.queues(t) {
		count[q.Leader]++
	}
	node = c.live()
	for n := 1; n <= len(c.urls); n++ {
		if count[c.name(n)] > count[c.name(node)] {
			node = n
		}
	}
	return node, count[c.name(node)]
}

func (c *cluster) awaitMembersOnline(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		behind := 0
		for _, q := range c.queues(t) {
			if len(q.Online) < len(c.urls) {
				behind++
			}
		}
		if behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queues still miss an online member", behind)
		}
		time.Sleep(time.Second)
	}
}

var amqpPeer = regexp.MustCompile(`127\.0\.0\.1:(\d+)\b`)

// nodeOf is the node warren process w holds a connection to, read from the
// kernel's socket table.
func (c *cluster) nodeOf(t *testing.T, w *warren) int {
	t.Helper()
	out, err := exec.Command("ss", "-tnpH", "state", "established").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	owner := fmt.Sprintf("pid=%d,", w.cmd.Process.Pid)
	for line := range strings.SplitSeq(string(out), "\n") {
		if !strings.Contains(line, owner) {
			continue
		}
		for _, m := range amqpPeer.FindAllStringSubmatch(line, -1) {
			for n, u := range c.urls {
				if strings.Contains(u, ":"+m[1]+"/") {
					return n + 1
				}
			}
		}
	}
	t.Fatalf("warren-%d holds no connection to the cluster", w.n)
	return 0
}

// awaitSettled waits until every event was delivered, the parking lot
// holds at least the parked ones and every other queue is empty (no retry
// copy or duplicate still on its way).
func (c *cluster) awaitSettled(t *testing.T, r *receiver, w want, limit time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for len(r.missing(w)) > 0 || !c.settled(t, len(w.parked)) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Second)
	}
	return true
}

func (c *cluster) settled(t *testing.T, parked int) bool {
	t.Helper()
	for _, q := range c.queues(t) {
		if q.Name == deadQueue && q.Messages < parked || q.Name != deadQueue && q.Messages > 0 {
			return false
		}
	}
	return true
}

// brokerLog logs what the nodes said about dead-lettering, which explains
// a retry tier that stopped moving.
func (c *cluster) brokerLog(t *testing.T) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(c.dir, "n*", "log", "*.log"))
	shown := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			if shown < 10 && strings.Contains(line, "dead-letter") {
				t.Logf("%s: %s", filepath.Base(filepath.Dir(filepath.Dir(f))), line)
				shown++
			}
		}
	}
}

func (c *cluster) depth(t *testing.T, queue string) int {
	t.Helper()
	for _, q := range c.queues(t) {
		if q.Name == queue {
			return q.Messages
		}
	}
	return 0
}

// probe publishes one message to queue on a fresh channel and logs whether
// the broker confirmed it: it tells a queue that takes no messages from a
// channel that is stuck.
func (c *cluster) probe(t *testing.T, queue string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := broker.Dial(ctx, config.Broker{URLs: c.urls}, "cluster-test-probe")
	if err != nil {
		t.Logf("probe: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Logf("probe: %v", err)
		return
	}
	pub, err := broker.NewPublisher(ch)
	if err != nil {
		t.Logf("probe: %v", err)
		return
	}
	defer pub.Close()
	err = pub.Publish(ctx, "", queue, amqp.Publishing{MessageId: probeID})
	t.Logf("probe: a fresh channel on %s publishing to %s: err=%v", conn.RemoteAddr(), queue, err)
}

// checkQueues: nothing left in any of warren's queues but the parked events.
func (c *cluster) checkQueues(t *testing.T, parked map[int]bool) {
	t.Helper()
	dead := deadQueue
	for _, q := range c.queues(t) {
		if q.Name != dead && q.Messages != 0 {
			t.Errorf("%s holds %d messages, want 0", q.Name, q.Messages)
		}
	}
	ids := drain(t, c.urls, dead)
	got := map[int]bool{}
	for _, id := range ids {
		if id != probeID {
			got[eventNumber(id)] = true
		}
	}
	for n := range parked {
		if !got[n] {
			t.Errorf("event %d is neither delivered nor parked in %s", n, dead)
		}
	}
	for n := range got {
		if !parked[n] {
			t.Errorf("event %d parked in %s, want it delivered", n, dead)
		}
	}
	t.Logf("%s: %d messages for %d parked events", dead, len(ids), len(parked))
}

// drain takes every message out of queue and returns their ids.
func drain(t *testing.T, urls []string, queue string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := broker.Dial(ctx, config.Broker{URLs: urls}, "cluster-test-drain")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		if !ok {
			return ids
		}
		ids = append(ids, d.MessageId)
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
}

// warren is one warren process run from the built binary.
type warren struct {
	n     int
	log   string
	cmd   *exec.Cmd
	ready string
	done  chan struct{}
}

func (c *cluster) startWarren(t *testing.T, n int, receiver string) *warren {
	t.Helper()
	listen := freeAddr(t)
	var urls strings.Builder
	for _, u := range c.urls {
		fmt.Fprintf(&urls, "    - %s\n", u)
	}
	var subs strings.Builder
	for _, s := range subscriptions {
		fmt.Fprintf(&subs, "  - {name: %s, url: 'http://%s/%s', events: ['ev.#']}\n", s, receiver, s)
	}
	cfg := fmt.Sprintf(`broker:
  urls:
%s  exchange: %s
  queue_prefix: %s
  queue_type: quorum
server:
  listen: %s
  shutdown_grace: 5s
defaults:
  timeout: 5s
  concurrency: 8
  retry:
    delays: [1s, 3s]
    dead_on_status: [422]
subscriptions:
%s`, urls.String(), exchange, prefix, listen, subs.String())
	path := filepath.Join(c.dir, fmt.Sprintf("warren-%d.yaml", n))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, fmt.Sprintf("warren-%d.log", n))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "run", "-c", path, "--log-format", "json")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The script's cleanup kills it from this file if the test dies.
	pidFile := filepath.Join(c.dir, fmt.Sprintf("warren-%d.pid", n))
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	w := &warren{n: n, log: logPath, cmd: cmd, ready: "http://" + listen + "/readyz", done: make(chan struct{})}
	go func() {
		defer close(w.done)
		_ = cmd.Wait() // exit status is looked at by stop
		logFile.Close()
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = cmd.Process.Kill()
			<-w.done
		}
	})
	return w
}

// linkLog lists the broker connection losses and recoveries warren logged.
func (w *warren) linkLog(t *testing.T, start time.Time) string {
	t.Helper()
	data, err := os.ReadFile(w.log)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for line := range strings.SplitSeq(string(data), "\n") {
		var entry struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
			Err  string    `json:"err"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || !strings.Contains(entry.Msg, "broker") {
			continue
		}
		fmt.Fprintf(&b, "  %5.2fs  %s %s\n", entry.Time.Sub(start).Seconds(), entry.Msg, entry.Err)
	}
	return b.String()
}

func (w *warren) awaitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(w.ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("warren-%d not ready within a minute", w.n)
}

func (w *warren) kill(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

func (w *warren) stop(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
		if code := w.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("warren-%d exited %d after SIGTERM, want 0", w.n, code)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("warren-%d still running 30s after SIGTERM", w.n)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// publisher publishes with confirms through broker.Dial, so it fails over
// between nodes as warren does; a publish that is not confirmed is repeated.
type publisher struct {
	b        config.Broker
	mu       sync.Mutex
	conn     *amqp.Connection
	pub      *broker.Publisher
	failures atomic.Int64
}

func (p *publisher) current(ctx context.Context) (*broker.Publisher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub != nil {
		select {
		case <-p.pub.Done():
			p.closeLocked()
		default:
			return p.pub, nil
		}
	}
	conn, err := broker.Dial(ctx, p.b, "cluster-test-publisher")
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	pub, err := broker.NewPublisher(ch)
	if err != nil {
		conn.Close()
		return nil, err
	}
	p.conn, p.pub = conn, pub
	return pub, nil
}

// drop closes pub if it is still the current one, so the next publish
// reconnects.
func (p *publisher) drop(pub *broker.Publisher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub == pub {
		p.closeLocked()
	}
}

func (p *publisher) closeLocked() {
	if p.conn != nil {
		p.conn.Close() // ends the publisher's channel too
	}
	p.conn, p.pub = nil, nil
}

func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked()
}

// send publishes event n until the broker confirms it.
func (p *publisher) send(ctx context.Context, n int) error {
	for {
		pub, err := p.current(ctx)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = pub.Publish(pctx, exchange, fmt.Sprintf("ev.%d", n), amqp.Publishing{
				MessageId:   eventID(n),
				ContentType: "application/json",
				Body:        fmt.Appendf(nil, `{"n":%d}`, n),
			})
			cancel()
			if err == nil {
				return nil
			}
			p.drop(pub)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.failures.Add(1)
		time.Sleep(200 * time.Millisecond)
	}
}

func eventID(n int) string { return fmt.Sprintf("ev-%06d", n) }

func eventNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "ev-"))
	return n
}

// stream publishes one event every publishEvery from several workers, so a
// slow confirm does not slow the stream.
type stream struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	mu        sync.Mutex
	confirmed []int
	errs      []error
}

func startStream(p *publisher) *stream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{cancel: cancel}
	jobs := make(chan int, 100_000)
	for range 16 {
		s.wg.Go(func() {
			for n := range jobs {
				// Each event is sent until confirmed, even after stop.
				err := p.send(context.Background(), n)
				s.mu.Lock()
				if err == nil {
					s.confirmed = append(s.confirmed, n)
				} else {
					s.errs = append(s.errs, err)
				}
				s.mu.Unlock()
			}
		})
	}
	s.wg.Go(func() {
		defer close(jobs)
		tick := time.NewTicker(publishEvery)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				jobs <- n
			}
		}
	})
	return s
}

func (s *stream) stop(t *testing.T) []int {
	t.Helper()
	s.cancel()
	s.wg.Wait()
	for _, err := range s.errs {
		t.Errorf("publish: %v", err)
	}
	return s.confirmed
}

// want is what the receiver must see: every event on plain and flaky, every
// event on parks but those it parks.
type want struct {
	events []int
	parked map[int]bool
}

func expected(published []int) want {
	w := want{events: published, parked: map[int]bool{}}
	for _, n := range published {
		if n%parkEvery == 0 {
			w.parked[n] = true
		}
	}
	return w
}

// receiver is the HTTP endpoint of every subscription; it records each
// answer it gives by subscription and webhook-id.
type receiver struct {
	addr string
	mu   sync.Mutex
	log  []answer
	ok   map[string]map[int]int // subscription -> event -> 2xx answers
	seen map[int]bool           // flaky events tried once already
}

type answer struct {
	sub    string
	n      int
	at     time.Time
	status int
}

func newReceiver(t *testing.T) *receiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{addr: ln.Addr().String(), ok: map[string]map[int]int{}, seen: map[int]bool{}}
	for _, s := range subscriptions {
		r.ok[s] = map[int]int{}
	}
	srv := &http.Server{Handler: r}
	go func() { _ = srv.Serve(ln) }() // ends with Close below
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	_, _ = io.Copy(io.Discard, req.Body)
	sub := strings.TrimPrefix(req.URL.Path, "/")
	n := eventNumber(req.Header.Get("webhook-id"))
	r.mu.Lock()
	status := http.StatusOK
	switch {
	case sub == "flaky" && n%flakyEvery == 0 && !r.seen[n]:
		r.seen[n] = true
		status = http.StatusServiceUnavailable
	case sub == "parks" && n%parkEvery == 0:
		status = http.StatusUnprocessableEntity
	}
	r.log = append(r.log, answer{sub, n, time.Now(), status})
	if status == http.StatusOK && r.ok[sub] != nil {
		r.ok[sub][n]++
	}
	r.mu.Unlock()
	w.WriteHeader(status)
}

// missing lists "subscription event" for every event not yet delivered.
func (r *receiver) missing(w want) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var miss []string
	for _, s := range subscriptions {
		for _, n := range w.events {
			if s == "parks" && w.parked[n] {
				continue
			}
			if r.ok[s][n] == 0 {
				miss = append(miss, fmt.Sprintf("%s %s", s, eventID(n)))
			}
		}
	}
	return miss
}

// report counts duplicates and finds the longest gap between successful
// deliveries of each subscription while events were being published.
func (r *receiver) report(start, stopped time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, s := range subscriptions {
		events, dups := 0, 0
		for _, count := range r.ok[s] {
			events++
			dups += count - 1
		}
		answers := map[int]int{}
		most := 0
		for _, a := range r.log {
			if a.sub == s {
				answers[a.n]++
				most = max(most, answers[a.n])
			}
		}
		var last, gapAt time.Time
		var gap time.Duration
		for _, a := range r.log {
			if a.sub != s || a.status != http.StatusOK || a.at.After(stopped) {
				continue
			}
			if !last.IsZero() && a.at.Sub(last) > gap {
				gap, gapAt = a.at.Sub(last), last
			}
			last = a.at
		}
		fmt.Fprintf(&b, "  %-6s %5d events delivered, %3d duplicates, longest gap %5.2fs from %5.1fs, at most %d requests for one event\n",
			s, events, dups, gap.Seconds(), gapAt.Sub(start).Seconds(), most)
	}
	return b.String()
}
