package rules

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/config"
)

var created = time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)

func order(body string) event.Event {
	return event.Event{ID: "evt_1", Type: "order.completed", CreatedAt: created, Body: []byte(body)}
}

func compileSub(t *testing.T, sub config.Subscription) *Program {
	t.Helper()
	p, err := Compile(sub)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

func filter(t *testing.T, src string) *Program {
	t.Helper()
	return compileSub(t, config.Subscription{Name: "s", Filter: src})
}

func TestFilter(t *testing.T) {
	headers := amqp.Table{
		"tenant":          "acme",
		"retries":         int32(3),
		"score":           float32(0.5),
		"price":           amqp.Decimal{Scale: 2, Value: 1999},
		"vip":             true,
		"sent_at":         created,
		"tags":            []any{"a", int16(2)},
		"meta":            amqp.Table{"region": "eu", "shard": uint8(7)},
		"none":            nil,
		"warren-attempt":  int32(4), // warren's own: hidden
		"x-death":         []any{amqp.Table{"count": int64(1)}},
		"x-first-death-q": "q",
	}
	tests := []struct {
		name, filter, body string
		want               bool
	}{
		{"int field", "data.amount >= 100000", `{"amount": 150000}`, true},
		{"int field false", "data.amount >= 100000", `{"amount": 99}`, false},
		{"double against int", "data.amount > 10", `{"amount": 10.5}`, true},
		{"int equals double", "data.amount == 10.0", `{"amount": 10}`, true},
		{"large id keeps its digits", "data.id == 9007199254740993", `{"id": 9007199254740993}`, true},
		{"type", `type == "order.completed" && id == "evt_1"`, `{}`, true},
		{"nested", `data.customer.country in ["DE", "FR"]`, `{"customer": {"country": "FR"}}`, true},
		{"list", `data.items.exists(i, i.sku == "B")`, `{"items": [{"sku": "A"}, {"sku": "B"}]}`, true},
		{"has", `has(data.coupon)`, `{"amount": 1}`, false},
		{"optional", `data.?coupon.orValue("none") == "none"`, `{"amount": 1}`, true},
		{"strings ext", `type.split(".")[0] == "order"`, `{}`, true},
		{"created_at", `created_at > timestamp("2026-01-01T00:00:00Z")`, `{}`, true},
		{"created_at fields", `created_at.getMonth() == 2`, `{}`, true}, // zero-based
		{"non-JSON body is null", `data == null`, `not json`, true},
		{"empty body is null", `data == null`, ``, true},
		{"trailing data is not JSON", `data == null`, `{} {}`, true},
		{"scalar body", `data == "hi"`, `"hi"`, true},
		{"header string", `headers.tenant == "acme"`, `{}`, true},
		{"header int", `headers.retries == 3 && headers.retries + 1 == 4`, `{}`, true},
		{"header float", `headers.score == 0.5`, `{}`, true},
		{"header decimal", `headers.price == 19.99`, `{}`, true},
		{"header bool", `headers.vip`, `{}`, true},
		{"header timestamp", `headers.sent_at == created_at`, `{}`, true},
		{"header list", `headers.tags[1] == 2`, `{}`, true},
		{"header table", `headers.meta.region == "eu" && headers.meta.shard == 7`, `{}`, true},
		{"header null", `headers.none == null`, `{}`, true},
		{"missing header", `"nope" in headers`, `{}`, false},
		{"warren headers hidden", `!("warren-attempt" in headers) && !("x-death" in headers) && !("x-first-death-q" in headers)`, `{}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := filter(t, tt.filter).Filter(NewInput(order(tt.body), headers))
			if err != nil {
				t.Fatalf("Filter = %v", err)
			}
			if got != tt.want {
				t.Errorf("Filter(%s) on %s = %v, want %v", tt.filter, tt.body, got, tt.want)
			}
		})
	}
}

func TestFilterErrors(t *testing.T) {
	tests := []struct {
		name, filter, body, want string
	}{
		{"missing field", "data.amount > 5", `{"total": 1}`, "filter: no such key: amount"},
		{"type error", "data.amount > 5", `{"amount": "five"}`, "filter: no such overload"},
		{"not a bool", "data.amount", `{"amount": 5}`, "filter: gives int, want a bool"},
		{"field of null", "data.amount > 5", `not json`, "filter:"},
		{"missing header", `headers.tenant == "x"`, `{}`, "filter: no such key: tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := filter(t, tt.filter).Filter(NewInput(order(tt.body), nil))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Filter = %v, %v; want error starting %q", got, err, tt.want)
			}
			if e, ok := errors.AsType[*Error](err); !ok || e.Rule != RuleFilter {
				t.Errorf("error %T %v, want *Error for %s", err, err, RuleFilter)
			}
		})
	}
}

func TestCostLimit(t *testing.T) {
	// 2^20 iterations of a nested comprehension: far past the limit.
	p := filter(t, `[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31].all(a,
		[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31].all(b,
		[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31].all(c,
		[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31].all(d,
		a + b + c + d >= 0))))`)
	_, err := p.Filter(NewInput(order(`{}`), nil))
	if !errors.Is(err, ErrCostLimit) {
		t.Fatalf("Filter = %v, want ErrCostLimit", err)
	}
	if want := "filter: cost limit of 1000000 exceeded"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

func TestAPIVersion(t *testing.T) {
	p := compileSub(t, config.Subscription{Name: "s", Options: config.Options{APIVersion: "2026-01-01"}, Filter: "data.ok"})
	tests := []struct {
		version string
		want    bool
	}{
		{"2026-01-01", true},
		{"", true}, // events without one are delivered
		{"2025-06-01", false},
	}
	for _, tt := range tests {
		ev := order(`{"ok": true}`)
		ev.APIVersion = tt.version
		in := NewInput(ev, nil)
		if got := p.APIVersionMatches(in); got != tt.want {
			t.Errorf("APIVersionMatches(%q) = %v, want %v", tt.version, got, tt.want)
		}
		if got, err := p.Wants(in); err != nil || got != tt.want {
			t.Errorf("Wants(%q) = %v, %v; want %v", tt.version, got, err, tt.want)
		}
	}

	// A mismatched version is filtered before the filter runs: its error
	// never parks the event.
	p = compileSub(t, config.Subscription{Name: "s", Options: config.Options{APIVersion: "2026-01-01"}, Filter: "data.missing"})
	ev := order(`{}`)
	ev.APIVersion = "2025-06-01"
	if got, err := p.Wants(NewInput(ev, nil)); got || err != nil {
		t.Errorf("Wants = %v, %v; want false, nil", got, err)
	}

	// The expression sees api_version as a variable.
	p = filter(t, `api_version == "2025-06-01"`)
	if got, err := p.Filter(NewInput(ev, nil)); !got || err != nil {
		t.Errorf("api_version variable: Filter = %v, %v; want true", got, err)
	}
}

func TestNoRules(t *testing.T) {
	p := compileSub(t, config.Subscription{Name: "s"})
	in := NewInput(order(`not json`), nil)
	if got, err := p.Wants(in); !got || err != nil {
		t.Errorf("Wants = %v, %v; want true", got, err)
	}
	if body, ok, err := p.Transform(in); ok || body != nil || err != nil || p.HasTransform() {
		t.Errorf("Transform = %q, %v, %v; want no transform", body, ok, err)
	}
	if key, ok, err := p.OrderingKey(in); ok || key != "" || err != nil || p.Ordered() {
		t.Errorf("OrderingKey = %q, %v, %v; want unordered", key, ok, err)
	}
}

func TestTransform(t *testing.T) {
	body := `{"id": "ord_1", "amount": 150000, "price": 12.5, "big": 18446744073709551615, "lines": [{"sku": "A"}], "note": "<b>&</b>"}`
	headers := amqp.Table{"tenant": "acme"}
	tests := []struct {
		name, transform, want string
	}{
		{"envelope data shape", `{"order": data.id, "amount": data.amount}`, `{"amount":150000,"order":"ord_1"}`},
		{"whole body kept", `data`, `{"amount":150000,"big":18446744073709551615,"id":"ord_1","lines":[{"sku":"A"}],"note":"<b>&</b>","price":12.5}`},
		{"raw shape with metadata", `{"event": type, "id": id, "at": created_at, "tenant": headers.tenant, "data": data.lines}`,
			`{"at":"2026-03-01T12:30:00Z","data":[{"sku":"A"}],"event":"order.completed","id":"evt_1","tenant":"acme"}`},
		{"scalar", `data.amount * 2`, `300000`},
		{"string", `"order " + data.id`, `"order ord_1"`},
		{"null", `null`, `null`},
		{"list", `data.lines.map(l, l.sku)`, `["A"]`},
		{"bytes and duration", `{"b": b"hi", "d": duration("1m30s")}`, `{"b":"aGk=","d":"90s"}`},
		{"optional field", `{"coupon": data.?coupon.orValue("")}`, `{"coupon":""}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := compileSub(t, config.Subscription{Name: "s", Transform: tt.transform})
			got, ok, err := p.Transform(NewInput(order(body), headers))
			if err != nil || !ok {
				t.Fatalf("Transform = %q, %v, %v", got, ok, err)
			}
			if string(got) != tt.want {
				t.Errorf("Transform(%s) =\n%s\nwant\n%s", tt.transform, got, tt.want)
			}
		})
	}

	errs := []struct {
		name, transform, want string
	}{
		{"missing field", `{"x": data.nope}`, "transform: no such key: nope"},
		{"non-string key", `{1: "a"}`, "transform: gives a map with a int key"},
		{"not JSON", `type(data)`, "transform: gives a type"},
		{"NaN", `0.0 / 0.0`, "transform: gives NaN"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			p := compileSub(t, config.Subscription{Name: "s", Transform: tt.transform})
			got, ok, err := p.Transform(NewInput(order(body), nil))
			if err == nil || !ok || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Transform = %q, %v, %v; want error starting %q", got, ok, err, tt.want)
			}
		})
	}
}

func TestOrderingKey(t *testing.T) {
	tests := []struct {
		key, body, want string
	}{
		{`data.account_id`, `{"account_id": "acc_7"}`, "acc_7"},
		{`data.account_id`, `{"account_id": 42}`, "42"},
		{`data.account_id`, `{"account_id": 4.5}`, "4.5"},
		{`data.account_id`, `{"account_id": 18446744073709551615}`, "18446744073709551615"},
		{`type + "/" + string(data.n)`, `{"n": 3}`, "order.completed/3"},
	}
	for _, tt := range tests {
		p := compileSub(t, config.Subscription{Name: "s", Ordering: config.Ordering{Key: tt.key}})
		got, ok, err := p.OrderingKey(NewInput(order(tt.body), nil))
		if err != nil || !ok || got != tt.want {
			t.Errorf("OrderingKey(%s) on %s = %q, %v, %v; want %q", tt.key, tt.body, got, ok, err, tt.want)
		}
	}
	p := compileSub(t, config.Subscription{Name: "s", Ordering: config.Ordering{Key: "data.account_id"}})
	for body, want := range map[string]string{
		`{}`:                    "ordering.key: no such key: account_id",
		`{"account_id": null}`:  "ordering.key: gives null_type, want a string or a number",
		`{"account_id": [1]}`:   "ordering.key: gives list(dyn), want a string or a number",
		`{"account_id": {}}`:    "ordering.key: gives map(dyn, dyn), want a string or a number",
		`{"account_id": false}`: "", // a bool is a key like any other
	} {
		_, _, err := p.OrderingKey(NewInput(order(body), nil))
		if want == "" && err != nil || want != "" && (err == nil || err.Error() != want) {
			t.Errorf("OrderingKey on %s: error %v, want %q", body, err, want)
		}
	}
}

// TestParseOnce checks that the three rules of one event share one parse.
func TestParseOnce(t *testing.T) {
	p := compileSub(t, config.Subscription{Name: "s", Filter: "data.a == 1", Transform: "data", Ordering: config.Ordering{Key: "string(data.a)"}})
	in := NewInput(order(`{"a": 1}`), nil)
	if _, err := p.Filter(in); err != nil {
		t.Fatal(err)
	}
	parsed := in.data.(map[string]any)
	parsed["a"] = int64(2) // visible to later rules only if the parse is shared
	if key, _, _ := p.OrderingKey(in); key != "2" {
		t.Errorf("OrderingKey = %q after the filter, want the shared parse (2)", key)
	}
}

func TestCompileErrors(t *testing.T) {
	_, err := Compile(config.Subscription{Name: "orders", Filter: "dta.x", Transform: "1 +"})
	if err == nil {
		t.Fatal("Compile = nil, want errors")
	}
	for _, want := range []string{`subscription "orders": filter: undeclared reference to 'dta'`, `subscription "orders": transform: syntax error`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Compile error =\n%v\nwant it to contain %q", err, want)
		}
	}
}
