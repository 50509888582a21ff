// Package rules evaluates a subscription's routing rules against one event:
// api_version and filter (does the endpoint want it), transform (what body
// it gets) and ordering.key (which events wait for each other).
//
// Expressions are CEL, declared and compiled by config/expr. Each one is
// compiled once per config and bounded by expr.CostLimit per evaluation.
package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"

	"github.com/warren-hq/warren/config"
	"github.com/warren-hq/warren/config/expr"
)

// Names of the rules, as they appear in errors (and so in park reasons).
const (
	RuleFilter      = "filter"
	RuleTransform   = "transform"
	RuleOrderingKey = "ordering.key"
)

// Program is a subscription's compiled rules. It is safe for concurrent
// use.
type Program struct {
	apiVersion string
	filter     cel.Program // nil: every event passes
	transform  cel.Program // nil: the body is sent as published
	key        cel.Program // nil: unordered
}

// Compile compiles the rules of one subscription. A config that passed
// Validate always compiles.
func Compile(sub config.Subscription) (*Program, error) {
	p := &Program{apiVersion: sub.APIVersion}
	var errs []error
	for _, r := range []struct {
		name string
		kind expr.Kind
		src  string
		dst  *cel.Program
	}{
		{RuleFilter, expr.Filter, sub.Filter, &p.filter},
		{RuleTransform, expr.Transform, sub.Transform, &p.transform},
		{RuleOrderingKey, expr.OrderingKey, sub.Ordering.Key, &p.key},
	} {
		if r.src == "" {
			continue
		}
		prg, err := compile(r.kind, r.src)
		if err != nil {
			errs = append(errs, fmt.Errorf("subscription %q: %s: %w", sub.Name, r.name, err))
			continue
		}
		*r.dst = prg
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func compile(kind expr.Kind, src string) (cel.Program, error) {
	ast, problems, err := expr.Compile(kind, src)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s (at column %d)", problems[0].Message, problems[0].Column)
	}
	env, err := expr.Env()
	if err != nil {
		return nil, err
	}
	return env.Program(ast,
		cel.CostLimit(expr.CostLimit),
		cel.EvalOptions(cel.OptOptimize),
	)
}

// Error is an expression that failed on one event: a missing field, a type
// error, its cost limit. The event is parked with Error() as the reason.
type Error struct {
	Rule string // RuleFilter, RuleTransform or RuleOrderingKey
	Err  error
}

func (e *Error) Error() string { return e.Rule + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrCostLimit is wrapped by an Error whose expression exceeded
// expr.CostLimit.
var ErrCostLimit = fmt.Errorf("cost limit of %d exceeded", expr.CostLimit)

// eval runs prg on in, turning every way it can fail into an *Error.
func eval(rule string, prg cel.Program, in *Input) (ref.Val, error) {
	out, _, err := prg.Eval(in)
	if err == nil && types.IsError(out) {
		err = out.(*types.Err)
	}
	if err != nil {
		var cancelled interpreter.EvalCancelledError
		if errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded {
			err = ErrCostLimit
		}
		return nil, &Error{Rule: rule, Err: err}
	}
	return out, nil
}

// APIVersionMatches reports whether the event's api_version header allows
// it: the subscription names none, the event carries none, or they are
// equal.
func (p *Program) APIVersionMatches(in *Input) bool {
	return p.apiVersion == "" || in.ev.APIVersion == "" || in.ev.APIVersion == p.apiVersion
}

// Filter evaluates the filter expression alone; true when there is none.
func (p *Program) Filter(in *Input) (bool, error) {
	if p.filter == nil {
		return true, nil
	}
	out, err := eval(RuleFilter, p.filter, in)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, &Error{Rule: RuleFilter, Err: fmt.Errorf("gives %s, want a bool", out.Type())}
	}
	return bool(b), nil
}

// Wants reports whether the subscription receives the event: api_version
// first (no expression runs for a version it does not take), then the
// filter. false means filtered; an error means park.
func (p *Program) Wants(in *Input) (bool, error) {
	if !p.APIVersionMatches(in) {
		return false, nil
	}
	return p.Filter(in)
}

// HasTransform reports whether the subscription reshapes bodies.
func (p *Program) HasTransform() bool { return p.transform != nil }

// Transform evaluates the transform and returns its value as JSON, with
// object keys sorted. ok is false when the subscription has no transform.
func (p *Program) Transform(in *Input) (body []byte, ok bool, err error) {
	if p.transform == nil {
		return nil, false, nil
	}
	out, err := eval(RuleTransform, p.transform, in)
	if err != nil {
		return nil, true, err
	}
	v, err := jsonValue(out)
	if err != nil {
		return nil, true, &Error{Rule: RuleTransform, Err: err}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, true, &Error{Rule: RuleTransform, Err: err}
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), true, nil
}

// Ordered reports whether the subscription has an ordering key.
func (p *Program) Ordered() bool { return p.key != nil }

// OrderingKey evaluates ordering.key. Numbers are written in decimal, so
// 42 and "42" are the same key. ok is false when the subscription is not
// ordered.
func (p *Program) OrderingKey(in *Input) (key string, ok bool, err error) {
	if p.key == nil {
		return "", false, nil
	}
	out, err := eval(RuleOrderingKey, p.key, in)
	if err != nil {
		return "", true, err
	}
	switch v := out.(type) {
	case types.String:
		return string(v), true, nil
	case types.Int:
		return strconv.FormatInt(int64(v), 10), true, nil
	case types.Uint:
		return strconv.FormatUint(uint64(v), 10), true, nil
	case types.Double:
		return strconv.FormatFloat(float64(v), 'f', -1, 64), true, nil
	case types.Bool:
		return strconv.FormatBool(bool(v)), true, nil
	}
	return "", true, &Error{Rule: RuleOrderingKey, Err: fmt.Errorf("gives %s, want a string or a number", out.Type())}
}

// jsonValue turns a CEL value into what encoding/json writes: int stays
// exact, bytes become base64, timestamps RFC 3339, durations "1.5s".
func jsonValue(v ref.Val) (any, error) {
	switch v := v.(type) {
	case types.Null:
		return nil, nil
	case types.Bool:
		return bool(v), nil
	case types.Int:
		return int64(v), nil
	case types.Uint:
		return uint64(v), nil
	case types.Double:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("gives %v, which JSON cannot hold", f)
		}
		return f, nil
	case types.String:
		return string(v), nil
	case types.Bytes:
		return []byte(v), nil
	case types.Timestamp:
		return v.Time.UTC().Format(time.RFC3339Nano), nil
	case types.Duration:
		return strconv.FormatFloat(v.Duration.Seconds(), 'f', -1, 64) + "s", nil
	case traits.Mapper:
		m := map[string]any{}
		for it := v.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			name, ok := k.(types.String)
			if !ok {
				return nil, fmt.Errorf("gives a map with a %s key, want string keys for a JSON object", k.Type())
			}
			e, err := jsonValue(v.Get(k))
			if err != nil {
				return nil, err
			}
			m[string(name)] = e
		}
		return m, nil
	case traits.Lister:
		n := v.Size().(types.Int)
		l := make([]any, 0, n)
		for i := range n {
			e, err := jsonValue(v.Get(i))
			if err != nil {
				return nil, err
			}
			l = append(l, e)
		}
		return l, nil
	}
	return nil, fmt.Errorf("gives a %s, which is not a JSON value", v.Type())
}
