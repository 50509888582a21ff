package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	File         string
	Line, Column int    // 0 when unknown
	Path         string // YAML path such as subscriptions[1].retry.delays[2]
	Message      string
}

// String formats p as FILE:LINE:COL: PATH: MESSAGE, leaving out what is
// unknown.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
		if p.Column > 0 {
			fmt.Fprintf(&b, ":%d", p.Column)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if p.Path != "" {
		b.WriteString(p.Path + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error is every problem found in a config, returned by Load, Parse and
// Validate.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// position is where a value starts in the file.
type position struct{ line, column int }

// position returns where path was written, or else where its closest written
// parent was: a missing key is reported at the mapping that lacks it.
func (c *Config) position(path string) position {
	for {
		if p, ok := c.pos[path]; ok || path == "" {
			return p
		}
		path = parent(path)
	}
}

// set reports whether the file wrote path. Every path counts as written in a
// Config built in code, so that all of it is checked.
func (c *Config) set(path string) bool {
	if c.pos == nil {
		return true
	}
	_, ok := c.pos[path]
	return ok
}

// firstAt names where path was written, for "duplicate" messages.
func (c *Config) firstAt(path string) string {
	if p, ok := c.pos[path]; ok {
		return fmt.Sprintf("line %d", p.line)
	}
	return path
}

// parent strips the last key or index from path.
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// within reports whether path is prefix or lies under it.
func within(path, prefix string) bool {
	if prefix == "" || path == prefix {
		return true
	}
	rest, ok := strings.CutPrefix(path, prefix)
	return ok && (rest[0] == '.' || rest[0] == '[')
}
