package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Load reads, decodes and validates the config file at path, expanding
// environment variables from the process environment. Problems in the file
// come back as an *Error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse decodes and validates data, expanding ${VAR} from lookupEnv. file
// names the data in messages and becomes Config.Path. It returns every
// problem at once as an *Error, in file order: what decoding found and what
// Validate found in the rest.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	root, problem := parseYAML(data)
	if problem != nil {
		problem.File = file
		return nil, &Error{Problems: []Problem{*problem}}
	}
	d := &decoder{file: file, lookup: lookupEnv, pos: map[string]position{}}
	c := Default()
	d.decode(root, reflect.ValueOf(&c).Elem(), "")
	c.Path, c.pos = file, d.pos
	if c.set("broker.urls") && !c.set("broker.url") {
		c.Broker.URL = "" // the default single node gives way to the list
	}
	c.inheritDefaults()

	problems := d.problems
	for _, p := range c.problems() {
		if !withinAny(p.Path, d.failed) {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		// In file order, wherever each was found.
		slices.SortStableFunc(problems, func(a, b Problem) int {
			return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
		})
		return nil, &Error{Problems: problems}
	}
	return &c, nil
}

// yaml.v3 syntax errors read "yaml: line N: message" or "yaml: message".
var yamlError = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// parseYAML returns the root node of the file's single YAML document.
func parseYAML(data []byte) (*yaml.Node, *Problem) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) || err == nil && doc.Content[0].ShortTag() == nullTag {
		return nil, &Problem{Message: "config is empty"}
	}
	if err != nil {
		return nil, syntaxProblem(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, &Problem{Line: next.Line, Column: next.Column, Message: "more than one YAML document (want one)"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxProblem(err)
	}
	return doc.Content[0], nil
}

func syntaxProblem(err error) *Problem {
	m := yamlError.FindStringSubmatch(err.Error())
	if m == nil {
		return &Problem{Message: "invalid YAML: " + err.Error()}
	}
	line, _ := strconv.Atoi(m[1]) // 0 when the error has no line
	return &Problem{Line: line, Message: "invalid YAML: " + m[2]}
}

// inheritDefaults fills every option a subscription did not write from
// defaults, key by key: a subscription's retry.delays keeps defaults'
// retry.dead_on_status. Done after decoding, so defaults may come anywhere in
// the file.
func (c *Config) inheritDefaults() {
	defaults := reflect.ValueOf(c.Defaults)
	for i := range c.Subscriptions {
		sub := reflect.ValueOf(&c.Subscriptions[i].Options).Elem()
		c.inherit(sub, defaults, fmt.Sprintf("subscriptions[%d]", i))
	}
}

func (c *Config) inherit(dst, src reflect.Value, path string) {
	for _, f := range fieldsOf(dst.Type()) {
		d, s, p := dst.FieldByIndex(f.index), src.FieldByIndex(f.index), join(path, f.name)
		switch {
		case isStruct(d.Type()):
			c.inherit(d, s, p)
		case !c.set(p):
			d.Set(clone(s))
		}
	}
}

// clone copies slices so that subscriptions never share a backing array
// with defaults or each other.
func clone(v reflect.Value) reflect.Value {
	if v.Kind() != reflect.Slice || v.IsNil() {
		return v
	}
	c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
	reflect.Copy(c, v)
	return c
}

func withinAny(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if within(path, p) {
			return true
		}
	}
	return false
}
