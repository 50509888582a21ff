// Package signing produces and checks Standard Webhooks signatures
// (https://www.standardwebhooks.com/): the webhook-signature header is one
// "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>" per HMAC key and one
// "v1a,<base64 ed25519(id.timestamp.body)>" per ed25519 key, space-separated,
// so receivers keep verifying while secrets rotate.
package signing

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultTolerance is how far webhook-timestamp may be from the receiver's
// clock, as the Standard Webhooks libraries default to.
const DefaultTolerance = 5 * time.Minute

// secretPrefix marks a Standard Webhooks secret; base64 of the key follows.
const secretPrefix = "whsec_"

// Errors that Verify wraps, for callers that answer them differently.
var (
	ErrNoMatchingSignature = errors.New("no matching signature")
	ErrTimestampTooOld     = errors.New("timestamp too old")
	ErrTimestampTooNew     = errors.New("timestamp too new")
)

// DecodeSecret returns the HMAC key of a "whsec_<base64>" secret. Its errors
// never quote the secret.
func DecodeSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return nil, errors.New(`secret must start with "whsec_"`)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf(`secret is not valid base64 after "whsec_": %w`, err)
	}
	if len(key) == 0 {
		return nil, errors.New(`secret is empty after "whsec_"`)
	}
	return key, nil
}

// Sign returns the webhook-signature header value for one message: a "v1,"
// signature per key, in order, space-separated; "" when keys is empty.
// ts is sent in webhook-timestamp as Unix seconds.
//
// Sign sets up an HMAC per key on every call; a Signer reuses them.
func Sign(keys [][]byte, id string, ts time.Time, body []byte) string {
	return string(newSigners(hmacKeys(keys)).sign(id, ts, body))
}

// Key is one signing key: an HMAC secret (whsec_) or an ed25519 private
// key (whsk_).
type Key struct {
	HMAC    []byte
	Ed25519 ed25519.PrivateKey
}

// Signer signs with a fixed set of keys. It is Sign with the keyed HMAC state
// reused across calls, which makes signing about twice as fast and leaves
// one allocation for HMAC keys: the returned string. Safe for concurrent use.
type Signer struct {
	pool sync.Pool
}

// NewSigner returns a Signer for HMAC keys, which it keeps: do not modify
// them.
func NewSigner(keys [][]byte) *Signer { return NewKeySigner(hmacKeys(keys)) }

func hmacKeys(keys [][]byte) []Key {
	ks := make([]Key, len(keys))
	for i, k := range keys {
		ks[i] = Key{HMAC: k}
	}
	return ks
}

// NewKeySigner returns a Signer for HMAC and ed25519 keys, signing in their
// order. It keeps keys: do not modify them.
func NewKeySigner(keys []Key) *Signer {
	s := &Signer{}
	s.pool.New = func() any { return newSigners(keys) }
	return s
}

// Sign is like the package-level Sign with the Signer's keys.
func (s *Signer) Sign(id string, ts time.Time, body []byte) string {
	return s.SignParts(id, ts, body)
}

// SignParts signs the body made of parts in order, without joining them
// for the HMAC keys (an ed25519 signature needs the message in one piece).
func (s *Signer) SignParts(id string, ts time.Time, parts ...[]byte) string {
	m := s.pool.Get().(*macs)
	defer s.pool.Put(m)
	return string(m.sign(id, ts, parts...))
}

// Verify checks a message against its webhook-id, webhook-timestamp and
// webhook-signature headers. It accepts when timestamp is within tolerance of
// now and any v1 signature in signatureHeader matches any of keys, so either
// side can rotate secrets by listing two for a while.
func Verify(keys [][]byte, id, timestamp, signatureHeader string, body []byte, now time.Time, tolerance time.Duration) error {
	switch {
	case len(keys) == 0:
		return errors.New("no secrets to verify the signature with")
	case id == "":
		return errors.New("missing webhook-id header")
	case timestamp == "":
		return errors.New("missing webhook-timestamp header")
	case signatureHeader == "":
		return errors.New("missing webhook-signature header")
	}
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("invalid webhook-timestamp %q: want Unix seconds", timestamp)
	}
	// Whole seconds, the header's resolution, keep absurd values from
	// overflowing time arithmetic.
	nowSec, tolSec := now.Unix(), int64(tolerance/time.Second)
	if sec < nowSec-tolSec {
		return fmt.Errorf("%w: webhook-timestamp %d, now %d, tolerance %s", ErrTimestampTooOld, sec, nowSec, tolerance)
	}
	if sec > nowSec+tolSec {
		return fmt.Errorf("%w: webhook-timestamp %d, now %d, tolerance %s", ErrTimestampTooNew, sec, nowSec, tolerance)
	}

	want := strings.Fields(Sign(keys, id, time.Unix(sec, 0), body))
	hasV1 := false
	for got := range strings.FieldsSeq(signatureHeader) {
		if !strings.HasPrefix(got, "v1,") {
			continue // other schemes may sit beside v1
		}
		hasV1 = true
		for _, w := range want {
			if hmac.Equal([]byte(got), []byte(w)) {
				return nil
			}
		}
	}
	if !hasV1 {
		return fmt.Errorf("%w: webhook-signature has no v1 entry", ErrNoMatchingSignature)
	}
	return fmt.Errorf("%w: body, webhook-id or webhook-timestamp changed, or signed with another secret", ErrNoMatchingSignature)
}

// macs holds one keyed HMAC or ed25519 key per key plus scratch space, so
// that a pooled instance signs HMACs without allocating.
type macs struct {
	hmacs  []hash.Hash          // nil where the key is ed25519
	eds    []ed25519.PrivateKey // nil where the key is HMAC
	prefix []byte               // id "." timestamp "."
	msg    []byte               // the whole message, for ed25519 only
	out    []byte               // the header value
	sum    [sha256.Size]byte
}

func newSigners(keys []Key) *macs {
	m := &macs{hmacs: make([]hash.Hash, len(keys)), eds: make([]ed25519.PrivateKey, len(keys))}
	for i, k := range keys {
		if k.Ed25519 != nil {
			m.eds[i] = k.Ed25519
			continue
		}
		m.hmacs[i] = hmac.New(sha256.New, k.HMAC)
	}
	return m
}

// maxKeptMessage bounds the ed25519 scratch a pooled signer keeps between
// calls, so that one large event does not pin its size in every pool entry.
const maxKeptMessage = 256 << 10

// sign returns the header value in m's scratch space, valid until the next
// call. The body is parts in order.
func (m *macs) sign(id string, ts time.Time, parts ...[]byte) []byte {
	// Grown once to the final size: 20 digits, a sign and two dots; "v1,",
	// 44 base64 characters and a separator per key.
	m.prefix = append(slices.Grow(m.prefix[:0], len(id)+23), id...)
	m.prefix = append(m.prefix, '.')
	m.prefix = strconv.AppendInt(m.prefix, ts.Unix(), 10)
	m.prefix = append(m.prefix, '.')
	m.msg = m.msg[:0]
	m.out = slices.Grow(m.out[:0], len(m.hmacs)*48)
	for i, h := range m.hmacs {
		if i > 0 {
			m.out = append(m.out, ' ')
		}
		if h == nil {
			m.out = append(m.out, "v1a,"...)
			m.out = base64.StdEncoding.AppendEncode(m.out, ed25519.Sign(m.eds[i], m.message(parts)))
			continue
		}
		// Reset restores the keyed state, which hmac caches after the first
		// use, so reusing h skips rehashing the key.
		h.Reset()
		h.Write(m.prefix)
		for _, p := range parts {
			h.Write(p)
		}
		m.out = append(m.out, "v1,"...)
		m.out = base64.StdEncoding.AppendEncode(m.out, h.Sum(m.sum[:0]))
	}
	if cap(m.msg) > maxKeptMessage {
		m.msg = nil
	}
	return m.out
}

// message joins the prefix and parts for ed25519, which signs a message in
// one piece (it hashes it twice); built once per call.
func (m *macs) message(parts [][]byte) []byte {
	if len(m.msg) > 0 {
		return m.msg
	}
	n := len(m.prefix)
	for _, p := range parts {
		n += len(p)
	}
	m.msg = append(slices.Grow(m.msg[:0], n), m.prefix...)
	for _, p := range parts {
		m.msg = append(m.msg, p...)
	}
	return m.msg
}
