package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/config")

// testEnv is the environment the golden cases see instead of the real one.
var testEnv = map[string]string{
	"ORDERS_SECRET": "whsec_d2FycmVuLW9yZGVycy10ZXN0LXNlY3JldC0zMmJ5dGU=",
	"ORDERS_TOKEN":  "tok_live_4f9a8b7c",
	"AMQP_URL":      "amqps://warren:hunter2@rabbit.internal:5671/prod",
	"CONCURRENCY":   "8",
	"EMPTY":         "",
	"TLS_DIR":       "../testdata/config/tls",
	"BAD_UTF8":      "order.\xff",
}

func lookupTestEnv(name string) (string, bool) {
	v, ok := testEnv[name]
	return v, ok
}

// canaries are credentials written in the test files and environment that
// must never reach an error message, a warning or Effective output.
var canaries = []string{
	"d2FycmVuLW9yZGVycy10ZXN0LXNlY3JldC0zMmJ5dGU", // ORDERS_SECRET's key
	"tok_live_", "hunter2", "s3cr3t",
}

// secretLiteral matches whsec_ and whsk_ secrets written in the test files.
var secretLiteral = regexp.MustCompile(`wh(?:sec|sk)_([A-Za-z0-9+/=!]{4,})`)

type testCase struct {
	name string // file name without .yaml
	file string // as passed to Parse, and so as shown in messages
	data []byte
}

func testCases(t *testing.T) []testCase {
	t.Helper()
	paths, err := filepath.Glob("../testdata/config/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no test cases in ../testdata/config: %v", err)
	}
	var cases []testCase
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(p), ".yaml")
		cases = append(cases, testCase{name, "testdata/config/" + name + ".yaml", data})
	}
	return cases
}

// output is what a case's golden file holds: the effective config of a valid
// case, the error text of an invalid_* case.
func (tc testCase) output(t *testing.T) string {
	t.Helper()
	c, err := Parse(tc.file, tc.data, lookupTestEnv)
	invalid := strings.HasPrefix(tc.name, "invalid_")
	switch {
	case invalid && err == nil:
		t.Fatalf("parsed without error, want problems; effective config:\n%s", c.Effective())
	case !invalid && err != nil:
		t.Fatalf("unexpected error:\n%v", err)
	case invalid:
		if _, ok := errors.AsType[*Error](err); !ok {
			t.Fatalf("error is %T, want *Error: %v", err, err)
		}
		return err.Error() + "\n"
	}
	return string(c.Effective())
}

func TestGolden(t *testing.T) {
	for _, tc := range testCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.output(t)
			golden := "../testdata/config/" + tc.name + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestNoSecretLeaks(t *testing.T) {
	for _, tc := range testCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			secrets := canaries
			for _, m := range secretLiteral.FindAllStringSubmatch(string(tc.data), -1) {
				secrets = append(secrets, m[1])
			}
			out := tc.output(t)
			if c, err := Parse(tc.file, tc.data, lookupTestEnv); err == nil {
				out += strings.Join(c.Warnings(), "\n")
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("output contains secret %q:\n%s", s, out)
				}
			}
		})
	}
}

func TestExamplesNeedNoEnvironment(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	for _, name := range []string{"warren.yaml", "quickstart.yaml"} {
		t.Run(name, func(t *testing.T) {
			file := "../examples/" + name
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Parse(file, data, noEnv)
			if err != nil {
				t.Fatalf("examples must load with no environment:\n%v", err)
			}
			if w := c.Warnings(); len(w) > 0 {
				t.Errorf("unexpected warnings:\n%s", strings.Join(w, "\n"))
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warren.yaml")
	data := "subscriptions: [{name: orders, url: 'https://orders.example.com/', events: [order.*]}]\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != path || len(c.Subscriptions) != 1 {
		t.Errorf("Load = path %q, %d subscriptions; want %q, 1", c.Path, len(c.Subscriptions), path)
	}

	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want an error wrapping os.ErrNotExist", err)
	}
}
