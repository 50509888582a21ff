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
	"github.com/warren-hq/warren/config"
)

// Steady-rate runs: 1,000 msg/s for 10 s.
const (
	steadyEvery = time.Millisecond
	steadyFor   = 10 * time.Second
)

// subject is something that delivers the work queue to the receiver: the
// bare bridge, warren, or (WARREN_BENCH_COMPARE) another warren binary.
type subject struct {
	name  string
	start func(e *env, retry bool) *proc
}

func bridgeSubject(bin string) subject {
	return subject{"bridge", func(e *env, retry bool) *proc {
		args := []string{bin, "-url", e.amqpURL, "-queue", e.work, "-mode", "bridge",
			"-endpoint", e.rc.url, "-prefetch", strconv.Itoa(2 * concurrency), "-workers", strconv.Itoa(concurrency)}
		if retry {
			args = append(args, "-retry-queue", e.tier)
		}
		return e.start("bridge", args...)
	}}
}

func warrenSubject(name, bin string) subject {
	return subject{name, func(e *env, retry bool) *proc {
		cfg := e.warrenConfig(name+".yaml", retry)
		return e.start(name, bin, "run", "-c", cfg, "--log-format", "json", "--log-level", "info")
	}}
}

// sample is one run's measurements; zero fields were not measured.
type sample struct {
	rate  float64 // msg/s
	cpu   float64 // µs of CPU per message
	rss   float64 // peak RSS, MB
	conns float64 // connections the receiver accepted
	p50   float64 // ms, publish to receive
	p99   float64 // ms
}

// BenchmarkBridgeComparison runs every scenario for the bare consumer, the
// bare bridge and warren in interleaved rounds and reports the medians and
// warren's ratios to the bridge.
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
	fmt.Printf("\nbacklog %d persistent %d-byte messages, %d rounds, warren concurrency %d, steady %d msg/s for %s\n",
		n, bodySize, rounds, concurrency, int(time.Second/steadyEvery), steadyFor)

	res := results{}
	for range b.N {
		for r := range rounds {
			fmt.Printf("round %d/%d\n", r+1, rounds)
			res.add("consume", "drain", e.attempt("consume drain", func() sample { return e.consumeOnly(bridgeBin, n) }))
			for _, s := range subjects {
				res.add(s.name, "drain", e.attempt(s.name+" drain", func() sample { return e.drain(s, n) }))
			}
			for _, s := range subjects {
				res.add(s.name, "steady", e.attempt(s.name+" steady", func() sample { return e.steady(s) }))
			}
			for _, s := range subjects {
				res.add(s.name, "retry", e.attempt(s.name+" retry", func() sample { return e.retry(s, n) }))
			}
		}
	}
	res.report(b, subjects)
}

// consumeOnly is reference 1: how fast the broker hands out and takes acks
// for the backlog with nothing else to do.
func (e *env) consumeOnly(bin string, n int) sample {
	e.purge()
	e.publish(e.nextRun(), n, 0)
	p := e.start("consume", bin, "-url", e.amqpURL, "-queue", e.work, "-mode", "consume",
		"-prefetch", "256", "-n", strconv.Itoa(n))
	defer p.kill()
	first := p.line("first ", time.Minute)
	cpu0 := p.cpu()
	last := p.line("done ", drainTimeout(n))
	cpu1 := p.cpu()
	rss := p.peakRSS()
	p.stop()
	t0, _ := strconv.ParseInt(first, 10, 64)
	t1, _ := strconv.ParseInt(last, 10, 64)
	return e.log("consume", "drain", sample{
		rate: float64(n-1) / time.Duration(t1-t0).Seconds(),
		cpu:  perMsg(cpu1-cpu0, n),
		rss:  mb(rss),
	})
}

// drain measures s taking a backlog of n from the work queue to the
// receiver: from the first arrival to the last.
func (e *env) drain(s subject, n int) sample {
	e.purge()
	run := e.nextRun()
	e.publish(run, n, 0)
	rec := e.rc.expect(run, n, http.StatusOK)
	p := s.start(e, false)
	defer p.kill()
	p.wait(rec.first, time.Minute, firstRequest)
	cpu0 := p.cpu()
	p.wait(rec.done, drainTimeout(n), rec.progress)
	cpu1 := p.cpu()
	rss := p.peakRSS()
	p.stop()
	elapsed := time.Duration(rec.lastAt.Load() - rec.firstAt.Load())
	e.checkClean(s.name, rec)
	return e.log(s.name, "drain", sample{
		rate:  float64(n-1) / elapsed.Seconds(),
		cpu:   perMsg(cpu1-cpu0, n),
		rss:   mb(rss),
		conns: float64(e.rc.newConns.Load()),
	})
}

// steady measures publish-to-receive latency at a steady 1,000 msg/s with s
// already consuming.
func (e *env) steady(s subject) sample {
	e.purge()
	run := e.nextRun()
	n := int(steadyFor / steadyEvery)
	rec := e.rc.expect(run, n, http.StatusOK)
	p := s.start(e, false)
	defer p.kill()
	e.waitConsumer(time.Minute)
	cpu0 := p.cpu()
	e.publish(run, n, steadyEvery)
	p.wait(rec.done, 30*time.Second, rec.progress)
	cpu1 := p.cpu()
	p.stop()
	e.checkClean(s.name, rec)
	lat := rec.latencies()
	slices.Sort(lat)
	return e.log(s.name, "steady", sample{
		cpu:   perMsg(cpu1-cpu0, n),
		p50:   ms(lat[len(lat)/2]),
		p99:   ms(lat[len(lat)*99/100]),
		conns: float64(e.rc.newConns.Load()),
	})
}

// retry measures the move to the first tier: the endpoint answers 503 to
// everything and the only delay is 1h, so every message goes to the tier
// queue once (publish with confirm, then ack) and stays there. The rate is
// from the first request until the tier holds all n.
func (e *env) retry(s subject, n int) sample {
	e.purge()
	run := e.nextRun()
	e.publish(run, n, 0)
	rec := e.rc.expect(run, n, http.StatusServiceUnavailable)
	p := s.start(e, true)
	defer p.kill()
	p.wait(rec.first, time.Minute, firstRequest)
	cpu0 := p.cpu()
	moved, stop := e.tierFilled(n)
	defer stop()
	p.wait(moved, drainTimeout(n), func() string { return fmt.Sprintf("the retry tier to hold %d messages", n) })
	end := time.Now()
	cpu1 := p.cpu()
	rss := p.peakRSS()
	if depth, _ := e.queue(e.tier); depth < n {
		e.fail("%s: the retry tier holds %d of %d messages", s.name, depth, n)
	}
	p.stop()
	elapsed := end.Sub(time.Unix(0, rec.firstAt.Load()))
	return e.log(s.name, "retry", sample{
		rate:  float64(n) / elapsed.Seconds(),
		cpu:   perMsg(cpu1-cpu0, n),
		rss:   mb(rss),
		conns: float64(e.rc.newConns.Load()),
	})
}

// tierFilled polls the retry tier's depth every 10ms on a channel of its
// own and closes the returned channel once it holds n messages (or polling
// fails, which the caller's depth check then reports).
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

func firstRequest() string { return "the first request" }

// checkClean reports requests the receiver did not expect: a duplicate
// means a message was delivered twice, which a clean run never does.
func (e *env) checkClean(name string, rec *recording) {
	if d, s := rec.dups.Load(), rec.stale.Load(); d > 0 || s > 0 {
		fmt.Printf("  note: %s: %d duplicate and %d unexpected requests\n", name, d, s)
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
	add(s.cpu, "%.1f µs/msg")
	add(s.rss, "rss %.1f MB")
	add(s.p50, "p50 %.2f ms")
	add(s.p99, "p99 %.2f ms")
	add(s.conns, "%.0f conns")
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

// results holds every sample by subject and scenario.
type results map[string][]sample // "subject/scenario"

func (r results) add(subject, scenario string, s sample) {
	r[subject+"/"+scenario] = append(r[subject+"/"+scenario], s)
}

// median of one field over a subject's runs of a scenario.
func (r results) median(subject, scenario string, field func(sample) float64) float64 {
	var v []float64
	for _, s := range r[subject+"/"+scenario] {
		v = append(v, field(s))
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// metric is one row of the report.
type metric struct {
	key      string // for b.ReportMetric: <subject>_<key>
	scenario string
	field    func(sample) float64
	label    string
	target   string // for warren / bridge
}

var metricsTable = []metric{
	{"drain_msg/s", "drain", func(s sample) float64 { return s.rate }, "backlog drain, msg/s", ">= 0.9"},
	{"drain_cpu_us/msg", "drain", func(s sample) float64 { return s.cpu }, "CPU per message (drain), µs", "<= 1.2"},
	{"drain_rss_MB", "drain", func(s sample) float64 { return s.rss }, "peak RSS (drain), MB", "warren <= 30 MB"},
	{"drain_conns", "drain", func(s sample) float64 { return s.conns }, "connections opened (drain)", "~ concurrency"},
	{"steady_p50_ms", "steady", func(s sample) float64 { return s.p50 }, "steady 1k/s p50 latency, ms", "<= 1.2"},
	{"steady_p99_ms", "steady", func(s sample) float64 { return s.p99 }, "steady 1k/s p99 latency, ms", ""},
	{"steady_cpu_us/msg", "steady", func(s sample) float64 { return s.cpu }, "CPU per message (steady), µs", ""},
	{"retry_msg/s", "retry", func(s sample) float64 { return s.rate }, "move to retry tier, msg/s", "warren >= 5000"},
	{"retry_cpu_us/msg", "retry", func(s sample) float64 { return s.cpu }, "CPU per message (retry), µs", ""},
	{"retry_rss_MB", "retry", func(s sample) float64 { return s.rss }, "peak RSS (retry), MB", ""},
}

func (r results) report(b *testing.B, subjects []subject) {
	b.ReportMetric(0, "ns/op") // one op is the whole comparison: meaningless
	var w strings.Builder
	fmt.Fprintf(&w, "\n%-32s %10s", "medians", "consume")
	for _, s := range subjects {
		fmt.Fprintf(&w, " %10s", s.name)
	}
	for _, s := range subjects[1:] {
		fmt.Fprintf(&w, " %16s", s.name+"/bridge")
	}
	fmt.Fprintf(&w, "   %s\n", "target")
	for _, m := range metricsTable {
		fmt.Fprintf(&w, "%-32s", m.label)
		consume := r.median("consume", m.scenario, m.field)
		fmt.Fprintf(&w, " %10s", num(consume))
		if !math.IsNaN(consume) && consume != 0 {
			b.ReportMetric(consume, "consume_"+m.key)
		}
		for _, s := range subjects {
			v := r.median(s.name, m.scenario, m.field)
			fmt.Fprintf(&w, " %10s", num(v))
			b.ReportMetric(v, s.name+"_"+m.key)
		}
		bridge := r.median("bridge", m.scenario, m.field)
		for _, s := range subjects[1:] {
			ratio := r.median(s.name, m.scenario, m.field) / bridge
			fmt.Fprintf(&w, " %16s", fmt.Sprintf("%.2f", ratio))
			b.ReportMetric(ratio, s.name+"/bridge_"+strings.ReplaceAll(m.key, "/", "_per_"))
		}
		fmt.Fprintf(&w, "   %s\n", m.target)
	}
	// The retry target is absolute; on a shared machine it only means
	// something next to what the broker itself did in the same run.
	consume := r.median("consume", "drain", func(s sample) float64 { return s.rate })
	for _, s := range subjects[1:] {
		retry := r.median(s.name, "retry", func(s sample) float64 { return s.rate })
		fmt.Fprintf(&w, "%s retry rate / consume-only rate: %.2f\n", s.name, retry/consume)
	}
	fmt.Print(w.String())
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
		s := e.attempt("in-process engine", func() sample { return e.engineInProcess(b, cfg, log, n, retry) })
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
