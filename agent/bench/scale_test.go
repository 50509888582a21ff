package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/server"
)

// The goals of SPEC §10 for one warren with the default config.
var scaleGoals = map[int]struct {
	consuming, rss, fanOut float64 // s, MB, s; 0: no goal
}{
	1000:  {consuming: 10},
	10000: {consuming: 120, rss: 300, fanOut: 20},
}

const (
	scaleKey         = "charge.succeeded"
	scaleSettle      = 5 * time.Second // before idle RSS is read
	scaleStartLimit  = 10 * time.Minute
	scaleFanOutLimit = 5 * time.Minute
)

func scaleName(i int) string { return fmt.Sprintf("m%05d", i) }

// scaleRow is what one size measured.
type scaleRow struct {
	subs          int
	consuming     float64 // s from exec to every subscription consuming
	idleRSS       float64 // MB, VmRSS once idle
	goroutines    int     // go_goroutines once idle
	heapMB        float64 // go_memstats_heap_inuse_bytes once idle
	stackMB       float64 // go_memstats_stack_inuse_bytes once idle
	idleCPU       float64 // warren's CPU while idle, % of one core
	brokerIdleCPU float64 // the broker's over the same time (shared broker)
	fanOut        float64 // s from publishing one event to its last delivery
	rssAfter      float64 // MB, VmRSS after the fan-out
	hwm           float64 // MB, VmHWM after the fan-out
	httpConns     int64   // connections the receiver accepted in the fan-out
	queues        int     // under the prefix, this run's subscriptions and the tiers
	conns         int     // warren's broker connections
	channels      int     // on them
	maxChannels   int     // on the fullest one
	brokerBefore  float64 // MB, erlang:memory(total) before warren started
	brokerIdle    float64 // MB, with every subscription consuming
	queueMemory   float64 // MB, the memory of this run's queue processes
	brokerAfter   float64 // MB, after the fan-out
	brokerCleaned float64 // MB, after this run's queues were deleted
	exit          float64 // s from SIGTERM to exit
	cleanup       float64 // s to delete this run's queues
}

// BenchmarkScale runs one warren with N subscriptions of the default config
// (concurrency 16, six retry delays), all bound to charge.# and all POSTing
// to one receiver (path /s/<name>), for each N of WARREN_BENCH_SCALE
// (default 1000,5000,10000). It measures the start-up until every
// subscription consumes, the idle RSS, one event delivered to all N, the
// broker's footprint and the stop, prints one row per N and fails when a
// goal of SPEC §10 is missed. Each N's queues are deleted before the next.
func BenchmarkScale(b *testing.B) {
	sizes := scaleSizes(b)
	largest := 0
	for _, n := range sizes {
		largest = max(largest, n)
	}
	// The receiver may hold a connection per subscription during the
	// fan-out, and warren as many; warren inherits the limit.
	raiseFileLimit(b, largest+1024)
	e := newEnv(b)
	noteBrokerFileLimit(b, e.brokerPID, 2*largest)
	bin := build(b, e.dir, "warren", "github.com/warren-hq/warren")
	var rows []scaleRow
	for _, n := range sizes {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			var row scaleRow
			_, err := e.try(func() sample { row = e.scaleRun(b, bin, n); return sample{} })
			if err != nil {
				fmt.Printf("  FAILED %d subscriptions: %v\n", n, err)
				b.Fatal(err)
			}
			rows = append(rows, row)
			b.ReportMetric(row.consuming, "consuming_s")
			b.ReportMetric(row.idleRSS, "idle_rss_MB")
			b.ReportMetric(row.fanOut, "fanout_s")
			b.ReportMetric(row.rssAfter, "rss_after_MB")
			for _, m := range row.missed() {
				b.Errorf("SPEC §10 goal missed at %d subscriptions: %s", n, m)
			}
		})
	}
	printScale(rows)
}

// scaleSizes reads WARREN_BENCH_SCALE, a comma-separated list of sizes.
func scaleSizes(b *testing.B) []int {
	v := os.Getenv("WARREN_BENCH_SCALE")
	if v == "" {
		return []int{1000, 5000, 10000}
	}
	var sizes []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 99999 {
			b.Fatalf("WARREN_BENCH_SCALE=%q: want sizes from 1 to 99999 separated by commas", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// raiseFileLimit raises the soft limit on open files to the hard one and
// fails when that is below need.
func raiseFileLimit(b *testing.B, need int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatal(err)
		}
	}
	if lim.Cur < uint64(need) {
		b.Fatalf("open files limit %d is below the %d this run needs: raise it (ulimit -Hn) before running", lim.Cur, need)
	}
}

// noteBrokerFileLimit prints the broker's open-files limit, and a warning
// when it is below the queues a run declares: each queue that takes a
// persistent message opens its index file, and with fewer descriptors than
// queues RabbitMQ's file handle cache closes and reopens them through the
// whole fan-out (seen as fan-outs at 5,000 subscriptions of 4.5 to 28 s
// with 1,024 files, 3.3 to 4.0 s with 20,000).
func noteBrokerFileLimit(b *testing.B, pid, queues int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		b.Fatalf("read the broker's limits: %v", err)
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, "Max open files"); ok {
			limit := strings.Fields(v)[0] // the soft limit
			fmt.Printf("broker: open files limit %s\n", limit)
			if n, err := strconv.Atoi(limit); err == nil && n < queues {
				fmt.Printf("broker: WARNING: that is below the %d queues of the largest run, so the fan-out will stall at times;\n"+
					"  RabbitMQ's production checklist asks for 50,000 or more (see agent/bench/README.md)\n", queues)
			}
			return
		}
	}
	b.Fatalf("the broker's /proc/%d/limits has no open files line", pid)
}

// scaleRun measures one size; see BenchmarkScale.
func (e *env) scaleRun(b *testing.B, bin string, n int) (row scaleRow) {
	row.subs = n
	rc := newScaleReceiver(b, n)
	var y strings.Builder
	metricsAddr := e.configHead(&y)
	y.WriteString("subscriptions:\n")
	for i := range n {
		fmt.Fprintf(&y, "  - {name: %s, url: %q, events: [\"charge.#\"]}\n", scaleName(i), rc.url+"/s/"+scaleName(i))
	}
	cfgPath := e.writeConfig(fmt.Sprintf("scale-%d.yaml", n), y.String())
	prefix := e.cfg.Broker.QueuePrefix + "."
	ours := func(q string) bool {
		rest, ok := strings.CutPrefix(q, prefix)
		return ok && q != e.work && q != e.work+".dead" && (strings.HasPrefix(rest, "m") || strings.HasPrefix(rest, "retry."))
	}
	defer func() { row.cleanup, row.brokerCleaned = e.deleteScale(b, n) }()

	row.brokerBefore = mb(e.brokerMemory())
	p := e.start(fmt.Sprintf("warren-%d", n), bin, "run", "-c", cfgPath, "--log-format", "json", "--log-level", "info")
	defer p.kill()

	// Start-up: until /readyz shows every subscription consuming.
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := p.started.Add(scaleStartLimit)
	nextReport := p.started.Add(10 * time.Second)
	for {
		consuming := readyConsuming(client, metricsAddr)
		if consuming == n {
			break
		}
		p.check()
		now := time.Now()
		if now.After(deadline) {
			e.fail("%d of %d subscriptions consuming after %s", consuming, n, scaleStartLimit)
		}
		if now.After(nextReport) {
			fmt.Printf("  %d subscriptions: %d consuming after %.0f s\n", n, consuming, now.Sub(p.started).Seconds())
			nextReport = nextReport.Add(10 * time.Second)
		}
		time.Sleep(250 * time.Millisecond)
	}
	row.consuming = time.Since(p.started).Seconds()
	// Cross-check with the broker: every work queue has its consumer.
	qs := e.listQueues(ours)
	for i := range n {
		if c := qs[prefix+scaleName(i)]; c.consumers != 1 {
			e.fail("/readyz shows every subscription consuming but %s has %d consumers", prefix+scaleName(i), c.consumers)
		}
	}
	row.queues = len(qs)

	cpu0, bcpu0, t := p.cpu(), e.brokerCPU(), time.Now()
	time.Sleep(scaleSettle)
	row.idleCPU = 100 * float64(p.cpu()-cpu0) / float64(time.Since(t))
	row.brokerIdleCPU = 100 * float64(e.brokerCPU()-bcpu0) / float64(time.Since(t))
	row.idleRSS = mb(p.status("VmRSS"))
	gm := goMetrics(client, metricsAddr)
	row.goroutines = int(gm["go_goroutines"])
	row.heapMB, row.stackMB = mb(int64(gm["go_memstats_heap_inuse_bytes"])), mb(int64(gm["go_memstats_stack_inuse_bytes"]))
	row.brokerIdle = mb(e.brokerMemory())
	row.conns, row.channels, row.maxChannels = e.brokerLinks(p)
	row.queueMemory = mb(e.queueMemory(ours))

	// One event to every subscription.
	run := e.nextRun()
	rc.expect(run)
	t0 := time.Now()
	stopTimeline := func() {}
	if os.Getenv("WARREN_BENCH_TIMELINE") != "" {
		stopTimeline = e.fanOutTimeline(p, rc, t0)
	}
	e.publishTo(scaleKey, run, 1, 0)
	p.wait(rc.done, scaleFanOutLimit, rc.progress)
	stopTimeline()
	row.fanOut = time.Unix(0, rc.lastAt.Load()).Sub(t0).Seconds()
	// Every copy acked (and nothing left to come twice) before counting.
	settleDeadline := time.Now().Add(2 * time.Minute)
	for {
		pending := 0
		for q, c := range e.listQueues(ours) {
			if !strings.Contains(q, ".retry.") {
				pending += c.ready + c.unacked
			}
		}
		if pending == 0 {
			break
		}
		p.check()
		if time.Now().After(settleDeadline) {
			e.fail("%d messages still ready or unacknowledged 2 minutes after the fan-out", pending)
		}
		time.Sleep(time.Second)
	}
	if d, s := rc.dups.Load(), rc.stale.Load(); d > 0 || s > 0 {
		e.fail("%d duplicate and %d unexpected requests", d, s)
	}
	row.httpConns = rc.newConns.Load()
	// A slow fan-out is most often attempts that failed and waited out
	// a retry delay: say so.
	for k, v := range goMetrics(client, metricsAddr) {
		if o, ok := strings.CutPrefix(k, "outcome="); ok && o != "delivered" && v > 0 {
			fmt.Printf("  %d subscriptions: fan-out: %.0f deliveries %s\n", n, v, o)
		}
	}
	row.rssAfter = mb(p.status("VmRSS"))
	row.hwm = mb(p.status("VmHWM"))
	row.brokerAfter = mb(e.brokerMemory())

	t1 := time.Now()
	p.stop()
	row.exit = time.Since(t1).Seconds()
	fmt.Printf("  %d subscriptions: idle: heap %.0f MB, stacks %.0f MB, CPU warren %.1f%%, broker %.1f%% of a core\n",
		n, row.heapMB, row.stackMB, row.idleCPU, row.brokerIdleCPU)
	fmt.Printf("  %d subscriptions: consuming %.1f s, idle RSS %.1f MB, %d goroutines, fan-out %.2f s, RSS after %.1f MB (peak %.1f), %d HTTP connections, exit %.1f s\n",
		n, row.consuming, row.idleRSS, row.goroutines, row.fanOut, row.rssAfter, row.hwm, row.httpConns, row.exit)
	fmt.Printf("  %d subscriptions: broker: %d queues, %d connections, %d channels (at most %d on one), memory %.0f MB before, %.0f MB consuming (its queues %.0f MB), %.0f MB after the fan-out\n",
		n, row.queues, row.conns, row.channels, row.maxChannels, row.brokerBefore, row.brokerIdle, row.queueMemory, row.brokerAfter)
	return row
}

// readyConsuming is how many subscriptions /readyz shows consuming (0 while
// it does not answer).
func readyConsuming(client *http.Client, addr string) int {
	resp, err := client.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var r server.Readiness
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0
	}
	n := 0
	for _, s := range r.Subscriptions {
		if s == "consuming" {
			n++
		}
	}
	return n
}

// goMetrics reads the unlabelled go_* samples of /metrics, and sums
// warren_deliveries_total by outcome under "outcome=NAME"; a missing one
// reads 0.
func goMetrics(client *http.Client, addr string) map[string]float64 {
	m := map[string]float64{}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, "go_"):
			m[name] = f
		case strings.HasPrefix(name, "warren_deliveries_total{"):
			_, o, _ := strings.Cut(name, `outcome="`)
			o, _, _ = strings.Cut(o, `"`)
			m["outcome="+o] += f
		}
	}
	return m
}

// fanOutTimeline prints, every second until stopped, how many endpoints
// have the event and the share of a core warren and the broker used over
// that second: a pause where the broker works alone is the broker's, one
// where warren does is warren's, one where neither does is a wait (a
// timer, a retry delay, the network).
func (e *env) fanOutTimeline(p *proc, rc *scaleReceiver, t0 time.Time) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		// cpuOf, not p.cpu: a failure here must not end the benchmark
		// from this goroutine.
		cpus := func() (time.Duration, time.Duration, time.Time) {
			c, _ := cpuOf(p.cmd.Process.Pid)
			b, _ := cpuOf(e.brokerPID)
			return c, b, time.Now()
		}
		cpu, bcpu, at := cpus()
		for {
			select {
			case <-quit:
				return
			case <-time.After(time.Second):
			}
			cpu1, bcpu1, at1 := cpus()
			span := float64(at1.Sub(at))
			fmt.Printf("    fan-out +%.1f s: %d endpoints have it; CPU over the last second: warren %.0f%%, broker %.0f%% of a core\n",
				at1.Sub(t0).Seconds(), rc.unique.Load(), 100*float64(cpu1-cpu)/span, 100*float64(bcpu1-bcpu)/span)
			cpu, bcpu, at = cpu1, bcpu1, at1
		}
	}()
	return func() { close(quit); <-done }
}

// status reads a size field (VmRSS, VmHWM) of /proc/PID/status, in bytes.
func (p *proc) status(field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		p.e.fail("%s: %v", p.name, err)
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	p.e.fail("%s: no %s in /proc/PID/status", p.name, field)
	return 0
}

// listQueues returns the counts of the queues keep accepts, from
// rabbitmqctl list_queues.
func (e *env) listQueues(keep func(string) bool) map[string]counts {
	m := map[string]counts{}
	for q, c := range e.queueCounts() {
		if keep(q) {
			m[q] = c
		}
	}
	return m
}

// queueMemory sums the memory of the queues keep accepts, as rabbitmqctl
// list_queues reports it: unlike the broker's total it holds nothing of
// earlier runs or other users.
func (e *env) queueMemory(keep func(string) bool) int64 {
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "memory").Output()
	if err != nil {
		e.fail("rabbitmqctl list_queues memory: %v", err)
	}
	var sum int64
	for l := range strings.Lines(string(out)) {
		f := strings.Fields(l)
		if len(f) == 2 && keep(f[0]) {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			sum += v
		}
	}
	return sum
}

// brokerMemory is the broker's erlang:memory(total), in bytes.
func (e *env) brokerMemory() int64 {
	out, err := exec.Command("rabbitmqctl", "-q", "eval", "erlang:memory(total).").Output()
	if err != nil {
		e.fail("rabbitmqctl eval erlang:memory(total): %v", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		e.fail("rabbitmqctl eval erlang:memory(total): %q: %v", out, err)
	}
	return n
}

// brokerLinks counts p's connections to the broker and the channels on
// them, as the broker lists them: its connections are those whose client
// port is a socket p holds.
func (e *env) brokerLinks(p *proc) (conns, channels, most int) {
	ports := localPorts(p)
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "peer_port", "channels").Output()
	if err != nil {
		e.fail("rabbitmqctl list_connections: %v", err)
	}
	for l := range strings.Lines(string(out)) {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		port, err1 := strconv.Atoi(f[0])
		ch, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || !ports[port] {
			continue
		}
		conns++
		channels += ch
		most = max(most, ch)
	}
	return conns, channels, most
}

// localPorts is the local TCP ports of p's sockets, from /proc.
func localPorts(p *proc) map[int]bool {
	pid := p.cmd.Process.Pid
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); ok && err == nil {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	ports := map[int]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for l := range strings.Lines(string(data)) {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(l)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if port, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
				ports[int(port)] = true
			}
		}
	}
	return ports
}

// deleteScale deletes the work and dead queues of n subscriptions over a
// few channels at once (one at a time takes minutes for thousands), and
// returns how long that took and the broker's memory after. The tiers and
// the exchange are the env's and go when the benchmark ends.
func (e *env) deleteScale(b *testing.B, n int) (took, brokerMB float64) {
	start := time.Now()
	conn, err := dial()
	if err != nil {
		b.Errorf("delete the queues: %v", err)
		return
	}
	defer conn.Close()
	names := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 8 {
		ch, err := conn.Channel()
		if err != nil {
			b.Errorf("delete the queues: %v", err)
			close(names)
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer ch.Close()
			for q := range names {
				if _, err := ch.QueueDelete(q, false, false, false); err != nil {
					// The channel is closed now: the rest fail fast
					// and are counted.
					if failed.Add(1) == 1 {
						b.Errorf("delete queue %s: %v", q, err)
					}
				}
			}
		})
	}
	prefix := e.cfg.Broker.QueuePrefix + "."
	for i := range n {
		names <- prefix + scaleName(i)
		names <- prefix + scaleName(i) + ".dead"
	}
	close(names)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Errorf("%d of %d queues not deleted", f, 2*n)
	}
	took = time.Since(start).Seconds()
	out, err := exec.Command("rabbitmqctl", "-q", "eval", "erlang:memory(total).").Output()
	if err == nil {
		v, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		brokerMB = mb(v)
	}
	fmt.Printf("  %d subscriptions: deleted %d queues in %.1f s; broker memory %.0f MB after\n", n, 2*n, took, brokerMB)
	return took, brokerMB
}

// missed lists the goals of SPEC §10 this row misses.
func (r scaleRow) missed() []string {
	var out []string
	for _, c := range r.checks() {
		if !c.met {
			out = append(out, c.String())
		}
	}
	return out
}

type scaleCheck struct {
	what       string
	value, max float64
	met        bool
}

func (c scaleCheck) String() string {
	verdict := "met"
	if !c.met {
		verdict = "MISSED"
	}
	return fmt.Sprintf("%s %.1f (goal <= %g) %s", c.what, c.value, c.max, verdict)
}

func (r scaleRow) checks() []scaleCheck {
	g := scaleGoals[r.subs]
	var out []scaleCheck
	add := func(what string, v, goal float64) {
		if goal > 0 {
			out = append(out, scaleCheck{what, v, goal, v <= goal})
		}
	}
	add("consuming, s", r.consuming, g.consuming)
	add("idle RSS, MB", r.idleRSS, g.rss)
	add("fan-out, s", r.fanOut, g.fanOut)
	return out
}

func printScale(rows []scaleRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Printf("\n%6s %12s %9s %9s %9s %7s %6s %8s %9s %9s %6s\n",
		"subs", "consuming s", "idle MB", "fan-out s", "after MB", "queues", "conns", "channels", "broker MB", "queues MB", "exit s")
	for _, r := range rows {
		fmt.Printf("%6d %12.1f %9.1f %9.2f %9.1f %7d %6d %8d %9.0f %9.0f %6.1f\n",
			r.subs, r.consuming, r.idleRSS, r.fanOut, r.rssAfter, r.queues, r.conns, r.channels, r.brokerIdle, r.queueMemory, r.exit)
	}
	fmt.Println()
	for _, r := range rows {
		for _, c := range r.checks() {
			fmt.Printf("SPEC §10 at %d subscriptions: %s\n", r.subs, c)
		}
	}
}

// scaleReceiver is the endpoint of every subscription of a scale run: it
// counts requests per subscription by path (/s/<name>) for the current run.
type scaleReceiver struct {
	url      string
	n        int
	newConns atomic.Int64
	run      atomic.Int64
	got      []atomic.Int32
	unique   atomic.Int64
	dups     atomic.Int64
	stale    atomic.Int64
	lastAt   atomic.Int64
	done     chan struct{}
}

func newScaleReceiver(b *testing.B, n int) *scaleReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	rc := &scaleReceiver{url: "http://" + ln.Addr().String(), n: n, got: make([]atomic.Int32, n), done: make(chan struct{})}
	srv := &http.Server{
		Handler: rc,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				rc.newConns.Add(1)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return rc
}

// expect starts counting the requests of run.
func (rc *scaleReceiver) expect(run int64) {
	rc.newConns.Store(0)
	rc.run.Store(run)
}

func (rc *scaleReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now().UnixNano()
	body, _ := io.ReadAll(io.LimitReader(req.Body, 64<<10))
	name, _ := url.PathUnescape(strings.TrimPrefix(req.URL.Path, "/s/"))
	i, err := strconv.Atoi(strings.TrimPrefix(name, "m"))
	run, ok := field(body, `"run":`)
	switch {
	case err != nil || i < 0 || i >= rc.n || !ok || run != rc.run.Load():
		rc.stale.Add(1)
	case rc.got[i].Add(1) > 1:
		rc.dups.Add(1)
	case rc.unique.Add(1) == int64(rc.n):
		rc.lastAt.Store(now)
		close(rc.done)
	}
	w.WriteHeader(http.StatusOK)
}

func (rc *scaleReceiver) progress() string {
	return fmt.Sprintf("the event at all %d endpoints (%d so far)", rc.n, rc.unique.Load())
}
