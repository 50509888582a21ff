package expr

import "testing"

func TestCompile(t *testing.T) {
	tests := []struct {
		kind Kind
		src  string
		want Problem // zero: compiles
	}{
		{Filter, `data.amount > 5`, Problem{}},
		{Filter, `data.flag`, Problem{}}, // dyn: checked at run time
		{Filter, `type`, Problem{Line: 1, Message: "wrong type: gives string", Want: "want a bool such as data.amount >= 100"}},
		{Filter, "type == \"a\"\n  && dta", Problem{Line: 2, Column: 6, Message: "undeclared reference to 'dta' (did you mean 'data'?)", Want: "want one of " + Variables}},
		{Filter, `data.amount >`, Problem{Line: 1, Column: 14, Message: "syntax error: unexpected end of expression"}},
		{Transform, `{"a": data.a, "t": created_at}`, Problem{}},
		{OrderingKey, `data.account_id`, Problem{}},
		{OrderingKey, `size(type)`, Problem{}},
		{OrderingKey, `created_at`, Problem{Line: 1, Message: "wrong type: gives google.protobuf.Timestamp", Want: "want a string or a number such as data.account_id"}},
	}
	for _, tt := range tests {
		ast, problems, err := Compile(tt.kind, tt.src)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case tt.want == (Problem{}) && (ast == nil || len(problems) > 0):
			t.Errorf("Compile(%q) = %+v, want it to compile", tt.src, problems)
		case tt.want != (Problem{}) && (len(problems) != 1 || problems[0] != tt.want):
			t.Errorf("Compile(%q) = %+v, want [%+v]", tt.src, problems, tt.want)
		}
	}
}
