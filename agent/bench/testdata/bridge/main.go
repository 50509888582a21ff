// Command bridge is the hand-tuned reference the benchmark holds warren
// against. It runs as a subprocess, like warren, so that its CPU time and
// peak RSS are measured the same way.
//
// -mode consume: consume and ack only (what the broker can hand out).
// -mode bridge: consume, POST each body to -endpoint with one keep-alive
// client, ack after a 2xx; otherwise publish a copy to -retry-queue on a
// confirming channel of its own connection, wait for the confirm, then ack
// (the minimal form of warren's move to a retry tier).
//
// -queue may name several queues, comma-separated (the fan-out runs): each
// is consumed on a channel of its own and its bodies go to -endpoint with
// ?s=<index of the queue> appended.
//
// It prints "first <unixnano>" at its first delivery and, with -n, "done
// <unixnano>" once n deliveries are acked, then runs until SIGTERM.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	url := flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL")
	queue := flag.String("queue", "", "queue to consume")
	mode := flag.String("mode", "bridge", "consume or bridge")
	endpoint := flag.String("endpoint", "", "URL to POST each body to (bridge mode)")
	retryQueue := flag.String("retry-queue", "", "queue a copy goes to on a non-2xx answer (bridge mode)")
	prefetch := flag.Int("prefetch", 128, "broker prefetch")
	workers := flag.Int("workers", 64, "concurrent deliveries (bridge mode)")
	n := flag.Int64("n", 0, `print "done" after this many acks (0: never)`)
	flag.Parse()
	if err := run(*url, *queue, *mode, *endpoint, *retryQueue, *prefetch, *workers, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bridge:", err)
		os.Exit(1)
	}
}

func run(url, queue, mode, endpoint, retryQueue string, prefetch, workers int, n int64) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	conn, err := dial(url, "consume")
	if err != nil {
		return err
	}
	defer conn.Close()
	if mode != "consume" && mode != "bridge" {
		return fmt.Errorf("unknown mode %q", mode)
	}
	var b *bridge
	if mode == "bridge" {
		if b, err = newBridge(url, endpoint, retryQueue, workers); err != nil {
			return err
		}
		defer b.close()
	}

	var acked atomic.Int64
	var first sync.Once
	settled := func() {
		first.Do(func() { fmt.Printf("first %d\n", time.Now().UnixNano()) })
		if acked.Add(1) == n {
			fmt.Printf("done %d\n", time.Now().UnixNano())
		}
	}
	queues := strings.Split(queue, ",")
	fanOut := len(queues) > 1
	var wg sync.WaitGroup
	var channels []*amqp.Channel
	for i, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return err
		}
		deliveries, err := ch.Consume(q, "bench-bridge",
			false, // auto-ack
			false, // exclusive
			false, // no-local
			false, // no-wait
			nil)
		if err != nil {
			return err
		}
		channels = append(channels, ch)
		// One queue: -workers goroutines share it. Fan-out: one per queue.
		goroutines := workers
		if mode == "consume" || fanOut {
			goroutines = 1
		}
		for range goroutines {
			wg.Go(func() {
				for d := range deliveries {
					if b == nil {
						d.Ack(false)
					} else {
						b.handle(&d, i, fanOut)
					}
					settled()
				}
			})
		}
	}

	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	select {
	case <-ctx.Done():
		for _, ch := range channels {
			ch.Cancel("bench-bridge", false)
		}
		wg.Wait()
		return nil
	case err := <-closed:
		return fmt.Errorf("connection closed: %v", err)
	}
}

// dial opens a connection named so rabbitmqctl list_connections tells it
// apart.
func dial(url, role string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("warren-bench bridge " + role)
	return amqp.DialConfig(url, amqp.Config{Properties: props, Heartbeat: 10 * time.Second, Locale: "en_US"})
}

type bridge struct {
	endpoint   string
	client     *http.Client
	retryQueue string
	pubConn    *amqp.Connection
	pub        *amqp.Channel
}

func newBridge(url, endpoint, retryQueue string, workers int) (*bridge, error) {
	b := &bridge{
		endpoint:   endpoint,
		retryQueue: retryQueue,
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				MaxIdleConns:        workers,
				MaxIdleConnsPerHost: workers,
				IdleConnTimeout:     90 * time.Second,
			},
		},
	}
	if retryQueue == "" {
		return b, nil
	}
	// Publishing gets a connection of its own: flow control on it must not
	// slow the consumer's acks.
	var err error
	if b.pubConn, err = dial(url, "publish"); err != nil {
		return nil, err
	}
	if b.pub, err = b.pubConn.Channel(); err != nil {
		return nil, err
	}
	if err := b.pub.Confirm(false); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *bridge) close() {
	if b.pubConn != nil {
		b.pubConn.Close()
	}
}

func (b *bridge) handle(d *amqp.Delivery, queue int, fanOut bool) {
	endpoint := b.endpoint
	if fanOut {
		endpoint += "?s=" + strconv.Itoa(queue)
	}
	if b.post(endpoint, d.Body) {
		d.Ack(false)
		return
	}
	if b.pub == nil {
		d.Nack(false, true)
		return
	}
	dc, err := b.pub.PublishWithDeferredConfirm("", b.retryQueue,
		false, // mandatory
		false, // immediate
		amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  d.ContentType,
			MessageId:    d.MessageId,
			Timestamp:    d.Timestamp,
			Headers:      d.Headers,
			Body:         d.Body,
		})
	if err != nil || !dc.Wait() {
		d.Nack(false, true)
		return
	}
	d.Ack(false)
}

func (b *bridge) post(endpoint string, body []byte) bool {
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}
