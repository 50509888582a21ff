package config

import (
	"fmt"
	"iter"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	durationType = reflect.TypeFor[time.Duration]()
	secretType   = reflect.TypeFor[Secret]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

// YAML tags as yaml.Node.ShortTag reports them.
const (
	nullTag  = "!!null"
	boolTag  = "!!bool"
	intTag   = "!!int"
	floatTag = "!!float"
)

// decoder copies a yaml.Node tree into Go values strictly, collecting a
// Problem for every unknown key, duplicate key, wrong kind or bad scalar
// instead of stopping at the first. yaml.v3's own decoder cannot do this: it
// stops at some errors, accepts bare numbers as durations and loses
// KnownFields inside custom unmarshalers.
type decoder struct {
	file     string
	lookup   func(string) (string, bool)
	pos      map[string]position // every path decoded, for Validate
	failed   []string            // paths whose value could not be decoded
	problems []Problem
}

// report records a problem at n.
func (d *decoder) report(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		File: d.file, Line: n.Line, Column: n.Column,
		Path: path, Message: fmt.Sprintf(format, args...),
	})
}

// fail records a problem with the value at path, which keeps its previous
// (default or inherited) value; Validate's findings under path are dropped as
// they would only repeat it.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.report(n, path, format, args...)
	d.failed = append(d.failed, path)
}

// decode stores n into v and reports whether v now holds n's value. A
// section (struct) holds it when n is a mapping, even if some of its keys
// failed: those keep their previous values.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) bool {
	var ok bool
	switch {
	case n.Kind == yaml.ScalarNode:
		ok = d.scalar(n, v, path)
	case n.Kind == yaml.MappingNode && isStruct(v.Type()):
		ok = d.structure(n, v, path)
	case n.Kind == yaml.MappingNode && isOptional(v.Type()):
		ok = d.optional(n, v, path)
	case n.Kind == yaml.MappingNode && v.Kind() == reflect.Map:
		ok = d.dict(n, v, path)
	case n.Kind == yaml.SequenceNode && v.Kind() == reflect.Slice:
		ok = d.sequence(n, v, path)
	case n.Kind == yaml.AliasNode:
		d.fail(n, path, "YAML aliases are not supported (want the value written out; shared options belong under defaults)")
	default:
		d.fail(n, path, "wrong type (got %s, want %s)", got(n, path), want(v.Type()))
	}
	if ok {
		d.pos[path] = position{n.Line, n.Column}
	}
	return ok
}

// structure decodes a mapping field by field, so keys the file leaves out
// keep their defaults.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) bool {
	fields := fieldsOf(v.Type())
	for key, value := range d.pairs(n, path) {
		f, ok := fields.lookup(key)
		if !ok {
			d.report(value.key, join(path, key), "unknown key (want one of: %s)", fields)
			continue
		}
		p := join(path, key)
		if d.decode(value.node, v.FieldByIndex(f.index), p) && value.node.Kind != yaml.ScalarNode && value.node.Style&yaml.FlowStyle == 0 {
			// A block section or list is placed at its key: yaml.v3 puts
			// it at its first entry, where "key_file: missing" would point
			// at whatever key came first.
			d.pos[p] = position{value.key.Line, value.key.Column}
		}
	}
	return true
}

// optional decodes a section that is off unless written (broker.journal):
// writing it turns it on with its defaults, writing null turns it off.
func (d *decoder) optional(n *yaml.Node, v reflect.Value, path string) bool {
	section := reflect.New(v.Type().Elem())
	if s, ok := section.Interface().(interface{ setDefaults() }); ok {
		s.setDefaults()
	}
	d.structure(n, section.Elem(), path)
	v.Set(section)
	return true
}

// dict decodes a mapping into a Go map (headers).
func (d *decoder) dict(n *yaml.Node, v reflect.Value, path string) bool {
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	ok := true
	for key, value := range d.pairs(n, path) {
		elem := reflect.New(v.Type().Elem()).Elem()
		if !d.decode(value.node, elem, join(path, key)) {
			ok = false
			continue
		}
		m.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), elem)
	}
	return d.assign(v, m, ok, path)
}

// sequence sets the list even when some items failed: each of those is
// reported and stays the zero value at its own index (its path is in
// failed, so Validate's word on it is dropped), and Validate still checks
// the others, such as a duplicate among the secrets that did decode.
func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) bool {
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
	return true
}

// assign sets a map only when all its entries decoded.
func (d *decoder) assign(v, value reflect.Value, ok bool, path string) bool {
	if !ok {
		d.failed = append(d.failed, path)
		return false
	}
	v.Set(value)
	return true
}

type pair struct{ key, node *yaml.Node }

// pairs yields a mapping's entries by key, reporting keys that are not
// scalars or appear twice.
func (d *decoder) pairs(n *yaml.Node, path string) iter.Seq2[string, pair] {
	return func(yield func(string, pair) bool) {
		seen := make(map[string]*yaml.Node, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, value := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.report(k, path, "wrong type for a key (got %s, want a name)", got(k, path))
				continue
			}
			if first, dup := seen[k.Value]; dup {
				d.report(k, join(path, k.Value), "duplicate key (first at line %d)", first.Line)
				continue
			}
			seen[k.Value] = k
			if !yield(k.Value, pair{k, value}) {
				return
			}
		}
	}
}

// scalar expands environment variables in n and decodes it into v.
func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string) bool {
	s, err := expand(n.Value, d.lookup)
	if err != nil {
		d.fail(n, path, "%s", err)
		return false
	}
	if s != n.Value {
		n.Value = s
		if n.Style == 0 {
			n.Tag = "" // re-resolve a plain scalar: ${C:-16} is an int
		}
	}
	tag := n.ShortTag()
	t := v.Type()
	switch {
	case t == secretType:
		secret, err := ParseSecret(s)
		if err != nil {
			d.fail(n, path, "%s", err)
			return false
		}
		v.Set(reflect.ValueOf(secret))
	case tag == nullTag:
		// "key:" with no value sets the zero value, except for a section,
		// where it sets nothing.
		if !isStruct(t) {
			v.SetZero()
		}
	case t == durationType:
		return d.duration(n, v, path)
	case t == byteSizeType:
		size, err := ParseByteSize(s)
		if err != nil {
			d.fail(n, path, "invalid size (got %s, %s)", shown(path, s), err)
			return false
		}
		v.SetInt(int64(size))
	case t.Kind() == reflect.String:
		v.SetString(s)
	case t.Kind() == reflect.Bool && tag == boolTag:
		v.SetBool(strings.EqualFold(s, "true"))
	case t.Kind() == reflect.Int && tag == intTag:
		i, err := strconv.ParseInt(s, 0, 64)
		if err != nil || v.OverflowInt(i) {
			d.fail(n, path, "out of range (got %s, want %s)", shown(path, s), want(t))
			return false
		}
		v.SetInt(i)
	case t.Kind() == reflect.Float64 && (tag == intTag || tag == floatTag):
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			d.fail(n, path, "wrong type (got %s, want a finite number)", shown(path, s))
			return false
		}
		v.SetFloat(f)
	default:
		d.fail(n, path, "wrong type (got %s, want %s)", got(n, path), want(t))
		return false
	}
	return true
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) bool {
	// time.ParseDuration takes a bare 0; a bare number is rejected whatever
	// its value, as "timeout: 30" is ambiguous.
	if _, err := strconv.ParseFloat(n.Value, 64); err == nil {
		d.fail(n, path, "missing unit (got %s, want a duration such as 10s)", shown(path, n.Value))
		return false
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		d.fail(n, path, "invalid duration (got %s, want a duration such as 10s or 1m30s)", shown(path, n.Value))
		return false
	}
	v.SetInt(int64(dur))
	return true
}

// field is a YAML key of a struct; index reaches it through inline structs.
type field struct {
	name  string
	index []int
}

type fields []field

func (fs fields) lookup(name string) (field, bool) {
	for _, f := range fs {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// String lists the keys for "unknown key" messages.
func (fs fields) String() string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

// fieldsOf lists t's YAML keys in declaration order, flattening
// `yaml:",inline"` structs.
func fieldsOf(t reflect.Type) fields {
	var fs fields
	for i := range t.NumField() {
		sf := t.Field(i)
		name, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		switch {
		case name == "-" || !sf.IsExported():
		case opts == "inline":
			for _, f := range fieldsOf(sf.Type) {
				fs = append(fs, field{f.name, append([]int{i}, f.index...)})
			}
		default:
			if name == "" {
				name = strings.ToLower(sf.Name)
			}
			fs = append(fs, field{name, []int{i}})
		}
	}
	return fs
}

// isStruct reports whether t is a section of keys rather than a value.
func isStruct(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != secretType
}

// isOptional reports whether t is a section that may be absent.
func isOptional(t reflect.Type) bool {
	return t.Kind() == reflect.Pointer && isStruct(t.Elem())
}

// got describes n for a "wrong type" message.
func got(n *yaml.Node, path string) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return shown(path, n.Value)
}

// shown quotes a value for an error message, masking what may be a
// credential: secrets, header values and the userinfo of URLs.
func shown(path, s string) string {
	if strings.HasPrefix(s, secretPrefix) || strings.HasPrefix(s, signingKeyPrefix) || strings.Contains(path, ".secrets") || strings.Contains(path, ".headers") {
		return maskSecret(s)
	}
	return strconv.Quote(maskURL(s))
}

// want describes what a value of type t is written as.
func want(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 10s"
	case t == secretType:
		return "a secret such as whsec_..."
	case t == byteSizeType:
		return "a size such as 512KiB or 10GB"
	case isOptional(t):
		return "a mapping, or null to turn it off"
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "a mapping"
	case reflect.Slice:
		return "a list"
	case reflect.Bool:
		return "true or false"
	case reflect.Int:
		return "an integer"
	case reflect.Float64:
		return "a number"
	}
	return "a string"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
