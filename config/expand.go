package config

import (
	"errors"
	"fmt"
	"strings"
)

// expand replaces ${VAR}, ${VAR:-default} and $$ in a scalar value. A default
// is used when VAR is unset or empty and is taken literally. A $ followed by
// anything else is kept, so "price: 5$" needs no escaping. Expanded text is
// never expanded again: an environment value may contain $.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i:]
		switch {
		case strings.HasPrefix(s, "$$"):
			b.WriteByte('$')
			s = s[2:]
		case strings.HasPrefix(s, "${"):
			end := strings.IndexByte(s, '}')
			if end < 0 {
				return "", errors.New(`unterminated "${" (want ${VAR} or ${VAR:-default}, or $$ for a literal $)`)
			}
			value, err := variable(s[2:end], lookup)
			if err != nil {
				return "", err
			}
			b.WriteString(value)
			s = s[end+1:]
		default:
			b.WriteByte('$')
			s = s[1:]
		}
	}
}

// variable resolves the inside of ${...}.
func variable(expr string, lookup func(string) (string, bool)) (string, error) {
	name, fallback, hasDefault := strings.Cut(expr, ":-")
	if !isEnvName(name) {
		return "", fmt.Errorf("invalid variable name %q (want ${NAME} or ${NAME:-default}, NAME made of letters, digits and _)", name)
	}
	value, ok := lookup(name)
	switch {
	case hasDefault && value == "":
		return fallback, nil
	case !ok:
		return "", fmt.Errorf("environment variable %s is not set (want it set, or a default such as ${%s:-value})", name, name)
	}
	return value, nil
}

func isEnvName(s string) bool {
	for i, r := range s {
		switch {
		case r == '_', 'A' <= r && r <= 'Z', 'a' <= r && r <= 'z':
		case '0' <= r && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}
