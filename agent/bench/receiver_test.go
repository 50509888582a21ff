package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// receiver is the webhook endpoint of every run: a plain http.Server on
// 127.0.0.1 that answers 200 (or 503 for the retry runs), counts requests
// and new connections, and records when each message of the current run
// first arrived.
type receiver struct {
	url      string
	srv      *http.Server
	status   atomic.Int32
	newConns atomic.Int64
	requests atomic.Int64
	cur      atomic.Pointer[recording]
	bufs     sync.Pool
}

// recording is what the receiver saw of one run's messages, by seq.
type recording struct {
	run     int64
	arrived []atomic.Int64 // unix ns of the first arrival, 0 = not yet
	latency []atomic.Int64 // ns from publish to first arrival
	unique  atomic.Int64
	dups    atomic.Int64
	stale   atomic.Int64 // not of this run, or unreadable

	firstOnce sync.Once
	first     chan struct{} // closed at the first arrival
	done      chan struct{} // closed once every seq arrived
	firstAt   atomic.Int64
	lastAt    atomic.Int64
}

func newReceiver(b *testing.B) *receiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	rc := &receiver{url: "http://" + ln.Addr().String() + "/hook"}
	rc.bufs.New = func() any { return new([4096]byte) }
	rc.status.Store(http.StatusOK)
	rc.srv = &http.Server{
		Handler: rc,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				rc.newConns.Add(1)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	// Connection goroutines inherit the label, so an in-process profile can
	// tell the receiver's share from warren's.
	go pprof.Do(context.Background(), pprof.Labels("role", "receiver"), func(context.Context) {
		rc.srv.Serve(ln)
	})
	b.Cleanup(func() { rc.srv.Close() })
	return rc
}

// expect starts recording run, whose messages have seqs 0..n-1, answering
// every request with status. It resets the connection count.
func (rc *receiver) expect(run int64, n, status int) *recording {
	r := &recording{
		run:     run,
		arrived: make([]atomic.Int64, n),
		latency: make([]atomic.Int64, n),
		first:   make(chan struct{}),
		done:    make(chan struct{}),
	}
	rc.status.Store(int32(status))
	rc.newConns.Store(0)
	rc.requests.Store(0)
	rc.cur.Store(r)
	return r
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now().UnixNano()
	rc.requests.Add(1)
	buf := rc.bufs.Get().(*[4096]byte)
	n, _ := io.ReadFull(req.Body, buf[:])
	if r := rc.cur.Load(); r != nil {
		r.record(buf[:n], req.URL.RawQuery, now)
	}
	rc.bufs.Put(buf)
	w.WriteHeader(int(rc.status.Load()))
}

// record notes one request. In the fan-out runs the query s=<subscription>
// takes the place of the body's seq: one event, one request per
// subscription.
func (r *recording) record(body []byte, query string, now int64) {
	run, ok1 := field(body, `"run":`)
	seq, ok2 := field(body, `"seq":`)
	ts, ok3 := field(body, `"ts":`)
	if s, ok := strings.CutPrefix(query, "s="); ok {
		seq, ok2 = field([]byte(s), "")
	}
	if !ok1 || !ok2 || !ok3 || run != r.run || seq < 0 || seq >= int64(len(r.arrived)) {
		r.stale.Add(1)
		return
	}
	if !r.arrived[seq].CompareAndSwap(0, now) {
		r.dups.Add(1)
		return
	}
	r.latency[seq].Store(now - ts)
	r.firstOnce.Do(func() {
		r.firstAt.Store(now)
		close(r.first)
	})
	if r.unique.Add(1) == int64(len(r.arrived)) {
		r.lastAt.Store(now)
		close(r.done)
	}
}

// field reads the integer after key in a flat JSON body (the message body
// as published, or warren's envelope around it).
func field(body []byte, key string) (int64, bool) {
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := body[i+len(key):]
	var v int64
	digits := 0
	for _, c := range rest {
		if c < '0' || c > '9' || digits == 19 {
			break
		}
		v = v*10 + int64(c-'0')
		digits++
	}
	return v, digits > 0
}

// progress says how many messages arrived, for failure messages.
func (r *recording) progress() string {
	return fmt.Sprintf("all %d messages (%d arrived)", len(r.arrived), r.unique.Load())
}

// latencies returns the publish-to-receive latency of every message that
// arrived.
func (r *recording) latencies() []time.Duration {
	var out []time.Duration
	for i := range r.arrived {
		if r.arrived[i].Load() != 0 {
			out = append(out, time.Duration(r.latency[i].Load()))
		}
	}
	return out
}
