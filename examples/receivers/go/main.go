// Command warren-receiver is a sample webhook receiver for warren.
//
// It answers POST /webhooks: it verifies the Standard Webhooks signature with
// the official library, skips events it has already processed (warren
// delivers at least once and keeps the same webhook-id across retries and
// redeliveries), and logs every event as one JSON line.
//
// Environment:
//
//	WEBHOOK_SECRET      whsec_... secret shared with warren; several secrets
//	                    separated by spaces are all accepted, for rotation
//	WEBHOOK_PUBLIC_KEY  whpk_... public key of a whsk_ key warren signs with
//	                    (v1a, ed25519; see `warren keys`); several likewise.
//	                    One of the two is required; a request passes if any
//	                    secret or key verifies it.
//	LISTEN_ADDR     address to listen on (default :8080)
package main

import (
	"container/list"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

const (
	maxBody = 1 << 20 // larger bodies are refused with 413

	// The dedup window: how many processed ids are remembered, and for how
	// long. A duplicate normally follows the original within seconds (an ack
	// lost with a connection); a day covers a `warren dead replay` as well.
	dedupSize = 100_000
	dedupTTL  = 24 * time.Hour
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("receiver failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger) error {
	verifiers, err := newVerifiers(strings.Fields(os.Getenv("WEBHOOK_SECRET")), strings.Fields(os.Getenv("WEBHOOK_PUBLIC_KEY")))
	if err != nil {
		return err
	}
	addr := os.Getenv("LISTEN_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	h := &handler{
		verifiers: verifiers,
		seen:      newDedup(dedupSize, dedupTTL),
		log:       log,
		process:   logEvent(log),
	}
	srv := &http.Server{
		Addr:              addr,
		Handler:           routes(h),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Info("listening", "addr", addr, "path", "/webhooks", "keys", len(verifiers))

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Let requests in progress finish, so their answer reaches warren.
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

func routes(h *handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	return mux
}

// verifier checks one request's signature.
type verifier interface {
	Verify(body []byte, header http.Header) error
}

func newVerifiers(secrets, publicKeys []string) ([]verifier, error) {
	if len(secrets) == 0 && len(publicKeys) == 0 {
		return nil, errors.New("neither WEBHOOK_SECRET nor WEBHOOK_PUBLIC_KEY is set (want the whsec_... secret configured in warren, or the whpk_... public key of its whsk_... key)")
	}
	var vs []verifier
	for i, s := range secrets {
		if !strings.HasPrefix(s, "whsec_") {
			return nil, fmt.Errorf("WEBHOOK_SECRET: secret %d does not start with whsec_", i+1)
		}
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			// The library's error would quote the secret; say only which one.
			return nil, fmt.Errorf("WEBHOOK_SECRET: secret %d is not valid base64 after whsec_", i+1)
		}
		vs = append(vs, wh)
	}
	for i, k := range publicKeys {
		v, err := newEd25519Verifier(k)
		if err != nil {
			return nil, fmt.Errorf("WEBHOOK_PUBLIC_KEY: key %d: %w", i+1, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// ed25519Verifier checks the "v1a," (ed25519) signatures of Standard
// Webhooks, which the official Go library does not verify, with the same
// five-minute timestamp tolerance.
type ed25519Verifier struct {
	key ed25519.PublicKey
}

const tolerance = 5 * time.Minute

func newEd25519Verifier(s string) (*ed25519Verifier, error) {
	encoded, ok := strings.CutPrefix(s, "whpk_")
	if !ok {
		return nil, errors.New("does not start with whpk_")
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(encoded)
	}
	if err != nil || len(key) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("want whpk_ followed by the base64 of a %d-byte ed25519 public key", ed25519.PublicKeySize)
	}
	return &ed25519Verifier{key: key}, nil
}

func (v *ed25519Verifier) Verify(body []byte, header http.Header) error {
	id := header.Get("webhook-id")
	ts := header.Get("webhook-timestamp")
	sigs := header.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("invalid webhook-timestamp")
	}
	if d := time.Since(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhook-timestamp too far from now")
	}
	msg := make([]byte, 0, len(id)+len(ts)+len(body)+2)
	msg = append(append(append(append(append(msg, id...), '.'), ts...), '.'), body...)
	for _, sig := range strings.Fields(sigs) {
		encoded, ok := strings.CutPrefix(sig, "v1a,")
		if !ok {
			continue // a v1 (HMAC) signature, for whoever holds the secret
		}
		raw, err := base64.StdEncoding.DecodeString(encoded)
		if err == nil && ed25519.Verify(v.key, msg, raw) {
			return nil
		}
	}
	return errors.New("no matching v1a signature")
}

// Event is what a handler is given once the request is verified.
type Event struct {
	ID        string          // webhook-id: stable across retries
	Type      string          // envelope "type" (the routing key), else ce-type
	CreatedAt string          // envelope "created_at", else ce-time
	Data      json.RawMessage // envelope "data", else the body as sent
}

type handler struct {
	verifiers []verifier
	seen      *dedup
	log       *slog.Logger
	// process does the work for one new event. An error answers 500, which
	// makes warren retry the same event later.
	process func(context.Context, Event) error
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	id := r.Header.Get(standardwebhooks.HeaderWebhookID)
	if err := h.verify(body, r.Header); err != nil {
		h.log.Warn("rejected: bad signature", "webhook_id", id, "err", err)
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return
	}

	switch h.seen.begin(id, time.Now()) {
	case stateDone:
		h.log.Info("duplicate, already processed", "webhook_id", id)
		w.WriteHeader(http.StatusOK)
		return
	case stateInProgress:
		// The first copy is still being processed and may yet fail: answer
		// non-2xx so warren tries this one again later instead of acking it.
		h.log.Info("duplicate, still in progress", "webhook_id", id)
		http.Error(w, "already in progress", http.StatusConflict)
		return
	}

	processed := false
	defer func() {
		if !processed { // failed or panicked: let warren's retry in again
			h.seen.forget(id)
		}
	}()
	ev := parseEvent(id, r.Header, body)
	if err := h.process(r.Context(), ev); err != nil {
		h.log.Error("processing failed", "webhook_id", id, "type", ev.Type, "err", err)
		http.Error(w, "processing failed", http.StatusInternalServerError)
		return
	}
	processed = true
	h.seen.done(id, time.Now())
	w.WriteHeader(http.StatusOK)
}

// verify accepts the request if any configured secret verifies it. The
// library also refuses timestamps more than five minutes away from now.
func (h *handler) verify(body []byte, header http.Header) error {
	var err error
	for _, wh := range h.verifiers {
		if err = wh.Verify(body, header); err == nil {
			return nil
		}
	}
	return err
}

// parseEvent reads warren's envelope format ({"id","type","created_at","data"});
// for the raw and cloudevents formats it falls back to the ce-* headers and
// the body as sent.
func parseEvent(id string, header http.Header, body []byte) Event {
	var env struct {
		Type      string          `json:"type"`
		CreatedAt string          `json:"created_at"`
		Data      json.RawMessage `json:"data"`
	}
	if json.Unmarshal(body, &env) == nil && env.Type != "" {
		return Event{ID: id, Type: env.Type, CreatedAt: env.CreatedAt, Data: env.Data}
	}
	ev := Event{ID: id, Type: header.Get("ce-type"), CreatedAt: header.Get("ce-time")}
	if json.Valid(body) {
		ev.Data = body
	} else {
		ev.Data, _ = json.Marshal(string(body)) // a JSON string cannot fail
	}
	return ev
}

// logEvent is the sample's "business logic": one log line per new event.
func logEvent(log *slog.Logger) func(context.Context, Event) error {
	return func(ctx context.Context, ev Event) error {
		attrs := []any{"webhook_id", ev.ID, "type", ev.Type, "created_at", ev.CreatedAt}
		if len(ev.Data) <= 1024 {
			attrs = append(attrs, "data", ev.Data)
		} else {
			attrs = append(attrs, "data_bytes", len(ev.Data))
		}
		log.InfoContext(ctx, "event received", attrs...)
		return nil
	}
}

// dedup is a bounded, in-memory set of webhook ids with a time to live.
// It forgets the least recently seen id first when full. It is per process:
// several replicas of a receiver need a shared store (Redis SET NX with a
// TTL, a unique key in the database the handler writes to) instead.
type dedup struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	byID  map[string]*list.Element
	order *list.List // of *entry, most recently seen first
}

type entry struct {
	id   string
	seen time.Time
	done bool
}

type state int

const (
	stateNew        state = iota // claimed for processing by this call
	stateInProgress              // another request is processing it now
	stateDone                    // processed successfully before
)

func newDedup(size int, ttl time.Duration) *dedup {
	return &dedup{size: size, ttl: ttl, byID: make(map[string]*list.Element), order: list.New()}
}

// begin claims id for processing, or says why it is not new.
func (d *dedup) begin(id string, now time.Time) state {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire(now)
	if el, ok := d.byID[id]; ok {
		e := el.Value.(*entry)
		if e.done {
			e.seen = now
			d.order.MoveToFront(el)
			return stateDone
		}
		return stateInProgress
	}
	d.byID[id] = d.order.PushFront(&entry{id: id, seen: now})
	for d.order.Len() > d.size {
		d.remove(d.order.Back())
	}
	return stateNew
}

// done records that id was processed.
func (d *dedup) done(id string, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	el, ok := d.byID[id]
	if !ok { // pushed out while it was being processed
		el = d.order.PushFront(&entry{id: id})
		d.byID[id] = el
	}
	e := el.Value.(*entry)
	e.done, e.seen = true, now
	d.order.MoveToFront(el)
	for d.order.Len() > d.size {
		d.remove(d.order.Back())
	}
}

// forget drops id after failed processing, so the retry is processed again.
func (d *dedup) forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if el, ok := d.byID[id]; ok {
		d.remove(el)
	}
}

// expire drops ids not seen for ttl; the list is ordered by last seen.
func (d *dedup) expire(now time.Time) {
	for el := d.order.Back(); el != nil && now.Sub(el.Value.(*entry).seen) >= d.ttl; el = d.order.Back() {
		d.remove(el)
	}
}

func (d *dedup) remove(el *list.Element) {
	delete(d.byID, el.Value.(*entry).id)
	d.order.Remove(el)
}
