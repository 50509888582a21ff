// Package expr declares what warren's CEL expressions (filter, transform,
// ordering.key) may use and compiles them. Config validation and the rules
// that evaluate expressions share it, so `warren validate` accepts exactly
// what runs.
package expr

import (
	"fmt"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/ext"
)

// The variables every expression sees.
const (
	VarID         = "id"          // string: the event id (webhook-id)
	VarType       = "type"        // string: the original routing key
	VarData       = "data"        // dyn: the body parsed as JSON, null when not JSON
	VarHeaders    = "headers"     // map(string, dyn): the publisher's AMQP headers
	VarAPIVersion = "api_version" // string: the api_version header, "" when absent
	VarCreatedAt  = "created_at"  // timestamp: as in the envelope
)

// Variables lists the variable names for messages.
const Variables = "id, type, data, headers, api_version, created_at"

// CostLimit bounds the work of one evaluation in CEL cost units (about one
// per operation, more for operations on long strings and lists). It is the
// per-call limit Kubernetes uses for its CEL rules: far above any filter
// that reads a few fields, low enough that a runaway comprehension stops
// within milliseconds instead of holding a worker.
const CostLimit = 1_000_000

// Kind is where an expression is used, which decides the type it must have.
type Kind int

const (
	Filter      Kind = iota // bool
	Transform               // any JSON value
	OrderingKey             // a string or a number
)

// Env is the CEL environment of every expression, built once.
var Env = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(VarID, cel.StringType),
		cel.Variable(VarType, cel.StringType),
		cel.Variable(VarData, cel.DynType),
		cel.Variable(VarHeaders, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(VarAPIVersion, cel.StringType),
		cel.Variable(VarCreatedAt, cel.TimestampType),
		// JSON numbers are int or double depending on how they are
		// written; comparing them must not depend on that.
		cel.CrossTypeNumericComparisons(true),
		// data.?field.orValue(x) for fields that may be missing.
		cel.OptionalTypes(),
		ext.Strings(),
	)
})

// Problem is one compile error, placed inside the expression: Line and
// Column count from 1, Column in characters; Column 0 means the whole
// expression. Want, when set, says what was expected.
type Problem struct {
	Line, Column int
	Message      string
	Want         string
}

// Compile parses and type-checks src as an expression of the given kind.
// Problems describe what is wrong with it; an error means the environment
// itself could not be built, which is a bug.
func Compile(kind Kind, src string) (*cel.Ast, []Problem, error) {
	env, err := Env()
	if err != nil {
		return nil, nil, fmt.Errorf("cel environment: %w", err)
	}
	ast, issues := env.Compile(src)
	if issues != nil && issues.Err() != nil {
		var ps []Problem
		for _, e := range issues.Errors() {
			ps = append(ps, problem(e.Location.Line(), e.Location.Column(), e.Message))
		}
		return nil, ps, nil
	}
	if p, bad := checkOutput(kind, ast.OutputType()); bad {
		return nil, []Problem{p}, nil
	}
	return ast, nil, nil
}

// problem rewords a CEL error for a config message: CEL's container and
// parser token sets mean nothing to the reader.
func problem(line, column int, msg string) Problem {
	p := Problem{Line: max(line, 1), Column: column + 1}
	msg = strings.TrimSuffix(msg, " (in container '')")
	if i := strings.Index(msg, " expecting {"); i >= 0 {
		msg = msg[:i]
	}
	if rest, ok := strings.CutPrefix(msg, "Syntax error: "); ok {
		msg = "syntax error: " + strings.ReplaceAll(rest, "mismatched input '<EOF>'", "unexpected end of expression")
	}
	if strings.HasPrefix(msg, "undeclared reference") {
		p.Want = "want one of " + Variables
	}
	p.Message = msg
	return p
}

// checkOutput says what is wrong with an expression's type for its use.
// dyn passes: data.x has a type only at run time, where a wrong one is an
// evaluation error.
func checkOutput(kind Kind, t *cel.Type) (Problem, bool) {
	if t.IsExactType(cel.DynType) {
		return Problem{}, false
	}
	switch kind {
	case Filter:
		if !t.IsExactType(cel.BoolType) {
			return Problem{Line: 1, Message: fmt.Sprintf("wrong type: gives %s", t), Want: "want a bool such as data.amount >= 100"}, true
		}
	case OrderingKey:
		for _, ok := range []*cel.Type{cel.StringType, cel.IntType, cel.UintType, cel.DoubleType, cel.BoolType} {
			if t.IsExactType(ok) {
				return Problem{}, false
			}
		}
		return Problem{Line: 1, Message: fmt.Sprintf("wrong type: gives %s", t), Want: "want a string or a number such as data.account_id"}, true
	}
	return Problem{}, false
}
