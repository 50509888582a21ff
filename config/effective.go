package config

import (
	"bytes"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Effective renders the resolved config as YAML: every subscription with
// the options it inherits, durations in short form (5s, 1m30s), and secrets,
// credential headers and the broker password hidden. It backs
// "warren validate --verbose".
func (c *Config) Effective() []byte {
	view := *c
	view.Broker.URL = RedactURL(c.Broker.URL)
	if view.Broker.TLS.MinVersion == "" {
		// broker.tls is empty unless written, so the default is shown here.
		view.Broker.TLS.MinVersion = TLS12
	}
	view.Defaults.Proxy = redactProxy(c.Defaults.Proxy)
	view.Broker.URLs = make([]string, len(c.Broker.URLs))
	for i, u := range c.Broker.URLs {
		view.Broker.URLs[i] = RedactURL(u)
	}
	view.Subscriptions = make([]Subscription, len(c.Subscriptions))
	for i, s := range c.Subscriptions {
		headers := make(map[string]string, len(s.Headers))
		for name, value := range s.Headers {
			if sensitiveHeader(name) {
				value = redacted
			}
			headers[name] = value
		}
		s.URL, s.Headers, s.Proxy = EndpointURL(s.URL), headers, redactProxy(s.Proxy)
		view.Subscriptions[i] = s
	}
	root := encode(reflect.ValueOf(view))
	// Show the broker key the file uses: url, or urls one node per line.
	broker := root.Content[1]
	if len(c.Broker.URLs) > 0 {
		dropKey(broker, "url")
		broker.Content[1].Style = 0
	} else {
		dropKey(broker, "urls")
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		// The tree is built here from plain scalars; failing is a bug.
		panic("config: render effective config: " + err.Error())
	}
	return buf.Bytes()
}

// redactProxy hides a proxy's password; "" stays "".
func redactProxy(raw string) string {
	if raw == "" {
		return ""
	}
	return RedactURL(raw)
}

// dropKey removes key and its value from mapping n.
func dropKey(n *yaml.Node, key string) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content = slices.Delete(n.Content, i, i+2)
			return
		}
	}
}

// encode builds the YAML tree of v with the same keys the decoder reads.
func encode(v reflect.Value) *yaml.Node {
	switch t := v.Type(); {
	case t == durationType:
		return scalar("!!str", DelayName(time.Duration(v.Int())))
	case t == secretType:
		return scalar("!!str", redacted)
	case t == byteSizeType:
		return scalar("!!str", ByteSize(v.Int()).String())
	case isStruct(t):
		n := &yaml.Node{Kind: yaml.MappingNode}
		for _, f := range fieldsOf(t) {
			field := v.FieldByIndex(f.index)
			if isOptional(field.Type()) && field.IsNil() {
				continue // an optional section that is off is not shown
			}
			n.Content = append(n.Content, scalar("!!str", f.name), encode(field))
		}
		return n
	case isOptional(t):
		return encode(v.Elem())
	}
	switch v.Kind() {
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		for i := range v.Len() {
			n.Content = append(n.Content, encode(v.Index(i)))
		}
		if v.Len() == 0 || n.Content[0].Kind == yaml.ScalarNode {
			n.Style = yaml.FlowStyle // delays: [5s, 30s]
		}
		return n
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		n := &yaml.Node{Kind: yaml.MappingNode}
		if len(keys) == 0 {
			n.Style = yaml.FlowStyle // headers: {}
		}
		for _, k := range keys {
			n.Content = append(n.Content, scalar("!!str", k.String()), encode(v.MapIndex(k)))
		}
		return n
	case reflect.Bool:
		return scalar("", strconv.FormatBool(v.Bool()))
	case reflect.Int:
		return scalar("", strconv.FormatInt(v.Int(), 10))
	case reflect.Float64:
		return scalar("", strconv.FormatFloat(v.Float(), 'g', -1, 64))
	}
	return scalar("!!str", v.String())
}

// scalar makes a node; an empty tag lets the encoder write numbers and
// booleans plain, !!str quotes strings that would read as something else.
func scalar(tag, value string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
}
