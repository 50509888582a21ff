package cli_test

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
)

const publishConfig = header + `subscriptions:
  - name: orders
    url: https://orders.example.com/webhooks
    events: ["order.*"]
`

var publishedLine = regexp.MustCompile(`^published (evt_[0-9a-f]+) (\S+) \((\d+) bytes\)\n$`)

func TestPublish(t *testing.T) {
	t.Parallel()
	path, cfg := configFile(t, publishConfig)
	warrentest.Apply(t, cfg)
	work := cfg.WorkQueue(cfg.Subscriptions[0])
	conn := brokertest.Dial(t)
	bodyFile := writeFile(t, "body.json", `{"from":"file"}`)

	cases := []struct {
		name  string
		args  []string
		stdin string
		body  string
	}{
		{"inline body", []string{"order.created", `{"n":1}`}, "", `{"n":1}`},
		{"no body", []string{"order.created"}, "", `{}`},
		{"@file", []string{"order.paid", "@" + bodyFile}, "", `{"from":"file"}`},
		{"stdin", []string{"order.shipped", "-"}, `{"from":"stdin"}`, `{"from":"stdin"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			args := append([]string{"publish", "-c", path}, tc.args...)
			r := execute(t, strings.NewReader(tc.stdin), args...)
			r.wantCode(t, 0)
			m := publishedLine.FindStringSubmatch(r.stdout)
			if m == nil {
				t.Fatalf("stdout = %q, want published evt_... KEY (N bytes)", r.stdout)
			}
			if m[2] != tc.args[0] {
				t.Errorf("printed key %q, want %q", m[2], tc.args[0])
			}
			if want := len(tc.body); m[3] != strconv.Itoa(want) {
				t.Errorf("printed %s bytes, want %d", m[3], want)
			}
			warrentest.WaitDepth(t, work, 1, 10*time.Second)
			d := take(t, conn, work)
			if d.MessageId != m[1] {
				t.Errorf("message_id = %q, want the printed id %q", d.MessageId, m[1])
			}
			if d.DeliveryMode != amqp.Persistent {
				t.Errorf("delivery_mode = %d, want persistent (2)", d.DeliveryMode)
			}
			if string(d.Body) != tc.body {
				t.Errorf("body = %q, want %q", d.Body, tc.body)
			}
			if d.RoutingKey != tc.args[0] || d.Exchange != cfg.Broker.Exchange {
				t.Errorf("published to %q with key %q, want %q with %q", d.Exchange, d.RoutingKey, cfg.Broker.Exchange, tc.args[0])
			}
			if d.ContentType != "application/json" {
				t.Errorf("content_type = %q, want application/json", d.ContentType)
			}
			if d.Timestamp.Before(before) {
				t.Errorf("timestamp = %s, want about now", d.Timestamp)
			}
		})
	}

	t.Run("id and headers", func(t *testing.T) {
		r := execute(t, nil, "publish", "-c", path, "--id", "evt_mine", "--header", "api_version=2024-01-01", "order.created", `{}`)
		r.wantCode(t, 0)
		d := take(t, conn, work)
		if d.MessageId != "evt_mine" || d.Headers["api_version"] != "2024-01-01" {
			t.Errorf("message_id %q, headers %v; want evt_mine and api_version", d.MessageId, d.Headers)
		}
	})

	t.Run("unroutable", func(t *testing.T) {
		r := execute(t, nil, "publish", "-c", path, "user.signup", `{}`)
		r.wantCode(t, 1)
		r.noUsage(t)
		if !strings.Contains(r.stderr, `no queue is bound for "user.signup"`) || !strings.Contains(r.stderr, cfg.Broker.Exchange) {
			t.Errorf("stderr = %q, want it to say no queue is bound for the key on the exchange", r.stderr)
		}
		if n := strings.Count(r.stderr, "error:"); n != 1 {
			t.Errorf(`"error:" printed %d times, want once`, n)
		}
		if r.stdout != "" {
			t.Errorf("stdout = %q, want nothing: the event was not stored", r.stdout)
		}
		if n := warrentest.DepthOn(t, conn, work); n != 0 {
			t.Errorf("work queue holds %d messages, want 0", n)
		}
	})

	t.Run("missing @file", func(t *testing.T) {
		r := execute(t, nil, "publish", "-c", path, "order.created", "@"+bodyFile+".missing")
		if r.code == 0 {
			t.Fatalf("exit 0 for a missing body file")
		}
		if n := warrentest.DepthOn(t, conn, work); n != 0 {
			t.Errorf("work queue holds %d messages, want 0", n)
		}
	})
}

// TestCommandsUseBrokerURLs: topology, publish and dead reach the broker
// through broker.urls when its first node is down.
func TestCommandsUseBrokerURLs(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "amqp://guest:guest@" + ln.Addr().String() + "/"
	ln.Close() // refused from now on
	text := strings.Replace(publishConfig, "  url: {{.URL}}\n", "  urls: ['"+down+"', '{{.URL}}']\n", 1)
	path, cfg := configFile(t, text)
	if len(cfg.Broker.URLs) != 2 {
		t.Fatalf("broker.urls = %q, want two nodes", cfg.Broker.URLs)
	}

	for _, args := range [][]string{
		{"topology", "-c", path, "--apply"},
		{"publish", "-c", path, "order.created"},
		{"dead", "list", "-c", path, "orders"},
	} {
		r := execute(t, strings.NewReader(""), args...)
		r.wantCode(t, 0)
	}
	warrentest.WaitDepth(t, cfg.WorkQueue(cfg.Subscriptions[0]), 1, 10*time.Second)
}
