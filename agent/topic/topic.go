// Package topic matches routing keys against AMQP topic patterns exactly as
// a RabbitMQ topic exchange does, so warren can predict routing without
// asking the broker.
package topic

import "strings"

// Match reports whether a topic exchange binding with pattern routes a
// message published with key.
//
// Both are split on '.', keeping empty words ("a..b" is a, "", b), and the
// empty string has zero words. In pattern, "*" matches exactly one word
// (possibly empty), "#" matches zero or more words, and every other word,
// including "a*" or "a#", matches only an identical word.
//
// Match does not allocate and takes at most (pattern words × key words) steps.
func Match(pattern, key string) bool {
	// This is the classic wildcard matcher with backtracking to the last
	// "#": on a mismatch, that "#" absorbs one more key word and matching
	// resumes after it. Backtracking further is never needed because a later
	// "#" can absorb anything an earlier one could, which keeps it
	// polynomial however many "#" the pattern has.
	//
	// Positions are byte offsets of the next word; one above len(s) means
	// no words are left.
	p, k := first(pattern), first(key)
	hashP, hashK := -1, 0 // after the last "#" seen, and the key position it absorbs up to
	for k <= len(key) {
		kw, kNext := word(key, k)
		if p <= len(pattern) {
			pw, pNext := word(pattern, p)
			switch {
			case pw == "#":
				hashP, hashK = pNext, k
				p = pNext
				continue
			case pw == "*" || pw == kw:
				p, k = pNext, kNext
				continue
			}
		}
		if hashP < 0 {
			return false
		}
		_, hashK = word(key, hashK)
		p, k = hashP, hashK
	}
	// The key is used up: only "#" words, matching nothing, may remain.
	for p <= len(pattern) {
		pw, pNext := word(pattern, p)
		if pw != "#" {
			return false
		}
		p = pNext
	}
	return true
}

// first returns the position of the first word of s. The empty string has no
// words, so its first position is already past the end.
func first(s string) int {
	if s == "" {
		return 1
	}
	return 0
}

// word returns the word of s starting at byte offset i (0 <= i <= len(s)) and
// the position of the next one, which is len(s)+1 after the last word. A
// trailing '.' therefore yields a final empty word at len(s).
func word(s string, i int) (w string, next int) {
	if j := strings.IndexByte(s[i:], '.'); j >= 0 {
		return s[i : i+j], i + j + 1
	}
	return s[i:], len(s) + 1
}
