package engine_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/engine"
	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/agent/internal/warrentest"
	"github.com/warren-hq/warren/agent/metrics"
	"github.com/warren-hq/warren/config"
)

// stallProxy forwards TCP on 127.0.0.1 to the test broker until stall is
// called; then it keeps every connection open and passes nothing more
// either way: a broker that stopped answering.
type stallProxy struct {
	addr    string
	stalled atomic.Bool
	done    chan struct{}
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T) *stallProxy {
	t.Helper()
	target := brokertest.Dial(t).RemoteAddr().String()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{addr: ln.Addr().String(), done: make(chan struct{})}
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if p.stalled.Load() {
				<-p.done
				return
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				dst.Close()
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(p.done)
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// TestStalledBrokerDoesNotHoldShutdown: the broker stops answering while
// warren consumes; on SIGTERM the consumers' cancels get no answer, and
// warren must still stop within shutdown_grace plus the 5 s it gives a
// connection to close (not wait for the client's heartbeat timeout).
func TestStalledBrokerDoesNotHoldShutdown(t *testing.T) {
	rc := warrentest.NewReceiver(t, func(int, *http.Request) int { return http.StatusOK })
	subs := make([]config.Subscription, 5)
	for i := range subs {
		subs[i] = config.Subscription{Name: "stall" + string(rune('a'+i)), URL: rc.URL, Events: []string{"#"}}
	}
	cfg := warrentest.Config(t, subs...)
	proxy := newStallProxy(t)
	u, err := url.Parse(cfg.Broker.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = proxy.addr
	cfg.Broker.URL = u.String()
	cfg.Server.ShutdownGrace = time.Second

	e := engine.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	for _, s := range subs {
		waitState(t, e, s.Name, engine.StateConsuming)
	}

	proxy.stalled.Store(true)
	stopAt := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		t.Logf("stopped %s after SIGTERM with the broker stalled", time.Since(stopAt).Round(10*time.Millisecond))
	case <-time.After(cfg.Server.ShutdownGrace + 8*time.Second):
		t.Fatalf("still running %s after SIGTERM (shutdown_grace %s) with the broker stalled", time.Since(stopAt).Round(time.Second), cfg.Server.ShutdownGrace)
	}
}
