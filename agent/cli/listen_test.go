package cli_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warren-hq/warren/agent/cli"
	"github.com/warren-hq/warren/agent/signing"
)

// freeAddr returns a 127.0.0.1 address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// listening runs `warren listen` with args until the test ends (or stop is
// called) and returns its base URL and output.
func listening(t *testing.T, args ...string) (url string, stdout *syncBuffer, stop func() int) {
	t.Helper()
	addr := freeAddr(t)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cli.Execute(ctx, cli.Env{
			Args:   append([]string{"listen", "--addr", addr}, args...),
			Stdin:  strings.NewReader(""),
			Stdout: stdout,
			Stderr: stderr,
		})
	}()
	code, stopped := -1, false
	stop = func() int {
		if !stopped {
			stopped = true
			cancel()
			select {
			case code = <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("listen did not return 20s after its context was cancelled")
			}
		}
		return code
	}
	t.Cleanup(func() { stop() })

	// Ready once it printed its banner and accepts connections.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "listening on http://"+addr) {
		select {
		case code := <-done:
			t.Fatalf("listen exited %d before listening: %s%s", code, stdout, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen did not start within 10s: %s%s", stdout, stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "http://" + addr + "/", stdout, stop
}

func post(t *testing.T, url, id string, ts time.Time, signature string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	if signature != "" {
		req.Header.Set("webhook-signature", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestListenVerifiesSignatures(t *testing.T) {
	t.Parallel()
	url, out, stop := listening(t, "--secret", testSecret, "--status", "202")
	if !strings.Contains(out.String(), "answering 202") || !strings.Contains(out.String(), "verified") {
		t.Errorf("banner = %q, want the status and that signatures are verified", out)
	}
	key, err := signing.DecodeSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	keys := [][]byte{key}
	now := time.Now()
	body := []byte(`{"id":"evt_good","type":"order.created","data":{"n":1}}`)

	if got := post(t, url, "evt_good", now, signing.Sign(keys, "evt_good", now, body), body); got != 202 {
		t.Errorf("correctly signed request answered %d, want 202 (--status)", got)
	}
	// The signature of another body, id or timestamp does not verify.
	tampered := bytes.Replace(body, []byte(`"n":1`), []byte(`"n":2`), 1)
	if got := post(t, url, "evt_tampered", now, signing.Sign(keys, "evt_tampered", now, body), tampered); got != http.StatusUnauthorized {
		t.Errorf("tampered body answered %d, want 401", got)
	}
	if got := post(t, url, "evt_other_id", now, signing.Sign(keys, "evt_good", now, body), body); got != http.StatusUnauthorized {
		t.Errorf("signature of another id answered %d, want 401", got)
	}
	if got := post(t, url, "evt_unsigned", now, "", body); got != http.StatusUnauthorized {
		t.Errorf("unsigned request answered %d, want 401", got)
	}
	old := now.Add(-time.Hour)
	if got := post(t, url, "evt_old", old, signing.Sign(keys, "evt_old", old, body), body); got != http.StatusUnauthorized {
		t.Errorf("an hour-old timestamp answered %d, want 401", got)
	}
	otherKey := [][]byte{[]byte("another key entirely, 32 bytes!!")}
	if got := post(t, url, "evt_wrong_key", now, signing.Sign(otherKey, "evt_wrong_key", now, body), body); got != http.StatusUnauthorized {
		t.Errorf("signature with another key answered %d, want 401", got)
	}

	if code := stop(); code != 0 {
		t.Errorf("listen exited %d after its context was cancelled, want 0", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	find := func(id string) string {
		for _, l := range lines {
			if strings.Contains(l, " "+id+" ") {
				return l
			}
		}
		t.Errorf("no line printed for %s in %q", id, out)
		return ""
	}
	if l := find("evt_good"); !strings.Contains(l, "signature ok") || !strings.Contains(l, "202") || !strings.Contains(l, `"data":{"n":1}`) ||
		!strings.Contains(l, "application/json") {
		t.Errorf("line for the good request = %q, want signature ok, 202, the content type and the body", l)
	}
	for _, id := range []string{"evt_tampered", "evt_other_id", "evt_unsigned", "evt_old", "evt_wrong_key"} {
		if l := find(id); !strings.Contains(l, "signature INVALID") {
			t.Errorf("line for %s = %q, want signature INVALID", id, l)
		}
	}
	if len(lines) != 7 { // banner + 6 requests
		t.Errorf("printed %d lines, want 7 (banner and one per request):\n%s", len(lines), out)
	}
}

func TestListenWithoutSecret(t *testing.T) {
	t.Parallel()
	url, out, stop := listening(t, "--status", "503")
	body := []byte(`{"a":1}`)
	if got := post(t, url, "evt_plain", time.Now(), "", body); got != http.StatusServiceUnavailable {
		t.Errorf("answered %d, want 503 (--status)", got)
	}
	if code := stop(); code != 0 {
		t.Errorf("listen exited %d, want 0", code)
	}
	if !strings.Contains(out.String(), "evt_plain") || !strings.Contains(out.String(), "unsigned") {
		t.Errorf("output %q, want a line for evt_plain saying unsigned", out)
	}
}

func TestListenBadUsage(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][]string{
		"status":      {"listen", "--addr", "127.0.0.1:0", "--status", "700"},
		"secret":      {"listen", "--addr", "127.0.0.1:0", "--secret", "not-a-secret"},
		"status text": {"listen", "--addr", "127.0.0.1:0", "--status", "ok"},
	} {
		t.Run(name, func(t *testing.T) {
			r := execute(t, nil, args...)
			r.wantCode(t, 2)
			r.noUsage(t)
			if strings.Contains(r.stderr, "not-a-secret") {
				t.Errorf("stderr shows the secret: %q", r.stderr)
			}
		})
	}
}
