package cli_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/cli"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/config"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// syncBuffer is a bytes.Buffer safe to write from one goroutine (a
// command's HTTP handlers) while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// result is what one in-process run of the command line produced.
type result struct {
	code           int
	stdout, stderr string
}

// execute runs the command line in-process with args and stdin.
func execute(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := cli.Execute(ctx, cli.Env{Args: args, Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("warren %s -> exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// wantCode fails the test unless r exited with code.
func (r result) wantCode(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d (stderr: %q)", r.code, code, r.stderr)
	}
}

// noUsage fails the test if r printed cobra's usage text.
func (r result) noUsage(t *testing.T) {
	t.Helper()
	for _, s := range []string{r.stdout, r.stderr} {
		if strings.Contains(s, "Usage:") || strings.Contains(s, "Flags:") {
			t.Errorf("usage text printed:\n%s", s)
		}
	}
}

// header is the start of every test config; {{.URL}} and {{.Unique}} are
// filled in. Tests append subscriptions (and may override defaults).
const header = `broker:
  url: {{.URL}}
  exchange: {{.Unique}}
  queue_prefix: {{.Unique}}
server:
  listen: ""
  shutdown_grace: 10s
`

// configFile writes text (a template over .URL, .Unique and .Secret) to
// warren.yaml in a fresh directory, loads it, and deletes every queue it
// implies and its exchange when the test ends.
func configFile(t *testing.T, text string) (string, *config.Config) {
	t.Helper()
	path := writeFile(t, "warren.yaml", expand(t, text))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("test config does not load: %v", err)
	}
	conn := brokertest.Dial(t)
	t.Cleanup(func() { warrentest.Cleanup(t, conn, cfg) })
	return path, cfg
}

func expand(t *testing.T, text string) string {
	t.Helper()
	tmpl, err := template.New("config").Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	err = tmpl.Execute(&b, map[string]string{
		"URL":    brokertest.URL(),
		"Unique": brokertest.Unique(t),
		"Secret": testSecret,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// writeFile writes data to name in a fresh temporary directory.
func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startEngine runs an engine on cfg in the background; the returned stop
// cancels it and waits until Run returned. It is also called when the test
// ends.
func startEngine(t *testing.T, cfg *config.Config) (stop func()) {
	t.Helper()
	_, stop = warrentest.Start(t, cfg)
	return stop
}

// peek gets the first message of queue and puts it back (by closing the
// channel without settling it).
func peek(t *testing.T, conn *amqp.Connection, queue string) amqp.Delivery {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	d, ok, err := ch.Get(queue, false)
	if err != nil || !ok {
		t.Fatalf("get from %s: ok=%v err=%v", queue, ok, err)
	}
	return d
}

// take gets and acks the first message of queue.
func take(t *testing.T, conn *amqp.Connection, queue string) amqp.Delivery {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	d, ok, err := ch.Get(queue, true)
	if err != nil || !ok {
		t.Fatalf("get from %s: ok=%v err=%v", queue, ok, err)
	}
	return d
}

// allQueues lists every queue of cfg: work, tiers and dead, per subscription.
func allQueues(cfg *config.Config) []string {
	var qs []string
	for _, s := range cfg.Subscriptions {
		qs = append(qs, cfg.WorkQueue(s))
		for _, d := range s.Tiers() {
			qs = append(qs, cfg.RetryQueue(d))
		}
		qs = append(qs, cfg.DeadQueue(s))
	}
	return qs
}
