package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The vector published in the Standard Webhooks libraries' tests.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func vectorKey(t testing.TB) []byte {
	t.Helper()
	key, err := DecodeSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestSignVector(t *testing.T) {
	keys := [][]byte{vectorKey(t)}
	ts := time.Unix(vectorTimestamp, 0)
	if got := Sign(keys, vectorID, ts, []byte(vectorBody)); got != vectorSignature {
		t.Errorf("Sign = %q, want %q", got, vectorSignature)
	}
	if got := NewSigner(keys).Sign(vectorID, ts, []byte(vectorBody)); got != vectorSignature {
		t.Errorf("Signer.Sign = %q, want %q", got, vectorSignature)
	}
	if err := Verify(keys, vectorID, strconv.Itoa(vectorTimestamp), vectorSignature, []byte(vectorBody), ts, DefaultTolerance); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestSignRotation(t *testing.T) {
	keys := [][]byte{vectorKey(t), []byte("a second key, mid-rotation")}
	ts := time.Unix(vectorTimestamp, 0)
	got := Sign(keys, vectorID, ts, []byte(vectorBody))
	first, second, ok := strings.Cut(got, " ")
	if !ok || first != vectorSignature || !strings.HasPrefix(second, "v1,") || strings.Contains(second, " ") {
		t.Errorf("Sign = %q, want %q then one more v1 signature", got, vectorSignature)
	}
	if got := Sign(nil, vectorID, ts, []byte(vectorBody)); got != "" {
		t.Errorf("Sign without keys = %q, want empty", got)
	}
}

// TestOfficialLibraryVerifies checks the spec's promise that receivers can
// verify warren's signatures with the official Standard Webhooks library, and
// that warren verifies the library's.
func TestOfficialLibraryVerifies(t *testing.T) {
	keys := [][]byte{
		vectorKey(t),
		[]byte("k"),
		bytes.Repeat([]byte{0xa5}, 64),  // exactly one SHA-256 block
		bytes.Repeat([]byte{0x5a}, 100), // longer than a block: HMAC hashes it first
	}
	bodies := [][]byte{
		nil,
		[]byte(`{"id":"evt_1","type":"order.created","data":{"total":42}}`),
		{0, 1, 2, 0xff, '.', ' ', '\n'},
		bytes.Repeat([]byte("x"), 100_000),
	}
	other := []byte("a key the receiver does not have")
	// The library checks against time.Now with a 5 minute tolerance.
	now := time.Now()
	for ki, key := range keys {
		lib, err := standardwebhooks.NewWebhookRaw(key)
		if err != nil {
			t.Fatal(err)
		}
		for bi, body := range bodies {
			id := "msg_" + strconv.Itoa(ki) + "_" + strconv.Itoa(bi)
			headers := func(sig string) http.Header {
				h := http.Header{}
				h.Set(standardwebhooks.HeaderWebhookID, id)
				h.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
				h.Set(standardwebhooks.HeaderWebhookSignature, sig)
				return h
			}
			if err := lib.Verify(body, headers(Sign([][]byte{key}, id, now, body))); err != nil {
				t.Errorf("key %d, body %d: library rejects Sign: %v", ki, bi, err)
			}
			// Rotation: the receiver holds only one of the two keys.
			for _, rotating := range [][][]byte{{key, other}, {other, key}} {
				if err := lib.Verify(body, headers(NewSigner(rotating).Sign(id, now, body))); err != nil {
					t.Errorf("key %d, body %d: library rejects a two-key signature: %v", ki, bi, err)
				}
			}
			if err := lib.Verify(body, headers(Sign([][]byte{other}, id, now, body))); err == nil {
				t.Errorf("key %d, body %d: library accepts a signature by another key", ki, bi)
			}

			libSig, err := lib.Sign(id, now, body)
			if err != nil {
				t.Fatal(err)
			}
			ts := strconv.FormatInt(now.Unix(), 10)
			if err := Verify([][]byte{other, key}, id, ts, libSig, body, now, DefaultTolerance); err != nil {
				t.Errorf("key %d, body %d: Verify rejects the library's signature: %v", ki, bi, err)
			}
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	type message struct {
		keys        [][]byte
		id, ts, sig string
		body        []byte
	}
	now := time.Unix(vectorTimestamp, 0)
	valid := message{
		keys: [][]byte{vectorKey(t)},
		id:   vectorID,
		ts:   strconv.Itoa(vectorTimestamp),
		sig:  vectorSignature,
		body: []byte(vectorBody),
	}
	// sentAt makes m a correctly signed message sent d away from now.
	sentAt := func(m *message, d time.Duration) {
		m.ts = strconv.FormatInt(now.Add(d).Unix(), 10)
		m.sig = Sign(m.keys, m.id, now.Add(d), m.body)
	}

	for _, c := range []struct {
		name   string
		change func(*message)
		want   error  // errors.Is, when set
		text   string // in the message, otherwise
	}{
		{"tampered body", func(m *message) { m.body = []byte(`{"test": 2432232315}`) }, ErrNoMatchingSignature, ""},
		{"tampered id", func(m *message) { m.id += "x" }, ErrNoMatchingSignature, ""},
		{"tampered timestamp", func(m *message) { m.ts = strconv.Itoa(vectorTimestamp + 1) }, ErrNoMatchingSignature, ""},
		{"wrong key", func(m *message) { m.keys = [][]byte{[]byte("not the key")} }, ErrNoMatchingSignature, ""},
		{"truncated signature", func(m *message) { m.sig = m.sig[:len(m.sig)-1] }, ErrNoMatchingSignature, ""},
		{"other version", func(m *message) { m.sig = "v2" + m.sig[2:] }, ErrNoMatchingSignature, "no v1 entry"},
		{"no version", func(m *message) { m.sig = m.sig[3:] }, ErrNoMatchingSignature, "no v1 entry"},
		{"stale", func(m *message) { sentAt(m, -DefaultTolerance-time.Second) }, ErrTimestampTooOld, ""},
		{"future", func(m *message) { sentAt(m, DefaultTolerance+time.Second) }, ErrTimestampTooNew, ""},
		{"far past", func(m *message) { m.ts = "-9223372036854775808" }, ErrTimestampTooOld, ""},
		{"far future", func(m *message) { m.ts = "9223372036854775807" }, ErrTimestampTooNew, ""},
		{"milliseconds", func(m *message) { m.ts += "000" }, ErrTimestampTooNew, ""},
		{"not seconds", func(m *message) { m.ts = "2021-02-26T12:00:00Z" }, nil, "invalid webhook-timestamp"},
		{"no keys", func(m *message) { m.keys = nil }, nil, "no secrets"},
		{"missing id", func(m *message) { m.id = "" }, nil, "missing webhook-id"},
		{"missing timestamp", func(m *message) { m.ts = "" }, nil, "missing webhook-timestamp"},
		{"missing signature", func(m *message) { m.sig = "" }, nil, "missing webhook-signature"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := valid
			c.change(&m)
			err := Verify(m.keys, m.id, m.ts, m.sig, m.body, now, DefaultTolerance)
			switch {
			case err == nil:
				t.Fatal("Verify accepted")
			case c.want != nil && !errors.Is(err, c.want):
				t.Errorf("Verify = %v, want %v", err, c.want)
			case !strings.Contains(err.Error(), c.text):
				t.Errorf("Verify = %v, want it to mention %q", err, c.text)
			}
		})
	}
}

func TestVerifyAccepts(t *testing.T) {
	key := vectorKey(t)
	now := time.Unix(vectorTimestamp, 0)
	for _, c := range []struct {
		name string
		keys [][]byte
		sig  string
		now  time.Time
	}{
		{"exact", [][]byte{key}, vectorSignature, now},
		{"receiver rotating", [][]byte{[]byte("new key"), key}, vectorSignature, now},
		{"sender rotating", [][]byte{key}, "v1,bm90IGl0 " + vectorSignature, now},
		{"other schemes beside v1", [][]byte{key}, "v1a,xyz  " + vectorSignature + " v2,abc", now},
		{"edge of tolerance, late", [][]byte{key}, vectorSignature, now.Add(DefaultTolerance)},
		{"edge of tolerance, early", [][]byte{key}, vectorSignature, now.Add(-DefaultTolerance)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := Verify(c.keys, vectorID, strconv.Itoa(vectorTimestamp), c.sig, []byte(vectorBody), c.now, DefaultTolerance); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestDecodeSecret(t *testing.T) {
	for _, c := range []struct {
		secret, text string
	}{
		{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", `must start with "whsec_"`},
		{"whsec_MfKQ9r8G*YqrTwjUPD8ILPZIo2LaLaSw", "not valid base64"},
		{"whsec_", "empty"},
	} {
		_, err := DecodeSecret(c.secret)
		if err == nil || !strings.Contains(err.Error(), c.text) {
			t.Errorf("DecodeSecret(%q) = %v, want an error mentioning %q", c.secret, err, c.text)
		}
		if err != nil && strings.Contains(err.Error(), "MfKQ9r8G") {
			t.Errorf("DecodeSecret error leaks the secret: %v", err)
		}
	}
}

// TestEd25519 signs with an ed25519 key between two HMAC keys: the v1a
// entry verifies with crypto/ed25519 against the public key over
// id.timestamp.body, the HMAC entries with the official library, and the
// body given in parts signs as the whole.
func TestEd25519(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	hmacKey := vectorKey(t)
	lib, err := standardwebhooks.NewWebhookRaw(hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	signer := NewKeySigner([]Key{{HMAC: hmacKey}, {Ed25519: priv}, {HMAC: []byte("other")}})
	now := time.Now()
	for _, body := range [][]byte{nil, []byte(`{"a":1}`), bytes.Repeat([]byte("y"), 300<<10)} {
		id := "evt_" + strconv.Itoa(len(body))
		half := len(body) / 2
		header := signer.SignParts(id, now, body[:half], nil, body[half:])
		if whole := signer.Sign(id, now, body); whole != header {
			t.Errorf("parts sign %q, the whole body %q", header, whole)
		}
		sigs := strings.Fields(header)
		if len(sigs) != 3 || !strings.HasPrefix(sigs[0], "v1,") || !strings.HasPrefix(sigs[1], "v1a,") || !strings.HasPrefix(sigs[2], "v1,") {
			t.Fatalf("webhook-signature = %q, want v1, v1a, v1", header)
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sigs[1], "v1a,"))
		if err != nil {
			t.Fatal(err)
		}
		msg := append([]byte(id+"."+strconv.FormatInt(now.Unix(), 10)+"."), body...)
		if !ed25519.Verify(pub, msg, raw) {
			t.Errorf("body of %d bytes: ed25519 signature does not verify with the public key", len(body))
		}
		if ed25519.Verify(pub, append(msg, '!'), raw) {
			t.Error("ed25519 signature verifies a changed body")
		}
		h := http.Header{}
		h.Set(standardwebhooks.HeaderWebhookID, id)
		h.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
		h.Set(standardwebhooks.HeaderWebhookSignature, header)
		if err := lib.Verify(body, h); err != nil {
			t.Errorf("official library rejects the mixed header: %v", err)
		}
	}
}

func TestSignerConcurrent(t *testing.T) {
	keys := [][]byte{vectorKey(t), []byte("second")}
	s := NewSigner(keys)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				id := "msg_" + strconv.Itoa(g) + "_" + strconv.Itoa(i)
				ts := time.Unix(int64(vectorTimestamp+i), 0)
				body := []byte(strconv.Itoa(i))
				if got, want := s.Sign(id, ts, body), Sign(keys, id, ts, body); got != want {
					t.Errorf("Signer.Sign = %q, want %q", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkSign(b *testing.B) {
	keys := [][]byte{bytes.Repeat([]byte{1}, 24)}
	ts := time.Unix(vectorTimestamp, 0)
	body := bytes.Repeat([]byte("x"), 256)
	b.Run("Sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Sign(keys, vectorID, ts, body)
		}
	})
	b.Run("Signer", func(b *testing.B) {
		s := NewSigner(keys)
		b.ReportAllocs()
		for b.Loop() {
			s.Sign(vectorID, ts, body)
		}
	})
	b.Run("library", func(b *testing.B) {
		lib, err := standardwebhooks.NewWebhookRaw(keys[0])
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := lib.Sign(vectorID, ts, body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSignParts1MiB signs a 1 MiB body given in three parts, as the
// envelope sends it: no copy of the body for HMAC keys.
func BenchmarkSignParts1MiB(b *testing.B) {
	s := NewSigner([][]byte{vectorKey(b)})
	body := bytes.Repeat([]byte("x"), 1<<20)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s.SignParts("evt_1", now, []byte(`{"data":`), body, []byte("}"))
	}
}
