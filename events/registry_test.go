package events

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// TestEveryTypeRegistered checks that every Type* constant of the package
// names a registered message, and each registered message its constant.
func TestEveryTypeRegistered(t *testing.T) {
	pkgs, err := parser.ParseDir(token.NewFileSet(), ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	for _, f := range pkgs["events"].Files {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if !strings.HasPrefix(n.Name, "Type") || i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						consts[n.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
	}
	if len(consts) == 0 {
		t.Fatal("found no Type constants")
	}
	for name, v := range consts {
		if _, ok := messageTypes.byName[v]; !ok {
			t.Errorf("%s = %q is not in messageTypes", name, v)
		}
	}
	if len(consts) != len(messageTypes.byName) {
		t.Errorf("%d Type constants, %d registered types", len(consts), len(messageTypes.byName))
	}
}

// TestRegistryRoundTrip encodes an empty message of every registered type and
// checks that Encode sets its type and Decode makes the same struct from it
// (or refuses it for its missing fields).
func TestRegistryRoundTrip(t *testing.T) {
	for name, mt := range messageTypes.byName {
		m := mt.new()
		data, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%T): %v", m, err)
		}
		if !strings.HasPrefix(string(data), `{"type":"`+name+`"`) {
			t.Errorf("Encode(%T) = %s, want type %s first", m, data, name)
		}
		got, err := Decode(data)
		if err == nil && reflect.TypeOf(got) != mt.goType {
			t.Errorf("Decode(%s) = %T, want %s", data, got, mt.goType)
		}
		if err != nil && m.check() == nil {
			t.Errorf("Decode(%s): %v, though its check passes", data, err)
		}
	}
	if _, err := Encode(JobQueued{}); err == nil {
		t.Error("Encode of a struct, not a pointer: no error")
	}
	if _, err := Encode((*JobQueued)(nil)); err == nil {
		t.Error("Encode of a nil message: no error")
	}
}
