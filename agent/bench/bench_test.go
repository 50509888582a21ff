package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// Steady-rate runs: 1,000 msg/s for 10 s. Fan-out runs: fanOutEvents
// events, one at a time, each to fanOut subscriptions.
const (
	steadyEvery  = time.Millisecond
	steadyFor    = 10 * time.Second
	fanOut       = 1000
	fanOutEvents = 5
	fanOutKey    = "fan.event"
)

func fanOutName(i int) string { return fmt.Sprintf("fan%04d", i) }

// subject is something that delivers the work queue to the receiver: the
// bare bridge, warren, or (WARREN_BENCH_COMPARE) another warren binary.
type subject struct {
	name   string
	start  func(e *env, retry bool) *proc
	fanOut func(e *env) *proc
	warren bool // logs one line per outcome to its log file
}

func bridgeSubject(bin string) subject {
	return subject{
		name: "bridge",
		start: func(e *env, retry bool) *proc {
			args := []string{bin, "-url", e.amqpURL, "-queue", e.work, "-mode", "bridge",
				"-endpoint", e.rc.url, "-prefetch", strconv.Itoa(2 * concurrency), "-workers", strconv.Itoa(concurrency)}
			if retry {
				args = append(args, "-retry-queue", e.tier)
			}
			return e.start("bridge", args...)
		},
		fanOut: func(e *env) *proc {
			// Warren's default concurrency is 16, so prefetch 32.
			return e.start("bridge", bin, "-url", e.amqpURL, "-queue", strings.Join(e.fanOutQueues(), ","),
				"-mode", "bridge", "-endpoint", e.rc.url, "-prefetch", "32")
		},
	}
}

func warrenSubject(name, bin string) subject {
	run := func(e *env, cfg string) *proc {
		checkFeatures(e, cfg)
		// stderr, info logs as JSON, goes to the log file (see start).
		return e.start(name, bin, "run", "-c", cfg, "--log-format", "json", "--log-level", "info")
	}
	return subject{
		name:   name,
		warren: true,
		start:  func(e *env, retry bool) *proc { return run(e, e.warrenConfig(name+".yaml", retry)) },
		fanOut: func(e *env) *proc { return run(e, e.fanOutConfig(name+"-fan.yaml")) },
	}
}

// checkFeatures fails the benchmark unless the config at path has every
// feature SPEC §15 names on: envelope, one secret, metrics server.
func checkFeatures(e *env, path string) {
	cfg, err := config.Load(path)
	if err != nil {
		e.b.Fatal(err)
	}
	if cfg.Server.Listen == "" {
		e.b.Fatalf("%s: the metrics server is off", path)
	}
	for _, s := range cfg.Subscriptions {
		if s.Format != config.FormatEnvelope || len(s.Secrets) != 1 {
			e.b.Fatalf("%s: subscription %s: format %s, %d secrets; want envelope and one", path, s.Name, s.Format, len(s.Secrets))
		}
	}
}

// sample is one run's measurements; zero fields were not measured.
type sample struct {
	rate    float64 // msg/s, from the subject's start to the last ack
	cpu     float64 // µs of the subject's CPU per message, start-up included
	broker  float64 // µs of the broker's CPU per message over the same time
	rss     float64 // peak RSS, MB
	conns   float64 // connections the receiver accepted
	startup float64 // s from exec to the first request (fan-out: to all consumers up)
	p50     float64 // ms, publish to receive
	p99     float64 // ms
	fanOut  float64 // ms from publishing one event to its last delivery

	// The old definition, for comparison: first to last arrival at the
	// receiver, start-up and the tail of acks not counted.
	windowRate float64
	windowCPU  float64
}

// BenchmarkBridgeComparison runs every scenario for the bare consumer, the
// bare bridge and warren in rounds, alternating the order of bridge and
// warren, takes warren's ratio to the bridge inside each round and reports
// those ratios (see ratio) against the goals of SPEC §15. It fails when
// a run fails or a goal is missed.
func BenchmarkBridgeComparison(b *testing.B) {
	n := envInt(b, "WARREN_BENCH_N", defaultBacklog)
	rounds := envInt(b, "WARREN_BENCH_ROUNDS", defaultRounds)
	e := newEnv(b)
	bridgeBin := build(b, e.dir, "bridge", "./testdata/bridge")
	subjects := []subject{bridgeSubject(bridgeBin), warrenSubject("warren", build(b, e.dir, "warren", "github.com/warren-hq/warren"))}
	// WARREN_BENCH_COMPARE=name=path[,name=path]: more warren binaries
	// (say, one built before a change) measured in the same rounds.
	for pair := range strings.SplitSeq(os.Getenv("WARREN_BENCH_COMPARE"), ",") {
		if pair == "" {
			continue
		}
		name, bin, ok := strings.Cut(pair, "=")
		if !ok || name == "" || name == "bridge" || name == "warren" || name == "consume" || bin == "" {
			b.Fatalf("WARREN_BENCH_COMPARE: %q is not name=path (names other than bridge, warren, consume)", pair)
		}
		subjects = append(subjects, warrenSubject(name, bin))
	}
	fmt.Printf("\nbacklog %d persistent %d-byte messages, %d rounds, warren concurrency %d, steady %d msg/s for %s, fan-out %d events to %d subscriptions\n",
		n, bodySize, rounds, concurrency, int(time.Second/steadyEvery), steadyFor, fanOutEvents, fanOut)
	e.declareFanOut()

	res := results{}
	for range b.N {
		for r := range rounds {
			// Even rounds run the bridge first, odd rounds last: whoever
			// runs second inherits a broker still busy with the first.
			order := slices.Clone(subjects)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			names := make([]string, len(order))
			for i, s := range order {
				names[i] = s.name
			}
			fmt.Printf("round %d/%d: %s\n", r+1, rounds, strings.Join(names, ", "))
			res.add(r, "consume", "drain", func() (sample, bool) {
				return e.measure("consume drain", func() sample { return e.consumeOnly(bridgeBin, n) })
			})
			scenarios := []struct {
				name string
				run  func(subject) sample
			}{
				{"drain", func(s subject) sample { return e.drain(s, n) }},
				{"steady", e.steady},
				{"retry", func(s subject) sample { return e.retry(s, n) }},
				{"fanout", e.fanOutRun},
			}
			for _, sc := range scenarios {
				if !only(sc.name) {
					continue
				}
				for _, s := range order {
					res.add(r, s.name, sc.name, func() (sample, bool) {
						return e.measure(s.name+" "+sc.name, func() sample { return sc.run(s) })
					})
				}
			}
		}
	}
	res.report(b, subjects, rounds)
}

// only reports whether WARREN_BENCH_ONLY (scenario names, comma-separated;
// empty: all) asks for the scenario. A partial run is for trying a
// change; the goals are judged on the whole.
func only(scenario string) bool {
	list := os.Getenv("WARREN_BENCH_ONLY")
	return list == "" || slices.Contains(strings.Split(list, ","), scenario)
}

// consumeOnly is reference 1: how fast the broker hands out and takes acks
// for the backlog with nothing else to do.
func (e *env) consumeOnly(bin string, n int) sample {
	e.purge()
	e.publish(e.nextRun(), n, 0)
	b0 := e.brokerCPU()
	p := e.start("consume", bin, "-url", e.amqpURL, "-queue", e.work, "-mode", "consume",
		"-prefetch", "256", "-n", strconv.Itoa(n))
	defer p.kill()
	first := p.line("first ", time.Minute)
	p.line("done ", drainTimeout(n))
	end := e.settle(p, []string{e.work}, time.Now())
	cpu, broker := p.cpu(), e.brokerCPU()-b0
	rss := p.peakRSS()
	p.stop()
	e.checkLeft(map[string]int{e.work: 0})
	t0, _ := strconv.ParseInt(first, 10, 64)
	return e.log("consume", "drain", sample{
		rate:    float64(n) / end.Sub(p.started).Seconds(),
		cpu:     perMsg(cpu, n),
		broker:  perMsg(broker, n),
		rss:     mb(rss),
		startup: time.Unix(0, t0).Sub(p.started).Seconds(),
	})
}

// drain measures s taking a backlog of n from the work queue to the
// receiver: from starting the process until the broker holds no message of
// the backlog, ready or unacknowledged.
func (e *env) drain(s subject, n int) sample {
	e.purge()
	run := e.nextRun()
	e.publish(run, n, 0)
	rec := e.rc.expect(run, n, http.StatusOK)
	b0 := e.brokerCPU()
	p := s.start(e, false)
	defer p.kill()
	p.wait(rec.first, time.Minute, firstRequest)
	cpuFirst := p.cpu()
	p.wait(rec.done, drainTimeout(n), rec.progress)
	cpuLast := p.cpu()
	end := e.settle(p, []string{e.work}, time.Unix(0, rec.lastAt.Load()))
	cpu, broker := p.cpu(), e.brokerCPU()-b0
	rss := p.peakRSS()
	p.stop()
	e.checkClean(rec)
	e.checkLeft(map[string]int{e.work: 0, e.tier: 0})
	if s.warren {
		checkLogged(e, p, n)
	}
	firstAt, lastAt := time.Unix(0, rec.firstAt.Load()), time.Unix(0, rec.lastAt.Load())
	return e.log(s.name, "drain", sample{
		rate:       float64(n) / end.Sub(p.started).Seconds(),
		cpu:        perMsg(cpu, n),
		broker:     perMsg(broker, n),
		rss:        mb(rss),
		conns:      float64(e.rc.newConns.Load()),
		startup:    firstAt.Sub(p.started).Seconds(),
		windowRate: float64(n-1) / lastAt.Sub(firstAt).Seconds(),
		windowCPU:  perMsg(cpuLast-cpuFirst, n),
	})
}

// checkLogged fails the run unless warren wrote an info line per delivery
// to its log file: the cost of logging is part of what is measured.
func checkLogged(e *env, p *proc, n int) {
	data, err := os.ReadFile(p.log)
	if err != nil {
		e.fail("%v", err)
	}
	if got := strings.Count(string(data), `"level":"INFO"`); got < n {
		e.fail("%s logged %d info lines for %d deliveries; want one per delivery", p.name, got, n)
	}
}

// steady measures publish-to-receive latency at a steady 1,000 msg/s with s
// already consuming. Start-up is not counted here: it is in the drain
// runs, and the latency of a subject still starting is not a steady one.
func (e *env) steady(s subject) sample {
	e.purge()
	run := e.nextRun()
	n := int(steadyFor / steadyEvery)
	rec := e.rc.expect(run, n, http.StatusOK)
	p := s.start(e, false)
	defer p.kill()
	e.waitConsumer(p, time.Minute)
	cpu0, b0 := p.cpu(), e.brokerCPU()
	e.publish(run, n, steadyEvery)
	p.wait(rec.done, 30*time.Second, rec.progress)
	e.settle(p, []string{e.work}, time.Unix(0, rec.lastAt.Load()))
	cpu, broker := p.cpu()-cpu0, e.brokerCPU()-b0
	rss := p.peakRSS()
	p.stop()
	e.checkClean(rec)
	e.checkLeft(map[string]int{e.work: 0, e.tier: 0})
	lat := rec.latencies()
	slices.Sort(lat)
	return e.log(s.name, "steady", sample{
		cpu:    perMsg(cpu, n),
		broker: perMsg(broker, n),
		rss:    mb(rss),
		p50:    ms(lat[len(lat)/2]),
		p99:    ms(lat[len(lat)*99/100]),
		conns:  float64(e.rc.newConns.Load()),
	})
}

// retry measures the move to the first tier: the endpoint answers 503 to
// everything and the only delay is 1h, so every message goes to the tier
// queue once (publish with confirm, then ack) and stays there. The run
// ends when the tier holds all n and the work queue holds none, ready or
// unacknowledged.
func (e *env) retry(s subject, n int) sample {
	e.purge()
	run := e.nextRun()
	e.publish(run, n, 0)
	rec := e.rc.expect(run, n, http.StatusServiceUnavailable)
	b0 := e.brokerCPU()
	p := s.start(e, true)
	defer p.kill()
	p.wait(rec.first, time.Minute, firstRequest)
	moved, stop := e.tierFilled(n)
	defer stop()
	p.wait(moved, drainTimeout(n), func() string { return fmt.Sprintf("the retry tier to hold %d messages", n) })
	end := e.settle(p, []string{e.work}, time.Now())
	cpu, broker := p.cpu(), e.brokerCPU()-b0
	rss := p.peakRSS()
	p.stop()
	e.checkClean(rec)
	e.checkLeft(map[string]int{e.work: 0, e.tier: n})
	return e.log(s.name, "retry", sample{
		rate:    float64(n) / end.Sub(p.started).Seconds(),
		cpu:     perMsg(cpu, n),
		broker:  perMsg(broker, n),
		rss:     mb(rss),
		conns:   float64(e.rc.newConns.Load()),
		startup: time.Unix(0, rec.firstAt.Load()).Sub(p.started).Seconds(),
	})
}

// declareFanOut declares the fan-out subscriptions' queues (deleted with
// the rest at the end).
func (e *env) declareFanOut() {
	cfg := *e.cfg
	cfg.Defaults.Retry.Delays = []time.Duration{time.Hour}
	cfg.Subscriptions = nil
	for i := range fanOut {
		cfg.Subscriptions = append(cfg.Subscriptions, config.Subscription{
			Name: fanOutName(i), Events: []string{"fan.#"}, Options: cfg.Defaults})
	}
	e.fanCfg = &cfg
	if err := topology.Apply(e.conn, topology.For(e.fanCfg)); err != nil {
		e.b.Fatalf("declare the fan-out queues: %v", err)
	}
}

func (e *env) fanOutQueues() []string {
	var qs []string
	for _, s := range e.fanCfg.Subscriptions {
		qs = append(qs, e.fanCfg.WorkQueue(s))
	}
	return qs
}

// fanOutRun measures one event delivered to fanOut subscriptions: the time
// from publishing it to its last delivery, fanOutEvents times, one event
// at a time; and the start-up, until every work queue has its consumer.
func (e *env) fanOutRun(s subject) sample {
	queues := e.fanOutQueues()
	b0 := e.brokerCPU()
	p := s.fanOut(e)
	defer p.kill()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		c := e.queueCounts()
		up := 0
		for _, q := range queues {
			if c[q].consumers > 0 {
				up++
			}
		}
		if up == len(queues) {
			break
		}
		p.check()
		if time.Now().After(deadline) {
			e.fail("%s: %d of %d fan-out queues have a consumer after 3 minutes", s.name, up, len(queues))
		}
		time.Sleep(200 * time.Millisecond)
	}
	startup := time.Since(p.started)
	cpu0 := p.cpu()
	var took []float64
	for range fanOutEvents {
		run := e.nextRun()
		rec := e.rc.expect(run, fanOut, http.StatusOK)
		t0 := time.Now()
		e.publishTo(fanOutKey, run, 1, 0)
		p.wait(rec.done, time.Minute, rec.progress)
		took = append(took, ms(time.Unix(0, rec.lastAt.Load()).Sub(t0)))
		// Every copy acked before the next event.
		e.settle(p, queues, time.Now())
		e.checkClean(rec)
	}
	cpu, broker := p.cpu()-cpu0, e.brokerCPU()-b0
	rss := p.peakRSS()
	p.stop()
	left := map[string]int{}
	for _, q := range queues {
		left[q] = 0
	}
	e.checkLeft(left)
	return e.log(s.name, "fanout", sample{
		fanOut:  median(took),
		cpu:     perMsg(cpu, fanOutEvents*fanOut),
		broker:  perMsg(broker, fanOutEvents*fanOut),
		rss:     mb(rss),
		startup: startup.Seconds(),
	})
}

// tierFilled polls the retry tier's depth every 10ms on a channel of its
// own and closes the returned channel once it holds n messages (or polling
// fails, which the run's leftover check then reports).
func (e *env) tierFilled(n int) (filled <-chan struct{}, stop func()) {
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		ch, err := e.conn.Channel()
		if err != nil {
			return
		}
		defer ch.Close()
		for {
			q, err := ch.QueueDeclarePassive(e.tier, true, false, false, false, nil)
			if err != nil || q.Messages >= n {
				return
			}
			select {
			case <-quit:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return done, func() { close(quit) }
}

// settle waits until queues hold no message, ready or unacknowledged, and
// returns when that was first seen, no earlier than after. Ready messages
// are polled every 5ms with a passive declare; unacknowledged ones can
// only be read with rabbitmqctl (about 0.5s a call): when the first call
// finds every ack in, the end is when the last message left the queues;
// otherwise it is when the call that found them all in began. A subject
// that holds acks back is charged for it, to within one call.
func (e *env) settle(p *proc, queues []string, after time.Time) time.Time {
	deadline := time.Now().Add(time.Minute)
	for _, q := range queues {
		for {
			ready, _ := e.queue(q)
			if ready == 0 {
				break
			}
			p.check()
			if time.Now().After(deadline) {
				e.fail("%s: %s still holds %d ready messages", p.name, q, ready)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	end := time.Now()
	if end.Before(after) {
		end = after
	}
	for first := true; ; first = false {
		began := time.Now()
		c := e.queueCounts()
		pending := 0
		for _, q := range queues {
			pending += c[q].ready + c[q].unacked
		}
		if pending == 0 {
			if !first {
				end = began
			}
			return end
		}
		p.check()
		if time.Now().After(deadline) {
			e.fail("%s: %d messages still ready or unacknowledged", p.name, pending)
		}
	}
}

func firstRequest() string { return "the first request" }

// checkClean fails the run if the receiver saw a message twice or one it
// did not expect (a leftover of an earlier run).
func (e *env) checkClean(rec *recording) {
	if d, s := rec.dups.Load(), rec.stale.Load(); d > 0 || s > 0 {
		e.fail("%d duplicate and %d unexpected requests", d, s)
	}
}

// checkLeft fails the run unless, with the subject stopped, each queue
// holds exactly the messages it should: a message the subject took but
// never acked is back in its queue by then.
func (e *env) checkLeft(want map[string]int) {
	deadline := time.Now().Add(10 * time.Second)
	for q, n := range want {
		for {
			ready, consumers := e.queue(q)
			if consumers == 0 && ready == n {
				break
			}
			if time.Now().After(deadline) {
				e.fail("after the run %s holds %d messages with %d consumers, want %d and none", q, ready, consumers, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (e *env) log(name, scenario string, s sample) sample {
	var parts []string
	add := func(v float64, format string) {
		if v != 0 {
			parts = append(parts, fmt.Sprintf(format, v))
		}
	}
	add(s.rate, "%.0f msg/s")
	add(s.fanOut, "%.1f ms to all")
	add(s.cpu, "%.1f µs/msg")
	add(s.broker, "broker %.1f µs/msg")
	add(s.rss, "rss %.1f MB")
	add(s.p50, "p50 %.2f ms")
	add(s.p99, "p99 %.2f ms")
	add(s.conns, "%.0f conns")
	add(s.startup, "start-up %.2f s")
	add(s.windowRate, "[first-to-last arrival: %.0f msg/s")
	add(s.windowCPU, "%.1f µs/msg]")
	fmt.Printf("  %-8s %-6s %s\n", name, scenario, strings.Join(parts, ", "))
	return s
}

func drainTimeout(n int) time.Duration {
	return time.Minute + time.Duration(n)*time.Millisecond // at least 1,000 msg/s
}

func perMsg(cpu time.Duration, n int) float64 {
	return float64(cpu.Microseconds()) / float64(n)
}

func mb(bytes int64) float64 { return float64(bytes) / (1 << 20) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// results holds every successful sample by round, subject and scenario.
type results map[string]map[int]sample // "subject/scenario" -> round -> sample

func (r results) add(round int, subject, scenario string, run func() (sample, bool)) {
	s, ok := run()
	if !ok {
		return
	}
	key := subject + "/" + scenario
	if r[key] == nil {
		r[key] = map[int]sample{}
	}
	r[key][round] = s
}

// median of one field over a subject's runs of a scenario.
func (r results) median(subject, scenario string, field func(sample) float64) float64 {
	var v []float64
	for _, s := range r[subject+"/"+scenario] {
		v = append(v, field(s))
	}
	return median(v)
}

// ratio is subject/bridge, each taken inside one round: the machine is
// shared, so a ratio of two runs minutes apart measures the neighbours as
// much as the subjects. Running second is worth up to 40% in a drain here,
// so the median of the rounds with the bridge first and that of the rounds
// with it last are averaged (geometrically): with 3 rounds a plain median
// would give one order two votes.
func (r results) ratio(subject, scenario string, field func(sample) float64) float64 {
	var byOrder [2][]float64
	for round, s := range r[subject+"/"+scenario] {
		if b, ok := r["bridge/"+scenario][round]; ok && field(b) != 0 {
			byOrder[round%2] = append(byOrder[round%2], field(s)/field(b))
		}
	}
	switch {
	case len(byOrder[0]) == 0:
		return median(byOrder[1])
	case len(byOrder[1]) == 0:
		return median(byOrder[0])
	}
	return math.Sqrt(median(byOrder[0]) * median(byOrder[1]))
}

// metric is one row of the report. A goal (SPEC §15) is on warren's ratio
// to the bridge, or on warren's own value when absolute.
type metric struct {
	key      string // for b.ReportMetric
	scenario string
	field    func(sample) float64
	label    string
	goal     goal
}

type goal struct {
	atLeast, atMost float64 // 0 = none
	absolute        bool
}

func (g goal) set() bool { return g.atLeast != 0 || g.atMost != 0 }

func (g goal) met(v float64) bool {
	return !math.IsNaN(v) && (g.atLeast == 0 || v >= g.atLeast) && (g.atMost == 0 || v <= g.atMost)
}

func (g goal) String() string {
	unit := "×"
	if g.absolute {
		unit = " MB"
	}
	switch {
	case g.atLeast != 0:
		return fmt.Sprintf(">= %g%s", g.atLeast, unit)
	case g.atMost != 0:
		return fmt.Sprintf("<= %g%s", g.atMost, unit)
	}
	return ""
}

func rate(s sample) float64   { return s.rate }
func cpu(s sample) float64    { return s.cpu }
func broker(s sample) float64 { return s.broker }
func total(s sample) float64  { return s.cpu + s.broker }
func rss(s sample) float64    { return s.rss }

var metricsTable = []metric{
	{"drain_msg/s", "drain", rate, "drain, msg/s (start to last ack)", goal{atLeast: 1.1}},
	{"drain_cpu_us/msg", "drain", cpu, "  CPU per message, µs", goal{atMost: 1.0}},
	{"drain_broker_us/msg", "drain", broker, "  broker CPU per message, µs", goal{}},
	{"drain_total_us/msg", "drain", total, "  subject + broker, µs", goal{}},
	{"drain_rss_MB", "drain", rss, "  peak RSS, MB", goal{atMost: 30, absolute: true}},
	{"drain_startup_s", "drain", func(s sample) float64 { return s.startup }, "  start-up to first request, s", goal{}},
	{"drain_conns", "drain", func(s sample) float64 { return s.conns }, "  connections opened", goal{}},
	{"drain_window_msg/s", "drain", func(s sample) float64 { return s.windowRate }, "  old: first to last arrival, msg/s", goal{}},
	{"drain_window_cpu_us/msg", "drain", func(s sample) float64 { return s.windowCPU }, "  old: CPU in that window, µs", goal{}},
	{"steady_p50_ms", "steady", func(s sample) float64 { return s.p50 }, "steady 1k/s p50 latency, ms", goal{atMost: 1.1}},
	{"steady_p99_ms", "steady", func(s sample) float64 { return s.p99 }, "  p99 latency, ms", goal{}},
	{"steady_cpu_us/msg", "steady", cpu, "  CPU per message, µs", goal{}},
	{"steady_broker_us/msg", "steady", broker, "  broker CPU per message, µs", goal{}},
	{"steady_rss_MB", "steady", rss, "  peak RSS, MB", goal{atMost: 30, absolute: true}},
	{"retry_msg/s", "retry", rate, "retry path (503), msg/s", goal{atLeast: 1.0}},
	{"retry_cpu_us/msg", "retry", cpu, "  CPU per message, µs", goal{}},
	{"retry_broker_us/msg", "retry", broker, "  broker CPU per message, µs", goal{}},
	{"retry_rss_MB", "retry", rss, "  peak RSS, MB", goal{atMost: 30, absolute: true}},
	{"fanout_ms", "fanout", func(s sample) float64 { return s.fanOut }, "fan-out 1 event to 1,000, ms", goal{}},
	{"fanout_startup_s", "fanout", func(s sample) float64 { return s.startup }, "  start-up to 1,000 consumers, s", goal{}},
	{"fanout_cpu_us/msg", "fanout", cpu, "  CPU per delivery, µs", goal{}},
	{"fanout_broker_us/msg", "fanout", broker, "  broker CPU per delivery, µs", goal{}},
	{"fanout_rss_MB", "fanout", rss, "  peak RSS, MB", goal{}},
}

// report prints the medians, the median per-round ratios beside the goals
// and a one-line summary, and fails b when warren misses a goal.
func (r results) report(b *testing.B, subjects []subject, rounds int) {
	b.ReportMetric(0, "ns/op") // one op is the whole comparison: meaningless
	var w strings.Builder
	fmt.Fprintf(&w, "\n%-38s %9s", fmt.Sprintf("medians of %d rounds", rounds), "consume")
	for _, s := range subjects {
		fmt.Fprintf(&w, " %9s", s.name)
	}
	for _, s := range subjects[1:] {
		fmt.Fprintf(&w, " %14s", s.name+"/bridge")
	}
	fmt.Fprintf(&w, "  %-9s %s\n", "goal", "")
	var summary, missed []string
	for _, m := range metricsTable {
		fmt.Fprintf(&w, "%-38s", m.label)
		consume := r.median("consume", m.scenario, m.field)
		fmt.Fprintf(&w, " %9s", num(consume))
		for _, s := range subjects {
			v := r.median(s.name, m.scenario, m.field)
			fmt.Fprintf(&w, " %9s", num(v))
			if !math.IsNaN(v) && v != 0 {
				b.ReportMetric(v, s.name+"_"+m.key)
			}
		}
		for _, s := range subjects[1:] {
			ratio := r.ratio(s.name, m.scenario, m.field)
			fmt.Fprintf(&w, " %14s", fmtRatio(ratio))
			if !math.IsNaN(ratio) {
				b.ReportMetric(ratio, s.name+"/bridge_"+strings.ReplaceAll(m.key, "/", "_per_"))
			}
		}
		if m.goal.set() {
			v := r.ratio("warren", m.scenario, m.field)
			if m.goal.absolute {
				v = r.max("warren", m.scenario, m.field)
			}
			verdict := "met"
			if !m.goal.met(v) {
				verdict = "MISSED"
				missed = append(missed, fmt.Sprintf("%s %s (goal %s)", strings.TrimSpace(m.label), fmtGoalValue(v, m.goal), m.goal))
			}
			fmt.Fprintf(&w, "  %-9s %s", m.goal, verdict)
			if m.goal.absolute {
				fmt.Fprintf(&w, " (warren's highest: %s)", num(v))
			}
		}
		w.WriteString("\n")
	}
	for _, k := range []struct {
		name, scenario string
		field          func(sample) float64
	}{
		{"drain", "drain", rate}, {"cpu", "drain", cpu}, {"broker cpu", "drain", broker},
		{"cpu+broker", "drain", total}, {"p50", "steady", func(s sample) float64 { return s.p50 }},
		{"retry", "retry", rate}, {"fan-out", "fanout", func(s sample) float64 { return s.fanOut }},
	} {
		summary = append(summary, k.name+" "+fmtRatio(r.ratio("warren", k.scenario, k.field)))
	}
	summary = append(summary, "rss "+num(max(r.max("warren", "drain", rss), r.max("warren", "steady", rss), r.max("warren", "retry", rss)))+" MB")
	fmt.Fprintf(&w, "\nwarren/bridge: %s\n", strings.Join(summary, ", "))
	if len(missed) > 0 {
		fmt.Fprintf(&w, "SPEC §15 goals missed: %s\n", strings.Join(missed, "; "))
	} else {
		w.WriteString("SPEC §15 goals: all met\n")
	}
	fmt.Print(w.String())
	if len(missed) > 0 {
		b.Errorf("SPEC §15 goals missed: %s", strings.Join(missed, "; "))
	}
}

// max of one field over a subject's runs of a scenario.
func (r results) max(subject, scenario string, field func(sample) float64) float64 {
	v := math.NaN()
	for _, s := range r[subject+"/"+scenario] {
		if math.IsNaN(v) || field(s) > v {
			v = field(s)
		}
	}
	return v
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}

func fmtGoalValue(v float64, g goal) string {
	if g.absolute {
		return num(v) + " MB"
	}
	return fmtRatio(v)
}

func num(v float64) string {
	switch {
	case math.IsNaN(v) || v == 0:
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// BenchmarkEngineDrainProfile drains a backlog with the engine running in
// this process, for profiling warren's hot path:
//
//	go test -run '^$' -bench EngineDrainProfile -benchtime 1x -cpuprofile cpu.out ./agent/bench/
//	go tool pprof -tagfocus role=warren -top cpu.out
//
// The engine's goroutines carry the pprof label role=warren (the receiver's
// role=receiver, the publisher's role=publisher), so the profile can be
// narrowed to warren. It logs JSON at info to a file, as the benchmark's
// warren process does.
func BenchmarkEngineDrainProfile(b *testing.B) { benchmarkEngine(b, false) }

// BenchmarkEngineRetryProfile is BenchmarkEngineDrainProfile for the move to
// the retry tier: the endpoint answers 503, the only delay is 1h.
func BenchmarkEngineRetryProfile(b *testing.B) { benchmarkEngine(b, true) }

func benchmarkEngine(b *testing.B, retry bool) {
	n := envInt(b, "WARREN_BENCH_N", defaultBacklog)
	e := newEnv(b)
	cfg, err := config.Load(e.warrenConfig("profile.yaml", retry))
	if err != nil {
		b.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(e.dir, "profile.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	log := slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b.ReportAllocs()
	for range b.N {
		b.StopTimer()
		s, ok := e.measure("in-process engine", func() sample { return e.engineInProcess(b, cfg, log, n, retry) })
		if !ok {
			b.FailNow()
		}
		b.ReportMetric(s.rate, "msg/s")
	}
}

// engineInProcess publishes a backlog, then times an in-process engine
// delivering it, or moving it to the retry tier (the benchmark timer runs
// only meanwhile).
func (e *env) engineInProcess(b *testing.B, cfg *config.Config, log *slog.Logger, n int, retry bool) sample {
	e.purge()
	run := e.nextRun()
	pprof.Do(context.Background(), pprof.Labels("role", "publisher"), func(context.Context) {
		e.publish(run, n, 0)
	})
	scenario, status := "drain", http.StatusOK
	if retry {
		scenario, status = "retry", http.StatusServiceUnavailable
	}
	rec := e.rc.expect(run, n, status)
	eng := engine.New(cfg, log, metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	defer func() {
		cancel()
		if err := <-stopped; err != nil {
			e.fail("engine stopped with: %v", err)
		}
	}()
	b.StartTimer()
	go pprof.Do(ctx, pprof.Labels("role", "warren"), func(ctx context.Context) {
		stopped <- eng.Run(ctx)
	})
	var done <-chan struct{} = rec.done
	if retry {
		var stop func()
		done, stop = e.tierFilled(n)
		defer stop()
	}
	select {
	case <-done:
	case <-e.gone:
		e.fail("the broker closed the benchmark's connection")
	case <-time.After(drainTimeout(n)):
		e.fail("timed out: %s", rec.progress())
	}
	end := time.Now()
	b.StopTimer()
	elapsed := end.Sub(time.Unix(0, rec.firstAt.Load()))
	return e.log("engine", scenario, sample{rate: float64(n) / elapsed.Seconds()})
}
