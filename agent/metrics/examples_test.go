package metrics

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// metricName finds metric names in PromQL: warren's own and the Go and
// process collectors'.
var metricName = regexp.MustCompile(`\b(?:warren|go|process)_[a-z0-9_]+\b`)

// TestExampleDashboards checks that every metric the Grafana dashboard and
// the Prometheus alerts query is one warren exports.
func TestExampleDashboards(t *testing.T) {
	m := New()
	// Every series of a subscription, each made to appear by a first use.
	s := m.For("orders")
	s.Start()
	for _, c := range []*Counter{s.Requeued, s.Filtered, s.DedupSkipped} {
		c.Inc()
	}
	for _, g := range []*Gauge{s.InFlight, s.CircuitOpen, s.Paused} {
		g.Inc()
	}
	s.Latency.Observe(1)
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		exported[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[name+suffix] = true
			}
		}
	}

	var dashboard any
	readJSON(t, "../../examples/grafana/warren.json", &dashboard)
	var alerts struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	data, err := os.ReadFile("../../examples/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &alerts); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	var alertExprs []string
	for _, g := range alerts.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("alerts.yaml: rule %q has no alert name or expr", r.Alert)
			}
			alertExprs = append(alertExprs, r.Expr)
		}
	}

	for file, exprs := range map[string][]string{
		"grafana/warren.json":    queries(dashboard),
		"prometheus/alerts.yaml": alertExprs,
	} {
		used := map[string]bool{}
		for _, e := range exprs {
			for _, name := range metricName.FindAllString(e, -1) {
				used[name] = true
				if !exported[name] {
					t.Errorf("%s queries %s, which warren does not export (in %q)", file, name, e)
				}
			}
		}
		if len(used) < 6 {
			t.Errorf("%s uses %d metrics (%v), want the dashboard to cover warren's", file, len(used), used)
		}
	}
}

func readJSON(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// queries collects every "expr" and "query" string in a Grafana dashboard.
func queries(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && (k == "expr" || k == "query") && strings.Contains(s, "_") {
				out = append(out, s)
				continue
			}
			out = append(out, queries(val)...)
		}
	case []any:
		for _, val := range x {
			out = append(out, queries(val)...)
		}
	}
	return out
}

// TestAlertRulesWithPromtool runs Prometheus's own rule checker on the
// example alerts when promtool is installed (Debian: prometheus).
func TestAlertRulesWithPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed; the metric names are checked by TestExampleDashboards")
	}
	out, err := exec.Command(promtool, "check", "rules", "../../examples/prometheus/alerts.yaml").CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// TestSeriesAppearAtFirstUse: binding a subscription's metrics exports
// nothing; starting it exports its queue depths and the counters alerts
// watch; another counter appears at its first increment, a gauge at its
// first change from 0, and Forget removes them all.
func TestSeriesAppearAtFirstUse(t *testing.T) {
	m := New()
	s := m.For("orders")
	if got := seriesOf(t, m, "orders"); len(got) != 0 {
		t.Fatalf("a subscription planned but not started exports %v, want nothing", got)
	}
	s.Start()
	s.Paused.Set(0)
	s.CircuitOpen.Set(0)
	fresh := []string{"warren_deliveries_total", "warren_deliveries_total", "warren_deliveries_total", "warren_queue_messages", "warren_queue_messages"}
	if got := seriesOf(t, m, "orders"); !slices.Equal(got, fresh) {
		t.Fatalf("a started subscription exports %v, want %v", got, fresh)
	}
	s.Requeued.Inc()
	s.Paused.Set(1)
	want := append(slices.Clone(fresh), "warren_subscription_paused")
	want = slices.Insert(want, 0, "warren_deliveries_total")
	if got := seriesOf(t, m, "orders"); !slices.Equal(got, want) {
		t.Fatalf("after a requeue and a pause exported %v, want %v", got, want)
	}
	// The subscription restarts, unpaused, with metrics bound anew.
	m.For("orders").Paused.Set(0)
	if got := seriesOf(t, m, "orders"); slices.Contains(got, "warren_subscription_paused") {
		t.Fatalf("warren_subscription_paused still exported (at 1) once a restarted subscription set it to 0: %v", got)
	}
	m.Forget("orders")
	if got := seriesOf(t, m, "orders"); len(got) != 0 {
		t.Fatalf("after Forget exported %v, want nothing", got)
	}
}

// seriesOf lists the family of every series labelled subscription=name,
// sorted.
func seriesOf(t *testing.T, m *Metrics, name string) []string {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "subscription" && l.GetValue() == name {
					out = append(out, f.GetName())
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestReloadFailuresCountFromZero: warren_config_reloads_total has both
// results from the start, so that increase() counts the first failure.
func TestReloadFailuresCountFromZero(t *testing.T) {
	families, err := New().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var results []string
	for _, f := range families {
		if f.GetName() != "warren_config_reloads_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			results = append(results, s.GetLabel()[0].GetValue())
		}
	}
	slices.Sort(results)
	if !slices.Equal(results, []string{"failure", "success"}) {
		t.Fatalf("a new process exports warren_config_reloads_total for %v, want failure and success", results)
	}
}
