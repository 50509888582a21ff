// Package brokertest connects integration tests to the real RabbitMQ broker.
//
// Tests that need the broker fail rather than skip when it is down: a skipped
// broker test looks like a passing one in CI.
package brokertest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker used when AMQP_URL is unset.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// URL returns AMQP_URL, or DefaultURL when it is unset.
func URL() string {
	if u := os.Getenv("AMQP_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// Dial connects to the broker at URL and closes the connection when the test
// ends. It fails the test if the broker is unreachable.
func Dial(t testing.TB) *amqp.Connection {
	t.Helper()
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("warren-test")
	conn, err := amqp.DialConfig(URL(), amqp.Config{
		Properties: props,
		// Fail fast: a test waiting on the 30s library default looks hung.
		Dial: amqp.DefaultDial(5 * time.Second),
	})
	if err != nil {
		t.Fatalf("RabbitMQ is unreachable at %s: %v\n"+
			"start it with `rabbitmq-server -detached`, or run `bash .ci/run`, "+
			"which installs and starts it; set AMQP_URL to use another broker",
			redact(URL()), err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			t.Errorf("close broker connection: %v", err)
		}
	})
	return conn
}

// Unique returns a lower-case name prefix for the exchanges and queues of one
// test run, so that parallel and repeated runs never share broker objects.
func Unique(t testing.TB) string {
	name := strings.ToLower(t.Name())
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return fmt.Sprintf("wt-%s-%08x", name, rand.Uint32())
}

// redact hides the password in url so that a failure message cannot leak it.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "AMQP_URL"
	}
	return u.Redacted()
}
