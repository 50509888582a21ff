package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

const (
	secret      = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otherSecret = "whsec_cmVwbGFjZS1tZS13aXRoLTMyLXJhbmRvbS1ieXRlcyE="
	body        = `{"id":"evt_1","type":"order.created","created_at":"2025-01-02T03:04:05Z","data":{"order_id":"o-1"}}`
)

// receiver starts the handler on a loopback httptest server. process is
// called for each new event; nil means succeed.
func receiver(t *testing.T, process func(Event) error) (url string, got func() []Event) {
	t.Helper()
	verifiers, err := newVerifiers([]string{secret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		events []Event
	)
	h := &handler{
		verifiers: verifiers,
		seen:      newDedup(100, time.Hour),
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		process: func(_ context.Context, ev Event) error {
			if process != nil {
				if err := process(ev); err != nil {
					return err
				}
			}
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
			return nil
		},
	}
	srv := httptest.NewServer(routes(h))
	t.Cleanup(srv.Close)
	return srv.URL + "/webhooks", func() []Event {
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), events...)
	}
}

// post sends body signed with key the way warren does.
func post(t *testing.T, url, key, id string, ts time.Time, payload string) int {
	t.Helper()
	code, err := send(url, key, id, ts, payload)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// send is post for goroutines, where t.Fatal would not stop the test.
func send(url, key, id string, ts time.Time, payload string) (int, error) {
	wh, err := standardwebhooks.NewWebhook(key)
	if err != nil {
		return 0, err
	}
	sig, err := wh.Sign(id, ts, []byte(payload))
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func TestVerify(t *testing.T) {
	url, got := receiver(t, nil)
	now := time.Now()

	if code := post(t, url, secret, "evt_ok", now, body); code != http.StatusOK {
		t.Fatalf("signed request: status %d, want 200", code)
	}
	ev := got()
	if len(ev) != 1 || ev[0].ID != "evt_ok" || ev[0].Type != "order.created" || string(ev[0].Data) != `{"order_id":"o-1"}` {
		t.Fatalf("processed %+v, want the one envelope", ev)
	}

	for name, code := range map[string]int{
		"wrong secret":    post(t, url, otherSecret, "evt_wrong", now, body),
		"stale timestamp": post(t, url, secret, "evt_stale", now.Add(-10*time.Minute), body),
	} {
		if code != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", name, code)
		}
	}

	// A body changed after signing.
	wh, _ := standardwebhooks.NewWebhook(secret)
	sig, _ := wh.Sign("evt_tampered", now, []byte(body))
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(strings.Replace(body, "o-1", "o-2", 1)))
	req.Header.Set("webhook-id", "evt_tampered")
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("tampered body: status %d, want 401", resp.StatusCode)
	}

	// No signature headers at all.
	resp, err = http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned: status %d, want 401", resp.StatusCode)
	}

	if n := len(got()); n != 1 {
		t.Errorf("%d events processed, want only the signed one", n)
	}
}

func TestRotationAcceptsEitherSecret(t *testing.T) {
	verifiers, err := newVerifiers([]string{otherSecret, secret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &handler{verifiers: verifiers}
	wh, _ := standardwebhooks.NewWebhook(secret)
	now := time.Now()
	sig, _ := wh.Sign("evt_rot", now, []byte(body))
	header := http.Header{}
	header.Set("webhook-id", "evt_rot")
	header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	header.Set("webhook-signature", sig)
	if err := h.verify([]byte(body), header); err != nil {
		t.Fatalf("signed with the second secret: %v", err)
	}
}

func TestBadSecretConfig(t *testing.T) {
	for _, s := range [][]string{nil, {"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, {"whsec_not base64!"}} {
		if _, err := newVerifiers(s, nil); err == nil {
			t.Errorf("newVerifiers(%q) accepted", s)
		}
	}
	for _, k := range []string{"whsk_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "whpk_AQID", "whpk_not base64!", secret} {
		if _, err := newVerifiers(nil, []string{k}); err == nil {
			t.Errorf("public key %q accepted", k)
		}
	}
}

func TestDuplicateIsAnsweredWithoutReprocessing(t *testing.T) {
	url, got := receiver(t, nil)
	for i := range 3 {
		// warren re-signs every attempt with a fresh timestamp; the id stays.
		if code := post(t, url, secret, "evt_dup", time.Now(), body); code != http.StatusOK {
			t.Fatalf("delivery %d: status %d, want 200", i+1, code)
		}
	}
	if n := len(got()); n != 1 {
		t.Fatalf("processed %d times, want once", n)
	}
	if code := post(t, url, secret, "evt_other", time.Now(), body); code != http.StatusOK {
		t.Fatalf("new id: status %d, want 200", code)
	}
	if n := len(got()); n != 2 {
		t.Fatalf("processed %d events, want 2", n)
	}
}

func TestFailedProcessingIsRetried(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	url, got := receiver(t, func(Event) error {
		if fail.Load() {
			return errors.New("database down")
		}
		return nil
	})
	if code := post(t, url, secret, "evt_retry", time.Now(), body); code != http.StatusInternalServerError {
		t.Fatalf("failing handler: status %d, want 500", code)
	}
	fail.Store(false)
	if code := post(t, url, secret, "evt_retry", time.Now(), body); code != http.StatusOK {
		t.Fatalf("retry: status %d, want 200", code)
	}
	if n := len(got()); n != 1 {
		t.Fatalf("processed %d times, want once (on the retry)", n)
	}
}

func TestDuplicateWhileInProgress(t *testing.T) {
	var calls atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	url, got := receiver(t, func(Event) error {
		if calls.Add(1) == 1 {
			close(started)
			<-release
		}
		return nil
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the server closes, which waits for handlers

	type answer struct {
		code int
		err  error
	}
	first := make(chan answer, 1)
	go func() {
		code, err := send(url, secret, "evt_slow", time.Now(), body)
		first <- answer{code, err}
	}()
	select {
	case <-started:
	case a := <-first:
		t.Fatalf("first delivery answered (%d, %v) without being processed", a.code, a.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first delivery was not processed within 10s")
	}
	if code := post(t, url, secret, "evt_slow", time.Now(), body); code != http.StatusConflict {
		t.Errorf("duplicate while the first is processing: status %d, want 409 (so warren retries)", code)
	}
	unblock()
	select {
	case a := <-first:
		if a.err != nil || a.code != http.StatusOK {
			t.Fatalf("first: status %d (%v), want 200", a.code, a.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first delivery got no answer within 10s of being released")
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("processed %d times, want once", n)
	}
	if n := len(got()); n != 1 {
		t.Fatalf("recorded %d events, want once", n)
	}
}

func TestDedupIsBounded(t *testing.T) {
	d := newDedup(2, time.Minute)
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		if s := d.begin(id, now); s != stateNew {
			t.Fatalf("begin(%s) = %d, want new", id, s)
		}
		d.done(id, now)
	}
	if len(d.byID) != 2 || d.order.Len() != 2 {
		t.Fatalf("holds %d ids, want 2", len(d.byID))
	}
	if s := d.begin("a", now); s != stateNew {
		t.Errorf("oldest id a: %d, want forgotten (new)", s)
	}
	d.done("a", now)
	if s := d.begin("c", now); s != stateDone {
		t.Errorf("recent id c: %d, want done", s)
	}

	// After the TTL every id is forgotten.
	later := now.Add(time.Minute)
	for _, id := range []string{"a", "c"} {
		if s := d.begin(id, later); s != stateNew {
			t.Errorf("%s after ttl: %d, want new", id, s)
		}
	}
}

// TestEd25519 verifies v1a signatures with a whpk_ public key: the one of
// the signing key passes, another key, a changed body, a stale timestamp or
// only a v1 signature do not.
func TestEd25519(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	verifiers, err := newVerifiers(nil, []string{"whpk_" + base64.StdEncoding.EncodeToString(pub)})
	if err != nil {
		t.Fatal(err)
	}
	h := &handler{verifiers: verifiers}
	now := time.Now()
	header := func(key ed25519.PrivateKey, id string, ts time.Time, payload string, extra string) http.Header {
		unix := strconv.FormatInt(ts.Unix(), 10)
		sig := ed25519.Sign(key, []byte(id+"."+unix+"."+payload))
		hd := http.Header{}
		hd.Set("webhook-id", id)
		hd.Set("webhook-timestamp", unix)
		hd.Set("webhook-signature", strings.TrimSpace(extra+" v1a,"+base64.StdEncoding.EncodeToString(sig)))
		return hd
	}
	// warren sends v1 and v1a side by side when it has both kinds of key.
	if err := h.verify([]byte(body), header(priv, "evt_1", now, body, "v1,bm90IGEgc2lnbmF0dXJl")); err != nil {
		t.Errorf("signed with the matching key: %v", err)
	}
	for name, hd := range map[string]http.Header{
		"other key":       header(otherPriv, "evt_2", now, body, ""),
		"changed body":    header(priv, "evt_3", now, strings.Replace(body, "o-1", "o-2", 1), ""),
		"stale timestamp": header(priv, "evt_4", now.Add(-10*time.Minute), body, ""),
	} {
		if err := h.verify([]byte(body), hd); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	v1only := http.Header{}
	v1only.Set("webhook-id", "evt_5")
	v1only.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	wh, _ := standardwebhooks.NewWebhook(secret)
	sig, _ := wh.Sign("evt_5", now, []byte(body))
	v1only.Set("webhook-signature", sig)
	if err := h.verify([]byte(body), v1only); err == nil {
		t.Error("a v1 signature alone passed a public-key-only receiver")
	}
}
