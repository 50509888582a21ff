package topic

import (
	"strings"
	"testing"
)

// cases is shared with TestMatchAgreesWithBroker, which checks every pattern
// here against every key here on a real topic exchange.
var cases = []struct {
	pattern, key string
	want         bool
}{
	// "#" matches everything, including the empty key.
	{"#", "", true},
	{"#", "a", true},
	{"#", "a.b.c", true},
	{"#", ".", true},
	{"#", "#", true},
	{"#.#", "", true},
	{"#.#", "a.b", true},
	{"#.#.#.x", "x", true},
	{"#.#.#.x", "a.b", false},

	// "*" is exactly one word, which may be empty.
	{"*", "", false},
	{"*", "a", true},
	{"*", "*", true},
	{"*", "a.b", false},
	{"*", ".", false},
	{"*.*", "a.b", true},
	{"*.*", "a", false},
	{"*.*", ".", true},
	{"*.*", "a.", true},
	{"*.*", ".a", true},
	{"*.*.*", "..", true},
	{"a.*.b", "a..b", true},

	// "#.*" is everything but the empty key.
	{"#.*", "", false},
	{"#.*", "a", true},
	{"#.*", ".", true},
	{"#.*", "a.b.c", true},
	{"#.*.#", "", false},
	{"#.*.#", "a", true},
	{"*.#.*", "a", false},
	{"*.#.*", "a.b", true},
	{"*.#.*", "a.b.c.d", true},

	// A trailing "#" may match no words at all.
	{"a.#", "a", true},
	{"a.#", "a.", true},
	{"a.#", "a.b.c", true},
	{"a.#", "a.#", true},
	{"a.#", "ab", false},
	{"a.#", "b", false},
	{"a.#", "", false},
	{"a.*.#", "a", false},
	{"a.*.#", "a.", true},
	{"a.*.#", "a.b", true},
	{"a.*.#", "a.b.c", true},
	{"a.#.b", "a.b", true},
	{"a.#.b", "a.x.b", true},
	{"a.#.b", "a.x.y.b", true},
	{"a.#.b", "a.b.b", true},
	{"a.#.b", "a", false},
	{"a.#.b", "a.b.c", false},
	{"#.b.#", "b", true},
	{"#.b.#", "a.b.c", true},
	{"#.b.#", "a.c", false},
	{"#.a.#.a.#", "a.a", true},
	{"#.a.#.a.#", "x.a.y.z.a", true},
	{"#.a.#.a.#", "a", false},

	// Empty words are words.
	{"a..b", "a..b", true},
	{"a..b", "a.b", false},
	{".", ".", true},
	{".", "", false},
	{"..", "..", true},
	{"..", ".", false},
	{".a", "a", false},
	{"#.", ".", true},
	{"#.", "a.", true},
	{"#.", "a", false},
	{"#.", "", false},
	{"a.b", "a.b.", false},
	{"a.b.", "a.b.", true},
	{"a.b.*", "a.b.", true},

	// The empty pattern has no words and matches only the empty key.
	{"", "", true},
	{"", "a", false},
	{"", ".", false},
	{"a", "", false},

	// Wildcards inside a word are literals.
	{"a*", "ab", false},
	{"a*", "a*", true},
	{"a#", "a#", true},
	{"a#", "a", false},
	{"a#", "a.b", false},
	{"*a", "ba", false},

	// Literals are case-sensitive bytes; UTF-8 passes through.
	{"order.*", "order.created", true},
	{"order.*", "order.created.v2", false},
	{"order.*", "Order.created", false},
	{"Order.*", "order.created", false},
	{"payment.#", "payment", true},
	{"payment.#", "payments.refunded", false},
	{"café.*", "café.créé", true},
	{"café.*", "cafe.créé", false},
	{"日本.#", "日本.東京.港区", true},
}

func TestMatch(t *testing.T) {
	for _, c := range cases {
		if got := Match(c.pattern, c.key); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.key, got, c.want)
		}
		if ref := refMatch(c.pattern, c.key); ref != c.want {
			t.Errorf("reference disagrees with table: refMatch(%q, %q) = %v", c.pattern, c.key, ref)
		}
	}
}

// TestMatchExhaustive compares Match with the reference on every short
// pattern and key over a small alphabet, which covers every arrangement of
// literals, empty words, "*" and "#" up to four pattern words.
func TestMatchExhaustive(t *testing.T) {
	patterns := joinAll([]string{"a", "", "*", "#"}, 4)
	keys := joinAll([]string{"a", "b", ""}, 5)
	for _, p := range patterns {
		for _, k := range keys {
			if got, want := Match(p, k), refMatch(p, k); got != want {
				t.Errorf("Match(%q, %q) = %v, reference says %v", p, k, got, want)
			}
		}
	}
}

// TestMatchManyHashes guards against exponential backtracking: a naive
// matcher takes about forever on this pattern.
func TestMatchManyHashes(t *testing.T) {
	pattern := strings.Repeat("#.a.", 30) + "b"
	key := strings.TrimSuffix(strings.Repeat("a.", 120), ".")
	if Match(pattern, key) {
		t.Errorf("Match(%q, %q) = true, want false", pattern, key)
	}
	if !Match(pattern, key+".b") {
		t.Errorf("Match(%q, %q) = false, want true", pattern, key+".b")
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		for _, c := range cases {
			Match(c.pattern, c.key)
		}
	})
	if allocs != 0 {
		t.Errorf("Match allocates %v times per table run, want 0", allocs)
	}
}

func FuzzMatch(f *testing.F) {
	for _, c := range cases {
		f.Add(c.pattern, c.key)
	}
	f.Fuzz(func(t *testing.T, pattern, key string) {
		if got, want := Match(pattern, key), refMatch(pattern, key); got != want {
			t.Errorf("Match(%q, %q) = %v, reference says %v", pattern, key, got, want)
		}
	})
}

func BenchmarkMatch(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Match("orders.#.eu.*", "orders.acme.shipping.eu.created")
	}
}

// refMatch is a direct transcription of the rules, memoised so that fuzzed
// patterns with many "#" stay fast.
func refMatch(pattern, key string) bool {
	p, k := refSplit(pattern), refSplit(key)
	memo := make(map[[2]int]bool)
	var match func(i, j int) bool
	match = func(i, j int) bool {
		if v, ok := memo[[2]int{i, j}]; ok {
			return v
		}
		var v bool
		switch {
		case i == len(p):
			v = j == len(k)
		case p[i] == "#":
			v = match(i+1, j) || j < len(k) && match(i, j+1)
		default:
			v = j < len(k) && (p[i] == "*" || p[i] == k[j]) && match(i+1, j+1)
		}
		memo[[2]int{i, j}] = v
		return v
	}
	return match(0, 0)
}

// refSplit splits like RabbitMQ: unlike strings.Split, "" has no words.
func refSplit(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ".")
}

// joinAll returns every '.'-joined sequence of up to n words, each distinct
// string once.
func joinAll(words []string, n int) []string {
	seen := map[string]bool{"": true}
	all := []string{""}
	level := [][]string{nil}
	for range n {
		var next [][]string
		for _, seq := range level {
			for _, w := range words {
				s := append(append([]string(nil), seq...), w)
				next = append(next, s)
				if j := strings.Join(s, "."); !seen[j] {
					seen[j] = true
					all = append(all, j)
				}
			}
		}
		level = next
	}
	return all
}
