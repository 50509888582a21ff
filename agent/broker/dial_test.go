package broker

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/internal/brokertest"
	"github.com/warren-hq/warren/config"
)

// silentPeer accepts TCP connections on 127.0.0.1 and never sends a byte,
// like a broker whose AMQP handshake hangs. It returns its address and how
// many connections it accepted.
func silentPeer(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	return ln.Addr().String(), &accepted
}

func shortenDial(t *testing.T, handshake time.Duration) {
	t.Helper()
	old := handshakeTimeout
	handshakeTimeout = handshake
	t.Cleanup(func() { handshakeTimeout = old })
}

// dialAsync runs Dial and reports its error, failing the test if it has not
// returned within limit: the dial would hang.
func dialAsync(t *testing.T, ctx context.Context, b config.Broker, limit time.Duration) error {
	t.Helper()
	result := make(chan error, 1)
	go func() {
		conn, err := Dial(ctx, b, "test")
		if conn != nil {
			conn.Close()
		}
		result <- err
	}()
	select {
	case err := <-result:
		return err
	case <-time.After(limit):
		t.Fatalf("Dial still running after %s", limit)
		return nil
	}
}

func TestDialHandshakeDeadline(t *testing.T) {
	addr, accepted := silentPeer(t)
	shortenDial(t, 300*time.Millisecond)
	b := config.Broker{URL: "amqp://guest:secret@" + addr + "/"}

	err := dialAsync(t, context.Background(), b, 10*time.Second)
	if err == nil {
		t.Fatal("Dial to a silent peer succeeded")
	}
	if got, want := err.Error(), "connect to amqp://guest:xxxxx@"+addr+"/: no answer within 300ms"; got != want {
		t.Errorf("err = %q, want %q", got, want)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("peer accepted %d connections, want 1", n)
	}
}

func TestDialCancelled(t *testing.T) {
	addr, accepted := silentPeer(t)
	shortenDial(t, time.Hour) // only the cancellation can end this dial
	b := config.Broker{URL: "amqp://guest:guest@" + addr + "/"}

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for accepted.Load() == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel() // mid-handshake
	}()
	err := dialAsync(t, ctx, b, 10*time.Second)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestDialCancelledBeforeStart(t *testing.T) {
	addr, accepted := silentPeer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := dialAsync(t, ctx, config.Broker{URL: "amqp://guest:guest@" + addr + "/"}, 10*time.Second)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("peer accepted %d connections, want none", n)
	}
}

func TestDialFailsOverAndRemembers(t *testing.T) {
	silent, silentAccepted := silentPeer(t)
	shortenDial(t, 300*time.Millisecond)
	live := brokertest.NewProxy(t)
	b := config.Broker{URLs: []string{brokertest.URLAt(t, silent), brokertest.URLAt(t, live.Addr)}}

	for i := range 3 {
		conn, err := Dial(context.Background(), b, "test")
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conn.Close()
	}
	// The silent node failed once; later dials start after it.
	if n := silentAccepted.Load(); n != 1 {
		t.Errorf("silent node dialed %d times, want 1", n)
	}
	if n := live.Accepted.Load(); n != 3 {
		t.Errorf("live node dialed %d times, want 3", n)
	}
}

func TestDialMovesOffALostNode(t *testing.T) {
	a, b := brokertest.NewProxy(t), brokertest.NewProxy(t)
	cfg := config.Broker{URLs: []string{brokertest.URLAt(t, a.Addr), brokertest.URLAt(t, b.Addr)}}

	conn, err := Dial(context.Background(), cfg, "test")
	if err != nil {
		t.Fatal(err)
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	if a.Accepted.Load() != 1 || b.Accepted.Load() != 0 {
		t.Fatalf("first dial went to a=%d b=%d connections, want node a", a.Accepted.Load(), b.Accepted.Load())
	}
	a.Cut() // node a dies under the connection
	if err := <-closed; err == nil {
		t.Fatal("connection closed without an error")
	}
	// Dial's own watcher sees the same close; give it its turn.
	deadline := time.Now().Add(5 * time.Second)
	for ringOf(cfg.URLs).first() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	conn, err = Dial(context.Background(), cfg, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if a.Accepted.Load() != 1 || b.Accepted.Load() != 1 {
		t.Errorf("redial went to a=%d b=%d connections in all, want a=1 b=1", a.Accepted.Load(), b.Accepted.Load())
	}
}

func TestDialAllNodesDown(t *testing.T) {
	var urls []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, "amqp://guest:secret@"+ln.Addr().String()+"/")
		ln.Close() // refused from now on
	}
	_, err := Dial(context.Background(), config.Broker{URLs: urls}, "test")
	if err == nil {
		t.Fatal("Dial succeeded with every node down")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "no broker node answered: ") || strings.Count(msg, "connection refused") != 2 || strings.Contains(msg, "secret") {
		t.Errorf("err = %q, want both nodes' failures, passwords hidden", msg)
	}
}
