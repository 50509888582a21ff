package cli_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

func TestValidateOK(t *testing.T) {
	t.Parallel()
	path, _ := configFile(t, header+`subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
    secrets: ["{{.Secret}}"]
  - name: audit
    url: http://127.0.0.1:8080/audit
    events: ["#"]
`)
	r := execute(t, nil, "validate", "-c", path)
	r.wantCode(t, 0)
	if want := path + ": ok (2 subscriptions)\n"; r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing", r.stderr)
	}
}

func TestValidateReportsEveryProblemOnce(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "bad.yaml", `broker:
  url: amqp://warren:hunter2@localhost:5672/
  queue_type: lazy
defaults:
  timeout: 10
subscriptions:
  - name: Orders
    url: https://orders.example.com/webhooks
    events: ["order*"]
    secrets: ["whsec_s3cr3t"]
    colour: blue
  - name: payments
    events: []
    retry:
      delays: [1m, 5s]
`)
	_, err := config.Load(path)
	var cfgErr *config.Error
	if !errors.As(err, &cfgErr) || len(cfgErr.Problems) < 5 {
		t.Fatalf("config.Load = %v, want a *config.Error with several problems", err)
	}

	r := execute(t, nil, "validate", "-c", path)
	r.wantCode(t, 2)
	r.noUsage(t)
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
	for _, p := range cfgErr.Problems {
		line := p.String()
		if n := strings.Count(r.stderr, line); n != 1 {
			t.Errorf("problem %q printed %d times, want once", line, n)
		}
		if !strings.HasPrefix(line, path+":") {
			t.Errorf("problem %q does not start with FILE:", line)
		}
	}
	for _, secret := range []string{"hunter2", "s3cr3t"} {
		if strings.Contains(r.stderr, secret) {
			t.Errorf("stderr shows the secret %q", secret)
		}
	}
	// One line per problem, nothing else.
	if got, want := strings.Count(strings.TrimSpace(r.stderr), "\n")+1, len(cfgErr.Problems); got != want {
		t.Errorf("stderr has %d lines, want %d (one per problem)", got, want)
	}
}

func TestBadUsageExit2WithoutUsageText(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "warren.yaml", "subscriptions: []\n")
	for name, args := range map[string][]string{
		"unknown flag":            {"validate", "--no-such-flag"},
		"extra argument":          {"validate", "-c", path, "extra-arg"},
		"bad log format":          {"--log-format", "xml", "validate", "-c", path},
		"missing argument":        {"routes", "-c", path},
		"unknown command":         {"no-such-command"},
		"unknown dead subcommand": {"dead", "no-such-command", "orders"},
	} {
		t.Run(name, func(t *testing.T) {
			r := execute(t, nil, args...)
			r.wantCode(t, 2)
			r.noUsage(t)
			if n := strings.Count(r.stderr, "error:"); n != 1 {
				t.Errorf(`"error:" printed %d times, want once: %q`, n, r.stderr)
			}
		})
	}
}

// A config file that is not there is bad usage (SPEC §2: 2 = bad usage or
// invalid config), not a runtime failure.
func TestValidateMissingFileExit2(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing.yaml")
	r := execute(t, nil, "validate", "-c", path)
	r.noUsage(t)
	if !strings.Contains(r.stderr, path) {
		t.Errorf("stderr %q does not name the file", r.stderr)
	}
	if r.code != 2 {
		t.Errorf("exit code %d for a missing config file, want 2 (bad usage)", r.code)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := execute(t, nil, "version")
	r.wantCode(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("version printed %d lines, want 3: %q", len(lines), r.stdout)
	}
	if !strings.HasPrefix(lines[0], "warren ") || len(lines[0]) <= len("warren ") {
		t.Errorf("line 1 = %q, want warren <version>", lines[0])
	}
	if !strings.HasPrefix(lines[1], "commit ") || len(lines[1]) <= len("commit ") {
		t.Errorf("line 2 = %q, want commit <commit>", lines[1])
	}
	if lines[2] != runtime.Version() {
		t.Errorf("line 3 = %q, want the Go version %q", lines[2], runtime.Version())
	}
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, header+`subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*", "payment.#"]
  - name: refunds
    url: https://refunds.example.com/webhooks
    events: ["*.refunded", "order.created"]
`)
	work := func(name string) string {
		s, _ := cfg.Subscription(name)
		return cfg.WorkQueue(s)
	}
	cases := []struct {
		key  string
		want map[string][]string // subscription -> matching patterns
	}{
		{"order.created", map[string][]string{"orders": {"order.*"}, "refunds": {"order.created"}}},
		{"order.refunded", map[string][]string{"orders": {"order.*"}, "refunds": {"*.refunded"}}},
		{"payment.captured.eu", map[string][]string{"orders": {"payment.#"}}},
		{"payment", map[string][]string{"orders": {"payment.#"}}},
		{"invoice.refunded", map[string][]string{"refunds": {"*.refunded"}}},
		{"order.created.eu", nil},
		{"user.signup", nil},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			r := execute(t, nil, "routes", "-c", path, tc.key)
			r.wantCode(t, 0)
			if len(tc.want) == 0 {
				if !strings.Contains(r.stdout, "no subscription") || !strings.Contains(r.stdout, tc.key) {
					t.Errorf("stdout = %q, want it to say no subscription receives %s", r.stdout, tc.key)
				}
				return
			}
			lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("%d lines, want %d: %q", len(lines), len(tc.want), r.stdout)
			}
			for _, line := range lines {
				name, _, _ := strings.Cut(line, "\t")
				patterns, ok := tc.want[name]
				if !ok {
					t.Errorf("line %q names a subscription that should not match", line)
					continue
				}
				if !strings.Contains(line, work(name)) {
					t.Errorf("line %q does not show the work queue %s", line, work(name))
				}
				for _, p := range patterns {
					if !strings.Contains(line, fmt.Sprintf("%q", p)) {
						t.Errorf("line %q does not show the pattern %q", line, p)
					}
				}
			}
		})
	}
}

// topologyConfig has two subscriptions with a linear step (two equal delays
// share a tier) and a delay with minutes and seconds.
const topologyConfig = header + `defaults:
  retry:
    delays: [100ms, 200ms, 200ms]
subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*", "payment.#"]
    secrets: ["{{.Secret}}"]
    headers: {Authorization: "Bearer t0psecret"}
  - name: audit
    url: https://audit.example.com/webhooks
    events: ["*.refunded"]
    retry:
      delays: [1m30s]
`

// plannedQueue is what SPEC §4 says a queue must be.
type plannedQueue struct {
	name     string
	args     map[string]any
	patterns []string
}

func plannedQueues(cfg *config.Config) []plannedQueue {
	prefix := cfg.Broker.QueuePrefix
	classic := func() map[string]any { return map[string]any{"x-queue-type": "classic"} }
	// Tiers are shared by the prefix and dead-letter by the copy's own
	// routing key (its work queue).
	tier := func(ms int64) map[string]any {
		return map[string]any{"x-queue-type": "classic", "x-message-ttl": ms, "x-dead-letter-exchange": ""}
	}
	return []plannedQueue{
		{prefix + ".orders", classic(), []string{"order.*", "payment.#"}},
		{prefix + ".retry.100ms", tier(100), nil},
		{prefix + ".retry.200ms", tier(200), nil},
		{prefix + ".orders.dead", classic(), nil},
		{prefix + ".audit", classic(), []string{"*.refunded"}},
		{prefix + ".retry.1m30s", tier(90_000), nil},
		{prefix + ".audit.dead", classic(), nil},
	}
}

func TestTopologyPrintsPlan(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, topologyConfig)
	r := execute(t, nil, "topology", "-c", path)
	r.wantCode(t, 0)
	lines := strings.Split(r.stdout, "\n")
	exchange := cfg.Broker.Exchange
	if !strings.HasPrefix(lines[0], "exchange "+exchange+" ") || !strings.Contains(lines[0], "topic") {
		t.Errorf("first line = %q, want the topic exchange %s", lines[0], exchange)
	}
	queueLines := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "queue ") {
			queueLines++
		}
	}
	planned := plannedQueues(cfg)
	if queueLines != len(planned) {
		t.Errorf("%d queue lines, want %d (equal delays share one tier)", queueLines, len(planned))
	}
	for _, q := range planned {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "queue "+q.name+" ") })
		if i < 0 {
			t.Errorf("no line for queue %s", q.name)
			continue
		}
		if !strings.Contains(lines[i], "durable") {
			t.Errorf("queue line %q does not say durable", lines[i])
		}
		for k, v := range q.args {
			want := fmt.Sprintf("%s=%v", k, v)
			if s, ok := v.(string); ok {
				want = fmt.Sprintf("%s=%q", k, s)
			}
			if !strings.Contains(lines[i], want) {
				t.Errorf("queue line %q lacks %s", lines[i], want)
			}
		}
		for j, p := range q.patterns {
			if l := lines[i+1+j]; !strings.Contains(l, "bound to "+exchange) || !strings.Contains(l, fmt.Sprintf("%q", p)) {
				t.Errorf("line %q, want the binding of %s with %q", l, q.name, p)
			}
		}
		for _, forbidden := range []string{"x-queue-mode", "x-queue-version"} {
			if strings.Contains(lines[i], forbidden) {
				t.Errorf("queue line %q sets %s", lines[i], forbidden)
			}
		}
	}
	for _, secret := range []string{testSecret, "t0psecret", "guest:guest"} {
		if strings.Contains(r.stdout, secret) {
			t.Errorf("topology output shows the secret %q", secret)
		}
	}
	// Printing the plan declares nothing.
	ch, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclarePassive(planned[0].name, true, false, false, false, nil); err == nil {
		t.Errorf("queue %s exists after topology without --apply", planned[0].name)
	}
}

func TestTopologyApplyIsIdempotentAndRoutes(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, topologyConfig)
	for i := range 2 {
		r := execute(t, nil, "topology", "-c", path, "--apply")
		r.wantCode(t, 0)
		if !strings.Contains(r.stdout, "applied to ") {
			t.Errorf("apply #%d: stdout lacks %q", i+1, "applied to")
		}
		if strings.Contains(r.stdout, "guest:guest") {
			t.Errorf("apply #%d shows the broker password", i+1)
		}
	}

	conn := brokertest.Dial(t)
	planned := plannedQueues(cfg)
	for _, q := range planned {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclarePassive(q.name, true, false, false, false, nil); err != nil {
			t.Errorf("planned queue %s does not exist: %v", q.name, err)
			continue
		}
		// A declare with the planned arguments succeeds only if they are the
		// queue's arguments.
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, amqp.Table(q.args)); err != nil {
			t.Errorf("queue %s does not have the planned arguments %v: %v", q.name, q.args, err)
			continue
		}
		ch.Close()
	}
	// ...and one with another TTL fails: the arguments are really there.
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	other := amqp.Table(maps.Clone(planned[1].args))
	other["x-message-ttl"] = int64(999)
	var amqpErr *amqp.Error
	if _, err := ch.QueueDeclare(planned[1].name, true, false, false, false, other); !errors.As(err, &amqpErr) || amqpErr.Code != amqp.PreconditionFailed {
		t.Errorf("redeclaring %s with another TTL: %v, want PRECONDITION_FAILED", planned[1].name, err)
	}

	if ctl, err := exec.LookPath("rabbitmqctl"); err == nil {
		checkWithRabbitmqctl(t, ctl, cfg, planned)
	} else {
		t.Logf("rabbitmqctl not found: queue list and bindings checked by routing only")
	}

	// Every pattern routes its example keys to its work queue only.
	orders, audit := planned[0].name, planned[4].name
	warrentest.Publish(t, cfg, "order.created", warrentest.JSON("evt_t1", `{}`))       // orders
	warrentest.Publish(t, cfg, "payment.captured.eu", warrentest.JSON("evt_t2", `{}`)) // orders
	warrentest.Publish(t, cfg, "payment", warrentest.JSON("evt_t3", `{}`))             // orders
	warrentest.Publish(t, cfg, "invoice.refunded", warrentest.JSON("evt_t4", `{}`))    // audit
	warrentest.Publish(t, cfg, "order.refunded", warrentest.JSON("evt_t5", `{}`))      // both
	warrentest.PublishUnroutable(t, cfg, "user.signup", warrentest.JSON("evt_t6", `{}`))
	warrentest.WaitDepth(t, orders, 4, 10*time.Second)
	warrentest.WaitDepth(t, audit, 2, 10*time.Second)
	for _, q := range planned {
		if q.name == orders || q.name == audit {
			continue
		}
		if n := warrentest.DepthOn(t, conn, q.name); n != 0 {
			t.Errorf("queue %s holds %d messages, want 0: only work queues are bound", q.name, n)
		}
	}
}

// checkWithRabbitmqctl compares the broker's own listing with the plan:
// exactly the planned queues under the prefix, with exactly the planned
// arguments, and exactly the planned bindings from the exchange.
func checkWithRabbitmqctl(t *testing.T, ctl string, cfg *config.Config, planned []plannedQueue) {
	t.Helper()
	out, err := exec.Command(ctl, "-q", "list_queues", "name", "arguments", "--formatter", "json").Output()
	if err != nil {
		t.Errorf("rabbitmqctl list_queues: %v", err)
		return
	}
	var queues []struct {
		Name      string  `json:"name"`
		Arguments [][]any `json:"arguments"`
	}
	if err := json.Unmarshal(out, &queues); err != nil {
		t.Errorf("rabbitmqctl list_queues output: %v\n%s", err, out)
		return
	}
	got := map[string]map[string]string{}
	for _, q := range queues {
		if !strings.HasPrefix(q.Name, cfg.Broker.QueuePrefix+".") {
			continue
		}
		args := map[string]string{}
		for _, a := range q.Arguments { // [name, type, value]
			if len(a) == 3 {
				args[fmt.Sprint(a[0])] = fmt.Sprint(a[2])
			}
		}
		got[q.Name] = args
	}
	want := map[string]map[string]string{}
	for _, q := range planned {
		args := map[string]string{}
		for k, v := range q.args {
			args[k] = fmt.Sprint(v)
		}
		want[q.name] = args
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rabbitmqctl list_queues under the prefix:\n got %v\nwant %v", got, want)
	}

	out, err = exec.Command(ctl, "-q", "list_bindings", "source_name", "destination_name", "routing_key", "--formatter", "json").Output()
	if err != nil {
		t.Errorf("rabbitmqctl list_bindings: %v", err)
		return
	}
	var bindings []struct {
		Source      string `json:"source_name"`
		Destination string `json:"destination_name"`
		Key         string `json:"routing_key"`
	}
	if err := json.Unmarshal(out, &bindings); err != nil {
		t.Errorf("rabbitmqctl list_bindings output: %v\n%s", err, out)
		return
	}
	var gotB, wantB []string
	for _, b := range bindings {
		if b.Source == cfg.Broker.Exchange {
			gotB = append(gotB, b.Destination+" "+b.Key)
		}
	}
	for _, q := range planned {
		for _, p := range q.patterns {
			wantB = append(wantB, q.name+" "+p)
		}
	}
	slices.Sort(gotB)
	slices.Sort(wantB)
	if !slices.Equal(gotB, wantB) {
		t.Errorf("bindings from %s:\n got %q\nwant %q", cfg.Broker.Exchange, gotB, wantB)
	}
}

// A queue that exists with other arguments is a runtime failure that names
// the queue, the conflict and the fix.
func TestTopologyApplyConflict(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, topologyConfig)
	execute(t, nil, "topology", "-c", path, "--apply").wantCode(t, 0)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	quorum := strings.Replace(string(data), "broker:\n", "broker:\n  queue_type: quorum\n", 1)
	if err := os.WriteFile(path, []byte(quorum), 0o600); err != nil {
		t.Fatal(err)
	}
	r := execute(t, nil, "topology", "-c", path, "--apply")
	r.wantCode(t, 1)
	r.noUsage(t)
	work := cfg.WorkQueue(cfg.Subscriptions[0])
	tier := cfg.RetryQueue(100 * time.Millisecond) // declared first
	if !strings.Contains(r.stderr, `queue "`+tier+`"`) || !strings.Contains(r.stderr, "broker.queue_type quorum") || !strings.Contains(r.stderr, "delete_queue") {
		t.Errorf("stderr = %q, want the queue %s, the queue type and the fix (delete_queue)", r.stderr, tier)
	}
	// The classic queue is untouched.
	if _, err := ch(t).QueueDeclare(work, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		t.Errorf("queue %s changed: %v", work, err)
	}
}

func ch(t *testing.T) *amqp.Channel {
	t.Helper()
	c, err := brokertest.Dial(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoutesRules(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, header+`  max_in_flight: 10
subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
  - name: big-orders
    url: https://erp.example.com/hooks
    events: ["order.*"]
    filter: 'type == "order.completed" && data.amount >= 100000'
    api_version: "2026-01-01"
    transform: '{"order": data.id, "amount": data.amount, "tenant": headers[?"tenant"].orValue(""), "id": id}'
    ordering: {key: data.customer}
  - name: payments
    url: https://payments.example.com/hooks
    events: ["payment.*"]
    filter: 'false'
`)
	body := writeFile(t, "order.json", `{"id": "ord_1", "amount": 150000, "customer": 42}`)
	cases := []struct {
		name string
		args []string
		want string // the big-orders part of the output
	}{
		{"delivered with body and key",
			[]string{"--data", "@" + body, "--header", "tenant=acme", "--id", "evt_x"},
			`big-orders	{{.Queue}}	("order.*")	delivered (filter is true)
  ordering key: "42"
  body: {"amount":150000,"id":"evt_x","order":"ord_1","tenant":"acme"}
`},
		{"filter false",
			[]string{"--data", `{"id": "ord_1", "amount": 5, "customer": 42}`},
			`big-orders	{{.Queue}}	("order.*")	filtered: filter is false
`},
		{"filter error parks",
			[]string{"--data", `{"id": "ord_1"}`},
			`big-orders	{{.Queue}}	("order.*")	parked: filter: no such key: amount
`},
		{"non-JSON body",
			[]string{"--data", `not json`},
			`big-orders	{{.Queue}}	("order.*")	parked: filter: `},
		{"matching api_version",
			[]string{"--data", "@" + body, "--header", "api_version=2026-01-01"},
			`big-orders	{{.Queue}}	("order.*")	delivered (filter is true)`},
		{"other api_version",
			[]string{"--data", "@" + body, "--header", "api_version=2025-06-01"},
			`big-orders	{{.Queue}}	("order.*")	filtered: api_version "2025-06-01", subscription takes "2026-01-01"
`},
		{"transform error parks",
			[]string{"--data", `{"amount": 100000, "customer": "c"}`},
			`big-orders	{{.Queue}}	("order.*")	delivered (filter is true)
  ordering key: "c"
  parked: transform: no such key: id
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := execute(t, nil, append([]string{"routes", "-c", path, "order.completed"}, tc.args...)...)
			r.wantCode(t, 0)
			lines := strings.SplitN(r.stdout, "\n", 2)
			if !strings.HasPrefix(lines[0], "orders\t") || !strings.HasSuffix(lines[0], "\tdelivered") {
				t.Errorf("first line %q, want orders delivered (no rules)", lines[0])
			}
			big, _ := cfg.Subscription("big-orders")
			want := strings.ReplaceAll(tc.want, "{{.Queue}}", cfg.WorkQueue(big))
			if len(lines) < 2 || !strings.HasPrefix(lines[1], want) {
				t.Errorf("stdout:\n%s\nwant it to continue with:\n%s", r.stdout, want)
			}
			if strings.Contains(r.stdout, "payments") {
				t.Errorf("stdout names payments, whose pattern does not match:\n%s", r.stdout)
			}
		})
	}

	r := execute(t, nil, "routes", "-c", path, "payment.captured")
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "payments\t") || !strings.HasSuffix(r.stdout, "\tfiltered: filter is false\n") {
		t.Errorf("stdout = %q, want payments filtered", r.stdout)
	}

	r = execute(t, nil, "routes", "-c", path, "order.completed", "--header", "novalue")
	r.wantCode(t, 2)
	r.noUsage(t)
}

func TestValidateRoutingRules(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "warren.yaml", `subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
    priority: high
    filter: data.amount > 5
`)
	r := execute(t, nil, "validate", "-c", path)
	r.wantCode(t, 0)
	if want := path + ": warning: subscriptions[0].priority: high has no effect without server.max_in_flight"; !strings.HasPrefix(r.stderr, want) {
		t.Errorf("stderr = %q, want it to start with %q", r.stderr, want)
	}

	path = writeFile(t, "warren.yaml", `subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
    filter: data.amount > dta
`)
	r = execute(t, nil, "validate", "-c", path)
	r.wantCode(t, 2)
	want := path + `:5:13: subscriptions[0].filter: undeclared reference to 'dta' (did you mean 'data'?) (at column 15 of "data.amount > dta", want one of id, type, data, headers, api_version, created_at)`
	if strings.TrimSpace(r.stderr) != "error: "+want && !strings.Contains(r.stderr, want) {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}
}
