package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/topology"
	"github.com/warren-hq/warren/config"
)

// BenchmarkJournalDrain drains the backlog with warren twice per round,
// with broker.journal off and on (every attempt then also appended to
// P.attempts, and every event the backlog publishes written to P.journal
// too), alternating which goes first, and prints the ratio of each round
// and their median. It is part of `make bench`; it has no goal to miss.
func BenchmarkJournalDrain(b *testing.B) {
	n := envInt(b, "WARREN_BENCH_N", defaultBacklog)
	rounds := envInt(b, "WARREN_BENCH_ROUNDS", defaultRounds)
	e := newEnv(b)
	bin := build(b, e.dir, "warren", "github.com/warren-hq/warren")
	off := warrenSubject("warren", bin)
	on := warrenSubject("warren+journal", bin)
	on.start = func(e *env, _ bool) *proc {
		path := e.warrenConfig("journal.yaml", false)
		withJournal(e, path)
		return e.start(on.name, bin, "run", "-c", path, "--log-format", "json", "--log-level", "info")
	}
	// The journal's streams are declared up front, so that the backlog is
	// journaled as it would be in production, and deleted at the end.
	jcfg := *e.cfg
	jcfg.Broker.Journal = &config.Journal{MaxAge: time.Hour, MaxBytes: 4 * config.GiB}
	if err := topology.Apply(e.conn, topology.For(&jcfg)); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ch, err := e.conn.Channel()
		if err != nil {
			b.Error(err)
			return
		}
		defer ch.Close()
		for _, s := range []string{jcfg.JournalStream(), jcfg.AttemptsStream()} {
			if _, err := ch.QueueDelete(s, false, false, false); err != nil {
				b.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	fmt.Printf("\njournal: backlog %d, %d rounds\n", n, rounds)
	var rateRatios, cpuRatios []float64
	for range b.N {
		for r := range rounds {
			order := []subject{off, on}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			got := map[string]sample{}
			for _, s := range order {
				got[s.name] = e.drain(s, n)
			}
			rateRatios = append(rateRatios, got[on.name].rate/got[off.name].rate)
			cpuRatios = append(cpuRatios, got[on.name].cpu/got[off.name].cpu)
			fmt.Printf("round %d: journal on/off: drain %.2f×, CPU per message %.2f×\n", r+1, rateRatios[r], cpuRatios[r])
		}
	}
	fmt.Printf("journal on/off (median of %d rounds): drain %.2f×, CPU per message %.2f×\n",
		len(rateRatios), median(rateRatios), median(cpuRatios))
}

// withJournal adds broker.journal to the warren config at path.
func withJournal(e *env, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		e.b.Fatal(err)
	}
	e.writeConfig(filepath.Base(path), strings.Replace(string(data), "broker:\n", "broker:\n  journal: {max_age: 1h, max_bytes: 4GiB}\n", 1))
}
